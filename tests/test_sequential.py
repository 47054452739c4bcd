"""ratings/sequential.py: the anytime-valid decision of a fine-tuned model against the base.

The betting process against its definition, worked by hand; it decides on a clear run and
not on a balanced one; its false decision rate under "no difference", by simulation; which
ratings feed it (only pairs of exactly the two models, one rating per prompt); the sentence
the owner reads; and the whole of it over a real store rated through its own flow.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from helpers import open_evaluation
from ratings import sequential
from ratings.store import Store

ALPHA = sequential.ALPHA
COLUMNS = ["assignment", "prompt_id", "rater", "rated_at", "label_a", "score_a", "label_b", "score_b"]


def _sequence(rows) -> pd.DataFrame:
    """Store.rating_sequence's shape from (prompt, rater, label A, score A, label B, score B) rows, in order."""
    return pd.DataFrame([(i, p, r, f"2026-01-01T00:00:{i:02d}", la, sa, lb, sb)
                         for i, (p, r, la, sa, lb, sb) in enumerate(rows, start=1)], columns=COLUMNS)


def test_betting_paths_follow_their_definition_worked_by_hand():
    # values 1, 1, -1 → y = 1, 1, 0 around m = 1/2; each side starts with 1/2 of the capital.
    # prompt 1: the prior's mean is 1/2, no lean, no bet: both stay at 1/2.
    # prompt 2: mean (0.5 + 1) / 2 = 0.75, lean 0.25; variance (0.25 + (1 - 0.75)²) / 2 = 0.15625;
    #   bet 0.25 / (0.15625 + 0.0625) = 1.14 → truncated at 1: better = 1/2 · (1 + 1 · 0.5) = 0.75.
    # prompt 3: mean 2.5 / 3, lean 1/3 → bet truncated at 1 again: better = 0.75 · (1 + 1 · (0 - 0.5)) = 0.375.
    #   The worse side never bets (the earlier prompts lean the other way): it stays at 1/2.
    better, worse = sequential.betting_paths([1, 1, -1])
    assert better / ALPHA == pytest.approx([0.5, 0.75, 0.375])
    assert worse / ALPHA == pytest.approx([0.5, 0.5, 0.5])
    # the mirror image swaps the sides; a prompt where both succeed (or both fail) moves neither
    better, worse = sequential.betting_paths([-1, -1, 0])
    assert worse / ALPHA == pytest.approx([0.5, 0.75, 0.75])
    assert better / ALPHA == pytest.approx([0.5, 0.5, 0.5])
    # a bet below the truncation: values 1, -1, 1, 1 → y = 1, 0, 1, 1.
    # prompt 2: the full bet (as above) on y = 0: better = 1/2 · (1 - 0.5) = 0.25.
    # prompt 3: mean (0.5 + 1 + 0) / 3 = 1/2, no lean, no bet: 0.25.
    # prompt 4: mean 2.5 / 4 = 0.625, lean 0.125; squares (1 - 0.75)² + (0 - 0.5)² + (1 - 0.625)² = 0.453125,
    #   variance (0.25 + 0.453125) / 4 = 0.17578125, bet 0.125 / (0.17578125 + 0.015625) = 0.653 (< 1):
    #   better = 0.25 · (1 + 0.653 · 0.5)
    bet = 0.125 / (0.17578125 + 0.015625)
    assert 0.6 < bet < 0.7
    better, worse = sequential.betting_paths([1, -1, 1, 1])
    assert better / ALPHA == pytest.approx([0.5, 0.25, 0.25, 0.25 * (1 + bet * 0.5)])
    assert worse / ALPHA == pytest.approx([0.5] * 4)

