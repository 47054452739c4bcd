"""Tables from raw scores: pure pandas (scipy for the tests' distributions), no
database, no UI.

`scores` is Store.ratings_frame's shape: one row per rating with at least
position, prompt, variant, label, rater and score (and, where a function says
so, external_id, task, category, reply_chars). `judgements` is
Store.judgements_frame's shape: one row per rated pair with position, rater,
left_variant, right_variant and preference ("A" is the left-hand reply).

Models are named by their label and listed in the order they first appear in
`scores` (the store sorts by variant, base first). Every rating counts as one
observation; the intervals do not model that one rater's scores on a prompt
may move together, so with few prompts they are, if anything, too narrow.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pandas as pd

from ratings.scale import HIGHEST, LOWEST, SCORES, SUCCESS_AT


@functools.cache
def scipy_stats():
    """scipy.stats, imported on first use: it is slow to import (see docs/performance.md), off the app's
    start-up path. Every module of `ratings` that needs scipy.stats gets it here."""
    from scipy import stats

    return stats


FEW_ITEMS = 10  # below this many items rated twice, an agreement figure is rough


def models(scores: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(scores["label"]))


# --- intervals ----------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (scipy's binomtest(...).proportion_ci): unlike
    p ± z·se it stays inside [0, 1] and is not zero-width at 0/n or n/n; (nan, nan) for 0/0."""
    if n == 0:
        return math.nan, math.nan
    ci = scipy_stats().binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values, bounds: tuple[float, float] = (LOWEST, HIGHEST)) -> tuple[float, float, float]:
    """The mean and its 95% t interval, clipped to `bounds` (by default the scale's: a t interval
    over a handful of 1–5 scores can reach past them); (mean, nan, nan) for a single value. The one
    t interval of `ratings` (ratings.checks clips it to 0–1 for F1 and ROUGE-L, to 0+ for words)."""
    values = pd.Series(values, dtype=float).dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = float(scipy_stats().t.ppf(0.975, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


# --- success rates -----------------------------------------------------------------------------
SUCCESS_COLUMNS = ["model", "rated", "successes", "success", "rate", "rate low", "rate high", "mean score",
                   "mean score low", "mean score high"]


def success_table(scores: pd.DataFrame, threshold: int = SUCCESS_AT) -> pd.DataFrame:
    """Per model: replies rated, replies at or above the threshold, the rate with
    its 95% Wilson interval, the mean score with its 95% t interval."""
    rows = []
    for label in models(scores):
        s = scores.loc[scores["label"] == label, "score"]
        n, k = len(s), int((s >= threshold).sum())
        low, high = wilson_interval(k, n)
        mean, mean_low, mean_high = mean_interval(s)
        rows.append([label, n, k, f"{k}/{n}", k / n, low, high, mean, mean_low, mean_high])
    table = pd.DataFrame(rows, columns=SUCCESS_COLUMNS)
    return rounded(table, 3)


def breakdown_table(scores: pd.DataFrame, by: str, threshold: int = SUCCESS_AT) -> pd.DataFrame:
    """The success table within each value of `by` (category, task, rater…);
    ratings without a value are grouped as "(none)"."""
    keys = scores[by].fillna("(none)").astype(str).replace("", "(none)")
    parts = [success_table(group, threshold).assign(**{by: key})
             for key, group in scores.groupby(keys, sort=False)]
    if not parts:
        return pd.DataFrame(columns=[by] + SUCCESS_COLUMNS)
    table = pd.concat(parts, ignore_index=True)
    return table[[by] + SUCCESS_COLUMNS]


def score_distribution(scores: pd.DataFrame) -> pd.DataFrame:
    """How many ratings each score 1–5 got, per model (zeros included), and the share."""
    rows = []
    for label in models(scores):
        s = scores.loc[scores["label"] == label, "score"]
        for value in SCORES:
            count = int((s == value).sum())
            rows.append([label, value, count, count / len(s)])
    return pd.DataFrame(rows, columns=["model", "score", "ratings", "share"])


# --- per prompt --------------------------------------------------------------------------
def prompt_means(scores: pd.DataFrame) -> pd.DataFrame:
    """position × model: each model's mean score on each prompt, over its raters."""
    if scores.empty:
        return pd.DataFrame(index=pd.Index([], name="position"))
    table = scores.pivot_table(index="position", columns="label", values="score", aggfunc="mean")
    table.columns.name = None
    return table[[m for m in models(scores) if m in table.columns]]


def per_prompt_table(scores: pd.DataFrame, prompts: pd.DataFrame | None = None,
                     raters: bool = False) -> pd.DataFrame:
    """One row per prompt: #, ID, task, prompt, each model's mean score over the
    raters (with raters=True also each rater's score, as "model · rater"), and
    the winner: the model with the highest mean, "tie", "—" when fewer than two
    models were rated on it, "not rated" when nobody rated it.

    `prompts` (position, prompt and optionally external_id, task) lists every
    prompt of the evaluation, so those nobody rated still get a row.
    """
    source = prompts if prompts is not None else scores
    if source.empty:
        return pd.DataFrame(columns=["#", "prompt"])
    info = [c for c in ("position", "external_id", "task", "prompt") if c in source.columns]
    rows = source[info].drop_duplicates("position").sort_values("position").set_index("position")
    means = prompt_means(scores)
    table = rows.join(means.round(2))
    names = list(means.columns)
    if raters and not scores.empty:
        by_rater = scores.pivot_table(index="position", columns=["label", "rater"], values="score", aggfunc="mean")
        by_rater = by_rater[[c for m in names for c in by_rater.columns if c[0] == m]]
        by_rater.columns = [f"{m} · {r}" for m, r in by_rater.columns]
        table = table.join(by_rater)
    table["winner"] = [_winner(means.loc[p] if p in means.index else None) for p in table.index]
    table = table.reset_index().rename(columns={"position": "#", "external_id": "ID"})
    return table


def _winner(row: pd.Series | None) -> str:
    if row is None or row.notna().sum() == 0:
        return "not rated"
    row = row.dropna()
    if len(row) < 2:
        return "—"
    best = row[row == row.max()]
    return "tie" if len(best) > 1 else str(best.index[0])


# --- head to head -------------------------------------------------------------------------
def paired_tests(scores: pd.DataFrame) -> pd.DataFrame:
    """Every pair of models, the later one against the earlier (so a fine-tuned
    run against the base): on how many prompts its mean score was higher, lower
    or equal, the mean difference, a Wilcoxon signed-rank test of the per-prompt
    differences (zero differences dropped, two-sided) and a sign test, in words."""
    columns = ["model", "versus", "prompts", "better", "worse", "tied", "mean difference", "wilcoxon p",
               "sign test p", "in words"]
    means = prompt_means(scores)
    rows = []
    for reference, model in itertools.combinations(list(means.columns), 2):
        both = means[[reference, model]].dropna()
        diff = both[model] - both[reference]
        n, better, worse = len(diff), int((diff > 0).sum()), int((diff < 0).sum())
        tied = n - better - worse
        wilcoxon = float(scipy_stats().wilcoxon(diff[diff != 0]).pvalue) if better + worse else math.nan
        sign = float(scipy_stats().binomtest(better, better + worse).pvalue) if better + worse else math.nan
        rows.append([model, reference, n, better, worse, tied, round(float(diff.mean()), 3) if n else math.nan,
                     wilcoxon, sign, paired_sentence(model, reference, n, better, worse, wilcoxon)])
    return pd.DataFrame(rows, columns=columns)


def paired_sentence(model: str, reference: str, n: int, better: int, worse: int, p: float) -> str:
    """e.g. "lora: r1 scored higher than base on 8 of 10 prompts (lower on 1, equal on 1);
    Wilcoxon signed-rank p = 0.039 over 9 prompts with a difference: unlikely to be chance (p < 0.05)."""
    if n == 0:
        return f"No prompt has scores for both {model} and {reference} yet."
    tied = n - better - worse
    text = f"{model} scored higher than {reference} on {better} of {n} prompts (lower on {worse}, equal on {tied})"
    if better + worse == 0:
        return text + "; no difference to test."
    text += f"; Wilcoxon signed-rank p = {format_p(p)} over {better + worse} prompts with a difference"
    if p < 0.05:
        return text + ": unlikely to be chance (p < 0.05)."
    if better + worse < 6:  # with 5 or fewer differences even a clean sweep gives p ≥ 0.0625
        return text + ": too few prompts to tell (6 or more with a difference are needed for p < 0.05)."
    return text + ": could be chance (p ≥ 0.05)."


def format_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """"p = 0.039" or "p < 0.001", for a sentence."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def preference_table(judgements: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per model, over the pairs it was in where the rater stated a preference:
    won, lost, tie, the win rate (wins / stated) with its Wilson interval, and
    pairs with no stated preference."""
    columns = ["model", "stated", "won", "lost", "tie", "win rate", "win rate low", "win rate high",
               "no preference"]
    labels = dict(zip(scores["variant"], scores["label"]))
    rows = []
    for name, label in labels.items():
        mine = judgements[(judgements["left_variant"] == name) | (judgements["right_variant"] == name)]
        side = np.where(mine["left_variant"] == name, "A", "B")
        pref = mine["preference"].fillna("")
        won, tie = int((pref == side).sum()), int((pref == "tie").sum())
        lost = int(pref.isin(["A", "B"]).sum()) - won
        stated = won + lost + tie
        low, high = wilson_interval(won, stated)
        rows.append([label, stated, won, lost, tie, won / stated if stated else math.nan, low, high,
                     len(mine) - stated])
    return rounded(pd.DataFrame(rows, columns=columns), 3)


# --- agreement ---------------------------------------------------------------------------------
def krippendorff_alpha_ordinal(units: list[list[int]]) -> float:
    """Krippendorff's alpha with the ordinal difference function.

    `units` holds, per rated item, the values its raters gave (missing ones left
    out). Items with fewer than two values carry no information on agreement.
    Returns nan when no item has two values or when every value is the same
    (no expected disagreement: alpha is 0/0).
    """
    pairable = [u for u in units if len(u) >= 2]
    values = sorted({v for u in pairable for v in u})
    if not pairable or len(values) < 2:
        return math.nan
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))  # the coincidence matrix
    for unit in pairable:
        m = len(unit)
        for i, j in itertools.permutations(range(m), 2):
            o[index[unit[i]], index[unit[j]]] += 1 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    cum = np.cumsum(n_c)
    delta = np.zeros_like(o)  # ordinal: the values between c and k, the ends counted half
    for c, k in itertools.product(range(len(values)), repeat=2):
        lo, hi = min(c, k), max(c, k)
        between = cum[hi] - (cum[lo - 1] if lo else 0.0)
        delta[c, k] = (between - (n_c[c] + n_c[k]) / 2) ** 2
    observed = (o * delta).sum()
    expected = (np.outer(n_c, n_c) * delta).sum() / (n - 1)
    return float(1 - observed / expected)


