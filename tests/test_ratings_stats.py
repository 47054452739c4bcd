"""Each statistic against values worked out by hand or by scipy on small fixed tables."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ratings import stats
from ratings.stats import per_prompt_table, success_table

COLUMNS = ["position", "prompt", "variant", "label", "rater", "score"]


def _scores(rows, columns=COLUMNS):
    return pd.DataFrame(rows, columns=columns)


def _paired(pairs, raters=("ana",)):
    """base and lora scores per prompt; the same scores for every rater."""
    rows = []
    for i, (b, t) in enumerate(pairs, start=1):
        for rater in raters:
            rows += [(i, f"p{i}", "base", "base", rater, b), (i, f"p{i}", "r1", "lora: r1", rater, t)]
    return _scores(rows)


FIVE = [(2, 5), (4, 4), (3, 5), (5, 3), (1, 4)]


# --- intervals -------------------------------------------------------------------------
@pytest.mark.parametrize("k, n", [(0, 5), (2, 5), (5, 5), (8, 10), (1, 1), (37, 50)])
def test_wilson_interval_matches_scipy(k, n):
    low, high = stats.wilson_interval(k, n)
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_interval_by_hand():
    # 8/10, z = 1.96: centre (0.8 + 0.19208) / 1.38415 = 0.71674, half 1.96 · 0.16 / 1.38415 = 0.22656
    assert stats.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert all(math.isnan(x) for x in stats.wilson_interval(0, 0))


def _wilson_by_formula(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The closed form ratings.stats used before it called scipy: the values it must still give."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_interval_gives_the_closed_forms_values():
    for n in list(range(1, 61)) + [99, 250, 1000, 12345]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n} | set(range(0, n + 1, max(1, n // 25)))):
            assert stats.wilson_interval(k, n) == pytest.approx(_wilson_by_formula(k, n), abs=1e-9, rel=0), (k, n)
    assert stats.wilson_interval(np.int64(3), np.int64(4)) == pytest.approx(_wilson_by_formula(3, 4), abs=1e-9)


def test_mean_interval_matches_scipy_t_interval():
    values = [2, 4, 3, 5, 1, 4]
    mean, low, high = stats.mean_interval(values)
    ci = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert mean == pytest.approx(19 / 6)
    assert (low, high) == pytest.approx(ci)


def test_mean_interval_single_value_equal_values_and_clipping():
    assert stats.mean_interval([4])[0] == 4 and math.isnan(stats.mean_interval([4])[1])
    assert stats.mean_interval([3, 3, 3]) == (3, 3, 3)  # no spread, no width
    _, low, high = stats.mean_interval([1, 5])  # the raw t interval is 3 ± 25.4
    assert (low, high) == (1, 5)


def test_the_mean_interval_is_the_one_t_interval_and_the_checks_clip_it_to_their_measures():
    from ratings import checks as rc

    replies = pd.DataFrame([{"position": i, "prompt": f"p{i}", "reference": "a b c d e f g h i j", "category": None,
                             "variant": "base", "label": "base", "reply": reply, "new_tokens": 3}
                            for i, reply in enumerate(["a", "a b", "a b c d e f g h i j k l m n o p q"], start=1)])
    rep = rc.report(replies, [], max_new_tokens=100)
    table = rep.table.set_index("measure")
    for measure, bounds in (("words", (0.0, math.inf)), ("token F1", (0.0, 1.0)), ("ROUGE-L", (0.0, 1.0))):
        values = rep.replies[measure].astype(float)
        row = table.loc[measure]
        assert (row["rate"], row["low"], row["high"]) == stats.mean_interval(values, bounds)
    assert table.loc["words", "low"] == 0.0  # 1, 2 and 17 words: the raw t interval reaches below no words


def test_no_module_of_ratings_uses_another_modules_private_names():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ours = {".".join(p.relative_to(root).with_suffix("").parts) for p in (root / "ratings").glob("*.py")}
    found = []
    for path in sorted((root / "ratings").glob("*.py")) + [root / "tuner" / "ui" / "judge.py"]:
        tree, aliases = ast.parse(path.read_text(encoding="utf-8")), {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ours | {"ratings"}:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in ours:
                        aliases[alias.asname or alias.name] = alias.name
                    elif alias.name.startswith("_"):
                        found.append(f"{path.name}: from {node.module} import {alias.name}")
        found += [f"{path.name}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not found, found


# --- success rate ------------------------------------------------------------------------
def test_success_rate_counts_scores_of_four_or_more():
    table = success_table(_paired(FIVE)).set_index("model")
    assert table.loc["base", "success"] == "2/5"
    assert table.loc["lora: r1", "success"] == "4/5"
    assert table.loc["lora: r1", "rate"] == 0.8
    assert table.loc["base", "mean score"] == 3.0
    assert list(table.index) == ["base", "lora: r1"]  # the evaluation's order, base first
    ci = sps.binomtest(4, 5).proportion_ci(method="wilson")
    assert table.loc["lora: r1", ["rate low", "rate high"]].tolist() == pytest.approx([ci.low, ci.high], abs=1e-3)
    t = sps.t.interval(0.95, 4, loc=3.0, scale=sps.sem([2, 4, 3, 5, 1]))
    assert table.loc["base", ["mean score low", "mean score high"]].tolist() == pytest.approx(t, abs=1e-3)


def test_threshold_is_adjustable():
    table = success_table(_paired(FIVE), threshold=3).set_index("model")
    assert table.loc["base", "success"] == "3/5"
    assert table.loc["lora: r1", "success"] == "5/5"
    assert success_table(_paired(FIVE), threshold=5).set_index("model").loc["lora: r1", "success"] == "2/5"


def test_all_scores_equal():
    table = success_table(_paired([(3, 3)] * 4)).set_index("model")
    assert table.loc["base", "success"] == "0/4" and table.loc["base", "rate high"] == pytest.approx(0.49, abs=0.01)
    assert table.loc["base", ["mean score", "mean score low", "mean score high"]].tolist() == [3, 3, 3]
    tests = stats.paired_tests(_paired([(3, 3)] * 4))
    assert tests.loc[0, "tied"] == 4 and math.isnan(tests.loc[0, "wilcoxon p"])
    assert tests.loc[0, "in words"].endswith("no difference to test.")


def test_empty_scores_give_empty_tables():
    assert success_table(_scores([])).empty
    assert per_prompt_table(_scores([])).empty
    assert stats.paired_tests(_scores([])).empty
    assert stats.headline(_scores([]))[0].startswith("No ratings yet")


# --- per prompt ------------------------------------------------------------------------
def test_per_prompt_table_averages_raters():
    rows = [(1, "p1", "base", "base", "ana", 2), (1, "p1", "base", "base", "ben", 3),
            (1, "p1", "r1", "lora: r1", "ana", 5), (1, "p1", "r1", "lora: r1", "ben", 4)]
    table = per_prompt_table(_scores(rows))
    assert table.to_dict("records") == [{"#": 1, "prompt": "p1", "base": 2.5, "lora: r1": 4.5, "winner": "lora: r1"}]


def test_per_prompt_table_ids_raters_ties_and_a_prompt_nobody_rated():
    columns = ["position", "external_id", "task", "prompt", "variant", "label", "rater", "score"]
    rows = [(1, "q1", "mail", "p1", "base", "base", "ana", 4), (1, "q1", "mail", "p1", "r1", "lora", "ana", 4),
            (2, "q2", "faq", "p2", "base", "base", "ana", 5), (2, "q2", "faq", "p2", "r1", "lora", "ana", 2),
            (2, "q2", "faq", "p2", "r1", "lora", "ben", 3), (3, "q3", "faq", "p3", "r1", "lora", "ben", 3)]
    scores = _scores(rows, columns)
    prompts = pd.DataFrame({"position": [1, 2, 3, 4], "external_id": ["q1", "q2", "q3", "q4"],
                            "task": ["mail", "faq", "faq", "faq"], "prompt": ["p1", "p2", "p3", "p4"]})
    table = per_prompt_table(scores, prompts, raters=True)
    assert list(table.columns) == ["#", "ID", "task", "prompt", "base", "lora", "base · ana", "lora · ana",
                                   "lora · ben", "winner"]
    assert list(table["winner"]) == ["tie", "base", "—", "not rated"]
    assert table.loc[1, "lora"] == 2.5 and table.loc[1, "lora · ben"] == 3
    assert math.isnan(table.loc[3, "base"]) and table.loc[3, "ID"] == "q4"


def test_breakdowns_by_category_and_rater():
    rows = [(1, "p1", "base", "base", "ana", 4, "easy"), (1, "p1", "base", "base", "ben", 2, "easy"),
            (2, "p2", "base", "base", "ana", 5, None), (2, "p2", "base", "base", "ben", 1, None)]
    scores = _scores(rows, COLUMNS + ["category"])
    by_category = stats.breakdown_table(scores, "category")
    assert list(by_category["category"]) == ["easy", "(none)"]
    assert list(by_category["success"]) == ["1/2", "1/2"]
    by_rater = stats.breakdown_table(scores, "rater").set_index("rater")
    assert by_rater.loc["ana", "success"] == "2/2" and by_rater.loc["ben", "mean score"] == 1.5


def test_score_distribution_counts_every_score():
    dist = stats.score_distribution(_paired(FIVE))
    base = dist[dist["model"] == "base"]
    assert list(base["ratings"]) == [1, 1, 1, 1, 1]
    lora = dist[dist["model"] == "lora: r1"].set_index("score")
    assert lora["ratings"].tolist() == [0, 0, 1, 2, 2] and lora.loc[5, "share"] == 0.4


# --- head to head ------------------------------------------------------------------------
def test_paired_test_eight_of_ten_by_hand():
    # 8 prompts +1, one −1, one tie: zeros dropped, 9 equal |d| share rank 5, so W− = 5
    # and the exact two-sided p is P(at most 1 negative of 9) · 2 = (1 + 9) / 512 · 2
    pairs = [(3, 4)] * 8 + [(4, 3), (3, 3)]
    row = stats.paired_tests(_paired(pairs)).iloc[0]
    assert (row["model"], row["versus"]) == ("lora: r1", "base")
    assert (row["prompts"], row["better"], row["worse"], row["tied"]) == (10, 8, 1, 1)
    assert row["wilcoxon p"] == pytest.approx(20 / 512)
    assert row["sign test p"] == pytest.approx(20 / 512)  # binomial: same counts
    assert row["in words"].startswith("lora: r1 scored higher than base on 8 of 10 prompts (lower on 1, equal on 1)")
    assert "p = 0.039" in row["in words"] and "unlikely to be chance" in row["in words"]


def test_paired_test_without_ties_by_hand():
    # two raters make half points: per-prompt differences 0.5, 1, …, 3, all positive and
    # distinct, so W− = 0 and the exact two-sided p is 2 / 2^6
    clean = stats.paired_tests(_scores(
        [r for i, d in enumerate([0.5, 1, 1.5, 2, 2.5, 3], start=1)
         for r in [(i, f"p{i}", "base", "base", "ana", 1), (i, f"p{i}", "base", "base", "ben", 1),
                   (i, f"p{i}", "r1", "lora", "ana", 1 + int(2 * d) // 2),
                   (i, f"p{i}", "r1", "lora", "ben", 1 + int(2 * d) - int(2 * d) // 2)]]))
    assert clean.loc[0, "mean difference"] == pytest.approx(1.75)
    assert clean.loc[0, "wilcoxon p"] == pytest.approx(2 / 64)


def test_paired_test_averages_raters_per_prompt_and_says_when_too_few():
    scores = _paired([(2, 4), (3, 5), (4, 3)], raters=("ana", "ben"))
    row = stats.paired_tests(scores).iloc[0]
    assert row["prompts"] == 3 and row["better"] == 2
    assert row["wilcoxon p"] == pytest.approx(sps.wilcoxon([2, 2, -1]).pvalue)
    assert "too few prompts to tell" in row["in words"]


def test_paired_tests_cover_every_pair_later_against_earlier():
    rows = []
    for i, (a, b, c) in enumerate([(2, 3, 4), (2, 4, 4), (3, 5, 4)], start=1):
        rows += [(i, "p", "base", "base", "ana", a), (i, "p", "r1", "one", "ana", b), (i, "p", "r2", "two", "ana", c)]
    tests = stats.paired_tests(_scores(rows))
    assert list(zip(tests["model"], tests["versus"])) == [("one", "base"), ("two", "base"), ("two", "one")]
    assert tests.loc[2, ["better", "worse", "tied"]].tolist() == [1, 1, 1]


def _judgements(rows):
    return pd.DataFrame(rows, columns=["position", "rater", "left_variant", "right_variant", "preference"])


def test_preference_win_rates_by_hand():
    judgements = _judgements([(1, "ana", "base", "r1", "B"), (2, "ana", "r1", "base", "A"),
                              (3, "ana", "base", "r1", "tie"), (4, "ana", "r1", "base", "B"),
                              (5, "ana", "base", "r1", None)])
    table = stats.preference_table(judgements, _paired(FIVE)).set_index("model")
    assert table.loc["lora: r1", ["stated", "won", "lost", "tie", "no preference"]].tolist() == [4, 2, 1, 1, 1]
    assert table.loc["base", ["won", "lost"]].tolist() == [1, 2]
    assert table.loc["lora: r1", "win rate"] == 0.5


# --- agreement ---------------------------------------------------------------------------
def test_krippendorff_alpha_reproduces_krippendorffs_own_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers,
    # 12 units, values 1-5 with gaps; the published ordinal alpha is 0.815
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
                 [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
                 [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
                 [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[o[u] for o in observers if o[u] is not None] for u in range(12)]
    assert stats.krippendorff_alpha_ordinal(units) == pytest.approx(0.815, abs=5e-4)


def test_krippendorff_alpha_small_table_by_hand():
    # units (1,1) (2,2) (3,4): n_1 = n_2 = 2, n_3 = n_4 = 1, n = 6. Observed: o_34 = o_43 = 1,
    # δ²(3,4) = (1 + 1 − 1)² = 1, so Σ o·δ² = 2. Expected: Σ n_c n_k δ²(c,k) over c ≠ k
    # = 2 · (4·4 + 2·12.25 + 2·20.25 + 2·2.25 + 2·6.25 + 1·1) = 198. alpha = 1 − 5 · 2 / 198
    assert stats.krippendorff_alpha_ordinal([[1, 1], [2, 2], [3, 4]]) == pytest.approx(1 - 10 / 198)
    assert stats.krippendorff_alpha_ordinal([[1, 1], [3, 3], [5, 5]]) == 1.0
    assert math.isnan(stats.krippendorff_alpha_ordinal([[4, 4], [4, 4]]))  # no variation: 0/0
    assert math.isnan(stats.krippendorff_alpha_ordinal([[4], [2]]))  # nothing rated twice


def test_agreement_counts_and_notes():
    two = stats.agreement(_paired([(1, 2), (3, 5), (4, 4)], raters=("ana", "ben")))
    assert (two["raters"], two["items"], two["alpha"]) == (2, 6, 1.0)
    assert "alpha (ordinal) = 1.00 over 6 replies" in two["note"] and "treat it as rough" in two["note"]
    single = stats.agreement(_paired(FIVE))
    assert single["raters"] == 1 and math.isnan(single["alpha"]) and "Only one rater" in single["note"]
    same = stats.agreement(_paired([(3, 3), (3, 3)], raters=("ana", "ben")))
    assert math.isnan(same["alpha"]) and "undefined" in same["note"]
    apart = _scores([(1, "p", "base", "base", "ana", 2), (2, "p", "base", "base", "ben", 4)])
    assert "No reply has been rated by two raters" in stats.agreement(apart)["note"]


# --- bias checks -------------------------------------------------------------------------
def test_position_bias_by_preference_and_by_scores():
    scores = _paired(FIVE)  # (base, lora): (2,5) (4,4) (3,5) (5,3) (1,4)
    judgements = _judgements([(1, "ana", "r1", "base", "A"), (2, "ana", "base", "r1", "tie"),
                              (3, "ana", "r1", "base", "A"), (4, "ana", "base", "r1", "A"),
                              (5, "ana", "base", "r1", "B")])
    table = stats.position_bias(judgements, scores).set_index("by")
    pref = table.loc["stated preference"]
    assert (pref["left won"], pref["right won"], pref["tie"]) == (3, 1, 1)
    assert pref["left share"] == 0.75
    assert pref["p"] == pytest.approx(sps.binomtest(3, 4).pvalue, abs=1e-3)  # = 0.625
    by_scores = table.loc["scores"]  # left scores: 5, 4, 5, 5, 1 vs right 2, 4, 3, 3, 4
    assert (by_scores["left won"], by_scores["right won"], by_scores["tie"]) == (3, 1, 1)


def test_length_correlation_is_spearman():
    scores = _paired(FIVE).assign(reply_chars=[10, 50, 40, 45, 30, 60, 70, 20, 5, 55])
    table = stats.length_correlation(scores).set_index("model")
    everything = sps.spearmanr(scores["score"], scores["reply_chars"])
    assert table.loc["all models", "spearman rho"] == pytest.approx(everything.statistic, abs=1e-3)
    # base: scores 2 4 3 5 1 against lengths 10 40 30 70 5: the same ranks, rho = 1
    assert table.loc["base", "spearman rho"] == 1.0
    flat = stats.length_correlation(_paired([(3, 3)] * 3).assign(reply_chars=[1, 2, 3, 4, 5, 6]))
    assert math.isnan(flat.loc[0, "spearman rho"])
    sentences = stats.bias_sentences(stats.position_bias(_judgements([]), scores), table.reset_index())
    assert "no decided pair yet" in sentences[0] and "Spearman rho" in sentences[2]


def test_headline_sentences():
    lines = stats.headline(_paired(FIVE))
    assert lines[0] == "base: 2 of 5 ratings at 4 or more (40%, 95% CI 12%–77%); mean score 3.00."
    assert lines[2].startswith("lora: r1 scored higher than base on 3 of 5 prompts")


def test_format_p():
    assert [stats.format_p(p) for p in (0.0390625, 0.5, 0.0001, float("nan"))] == ["0.039", "0.5", "< 0.001", "—"]
