import pandas as pd

from ratings.stats import per_prompt_table, success_table


def _scores(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "position", "prompt", "variant", "model", "rater", "score"])


def test_success_rate_counts_scores_of_four_or_more():
    rows = []
    for i, (b, t) in enumerate([(2, 5), (4, 4), (3, 5), (5, 3), (1, 4)], start=1):
        rows += [(i, i, f"p{i}", "base", "smol", "ana", b), (i, i, f"p{i}", "tuned", "run", "ana", t)]
    table = success_table(_scores(rows)).set_index("variant")
    assert table.loc["base", "success"] == "2/5"
    assert table.loc["tuned", "success"] == "4/5"
    assert table.loc["tuned", "rate"] == 0.8
    assert table.loc["base", "mean score"] == 3.0


def test_per_prompt_table_averages_raters():
    rows = [(1, 1, "p1", "base", "m", "ana", 2), (1, 1, "p1", "base", "m", "ben", 3),
            (1, 1, "p1", "tuned", "r", "ana", 5), (1, 1, "p1", "tuned", "r", "ben", 4)]
    table = per_prompt_table(_scores(rows))
    assert table.to_dict("records") == [{"#": 1, "prompt": "p1", "base": 2.5, "tuned": 4.5}]


def test_empty_scores_give_empty_tables():
    assert success_table(_scores([])).empty
    assert per_prompt_table(_scores([])).empty
