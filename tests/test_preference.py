"""Preference tuning: TRL-shaped files read (and refused) line by line, pairs and KTO examples
built from a real ratings database by the stated rules, corrections, and DPO / KTO runs of the
tiny Llama through `python -m tuner train` that move the model the way the preferences say."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_jsonl
from ratings import evalsets, preferences
from ratings.store import RatingError, Store
from tuner import preference as tpref
from tuner import records
from tuner.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


# --- files ---------------------------------------------------------------------------------
def test_both_trl_shapes_load_as_conversations_with_their_other_keys_kept(tmp_path):
    dpo = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Write to my professor", "chosen": "Dear Professor,", "rejected": "yo", "chosen_model": "a"},
        {"prompt": [{"role": "system", "content": "Be formal."}, {"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Good day."}], "rejected": [{"role": "assistant", "content": "sup"}]}])
    rows = tpref.load(dpo, "dpo")
    assert rows[0]["prompt"] == [{"role": "user", "content": "Write to my professor"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Dear Professor,"}] and rows[0]["chosen_model"] == "a"
    assert rows[1]["prompt"][0]["role"] == "system" and tpref.prompt_key(rows[1]) == "Hi"
    kto = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "Q", "completion": "A", "label": True},
                                              {"prompt": "Q", "completion": "B", "label": False}])
    assert [r["label"] for r in tpref.load(kto, "kto")] == [True, False]


@pytest.mark.parametrize("line, method, says", [
    ('{"prompt": "Q", "completion": "A", "label": true}', "dpo", "choose method 'kto'"),
    ('{"prompt": "Q", "chosen": "A", "rejected": "B"}', "kto", "choose method 'dpo'"),
    ('{"prompt": "Q", "chosen": "", "rejected": "B"}', "dpo", "'chosen' is empty"),
    ('{"prompt": "Q", "chosen": "same", "rejected": " same "}', "dpo", "the same reply"),
    ('{"prompt": "Q", "completion": "A", "label": "yes"}', "kto", "'label' must be true"),
    ('{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "A", "rejected": "B"}', "dpo",
     "must end with a user message"),
    ('{"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"}', "dpo",
     "one non-empty assistant message"),
    ('{"prompt": "Q", "chosen": "A", "rejected": "B"', "dpo", "not valid JSON"),
    ('["prompt", "chosen"]', "dpo", "must be a JSON object"),
])
def test_a_bad_line_is_refused_naming_the_file_the_line_and_the_field(tmp_path, line, method, says):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "ok", "chosen": "A", "rejected": "B"}\n' if method == "dpo" else
                    '{"prompt": "ok", "completion": "A", "label": true}\n', encoding="utf-8")
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError) as info:
        tpref.load(path, method)
    assert "prefs.jsonl: line 2:" in str(info.value) and says in str(info.value)


def test_the_split_keeps_every_example_of_a_prompt_in_one_part():
    rows = [tpref.normalise({"prompt": f"P{i % 10}", "chosen": f"good {i}", "rejected": f"bad {i}"}, "dpo")
            for i in range(40)]
    parts = tpref.split(rows, 0.2, 0.2, seed=3)
    keys = {name: {tpref.prompt_key(r) for r in part} for name, part in parts.items()}
    assert sum(len(p) for p in parts.values()) == 40
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"])
    assert len(keys["validation"]) == 2 and len(keys["test"]) == 2


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_training_rows_come_in_batches_of_similar_length_in_a_seeded_order(method):
    """Each batch is padded to its longest row: the rows are sorted into batches of similar
    length, every row once, the batches in an order that the seed sets (not longest last)."""
    rng = random.Random(0)
    rows = []
    for i in range(43):
        words = " ".join(["word"] * rng.randint(1, 200))
        extra = {"chosen": words, "rejected": "no"} if method == "dpo" else {"completion": words, "label": i % 2 == 0}
        rows.append(tpref.normalise({"prompt": f"Prompt {i:02d}", **extra}, method))
    ordered = tpref.length_grouped(rows, method, 8, seed=1)
    assert sorted(map(id, ordered)) == sorted(map(id, rows))  # every row once
    reply = "chosen" if method == "dpo" else "completion"
    lengths = [len(r[reply][-1]["content"]) for r in ordered]
    batches = [lengths[i:i + 8] for i in range(0, 43, 8)]
    spans = sorted((min(b), max(b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))  # batches do not overlap
    padding = sum(max(b) * len(b) - sum(b) for b in batches)
    rng_order = rows[:]
    random.Random(1).shuffle(rng_order)
    shuffled = [len(r[reply][-1]["content"]) for r in rng_order]
    assert padding < sum(max(b) * len(b) - sum(b) for b in (shuffled[i:i + 8] for i in range(0, 43, 8))) / 3
    assert ordered == tpref.length_grouped(rows, method, 8, seed=1)
    # two samples of each prompt, of one length: never neighbours in a batch (KTO's KL pairs
    # each prompt with the previous row's reply, the first with the last's)
    twice = [dict(r) for r in rows[:16] for _ in range(2)]
    grouped = tpref.length_grouped(twice, method, 8, seed=3)
    for start in range(0, 32, 8):
        keys = [tpref.prompt_key(r) for r in grouped[start:start + 8]]
        assert all(keys[i] != keys[i - 1] for i in range(8)), keys
    assert [max(b) for b in batches] != sorted(max(b) for b in batches) or \
        tpref.length_grouped(rows, method, 8, seed=2) != ordered


def test_trl_scores_only_the_completion_positions_on_a_cpu_with_the_same_log_probabilities(tiny_llama, monkeypatch):
    """DPO's and KTO's log-probabilities come from TRL's fused LM head; on a CPU it scores
    only the positions with a label (not the prompt, not the padding), and each is the
    log-softmax of the model's own logits there."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    assert tpref.score_completions_only_on_cpu()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    trl_utils.add_fused_lm_head(model)
    ids = torch.randint(10, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, :7] = 0  # a left-padded row
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :10] = -100  # the prompt
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: scored.append(hidden.shape[0]) or apply(hidden, *rest))
    with torch.no_grad():
        fused = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
        logits = model(input_ids=ids, attention_mask=attention).logits
    assert scored == [int((labels[:, 1:] != -100).sum())]  # 3 × 23 positions without it
    expected = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    expected = expected.masked_fill(labels[:, 1:] == -100, 0)
    assert torch.allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (1.0, 0.3)], ids=["log-probs", "entropy", "both"])
