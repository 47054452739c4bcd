import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import POLITE, chat, write_jsonl
from tuner import train as ttrain
from tuner.train import TrainConfig, Trainer


def _lora_weights(adapter_dir):
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_config_rejects_bad_combinations_with_a_message():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.5)  # far past any rate that trains
    with pytest.raises(ValueError, match="num_train_epochs > 0 or max_steps"):
        TrainConfig(num_train_epochs=0, max_steps=-1)
    with pytest.raises(ValueError, match="Unknown training setting"):
        TrainConfig.from_dict({"lora_rank": 4})


def test_detects_attention_and_linear_modules(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    attention, linear = ttrain.detect_target_modules(model)
    assert attention == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {"gate_proj", "up_proj", "down_proj"} <= set(linear)
    assert "lm_head" not in linear


def test_detects_falcon_module_names():
    from transformers import FalconConfig, FalconForCausalLM

    model = FalconForCausalLM(FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=4))
    attention, linear = ttrain.detect_target_modules(model)
    assert "query_key_value" in attention
    assert "dense_h_to_4h" in linear


def test_training_run_writes_folder_loss_falls_and_weights_change(tiny_llama, home, tmp_path):
    rows = [chat(f"Say the word number {i}.", f"Certainly! The word is apple{i % 3}.") for i in range(12)]
    dataset = write_jsonl(tmp_path / "overfit.jsonl", rows)
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), learning_rate=3e-2,
                         num_train_epochs=10, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], per_device_train_batch_size=4, r=8, lora_alpha=16,
                         lora_dropout=0.0, test_fraction=0.0, precision="fp32")
    trainer = Trainer(home.runs, home.models)
    run_id = trainer.start(config)
    state = trainer.wait(timeout=300)
    assert state.status == "completed", state.message
    run_dir = home.runs / run_id
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["learning_rate"] == 3e-2
    assert record["summary"]["trainable_params"] > 0
    metrics = ttrain.read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == state.max_steps
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    weights = _lora_weights(run_dir / "adapter")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    # peft starts lora_B at zero: any non-zero entry was learned
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)


def test_second_start_while_running_is_refused(tiny_llama, home, tmp_path):
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(8)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    trainer = Trainer(home.runs, home.models)
    trainer.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=200,
                              per_device_train_batch_size=1))
    try:
        with pytest.raises(ttrain.RunBusy, match="still"):
            trainer.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset)))
    finally:
        trainer.stop()
    state = trainer.wait(timeout=120)
    assert state.status == "stopped"
    assert state.step < 200
    assert (home.runs / state.run_id / "adapter" / "adapter_config.json").is_file()


def test_failure_in_training_thread_is_reported_not_raised(home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello")] * 3)
    trainer = Trainer(home.runs, home.models)
    trainer.start(TrainConfig(base_model=str(tmp_path / "no-such-model-folder"), dataset=str(dataset)))
    state = trainer.wait(timeout=60)
    assert state.status == "failed"
    assert "no-such-model-folder" in state.message
    assert [r["status"] for r in trainer.runs()] == ["failed"]


def test_bundled_smollm2_trains_a_few_steps(bundled_models_dir, tmp_path):
    """The real bundled model: LoRA weights change and the loss falls."""
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:4]]
    dataset = write_jsonl(tmp_path / "four.jsonl", rows)
    config = TrainConfig(dataset=str(dataset), max_steps=6, per_device_train_batch_size=4,
                         learning_rate=1e-3, test_fraction=0.0, lora_dropout=0.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    trainer = Trainer(runs, bundled_models_dir)
    trainer.start(config)
    state = trainer.wait(timeout=600)
    assert state.status == "completed", state.message
    losses = [r["loss"] for r in state.rows if "loss" in r]
    assert len(losses) == 6
    assert losses[-1] < losses[0]
    weights = _lora_weights(runs / state.run_id / "adapter")
    assert any("q_proj.lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
