"""The gathered results tables (ratings.tables), over a real SQLite store filled through its own API
(helpers.filled_store; the `results` fixture of conftest.py gathers its tables).
"""

from __future__ import annotations

import random

import pandas as pd

from helpers import ROUND_REPLIES as REPLIES
from helpers import filled_store, open_evaluation
from ratings import tables
from ratings.store import Store


def test_gather_computes_every_table_from_the_store(results):
    _, r = results
    success = r.success.set_index("model")
    assert success.loc["base (tiny)", "success"] == "2/8"  # the two 4s on q4
    assert success.loc["lora: run-xyz", "success"] == "7/8"
    assert list(r.per_prompt["winner"]) == ["lora: run-xyz"] * 4  # q3: 2.5 vs 3.5
    assert r.paired.loc[0, "better"] == 4 and r.paired.loc[0, "prompts"] == 4
    assert r.agreement["raters"] == 2 and r.agreement["items"] == 8
    assert set(r.breakdowns) == {"category", "rater"}  # every task is its own prompt: no task breakdown
    assert r.automatic_by is not None and set(r.automatic_by["category"]) == {"easy", "hard", "(none)"}
    prefs = r.preferences.set_index("model")
    assert prefs.loc["lora: run-xyz", ["won", "lost", "tie", "no preference"]].tolist() == [5, 1, 1, 1]


def test_threshold_changes_the_success_table(tmp_path):
    store, eval_id = filled_store(tmp_path / "ratings.db")
    low = tables.gather(store, eval_id, 3).success.set_index("model")
    assert low.loc["base (tiny)", "success"] == "6/8"
    assert low.loc["lora: run-xyz", "success"] == "8/8"


def test_the_check_agrees_with_the_raters_when_they_reward_the_right_answers(results):
    _, r = results
    assert r.checks.measures[0] == "answer contained"
    assert r.check_agreement["n"] == 6 and r.check_agreement["rho"] > 0.5


def test_preference_pairs_take_the_higher_mean_as_chosen_when_a_score_apart(results):
    _, r = results
    pairs = tables.preference_pairs(r)
    means = r.per_prompt.set_index("ID")
    apart = [i for i in means.index if abs(means.loc[i, "base (tiny)"] - means.loc[i, "lora: run-xyz"]) >= 1]
    assert sorted(p["id"] for p in pairs) == sorted(apart) and apart  # closer means give no pair
    q3 = next(p for p in pairs if p["id"] == "q3")  # base 2.5 vs fine-tuned 3.5
    assert q3["chosen"] == [{"role": "assistant", "content": REPLIES[3][1]}]
    assert q3["rejected"] == [{"role": "assistant", "content": REPLIES[3][0]}]
    assert (q3["chosen_score"], q3["rejected_score"]) == (3.5, 2.5)
    assert q3["prompt"][-1] == {"role": "user", "content": "Who runs Brightwave?"}


def test_equal_means_give_no_preference_pair(tmp_path):
    store, eval_id = filled_store(tmp_path / "ratings.db", rated=False)
    rng = random.Random(1)
    pair = store.next_pair(eval_id, "Cy", rng)
    store.rate_pair(pair["assignment_id"], "Cy", 3, 3)
    assert tables.preference_pairs(tables.gather(store, eval_id)) == []


def test_low_rated_list_imports_as_chat_examples_once_rewritten(results, tmp_path):
    from tuner.importers import import_file

    _, r = results
    low = tables.low_rated(r)
    # mean below 4: base on q1 (2.5), q2 (3), q3 (2.5) and the fine-tuned q3 (3.5); worst first
    assert list(zip(low["id"], low["model"])) == [("q1", "base (tiny)"), ("q3", "base (tiny)"),
                                                  ("q2", "base (tiny)"), ("q3", "lora: run-xyz")]
    assert low.loc[0, "comments"] == "Ana: base guessed"
    assert (low["completion"] == "").all()
    low["completion"] = "A better reply."
    path = tmp_path / "rewritten.csv"
    low.to_csv(path, index=False)
    imported = import_file(path)
    assert imported.shape == "prompt_completion" and not imported.problems
    assert imported.rows[0]["messages"] == [{"role": "user", "content": "When was Brightwave founded?"},
                                            {"role": "assistant", "content": "A better reply."}]


def test_display_merges_intervals_and_formats_numbers():
    nan = float("nan")
    table = pd.DataFrame({"model": ["a", "b"], "rate": [0.25, nan], "rate low": [0.071, nan], "rate high": [0.591, nan],
                          "mean score": [2.625, 4.0], "wilcoxon p": [0.0390625, 0.0004]})
    shown = tables.display(table)
    assert list(shown.columns) == ["model", "rate", "rate 95% CI", "mean score", "wilcoxon p"]
    assert shown.iloc[0].tolist() == ["a", "25%", "7%–59%", "2.62", "0.039"]
    assert shown.iloc[1].tolist() == ["b", "", "", "4", "< 0.001"]


def test_the_success_rate_breaks_down_by_keyword_flag(tmp_path):
    """Results break the success rate down by the keyword rules' flags."""
    import random as _random

    from ratings import tables as rtables
    from ratings.store import Store

    store = Store(tmp_path / "r.db")
    prompts = [{"text": "I want a refund now", "flags": ["escalate"]}, {"text": "What are your hours?"}]
    variants = [{"name": "base", "label": "base", "kind": "base"}, {"name": "r1", "label": "lora", "kind": "lora"}]
    eval_id = open_evaluation(store, "flags", "m", prompts, variants, reply="reply {variant}", reply_settings={})
    while (pair := store.next_pair(eval_id, "ana", _random.Random(0))) is not None:
        store.rate_pair(pair["assignment_id"], "ana", 5, 2)
    r = rtables.gather(store, eval_id)
    assert "flag" in r.breakdowns
    table = r.breakdowns["flag"]
    assert set(table["flag"]) == {"escalate", "(none)"}