def test_the_log_probabilities_in_row_chunks_equal_trls_fused_head(dtype, weights, monkeypatch):
    """On a CPU, TRL's fused LM head goes to tuner.cross_entropy's row chunks: the log-softmax of
    the same logits, and TRL's own log-probabilities, entropies, mean logits and top-1 flags, with
    the same gradient (of the log-probabilities, the entropy, or both) to the compute dtype's
    rounding; what it does not do (a bias, WPO's log_sum_sq_probs, too many logits, mixed dtypes
    without autocast, TUNER_CHUNKED_LOSS=0) stays with TRL's."""
    import torch
    from trl.trainer import utils as trl_utils

    trl_function = getattr(trl_utils._ChunkedLogProbFunction, "trl_function", trl_utils._ChunkedLogProbFunction)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", trl_function)  # TRL's again after the test
    monkeypatch.delenv("TUNER_CHUNKED_LOSS", raising=False)
    assert tpref.log_probs_in_row_chunks_on_cpu()
    ours = trl_utils._ChunkedLogProbFunction
    assert ours is not trl_function and tpref.log_probs_in_row_chunks_on_cpu() and trl_utils._ChunkedLogProbFunction is ours
    gen = torch.Generator().manual_seed(4)
    n, width, vocab = 45, 32, 40_000  # more than one of TRL's 32,768-entry tiles, rows not a multiple of 16
    weight = torch.randn(vocab, width, generator=gen).to(getattr(torch, dtype))
    hidden = torch.randn(n, width, generator=gen).to(getattr(torch, dtype))
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[3] = weight.float().matmul(hidden[3].float()).argmax()  # one top-1 at least
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    results = {}
    for name, function in (("ours", ours), ("trl", trl_function)):
        x = hidden.clone().requires_grad_()
        with bf16:
            got = function.apply(x, weight, None, targets, 1.0, 32_768, None, 1.0, outputs)
        (weights[0] * got[0].sum() + weights[1] * got[1].sum()).backward()
        results[name] = (got, x.grad)
    (lp, ent, _, mean, top1), grad = results["ours"]
    assert type(lp.grad_fn).__name__ == "ChunkedLogProbsBackward"  # ours ran, not TRL's
    logits = torch.nn.functional.linear(hidden, weight).float()  # the same logits, the textbook formulas
    log_softmax = logits.log_softmax(-1)
    assert torch.allclose(lp, log_softmax.gather(1, targets[:, None])[:, 0], atol=1e-4)
    assert torch.allclose(ent, -(log_softmax.exp() * log_softmax).sum(-1), atol=1e-4)
    (want_lp, want_ent, _, want_mean, want_top1), want_grad = results["trl"]
    ulp = 1e-4 if dtype == "float32" else 0.1  # a bf16 logit of ~10 either side of a rounding step
    assert torch.allclose(lp, want_lp, atol=ulp) and torch.allclose(ent, want_ent, atol=ulp)
    assert torch.allclose(mean, want_mean, atol=1e-5) and torch.equal(top1, want_top1) and top1[3]
    assert grad.dtype == want_grad.dtype == getattr(torch, dtype)
    # bf16: TRL accumulates the logits' gradient times the weights in fp32, ours is a bf16 matmul's output
    tolerance = 1e-4 if dtype == "float32" else 0.05
    assert torch.allclose(grad.float(), want_grad.float(), atol=tolerance, rtol=0.02), (grad - want_grad).abs().max()
    with bf16:  # KTO asks for three outputs: is_top1 is not computed
        kto = ours.apply(hidden, weight, None, targets, 1.0, 32_768, None, 1.0, outputs[:3])
    assert kto[2] is None and kto[4] is None and torch.equal(kto[3], mean)
    # not ours to do: TRL's own function answers
    calls = []
    monkeypatch.setattr(trl_function, "apply", lambda *a: calls.append(a[8]) or ("trl",) * 5)
    with torch.no_grad():
        ours.apply(hidden, weight, torch.zeros(vocab), targets, 1.0, 32_768, None, 1.0, outputs)
        ours.apply(hidden, weight, None, targets, 1.0, 32_768, None, 1.0, ("log_probs", "log_sum_sq_probs"))
        ours.apply(hidden.float(), weight.to(torch.float16), None, targets, 1.0, 32_768, None, 1.0, outputs)
        monkeypatch.setenv("TUNER_CHUNKED_LOSS", "0")
        ours.apply(hidden, weight, None, targets, 1.0, 32_768, None, 1.0, outputs)
        monkeypatch.delenv("TUNER_CHUNKED_LOSS")
        monkeypatch.setattr(tpref, "LOGITS_BUDGET", 2 * n * vocab * weight.element_size() - 1)
        ours.apply(hidden, weight, None, targets, 1.0, 32_768, None, 1.0, ("log_probs",))
    assert len(calls) == 5