def agreement(scores: pd.DataFrame) -> dict:
    """Krippendorff's alpha (ordinal) of the 1–5 scores, items being replies,
    with the counts behind it and a note when there is too little data."""
    raters = scores["rater"].nunique()
    units = [list(g) for _, g in scores.groupby(["position", "label"])["score"]]
    items = sum(len(u) >= 2 for u in units)
    alpha = krippendorff_alpha_ordinal(units)
    if raters < 2:
        note = f"{'Only one rater' if raters else 'No rater'} so far: agreement needs two or more raters."
    elif items == 0:
        note = "No reply has been rated by two raters yet: agreement cannot be measured."
    elif math.isnan(alpha):
        note = ("Every rating of the replies rated twice is the same score: raters agree, but alpha "
                "(agreement beyond chance) is undefined when scores do not vary.")
    else:
        note = (f"Krippendorff's alpha (ordinal) = {alpha:.2f} over {plural(items, 'reply', 'replies')} rated "
                f"by two or more of {raters} raters. 1 is perfect agreement, 0 is what chance gives; 0.667 is a "
                "common lowest bar for tentative conclusions, 0.8 for firm ones.")
        if items < FEW_ITEMS:
            note += f" With only {plural(items, 'reply', 'replies')} rated twice, treat it as rough."
    return {"alpha": alpha, "raters": raters, "items": items, "ratings": len(scores), "note": note}


