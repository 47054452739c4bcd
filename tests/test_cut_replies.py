"""Raters never score cut text unknowingly: an evaluation whose replies hit
the token cap is stored but not opened; the owner regenerates the cut prompts' replies
with a larger cap, or opens it anyway. Real SQLite, the tiny random Llama."""

from __future__ import annotations

import json
import random

import pytest

from ratings.evalsets import from_lines
from ratings.generation import (MAX_CAP, Cut, cut_replies, generate_evaluation, open_unless_cut, regenerate_cut,
                                variants_for)
from ratings.store import Store
from tuner.generate import GenSettings, Generator


def _variants(tiny_llama, trained_run):
    run = {"run_id": "run.1", "path": str(trained_run.parent),
           "config": {"base_model": str(tiny_llama), "method": "lora"}}
    return variants_for([run])


def test_cut_replies_hold_rating_until_the_owner_regenerates_them_with_a_larger_cap(tiny_llama, trained_run,
                                                                                     tmp_path):
    base_model, variants = _variants(tiny_llama, trained_run)
    store = Store(tmp_path / "r.db")
    generator = Generator(tmp_path / "models", precision="fp32")
    # a random-weight model never writes its end token: every reply stops at the cap
    eval_id = generate_evaluation(store, generator, "e", base_model, from_lines("Say hi 1\nHow are you?"), variants,
                                  GenSettings(max_new_tokens=3, batch_size=4), invite_code="abc", open_if_cut=False)
    cut = cut_replies(store, eval_id)
    assert (cut.cut, cut.total, cut.cap, cut.positions) == (4, 4, 3, (1, 2))
    assert cut.sentence() == "4 of 4 replies were cut at the 3-token cap"
    assert cut.larger_cap == 6
    assert not store.is_open(eval_id)  # no pair exists: no rater can be served cut text
    assert store.next_pair(eval_id, "ana", random.Random(0)) is None
    before = store.replies(eval_id)

    seen = []
    # (the offered cap is twice the old; any larger one will do: 4 keeps the trained "Hello there, friend!" cut)
    assert regenerate_cut(store, generator, eval_id, variants, 4, progress=lambda d, t: seen.append((d, t))) == 4
    assert seen[-1] == (4, 4)
    after = store.replies(eval_id)
    # the same replies' rows, generated again with the larger cap: nothing else made or lost
    assert list(after["reply_id"]) == list(before["reply_id"])
    assert (after["new_tokens"] == 4).all()
    assert all(json.loads(s)["max_new_tokens"] == 4 for s in _reply_settings(store, eval_id))
    settings = store.evaluation(eval_id)["settings"]
    assert settings["max_new_tokens"] == 4 and settings["batch_size"] == 4
    assert settings["regenerated"] == [{"from": 3, "to": 4, "prompts": [1, 2]}]
    assert store.evaluation(eval_id)["invite_code"] == "abc"
    assert cut_replies(store, eval_id).sentence() == "4 of 4 replies were cut at the 4-token cap"
    assert not open_unless_cut(store, eval_id)  # still cut: the owner chooses again
    with pytest.raises(ValueError, match="above the 4 tokens"):
        regenerate_cut(store, generator, eval_id, variants, 4)
    # "open rating anyway": the owner's choice, then the replies stay as rated
    assert store.open_for_rating(eval_id) == 2
    with pytest.raises(ValueError, match="already open for rating"):
        regenerate_cut(store, generator, eval_id, variants, 12)


def _reply_settings(store, eval_id):
    with store.db() as db:
        return [r[0] for r in db.execute("SELECT r.settings FROM replies r JOIN prompts p ON p.id = r.prompt_id "
                                         "WHERE p.evaluation_id = ?", [eval_id])]


def test_only_the_prompts_with_a_cut_reply_are_generated_again_and_none_cut_opens_at_once(tmp_path):
    store = Store(tmp_path / "r.db")
    prompts = from_lines("one\ntwo\nthree")
    eval_id = store.create_evaluation("e", "m", prompts, [{"name": "base"}, {"name": "run.1"}],
                                      settings={"max_new_tokens": 8})
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for prompt, tokens in zip(store.prompts(eval_id), [(3, 5), (8, 2), (4, 4)]):
        for name, n in zip(("base", "run.1"), tokens):
            store.add_reply(prompt["id"], ids[name], "text", {}, 0.1, n)
    assert cut_replies(store, eval_id) == Cut(1, 6, 8, (2,))
    assert not open_unless_cut(store, eval_id)
    assert not store.is_open(eval_id)
    # a reply that ended before the cap is not cut: with none cut, rating opens as it always did
    store.add_reply(store.prompts(eval_id)[1]["id"], ids["base"], "text", {}, 0.1, 7)
    assert open_unless_cut(store, eval_id) and store.is_open(eval_id)


def test_the_larger_cap_doubles_up_to_the_engines_limit():
    assert Cut(1, 2, 48).larger_cap == 96
    assert Cut(1, 2, 1500).larger_cap == MAX_CAP
    assert Cut(1, 2, MAX_CAP).larger_cap is None
    GenSettings(max_new_tokens=MAX_CAP)  # the engine takes it


def test_a_reload_offers_the_gate_only_for_an_evaluation_with_every_reply(tmp_path):
    """One a crash left half-generated (closed, replies missing) is never offered to open anyway."""
    import gradio as gr

    from tuner.runs import RunManager
    from tuner.ui import compare

    store = Store(tmp_path / "r.db")
    variants = [{"name": "base", "label": "base", "kind": "base"}, {"name": "run-1", "label": "lora: r", "kind": "lora"}]
    settings = {"max_new_tokens": 4}
    whole = store.create_evaluation("whole", "m", [{"text": "Hi"}], variants, settings=settings)
    for vid in (v["id"] for v in store.variants(whole)):
        store.add_reply(store.prompts(whole)[0]["id"], vid, "a b c d", settings, 0.1, 4)
    half = store.create_evaluation("half", "m", [{"text": "Hi"}, {"text": "Bye"}], variants, settings=settings)
    store.add_reply(store.prompts(half)[0]["id"], store.variants(half)[0]["id"], "a b c d", settings, 0.1, 4)
    with gr.Blocks():
        _refresh, load_all, outputs = compare.compare_tab(RunManager(tmp_path / "runs", tmp_path / "models"),
                                                          Generator(tmp_path / "models"), store)
    note = next(c for c in outputs if getattr(c, "elem_id", None) == "cut-note")
    shown = load_all()
    assert f"Evaluation #{whole}" in shown[note] and "2 of 2 replies were cut at the 4-token cap" in shown[note]
    assert not store.is_open(half) and not store.is_open(whole)