def test_a_long_run_of_wins_decides_better_at_the_eleventh_prompt_and_losses_decide_worse():
    # a win every prompt: after the first, every bet is the full one (truncated at 1), so the
    # capital is 1/2 · 1.5^(t-1); it reaches 1/α = 20 first at t = 11 (1.5^9 / 2 = 19.2, 1.5^10 / 2 = 28.8)
    better, worse = sequential.betting_paths([1] * 20)
    assert better / ALPHA == pytest.approx([0.5 * 1.5 ** (t - 1) for t in range(1, 21)])
    assert int(np.argmax(better >= 1)) + 1 == 11 and (worse < 1).all()

    wins = _sequence([(p, "ana", "ft", 5, "base", 1) if p % 2 else (p, "ana", "base", 2, "ft", 4)
                      for p in range(1, 21)])
    decision = sequential.decide(wins, "ft", "base")
    assert (decision.decided, decision.decided_prompts, decision.decided_at) == ("better", 11, 11)
    assert decision.prompts == 20 and decision.ratings == 20 and decision.more_ratings is None

    losses = _sequence([(p, "ana", "ft", 1, "base", 5) for p in range(1, 21)])
    decision = sequential.decide(losses, "ft", "base")
    assert (decision.decided, decision.decided_prompts, decision.decided_at) == ("worse", 11, 11)

    # ten prompts are not enough, however clear
    assert sequential.decide(losses.head(10), "ft", "base").decided is None


def test_balanced_or_tied_prompts_never_decide():
    for values in ([1, -1] * 200, [-1, 1] * 200, [0] * 400):
        better, worse = sequential.betting_paths(values)
        assert better.max() < 1 and worse.max() < 1, values[:4]
    alternating = _sequence([(p, "ana", "ft", 5 if p % 2 else 1, "base", 1 if p % 2 else 5) for p in range(1, 101)])
    decision = sequential.decide(alternating, "ft", "base")
    assert decision.decided is None and decision.prompts == 100
    ties = _sequence([(p, "ana", "ft", 4, "base", 5) for p in range(1, 101)])  # both succeed: 0 each
    decision = sequential.decide(ties, "ft", "base")
    assert decision.decided is None and decision.mean == 0 and decision.more_ratings is None


@pytest.mark.parametrize("probabilities", [(0.5, 0.0, 0.5), (0.3, 0.4, 0.3), (0.15, 0.7, 0.15)])
def test_under_no_difference_it_decides_wrongly_at_most_alpha_of_the_time(probabilities):
    """3,000 evaluations of 150 prompts each, every prompt's value drawn i.i.d. with mean 0
    (P(-1) = P(+1)); looked at after every prompt, either side deciding counts as wrong."""
    rng = np.random.default_rng(28)
    runs = rng.choice([-1, 0, 1], size=(3000, 150), p=probabilities)
    wrong = 0
    for values in runs:
        better, worse = sequential.betting_paths(values)
        wrong += bool((better >= 1).any() or (worse >= 1).any())
    assert wrong / len(runs) <= ALPHA
    # and it is a test that decides: with a true lean of +0.4 it decides "better" nearly always
    gains = rng.choice([-1, 0, 1], size=(300, 150), p=(0.1, 0.4, 0.5))
    decided = sum(bool((sequential.betting_paths(v)[0] >= 1).any()) for v in gains)
    assert decided / len(gains) >= 0.9


def test_entries_take_only_the_two_models_pairs_and_the_first_rating_of_each_prompt():
    rows = [
        (1, "ana", "other", 5, "base", 1),  # a third model's pair: not this test's
        (1, "ana", "ft", 5, "base", 1),  # prompt 1 enters: +1, at the 2nd rated pair
        (1, "ben", "base", 5, "ft", 1),  # prompt 1 again: the tables' business, not the test's
        (2, "ben", "ft", 3, "base", 3),  # prompt 2: both fail, 0
        (3, "ana", "ft", 1, "other", 5),
        (3, "ben", "base", 4, "ft", 2),  # prompt 3: base succeeds, ft fails, -1, at the 6th pair
        (2, "ana", "ft", 5, "base", 1),  # a second rating of prompt 2: left out
    ]
    found, pairs = sequential.entries(_sequence(rows), "ft", "base", quota=1)
    assert pairs == 7
    assert [(e.prompt_id, e.value, e.at_rating) for e in found] == [(1, 1, 2), (2, 0, 4), (3, -1, 6)]
    # the threshold moves success: at 2, prompt 2's replies both succeed (still 0), and prompt 3's too
    found, _ = sequential.entries(_sequence(rows), "ft", "base", quota=1, threshold=2)
    assert [e.value for e in found] == [1, 0, 0]
    # a quota of 2: a prompt enters at its second rating of the pair, with the mean of both
    found, _ = sequential.entries(_sequence(rows), "ft", "base", quota=2)
    assert [(e.prompt_id, e.value, e.at_rating) for e in found] == [(1, 0, 3), (2, 0.5, 7)]
    assert sequential.entries(_sequence([]), "ft", "base", 1) == ([], 0)


