import pandas as pd

from ratings.stats import per_prompt_table, success_table

COLUMNS = ["position", "prompt", "variant", "label", "rater", "score"]


def _scores(rows):
    return pd.DataFrame(rows, columns=COLUMNS)


def test_success_rate_counts_scores_of_four_or_more():
    rows = []
    for i, (b, t) in enumerate([(2, 5), (4, 4), (3, 5), (5, 3), (1, 4)], start=1):
        rows += [(i, f"p{i}", "base", "base", "ana", b), (i, f"p{i}", "r1", "lora: r1", "ana", t)]
    table = success_table(_scores(rows)).set_index("model")
    assert table.loc["base", "success"] == "2/5"
    assert table.loc["lora: r1", "success"] == "4/5"
    assert table.loc["lora: r1", "rate"] == 0.8
    assert table.loc["base", "mean score"] == 3.0
    assert list(table.index) == ["base", "lora: r1"]  # the evaluation's order, base first


def test_per_prompt_table_averages_raters():
    rows = [(1, "p1", "base", "base", "ana", 2), (1, "p1", "base", "base", "ben", 3),
            (1, "p1", "r1", "lora: r1", "ana", 5), (1, "p1", "r1", "lora: r1", "ben", 4)]
    table = per_prompt_table(_scores(rows))
    assert table.to_dict("records") == [{"#": 1, "prompt": "p1", "base": 2.5, "lora: r1": 4.5}]


def test_empty_scores_give_empty_tables():
    assert success_table(_scores([])).empty
    assert per_prompt_table(_scores([])).empty
