import json
import random

import pytest

from ratings.evalsets import from_lines, parse_rules
from ratings.generation import generate_evaluation, variants_for
from ratings.store import Store
from tuner.generate import GenSettings, Generator


def test_evaluation_replies_are_generated_stored_and_opened(tiny_llama, trained_run, tmp_path):
    run = {"run_id": "run.1", "path": str(trained_run.parent),
           "config": {"base_model": str(tiny_llama), "method": "lora"}}
    base_model, variants = variants_for([run])
    assert [v.name for v in variants] == ["base", "run.1"]
    items = from_lines("Refund | I am angry, cancel my order\nGreeting | Say hi 1\nHow are you?")
    store = Store(tmp_path / "r.db")
    seen = []
    settings = GenSettings(max_new_tokens=5, batch_size=2, repetition_penalty=1.2)
    eval_id = generate_evaluation(store, Generator(tmp_path / "models"), "e1", base_model, items, variants, settings,
                                  parse_rules("escalate: cancel, angry, lawsuit"), tag=True,
                                  progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    replies = store.replies(eval_id)
    assert len(replies) == 6
    assert set(replies["variant"]) == {"base", "run.1"}
    assert (replies["new_tokens"] <= 5).all() and (replies["latency_s"] > 0).all()
    flagged = replies[replies["position"] == 1]
    assert all(json.loads(f) == ["escalate"] for f in flagged["flags"])
    prompts = store.prompts(eval_id)
    assert prompts[0]["messages"][-1]["content"].startswith("[ESCALATE] ")  # what the models saw
    assert prompts[0]["text"] == "I am angry, cancel my order"  # what raters read
    evaluation = store.evaluation(eval_id)
    assert evaluation["settings"]["repetition_penalty"] == 1.2
    assert evaluation["rules"] == [{"flag": "escalate", "keywords": ["cancel", "angry", "lawsuit"], "priority": 1}]
    assert store.progress(eval_id, "ana") == (0, 3)
    served = []  # raters get the prompts in a random order
    while (pair := store.next_pair(eval_id, "ana", random.Random(0))) is not None:
        served.append(pair)
        store.rate_pair(pair["assignment_id"], "ana", 3, 3)
    pair = next(p for p in served if p["prompt"] == "I am angry, cancel my order")
    assert pair["flags"] == ["escalate"] and pair["task"] == "Refund"


def test_held_out_prompts_come_from_the_runs_own_test_jsonl(tiny_llama, trained_run, tmp_path):
    from ratings import checks as rc
    from ratings.evalsets import from_run
    from tuner import data as tdata

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"When was it founded {i}?"},
                          {"role": "assistant", "content": f"It was founded in {2000 + i}."}],
             "answer": str(2000 + i), "difficulty": "easy"} for i in range(3)]
    (run_dir / "test.jsonl").write_text(tdata.to_jsonl(rows))
    run = {"run_id": "r", "path": str(run_dir), "config": {"dataset": "/gone.jsonl"}}
    items = from_run(run)
    assert [(i["text"], i["reference"], i["category"]) for i in items] == [
        (f"When was it founded {i}?", str(2000 + i), "easy") for i in range(3)]
    (run_dir / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match="held out no test rows"):
        from_run(run)
    # the checks travel with the evaluation and are measured on its replies
    store = Store(tmp_path / "r.db")
    trained = {"run_id": "run.1", "path": str(trained_run.parent),
               "config": {"base_model": str(tiny_llama), "method": "lora"}}
    base_model, variants = variants_for([trained])
    eval_id = generate_evaluation(store, Generator(tmp_path / "models"), "e", base_model, items, variants,
                                  GenSettings(max_new_tokens=4), checks=["max words: 2"])
    rep = rc.of_evaluation(store.evaluation(eval_id), store.replies(eval_id))
    assert rep.measures[0] == "all checks" and set(rep.table["model"]) == {v.label for v in variants}
    assert rep.cut_cap == 4 and len(rep.replies) == 6


def test_runs_on_different_base_models_are_refused():
    runs = [{"run_id": "a", "path": "/x", "config": {"base_model": "m1"}},
            {"run_id": "b", "path": "/y", "config": {"base_model": "m2"}}]
    with pytest.raises(ValueError, match="different base models"):
        variants_for(runs)


def test_variant_labels_read_as_words_and_name_a_local_base_model_by_its_folder():
    """A prompt-tuned run read "prompt_tuning: …" and a local base model filled every table's
    first column with its whole path ("base (/tmp/…/tiny-llama0)")."""
    runs = [{"run_id": "r1", "path": "/runs/r1", "config": {"base_model": "/srv/models/tiny-llama0",
                                                           "method": "prompt_tuning", "run_name": "soft"}},
            {"run_id": "r2", "path": "/runs/r2", "config": {"base_model": "/srv/models/tiny-llama0"}}]
    base_model, variants = variants_for(runs)
    assert base_model == "/srv/models/tiny-llama0"  # the model itself is still named in full
    assert [v.label for v in variants] == ["base (tiny-llama0)", "prompt tuning: soft (r1)", "lora: r2"]
    assert variants[1].kind == "prompt_tuning"
    hub = [{"run_id": "r3", "path": "/runs/r3", "config": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}}]
    assert variants_for(hub)[1][0].label == "base (HuggingFaceTB/SmolLM2-135M-Instruct)"
