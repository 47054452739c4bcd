import pytest
import torch

from tuner.generate import BASE, GenSettings, Generator, balanced_batches
from tuner.config import TrainConfig
from tuner.runs import RunManager as Trainer
from conftest import chat, write_jsonl


def test_base_reply_comes_from_the_same_model_with_adapter_disabled(tiny_llama, trained_run, tmp_path):
    prompts = [[{"role": "user", "content": "Say hi 1"}], [{"role": "user", "content": "What is two plus two?"}]]
    settings = GenSettings(max_new_tokens=8, batch_size=2)
    plain = Generator(tmp_path)
    before = plain.generate(str(tiny_llama), prompts, settings)

    shared = Generator(tmp_path)
    # a run id with dots: peft adapter names may not contain them
    tuned = shared.generate(str(tiny_llama), prompts, settings, adapter=("run.v2-1", trained_run))
    model_after_adapter = shared.model
    base = shared.generate(str(tiny_llama), prompts, settings)
    assert shared.model is model_after_adapter  # no second copy was loaded
    assert [r.text for r in base] == [r.text for r in before]  # disable_adapter() == the plain model
    assert [r.text for r in tuned] != [r.text for r in base]
    assert tuned[0].variant == "run.v2-1" and base[0].variant == BASE
    assert all(r.new_tokens <= 8 and r.latency_s > 0 for r in tuned + base)
    assert tuned[0].settings["max_new_tokens"] == 8


def test_batched_and_single_generation_agree(tiny_llama, tmp_path):
    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "A longer question here?"}]]
    gen = Generator(tmp_path)
    batched = gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=6, batch_size=2))
    single = gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=6, batch_size=1))
    assert [r.text for r in batched] == [r.text for r in single]


def test_batches_are_balanced_and_cover_every_prompt():
    assert [len(b) for b in balanced_batches(10, 8)] == [5, 5]  # not 8 + 2
    assert [len(b) for b in balanced_batches(10, 4)] == [3, 4, 3]
    assert [list(b) for b in balanced_batches(3, 10)] == [[0, 1, 2]]
    assert balanced_batches(0, 4) == []
    for n in range(1, 40):
        for size in (1, 3, 10, 16):
            batches = balanced_batches(n, size)
            assert [i for b in batches for i in b] == list(range(n))
            assert max(map(len, batches)) <= size and len(batches) == -(-n // size)


def test_loading_ahead_keeps_one_model(tiny_llama, trained_run, tmp_path):
    gen = Generator(tmp_path)
    gen.load(str(tiny_llama), [("run-1", trained_run)])
    loaded = gen.model
    prompts = [[{"role": "user", "content": "Hello"}]]
    gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=4), adapter=("run-1", trained_run))
    gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=4))
    assert gen.model is loaded


def test_settings_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        GenSettings(temperature=5)


def test_prompt_tuning_trains_and_generates_beside_a_lora_adapter(tiny_llama, trained_run, tmp_path):
    rows = [chat(f"Say hi {i}", "Hello there, friend!") for i in range(8)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    manager = Trainer(tmp_path / "runs", tmp_path / "models")
    manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), method="prompt_tuning",
                              num_virtual_tokens=8, prompt_tuning_init_text="Answer kindly.",
                              learning_rate=3e-2, max_steps=12, test_fraction=0.0, validation_fraction=0.0))
    state = manager.wait(300)
    assert state.status == "completed", state.message
    losses = [r["loss"] for r in state.rows if "loss" in r]
    assert losses[-1] < losses[0]
    assert state.summary["trainable_params"] == 8 * 64  # virtual tokens × hidden size
    adapter = tmp_path / "runs" / state.run_id / "adapter"

    prompts = [[{"role": "user", "content": "Say hi 3"}]]
    settings = GenSettings(max_new_tokens=6)
    gen = Generator(tmp_path)
    base_before = gen.generate(str(tiny_llama), prompts, settings)
    lora = gen.generate(str(tiny_llama), prompts, settings, adapter=("lora-run", trained_run))
    prompted = gen.generate(str(tiny_llama), prompts, settings, adapter=("pt-run", adapter))
    base_after = gen.generate(str(tiny_llama), prompts, settings)
    assert base_after[0].text == base_before[0].text
    assert prompted[0].text != base_before[0].text and prompted[0].new_tokens <= 6
    assert lora[0].text != prompted[0].text


def test_cli_generate_writes_base_and_tuned_replies(tiny_llama, trained_run, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt\nSay hi 2\n"Hello, who are you?"\n')
    out = tmp_path / "replies.jsonl"
    env = dict(os.environ, TUNER_HOME=str(tmp_path / "home"), PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-m", "tuner", "generate", "--run", str(trained_run.parent), "--prompts",
                           str(prompts), "--out", str(out), "--max-new-tokens", "6"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["variant"]) for r in rows] == [
        ("Say hi 2", "base"), ("Hello, who are you?", "base"), ("Say hi 2", "tuned"), ("Hello, who are you?", "tuned")]
    assert all(r["settings"]["max_new_tokens"] == 6 and r["latency_s"] > 0 for r in rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("question\nhi\n")
    done = subprocess.run([sys.executable, "-m", "tuner", "generate", "--run", str(trained_run.parent), "--prompts",
                           str(bad)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "needs a 'prompt' column" in done.stderr