def test_the_sentence_says_decided_or_how_far_from_it():
    wins = _sequence([(p, "r", "lora: x", 5, "base (m)", 2) for p in range(1, 13)])
    decided = sequential.decide(wins, "lora: x", "base (m)")
    assert decided.sentence() == ("Decided after 11 ratings: lora: x better than base (m) (anytime-valid 95%; "
                                  "11 prompts, the first rating of each prompt's pair).")
    early = sequential.decide(wins.head(6), "lora: x", "base (m)")
    assert early.decided is None and early.more_ratings is not None and early.more_ratings >= 1
    assert early.sentence() == ("lora: x against base (m): not decided yet (6 prompts in the test so far, "
                                f"the first rating of each prompt's pair; success rate difference so far +100 points). At this rate about "
                                f"{early.more_ratings} more ratings.")
    none = sequential.decide(wins.head(0), "lora: x", "base (m)")
    assert none.sentence() == ("lora: x against base (m): not decided yet (0 prompts in the test so far, "
                               "the first rating of each prompt's pair).")
    level = sequential.decide(_sequence([(p, "r", "lora: x", 5, "base (m)", 5) for p in range(1, 6)]),
                              "lora: x", "base (m)")
    assert level.sentence().endswith("+0 points). No lean either way yet: more prompts may not settle it.")


THREE = [{"name": "base", "label": "base (m)", "kind": "base"},
         {"name": "run-good", "label": "lora: good", "kind": "lora"},
         {"name": "run-same", "label": "lora: same", "kind": "lora"}]
REPLIES = {"base": "I cannot say.", "run-good": "A clear, careful answer.", "run-same": "I cannot say either."}


def _rate_by_reading(store: Store, eval_id: int, raters, rng: random.Random, limit: int | None = None) -> int:
    """Raters take turns through the store's own flow and score each reply by its text: the
    good model's 5, the others 1. Returns the pairs rated."""
    rated = 0
    active = list(raters)
    while active and (limit is None or rated < limit):
        for rater in list(active):
            pair = store.next_pair(eval_id, rater, rng)
            if pair is None:
                active.remove(rater)
                continue
            score = {text: 5 if text == REPLIES["run-good"] else 1 for text in REPLIES.values()}
            store.rate_pair(pair["assignment_id"], rater, score[pair["reply_a"]], score[pair["reply_b"]])
            rated += 1
            if limit is not None and rated >= limit:
                break
    return rated