# --- bias checks -----------------------------------------------------------------------------
def position_bias(judgements: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """How often the left-hand reply (A) won, by the stated preference and by
    the two scores, with the share of decided pairs, its Wilson interval and a
    two-sided binomial test against 50%."""
    columns = ["by", "pairs", "left won", "right won", "tie", "left share", "left share low", "left share high",
               "p"]
    rows = []
    pref = judgements["preference"]
    rows.append(_bias_row("stated preference", len(judgements), int((pref == "A").sum()),
                          int((pref == "B").sum()), int((pref == "tie").sum())))
    score_of = scores.set_index(["position", "variant", "rater"])["score"]
    left = _lookup(score_of, judgements, "left_variant")
    right = _lookup(score_of, judgements, "right_variant")
    rows.append(_bias_row("scores", len(judgements), int((left > right).sum()), int((left < right).sum()),
                          int((left == right).sum())))
    return rounded(pd.DataFrame(rows, columns=columns), 3)


def _lookup(score_of: pd.Series, judgements: pd.DataFrame, side: str) -> np.ndarray:
    keys = list(zip(judgements["position"], judgements[side], judgements["rater"]))
    return np.array([score_of.get(k, np.nan) for k in keys], dtype=float)


def _bias_row(by: str, pairs: int, left: int, right: int, tie: int) -> list:
    decided = left + right
    low, high = wilson_interval(left, decided)
    p = float(scipy_stats().binomtest(left, decided).pvalue) if decided else math.nan
    return [by, pairs, left, right, tie, left / decided if decided else math.nan, low, high, p]


def length_correlation(scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rank correlation of score with reply length (characters),
    over all ratings and per model; nan where scores or lengths do not vary."""
    columns = ["model", "ratings", "spearman rho", "p"]
    rows = []
    for label, part in [("all models", scores)] + [(m, scores[scores["label"] == m]) for m in models(scores)]:
        rho, p = math.nan, math.nan
        if len(part) >= 3 and part["score"].nunique() > 1 and part["reply_chars"].nunique() > 1:
            result = scipy_stats().spearmanr(part["score"], part["reply_chars"])
            rho, p = float(result.statistic), float(result.pvalue)
        rows.append([label, len(part), rho, p])
    return rounded(pd.DataFrame(rows, columns=columns), 3)


def bias_sentences(bias: pd.DataFrame, lengths: pd.DataFrame) -> list[str]:
    lines = []
    for row in bias.to_dict("records"):
        decided = row["left won"] + row["right won"]
        if decided:
            share, low, high = row["left share"], row["left share low"], row["left share high"]
            lines.append(f"By {row['by']}, the left-hand reply won {row['left won']} of {decided} decided pairs "
                         f"({share:.0%}, 95% CI {low:.0%}–{high:.0%}, p = {format_p(row['p'])}); "
                         "without position bias this is near 50%.")
        else:
            lines.append(f"By {row['by']}: no decided pair yet, so position bias cannot be checked.")
    overall = lengths.iloc[0] if len(lengths) else None
    if overall is None or math.isnan(overall["spearman rho"]):
        lines.append("Score versus reply length: not enough varied ratings to correlate.")
    else:
        lines.append(f"Score versus reply length: Spearman rho = {overall['spearman rho']:.2f} "
                     f"(p = {format_p(overall['p'])}, {overall['ratings']} ratings); near 0 means raters were "
                     "not swayed by length.")
    return lines


# --- the headline ----------------------------------------------------------------------------
def headline(scores: pd.DataFrame, threshold: int = SUCCESS_AT) -> list[str]:
    """Plain sentences: each model's success rate, then each paired comparison."""
    if scores.empty:
        return ["No ratings yet: share the raters' page (/rate) or rate on the Compare tab."]
    lines = []
    for row in success_table(scores, threshold).to_dict("records"):
        lines.append(f"{row['model']}: {row['successes']} of {row['rated']} ratings at {threshold} or more "
                     f"({row['rate']:.0%}, 95% CI {row['rate low']:.0%}–{row['rate high']:.0%}); "
                     f"mean score {row['mean score']:.2f}.")
    lines += list(paired_tests(scores)["in words"])
    return lines


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def rounded(table: pd.DataFrame, digits: int) -> pd.DataFrame:
    """The table with its float columns rounded to `digits` (in place, and returned)."""
    numeric = table.select_dtypes("float").columns
    table[numeric] = table[numeric].round(digits)
    return table