def test_too_few_says_how_many_are_needed():
    pairs = [tpref.normalise({"prompt": f"P{i}", "chosen": "a", "rejected": "b"}, "dpo") for i in range(3)]
    assert "DPO needs at least 8" in tpref.too_few("dpo", pairs)
    good = [tpref.normalise({"prompt": f"P{i}", "completion": "a", "label": True}, "kto") for i in range(9)]
    assert "0 undesirable" in tpref.too_few("kto", good) and "2 of each" in tpref.too_few("kto", good)
    assert tpref.too_few("kto", good + [dict(good[0], label=False)] * 2) is None


def test_settings_refuse_what_preference_tuning_cannot_do():
    with pytest.raises(ValueError, match="init_adapter .* applies to preference tuning"):
        TrainConfig(method="lora", init_adapter="/runs/x")
    with pytest.raises(ValueError, match="KTO needs a batch size of at least 2"):
        TrainConfig(method="kto", per_device_train_batch_size=1)
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(method="dpo", beta=0)
    for other in ("kto", "lora"):
        with pytest.raises(ValueError, match="ld_alpha and rpo_alpha apply to DPO only"):
            TrainConfig(method=other, ld_alpha=0.5)
        with pytest.raises(ValueError, match="ld_alpha and rpo_alpha apply to DPO only"):
            TrainConfig(method=other, rpo_alpha=1.0)
    with pytest.raises(ValueError, match="ld_alpha"):
        TrainConfig(method="dpo", ld_alpha=1.5)
    with pytest.raises(ValueError, match="rpo_alpha"):
        TrainConfig(method="dpo", rpo_alpha=-1)


# --- from an evaluation's scores -----------------------------------------------------------------
VARIANTS = [{"name": "base", "label": "base (m)", "kind": "base"},
            {"name": "run-1", "label": "lora: run-1", "kind": "lora"},
            {"name": "run-2", "label": "dpo: run-2", "kind": "dpo"}]