def test_for_evaluation_decides_each_fine_tuned_model_over_a_real_store(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = open_evaluation(store, "e", "m", 14, THREE, reply=lambda p, variant, k: REPLIES[variant])
    assert [(d.model, d.versus, d.prompts, d.decided) for d in sequential.for_evaluation(store, eval_id)] == [
        ("lora: good", "base (m)", 0, None), ("lora: same", "base (m)", 0, None)]

    rng = random.Random(4)
    _rate_by_reading(store, eval_id, ["ana", "ben", "cem"], rng, limit=12)
    sequence = store.rating_sequence(eval_id)
    assert len(sequence) == 12
    good, same = sequential.for_evaluation(store, eval_id)
    # every prompt's first rating of (base, good) counts +1; a decision needs 12 of them (two fine-tuned
    # models share the 5%: each is decided at 2.5%, where one alone would need 11)
    pairs_good = sequence[sequence.apply(lambda r: {r.label_a, r.label_b} == {"lora: good", "base (m)"}, axis=1)]
    assert good.prompts == pairs_good["prompt_id"].nunique() and good.decided is None
    assert same.decided is None and same.mean == 0  # both fail on every prompt: no lean

    _rate_by_reading(store, eval_id, ["ana", "ben", "cem"], rng)  # everyone rates every pair served
    sequence = store.rating_sequence(eval_id)
    good, same = sequential.for_evaluation(store, eval_id)
    assert good.decided == "better" and good.decided_prompts == 12 and good.prompts == 14
    # decided at the rated pair where the 11th prompt entered: counted over every pair of the evaluation
    firsts = sequence[sequence.apply(lambda r: {r.label_a, r.label_b} == {"lora: good", "base (m)"}, axis=1)]
    firsts = firsts.drop_duplicates("prompt_id")
    assert good.decided_at == list(sequence["assignment"]).index(firsts["assignment"].iloc[11]) + 1
    assert good.sentence().startswith(f"Decided after {good.decided_at} ratings: lora: good better than base (m) "
                                      "(anytime-valid 95% for both fine-tuned models together")
    assert same.decided is None and same.prompts == 14 and same.sentence().startswith("lora: same against base (m)")
    # the threshold is the Results tab's: at 1 every reply succeeds and nothing is decided
    assert [d.decided for d in sequential.for_evaluation(store, eval_id, threshold=1)] == [None, None]
    # a rater the owner leaves out leaves the test too
    store.set_excluded(eval_id, "ana", True, "test")
    assert len(store.rating_sequence(eval_id)) < len(sequence)


def test_the_sentence_never_promises_what_the_prompts_left_cannot_give():
    """Ten prompts, the fine-tuned model better on every one: a decision needs eleven, so the line
    says that this evaluation cannot decide, never "about 1 more rating"."""
    wins = _sequence([(p, "r", "lora: x", 5, "base (m)", 2) for p in range(1, 11)])
    done = sequential.decide(wins, "lora: x", "base (m)", available=10)
    assert done.decided is None and done.left == 0
    assert done.sentence().endswith("Every prompt of this evaluation is in the test, so more ratings cannot "
                                    "decide it: a new evaluation with more prompts can.")
    # five of twelve in, one more needed at this rate... but only if the prompts are there
    early = sequential.decide(wins.head(5), "lora: x", "base (m)", available=12)
    assert early.more_prompts is not None and early.more_prompts <= early.left
    assert early.sentence().endswith(f"At this rate about {early.more_ratings} more ratings.")
    short = sequential.decide(wins.head(5), "lora: x", "base (m)", available=7)
    assert short.more_prompts > short.left == 2
    assert short.sentence().endswith(f"At this rate it needs about {short.more_prompts} more prompts and this "
                                     "evaluation has 2 left: a new evaluation with more prompts can decide it.")


def test_several_fine_tuned_models_share_the_five_percent():
    """Three fine-tuned models: each is decided at 5% / 3, so the chance that any of them is ever
    wrongly decided stays at most 5%; a clean sweep needs more prompts than for one model alone."""
    rows = [(p, "r", m, 5, "base (m)", 2) for p in range(1, 16) for m in ("a", "b", "c")]
    three = sequential.decisions(_sequence(rows), ["base (m)", "a", "b", "c"])
    one = sequential.decide(_sequence([r for r in rows if r[2] == "a"]), "a", "base (m)")
    assert [d.models for d in three] == [3, 3, 3] and one.models == 1
    assert one.decided_prompts == 11 and all(d.decided_prompts == 13 for d in three)
    assert "for all 3 fine-tuned models together" in three[0].sentence()


def test_no_model_is_decided_with_fewer_prompts_than_the_bound_the_scheduler_relies_on():
    """Store.undecided_variants skips the computation below fewest_prompts_to_decide: the bound
    must never be above the first decision of a clean sweep, the fastest any sequence can go."""
    for models in (1, 2, 3, 5):
        fewest = sequential.fewest_prompts_to_decide(models)
        up, _ = sequential.betting_paths([1] * 40, sequential.ALPHA / models)
        assert int(np.argmax(up >= 1)) + 1 == fewest
    assert [sequential.fewest_prompts_to_decide(k) for k in (1, 2, 3)] == [11, 12, 13]