def rated_store(path: Path, scores: dict[int, tuple]) -> tuple[Store, int]:
    """An evaluation of three variants on a few prompts; scores[position] = the score every
    rater gives (base, run-1, run-2) there. Six raters, each served pairs as the app serves them."""
    store = Store(path)
    eval_id = store.create_evaluation("e", "m", [{"text": f"Prompt {i}", "external_id": f"p{i}"} for i in scores],
                                      VARIANTS)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for p in store.prompts(eval_id):
        for name, vid in ids.items():
            store.add_reply(p["id"], vid, f"{name} reply to {p['text']}", {}, 0.1, 5)
    store.open_for_rating(eval_id)
    by_text = {f"{name} reply to Prompt {i}": given[k] for i, given in scores.items() for k, name in enumerate(ids)}
    rng = random.Random(0)
    for rater in ("ann", "bob", "cy", "dee", "eve", "fay"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            store.rate_pair(pair["assignment_id"], rater, by_text[pair["reply_a"]], by_text[pair["reply_b"]])
    return store, eval_id


def test_dpo_pairs_need_means_a_margin_apart_and_kto_leaves_the_middle_out(tmp_path):
    store, eval_id = rated_store(tmp_path / "r.db", {1: (1, 4, 5), 2: (3, 3, 3), 3: (2, 3, 5)})
    data = preferences.dpo_pairs(store, eval_id)
    pairs = {(p["id"], p["chosen_model"], p["rejected_model"]) for p in data.rows}
    assert pairs == {("p1", "lora: run-1", "base (m)"), ("p1", "dpo: run-2", "base (m)"),
                     ("p1", "dpo: run-2", "lora: run-1"), ("p3", "lora: run-1", "base (m)"),
                     ("p3", "dpo: run-2", "base (m)"), ("p3", "dpo: run-2", "lora: run-1")}
    assert data.left_out["pairs closer than the margin or tied"] == 3  # prompt 2's three ties
    wide = preferences.dpo_pairs(store, eval_id, margin=2)
    assert len(wide.rows) == 4 and wide.left_out["pairs closer than the margin or tied"] == 5
    kto = preferences.kto_examples(store, eval_id)
    labels = sorted((r["id"], r["model"], r["label"]) for r in kto.rows)
    assert labels == [("p1", "base (m)", False), ("p1", "dpo: run-2", True), ("p1", "lora: run-1", True),
                      ("p3", "base (m)", False), ("p3", "dpo: run-2", True)]
    assert kto.left_out["replies scored between the thresholds"] == 4  # prompt 2's three 3s and p3's run-1
    assert "3 desirable and 2 undesirable example(s) over 2 prompts" in kto.describe()
    with pytest.raises(ValueError, match="must be below"):
        preferences.kto_examples(store, eval_id, desirable_at=3, undesirable_at=3)


def test_a_correction_is_chosen_against_the_low_replies_and_joins_a_dataset_version(tmp_path):
    store, eval_id = rated_store(tmp_path / "r.db", {1: (1, 2, 3), 2: (4, 5, 5)})
    before = len(preferences.dpo_pairs(store, eval_id).rows)
    low = next(r for r in store.replies(eval_id).to_dict("records") if r["variant"] == "run-1" and r["position"] == 1)
    preferences.correct(store, low["reply_id"], "Dear Professor, I am writing about the deadline.")
    assert store.replies(eval_id).set_index("reply_id").loc[low["reply_id"], "reply"] == low["reply"]  # unchanged
    pairs = [p for p in preferences.dpo_pairs(store, eval_id).rows if p["source"] == "correction"]
    assert len(preferences.dpo_pairs(store, eval_id).rows) == before + 3  # against base 1, run-1 2, run-2 3
    assert all(p["chosen"][0]["content"].startswith("Dear Professor") for p in pairs)
    kto = [r for r in preferences.kto_examples(store, eval_id).rows if r["source"] == "correction"]
    assert len(kto) == 1 and kto[0]["label"] is True
    # into a dataset saved with its split: the correction joins the training rows, once
    rows = [{"messages": [{"role": "user", "content": "Old"}, {"role": "assistant", "content": "Reply"}],
             "split": s} for s in ("train", "validation", "test")]
    corrected = preferences.corrected_chat_rows(store, eval_id)
    merged, added = preferences.with_corrections(rows, corrected)
    assert added == 1 and merged[-1]["split"] == "train" and merged[-1]["messages"][-1]["content"].startswith("Dear")
    assert preferences.with_corrections(merged, corrected)[1] == 0
    preferences.correct(store, low["reply_id"], "  ")  # empty: removed
    assert len(preferences.dpo_pairs(store, eval_id).rows) == before
    with pytest.raises(RatingError, match="no reply 999"):
        preferences.correct(store, 999, "x")
    with pytest.raises(RatingError, match="at most 20,000"):
        preferences.correct(store, low["reply_id"], "x" * 20_001)


def test_judge_scores_are_a_separate_source(tmp_path):
    store, eval_id = rated_store(tmp_path / "r.db", {1: (1, 5, 5)})
    assert preferences.sources(store, eval_id) == ["raters"]
    with pytest.raises(ValueError, match="unknown score source"):
        preferences.dpo_pairs(store, eval_id, source="friends")


# --- runs -------------------------------------------------------------------------------------------
def cli_train(config: dict, folder: Path, run_id: str, env: dict | None = None) -> subprocess.CompletedProcess:
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "TUNER_HOME": str(folder / "home"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tuner", "train", str(path), "--run-id", run_id], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def reply_logp(model_dir: Path, adapter: Path, prompt: str, reply: str) -> float:
    """The log-probability the model with `adapter` gives `reply` after `prompt` (chat template)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    messages = [{"role": "user", "content": prompt}]
    start = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=True,
                                   return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(start) - 1, len(full) - 1), targets[len(start) - 1:]].sum())


@pytest.mark.slow
def test_dpo_from_an_sft_run_moves_it_towards_the_chosen_replies(tiny_llama, trained_run, tmp_path):
    sft_run = trained_run.parent  # taught to answer "Hello there, friend!"
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": f"Say hi {i}", "chosen": "Good day to you.", "rejected": "Hello there, friend!"} for i in range(12)])
    config = {"base_model": str(tiny_llama), "dataset": str(prefs), "method": "dpo", "init_adapter": str(sft_run),
              "learning_rate": 1e-2, "max_steps": 6, "per_device_train_batch_size": 4, "validation_fraction": 0.2,
              "eval_steps": 3, "output_dir": str(tmp_path / "runs"), "seed": 1,
              "r": 4, "lora_alpha": 4}  # not the SFT adapter's: the run trains that adapter as it is
    done = cli_train(config, tmp_path, "dpo-run")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "dpo-run"
    record = records.read_record(run_dir)
    assert record["status"] == "completed" and record["summary"]["method"] == "dpo"
    assert record["summary"]["loss"] == "chunked"  # every log-probability from tuner.cross_entropy's row chunks
    sft_adapter = records.adapter_config(sft_run)
    assert (record["config"]["r"], record["config"]["lora_alpha"]) == (sft_adapter["r"], sft_adapter["lora_alpha"]) != (4, 4)
    rows = records.read_metrics(run_dir)
    trained = [r for r in rows if "loss" in r]
    assert len(trained) == 6 and all("rewards/margins" in r and "rewards/accuracies" in r for r in trained)
    assert trained[-1]["rewards/margins"] > 0 and any("eval_rewards/margins" in r for r in rows)
    # one adapter saved, TRL's frozen reference copy left out; the chosen reply gained on the rejected one
    assert not (records.adapter_dir(run_dir) / "ref").exists()
    gap = {name: reply_logp(tiny_llama, adapter, "Say hi 3", "Good day to you.")
           - reply_logp(tiny_llama, adapter, "Say hi 3", "Hello there, friend!")
           for name, adapter in (("sft", trained_run), ("dpo", records.adapter_dir(run_dir)))}
    assert gap["dpo"] > gap["sft"] + 1.0, gap
    # Compare's held-out prompts: the SFT run held none out, so none are left that DPO did not learn
    assert tpref.trained_prompts(run_dir) and records.held_out_file(run_dir, "test").read_text() == ""


@pytest.mark.slow
def test_dpos_length_weight_and_sft_term_reach_trls_loss(tiny_llama, tmp_path):
    # every rejected reply is its chosen reply and a long tail: at ld_alpha 0 the tail does not count,
    # and the replies differ only where the chosen one ends, so DPO has little to learn (a small
    # gradient, a small margin); standard DPO (1) learns the tail. rpo_alpha adds the chosen replies' SFT loss.
    tail = " And then a good many more words that only the rejected reply has, on and on." * 2
    rows = [{"prompt": f"Ask {i}", "chosen": "Yes, of course.", "rejected": "Yes, of course." + tail}
            for i in range(12)]
    config = {"base_model": str(tiny_llama), "dataset": str(write_jsonl(tmp_path / "p.jsonl", rows)),
              "method": "dpo", "learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4,
              "validation_fraction": 0.0, "seed": 1, "precision": "fp32"}
    steps = {}
    variants = {"standard": {}, "ld": {"ld_alpha": 0.0}, "rpo": {"rpo_alpha": 1.0}, "rpo3": {"rpo_alpha": 3.0}}
    for name, over in variants.items():
        done = cli_train({**config, **over, "output_dir": str(tmp_path / name)}, tmp_path, name)
        assert done.returncode == 0, done.stderr[-3000:]
        recorded = records.read_record(tmp_path / name / name)["config"]
        assert all(recorded[key] == value for key, value in over.items()), recorded
        steps[name] = [r for r in records.read_metrics(tmp_path / name / name) if "loss" in r]
    standard, ld, rpo = steps["standard"], steps["ld"], steps["rpo"]
    assert ld[0]["grad_norm"] < standard[0]["grad_norm"] / 2, (ld[0], standard[0])
    assert 0 < ld[1]["rewards/margins"] < standard[1]["rewards/margins"] / 2, (ld[1], standard[1])
    # the first step starts at the reference: DPO's loss is log 2 there; RPO's adds the chosen replies' NLL
    assert math.isclose(standard[0]["loss"], math.log(2), abs_tol=0.01), standard[0]
    assert rpo[0]["loss"] > math.log(2) + 1 and rpo[1]["rewards/margins"] > 0, rpo
    # the weight reaches TRL: three times the NLL term at rpo_alpha 3
    nll, nll3 = rpo[0]["loss"] - math.log(2), steps["rpo3"][0]["loss"] - math.log(2)
    assert math.isclose(nll3, 3 * nll, rel_tol=0.01), (nll, nll3)


@pytest.mark.slow
def test_kto_from_the_base_completes_and_too_few_examples_are_refused(tiny_llama, tmp_path):
    rows = [{"prompt": f"Write note {i // 2}", "completion": "Subject: Note\nDear team," if i % 2 else "no",
             "label": bool(i % 2)} for i in range(16)]
    config = {"base_model": str(tiny_llama), "dataset": str(write_jsonl(tmp_path / "k.jsonl", rows)),
              "method": "kto", "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "output_dir": str(tmp_path / "runs"), "test_fraction": 0.2, "validation_fraction": 0.0}
    done = cli_train(config, tmp_path, "kto-run")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "kto-run"
    summary = records.read_record(run_dir)["summary"]
    assert summary["method"] == "kto" and summary["global_step"] == 3 and summary["train_tokens"] > 0
    assert summary["loss"] == "chunked"
    tiles = cli_train({**config, "output_dir": str(tmp_path / "tiles")}, tmp_path, "kto-tiles",
                      env={"TUNER_CHUNKED_LOSS": "0"})  # TRL's own tiles: the same run, to rounding
    assert tiles.returncode == 0, tiles.stderr[-3000:]
    trl_summary = records.read_record(tmp_path / "tiles" / "kto-tiles")["summary"]
    assert trl_summary["loss"] == "trl"
    assert math.isclose(trl_summary["final_loss"], summary["final_loss"], rel_tol=0.02, abs_tol=1e-3), \
        (trl_summary["final_loss"], summary["final_loss"])
    test_rows = [json.loads(line) for line in records.held_out_file(run_dir, "test").read_text().splitlines()]
    assert test_rows and all(r["messages"][-1]["content"].startswith("Subject") for r in test_rows)  # desirable only
    few = write_jsonl(tmp_path / "few.jsonl", rows[:6])
    failed = cli_train({**config, "dataset": str(few)}, tmp_path, "kto-few")
    assert failed.returncode == 1
    record = records.read_record(tmp_path / "runs" / "kto-few")
    assert "KTO needs at least 8" in record["message"]


def test_compare_leaves_out_the_prompts_a_preference_run_learned(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tpref.trained_file(run_dir).write_text(json.dumps(
        {"prompt": [{"role": "user", "content": "Prompt 1"}], "chosen": "a", "rejected": "b"}) + "\n")
    items = evalsets.from_lines("Prompt 1\nPrompt 2")
    kept, note = evalsets.leave_out_trained(items, [{"run_id": "r", "path": str(run_dir)}])
    assert [i["text"] for i in kept] == ["Prompt 2"] and "Left out 1 of 2" in note
    with pytest.raises(ValueError, match="every one of the 1 prompts"):
        evalsets.leave_out_trained(items[:1], [{"run_id": "r", "path": str(run_dir)}])


@pytest.mark.slow
def test_a_stopped_dpo_run_resumes_from_its_checkpoint_with_its_step_count(tiny_llama, trained_run, tmp_path):
    from tuner.runs import RunManager

    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": f"Say hi {i}", "chosen": "Good day to you.", "rejected": "Hello there, friend!"} for i in range(12)])
    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(prefs), method="dpo", init_adapter=str(trained_run.parent),
                         learning_rate=1e-2, max_steps=40, per_device_train_batch_size=2, validation_fraction=0.0,
                         save_steps=2, seed=1)
    run_id = manager.start(config)
    run_dir = tmp_path / "runs" / run_id
    import time

    deadline = time.time() + 240
    while time.time() < deadline and records.last_complete_checkpoint(run_dir) is None:
        time.sleep(0.2)
    manager.stop()
    state = manager.wait(timeout=240)
    assert state.status == "stopped", state.message
    stopped_at = records.read_record(run_dir)["summary"]["global_step"]
    # the rest of the run, shortened: resume reads the config from run.json
    record = records.read_record(run_dir)
    checkpoint_step = records.checkpoint_step(records.last_complete_checkpoint(run_dir))
    record["config"]["max_steps"] = checkpoint_step + 2
    records.write_record(run_dir, record)
    manager.resume(run_id)
    state = manager.wait(timeout=240)
    assert state.status == "completed", state.message
    steps = [m["step"] for m in records.read_metrics(run_dir) if "loss" in m]
    assert steps == list(range(1, checkpoint_step + 3)), (steps, stopped_at)  # no step twice, none missing
    assert all("rewards/margins" in m for m in records.read_metrics(run_dir) if "loss" in m)
    assert not (records.adapter_dir(run_dir) / "ref").exists()


# --- the Train tab before Start ----------------------------------------------------------------
def train_tab_handlers(tmp_path: Path, store: Store):
    """The Train tab as the app builds it, over `store`; its handlers by name, and its run manager."""
    import gradio as gr

    from tuner.runs import RunManager
    from tuner.ui.train import train_tab

    manager = RunManager(tmp_path / "home" / "runs", tmp_path / "home" / "models")
    with gr.Blocks() as demo:
        picker = gr.Dropdown(["m"], value="m")
        chooser = gr.Dropdown([], allow_custom_value=True)
        train_tab(manager, tmp_path / "home" / "datasets", picker, chooser, None, store, tmp_path / "home" / "prefs")
    return {f.name: f for f in demo.fns.values()}, manager


def pairs_store(path: Path, base_model: str, sft_name: str, prompts: int = 8,
                base_reply=lambda position: f"meh {position}") -> tuple[Store, int]:
    """An evaluation of the base and an SFT run on `prompts` prompts, the SFT reply ("Hello there,
    friend!") rated 5 and the base's (`base_reply(position)`) 2 by two raters: one DPO pair a prompt."""
    store = Store(path)
    variants = [{"name": "base", "label": "base", "kind": "base"},
                {"name": sft_name, "label": f"lora: {sft_name}", "kind": "lora"}]
    eval_id = store.create_evaluation("e", base_model, [{"text": f"Greet guest {i}."} for i in range(prompts)],
                                      variants)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for p in store.prompts(eval_id):
        store.add_reply(p["id"], ids["base"], base_reply(p["position"]), {})
        store.add_reply(p["id"], ids[sft_name], "Hello there, friend!", {})
    store.open_for_rating(eval_id)
    rng = random.Random(0)
    for rater in ("ann", "bob"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            store.rate_pair(pair["assignment_id"], rater, 5 if pair["reply_a"].startswith("Hello") else 2,
                            5 if pair["reply_b"].startswith("Hello") else 2)
    return store, eval_id


def test_pairs_that_differ_mostly_in_length_are_flagged_before_training(tmp_path):
    """DPO learns a length that most pairs share as readily as what the raters liked: the formal-email
    bench's pairs (every rejected reply over the word limit) taught lr-5e-4 DPO replies too short."""
    def skew(name, prompts=6, base_reply=lambda position: f"meh {position}", method="dpo"):
        store, eval_id = pairs_store(tmp_path / f"{name}.db", "m", "sft", prompts, base_reply)
        return preferences.build(store, eval_id, method).length_skew()

    long_rejected = skew("long", base_reply=lambda position: "meh " * 30)  # 30 words against 3
    assert long_rejected.startswith("in 6 of 6 pairs the rejected reply is the longer (a median of 30 words "
                                    "against 3): DPO may learn to write shorter"), long_rejected
    assert "pairs where the longer reply wins" in long_rejected and "rpo_alpha 10" in long_rejected
    long_chosen = skew("short")  # "Hello there, friend!" (3 words) against "meh N" (2)
    assert "the chosen reply is the longer" in long_chosen and "write longer" in long_chosen, long_chosen
    assert "rpo_alpha" not in long_chosen  # measured only against long rejected replies
    # half the pairs one way, half the other; equal lengths; too few pairs to say; KTO: no pairs
    assert skew("mixed", base_reply=lambda position: "meh " * (30 if position % 2 else 1)) is None
    assert skew("equal", base_reply=lambda position: "meh me too") is None
    assert skew("few", prompts=4, base_reply=lambda position: "meh " * 30) is None
    assert skew("kto", base_reply=lambda position: "meh " * 30, method="kto") is None

    # 10-word chosen replies against rejected ones of these lengths
    def pairs(*rejected_words):
        return preferences.PreferenceData("dpo", [{"chosen": [{"role": "assistant", "content": "w " * 10}],
                                                   "rejected": [{"role": "assistant", "content": "w " * n}]}
                                                  for n in rejected_words], "raters")
    assert pairs(*[11] * 6).length_skew() is None  # longer in every pair, but by a tenth
    assert pairs(*[12] * 6).length_skew().startswith("in 6 of 6 pairs the rejected reply is the longer (a median "
                                                     "of 12 words against 10")
    assert pairs(11, 11, 11, 11, 500).length_skew() is None  # one long reply does not make the pairs lean
    assert pairs(12, 12, 12, 12, 5).length_skew().startswith("in 4 of 5 pairs")  # 80%: warns
    assert pairs(12, 12, 12, 5, 5, 12, 12, 12, 12, 12).length_skew().startswith("in 8 of 10 pairs")
    assert pairs(12, 12, 12, 5, 5).length_skew() is None  # 60%
    # a run that already has the SFT term is warned, not told to add it; one with less is
    leaning = pairs(*[12] * 6)
    assert "rpo_alpha" not in leaning.length_skew(10.0) and "in 6 of 6 pairs" in leaning.length_skew(10.0)
    assert "rpo_alpha 10" in leaning.length_skew(3.0)
    assert [preferences.wants_rpo(m, leaning.rows, a) for m, a in (("dpo", 0), ("dpo", 3), ("dpo", 10), ("kto", 0))] \
        == [True, True, False, False]
    assert not preferences.wants_rpo("dpo", pairs(11, 11, 11, 11, 500).rows, 0)  # no lean, no advice


def test_each_methods_own_settings_show_under_it_alone(tmp_path):
    """DPO's margin and weights under DPO, KTO's thresholds under KTO; a hidden one whose value is out
    of its range goes back to its default (Gradio refuses every event that reads an out-of-range number,
    and the owner could no longer see which), an in-range one is kept for when its method comes back."""
    import gradio as gr

    from tuner.runs import RunManager
    from tuner.ui.preference import in_range
    from tuner.ui.train import train_tab

    store, eval_id = pairs_store(tmp_path / "r.db", "m", "sft")
    manager = RunManager(tmp_path / "home" / "runs", tmp_path / "home" / "models")
    with gr.Blocks() as demo:
        train_tab(manager, tmp_path / "home" / "datasets", gr.Dropdown(["m"], value="m"),
                  gr.Dropdown([], allow_custom_value=True), None, store, tmp_path / "home" / "prefs")
    (handler,) = [f for f in demo.fns.values() if f.name == "on_method" and len(f.inputs) == 8]
    names = [getattr(c, "elem_id", None) or c.label for c in handler.inputs[3:]]
    assert names[0] == "pref-margin" and "rpo_alpha" in names[1] and "ld_alpha" in names[2], names
    assert names[3:] == ["pref-desirable", "pref-undesirable"], names

    def shown(method, *values):
        out = handler.fn(method, str(eval_id), None, *values)
        return [(out[c].get("visible"), out[c].get("value", "kept")) for c in handler.inputs[3:]]

    # KTO: DPO's three hidden, the weight of -1 (below its minimum of 0) back to 0, the margin kept
    assert shown("kto", 1.5, -1, 0.5, 4, 2) == [(False, "kept"), (False, 0.0), (False, "kept"),
                                                (True, "kept"), (True, "kept")]
    # DPO: KTO's two hidden, a desirable mean of 6 (above 5) back to 4; DPO's shown as they are
    assert shown("dpo", 1.5, 10, 0.5, 6, 2) == [(True, "kept"), (True, "kept"), (True, "kept"),
                                                (False, 4), (False, "kept")]
    assert set(handler.fn("lora", str(eval_id), None, 1, 0, 1, 4, 2)) == {handler.outputs[0]}  # the group only
    number = gr.Number(minimum=1, maximum=5)
    assert [in_range(number, v) for v in (1, 5, 3.5, None, "", 0.5, 6, "x")] == [True] * 5 + [False] * 3


def test_the_length_advice_is_one_click_on_the_train_tab(tiny_llama, tmp_path):
    """Long rejected replies: the counts line names the SFT term and a button sets it; with the
    weight set (by the button or by hand) the warning stays but the advice and the button go."""
    store, eval_id = pairs_store(tmp_path / "r.db", str(tiny_llama), "sft", prompts=10,
                                 base_reply=lambda position: f"meh {position} " + "and so on " * 20)
    handler, _ = train_tab_handlers(tmp_path, store)
    picks = {"pref-eval": str(eval_id), "method": "dpo", "validation_fraction": 0.0}
    counts, advice = called(handler["on_counts"], **picks)
    assert "the rejected reply is the longer" in counts and "(rpo_alpha 10) keeps their length" in counts, counts
    assert advice["visible"] is True
    weight, button = handler["take_advice"].fn()
    assert weight == 10.0 and button["visible"] is False
    counts, advice = called(handler["on_counts"], **picks, rpo_alpha=None)  # an emptied box: the default, 0
    assert "(rpo_alpha 10) keeps their length" in counts and advice["visible"] is True
    counts, advice = called(handler["on_counts"], **picks, rpo_alpha=3.0)  # some SFT term, less than measured
    assert "(rpo_alpha 10) keeps their length" in counts and advice["visible"] is True
    for weight in (10.0, 25.0):
        counts, advice = called(handler["on_counts"], **picks, rpo_alpha=weight)
        assert "the rejected reply is the longer" in counts and "rpo_alpha" not in counts, counts
        assert advice["visible"] is False
    for method in ("kto", "lora"):  # KTO has no pairs to lean; LoRA no counts line
        counts, advice = called(handler["on_counts"], **{**picks, "method": method})
        assert "Length" not in counts and advice["visible"] is False, method


def called(handler, **given):
    """Call a Train tab handler as the page would: each input's value from `given`, by its TrainConfig
    field name, elem_id or label, else the input's own default."""
    from tuner.ui.train import SPEC

    labels = {SPEC[name].metadata["label"]: value for name, value in given.items() if name in SPEC}
    values = []
    for component in handler.inputs:
        elem_id, label = getattr(component, "elem_id", None), getattr(component, "label", None)
        values.append(given[elem_id] if elem_id in given else labels[label] if label in labels else
                      given[label] if label in given else component.value)
    return handler.fn(*values)


def test_the_counts_line_applies_starts_split_and_start_makes_no_run_it_would_fail(tiny_llama, trained_run,
                                                                                      tmp_path):
    """8 pairs over 8 prompts, continuing an SFT run: the default validation share holds one prompt
    out, leaving 7. The counts line said 8 were enough, and Start made a run that failed at once."""
    from tuner.ui.preference import FROM_BASE

    sft = trained_run.parent
    store, eval_id = pairs_store(tmp_path / "r.db", str(tiny_llama), sft.name)
    handler, manager = train_tab_handlers(tmp_path, store)
    shutil.copytree(sft, manager.runs_dir / sft.name)
    picks = {"pref-eval": str(eval_id), "pref-init": sft.name, "method": "dpo", "max_steps": 2}

    counts, advice = called(handler["on_counts"], **picks)
    assert advice["visible"] is False  # too few: nothing to advise
    assert "Too few to train on" in counts and "8 preference pairs" in counts, counts
    assert "after holding out the validation and test prompts, 7 preference pairs: DPO needs at least 8" in counts
    assert "validation share" in counts  # what to change
    (message,) = called(handler["on_start"], **picks).values()
    assert "Too few to train on" in message and "7 preference pairs" in message, message
    assert [r["run_id"] for r in manager.runs()] == [sft.name]  # no run was made

    # no validation share: all 8 train, and the line says how long the run takes
    counts, advice = called(handler["on_counts"], **picks, validation_fraction=0.0)
    assert "Start holds out 0 of its prompts" in counts and "8 preference pairs** to train on" in counts, counts
    assert "estimated time" in counts and "2 steps" in counts, counts
    assert "⚠️ Length: in 8 of 8 pairs the chosen reply is the longer" in counts, counts  # all 8 train
    assert advice["visible"] is False and "rpo_alpha" not in counts  # the SFT term: for long rejected replies
    # from the base, the test share is held out too
    counts, _ = called(handler["on_counts"], **{**picks, "pref-init": FROM_BASE}, validation_fraction=0.0)
    assert "after holding out the validation and test prompts, 6 preference pairs" in counts, counts
    # the length warning counts the pairs that train, not all the evaluation's: 12 prompts, from the base
    store, eval_id = pairs_store(tmp_path / "twelve.db", str(tiny_llama), sft.name, prompts=12)
    handler, _ = train_tab_handlers(tmp_path / "twelve", store)
    counts, _ = called(handler["on_counts"], **{**picks, "pref-eval": str(eval_id), "pref-init": FROM_BASE},
                       validation_fraction=0.0)
    trained = int(re.search(r"\*\*(\d+) preference pairs\*\* to train on", counts).group(1))
    assert "gives **12 preference pairs" in counts and trained < 12, counts
    assert f"⚠️ Length: in {trained} of {trained} pairs the chosen reply is the longer" in counts, counts


@pytest.mark.slow
def test_a_dpo_run_from_an_sft_run_records_the_adapter_it_trained(tiny_llama, tmp_path):
    """The form's rank, alpha and modules do not apply to a run that continues an adapter: they are
    hidden, and run.json records the adapter's own (the report had r 4, all linear layers, for an
    r16 attention-only adapter)."""
    from tuner.runs import RunManager

    home = tmp_path / "home"
    rows = [{"messages": [{"role": "user", "content": f"Greet guest {i}."},
                          {"role": "assistant", "content": "Hello there, friend!"}]} for i in range(6)]
    sft_manager = RunManager(home / "runs", home / "models")
    sft_manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(write_jsonl(tmp_path / "d.jsonl", rows)),
                                  max_steps=2, r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                  validation_fraction=0.0, test_fraction=0.0))
    done = sft_manager.wait(300)
    assert done.status == "completed", done.message
    sft_id = done.run_id
    sft_summary = records.read_record(home / "runs" / sft_id)["summary"]

    store, eval_id = pairs_store(tmp_path / "r.db", str(tiny_llama), sft_id)
    handler, manager = train_tab_handlers(tmp_path, store)
    form = {"method": "dpo", "max_steps": 2, "r": 4, "lora_alpha": 8, "validation_fraction": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "per_device_train_batch_size": 4, "pref-eval": str(eval_id), "pref-init": sft_id}
    started = called(handler["on_start"], **form)
    assert "Started run" in started[next(iter(started))], started
    state = manager.wait(300)
    assert state.status == "completed", state.message
    record = records.read_record(home / "runs" / state.run_id)
    config, summary = record["config"], record["summary"]
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (16, 32, ["q_proj", "v_proj"])
    assert sorted(summary["target_modules"]) == ["q_proj", "v_proj"]
    assert summary["trainable_params"] == sft_summary["trainable_params"]
    # and the form's LoRA settings are hidden while a run is continued, its adapter said in words
    note, *shown = handler["on_adapter"].fn("dpo", sft_id)
    assert "rank **16**" in note and "alpha **32**" in note and "q_proj, v_proj" in note, note
    assert shown and all(update["visible"] is False for update in shown)
    note, *shown = handler["on_adapter"].fn("dpo", "(a new adapter over the base model)")
    assert note == "" and all(update["visible"] is True for update in shown)
