"""A judge beside the raters, in figures and words: pure pandas (scipy through `ratings.stats`),
no database, no HTTP. `ratings.judge` asks the judge and stores what it said; this module reads
its verdicts and scores against the raters'.

`verdicts` is `ratings.judge.verdicts_frame`'s shape (one row per pair and order); `human` is
`Store.ratings_frame`'s and `judged` `ratings.judge.judge_frame`'s (the same columns).

- pairs: each pair judged in both orders: the winner when both orders agree (`pair_table`), per
  model (`verdict_table`), and how much the order sways the judge (`position_bias`);
- scores: success rates beside the raters', never pooled (`success_beside`), and agreement with
  them: Spearman's rho and Kendall's tau against the raters' mean, Krippendorff's alpha with and
  without the judge, and whether the judge can be trusted on this task (`agreement`, TRUST_RULE).
"""

from __future__ import annotations

import math

import pandas as pd

from ratings import stats
from ratings.scale import SUCCESS_AT


# --- pairs: both orders, consistency, position bias ----------------------------------------------
def _winner(row) -> str | None:
    """Which reply of the pair won in one order: 'reply1', 'reply2', 'tie', or None (unreadable)."""
    if row["verdict"] is None or (isinstance(row["verdict"], float) and math.isnan(row["verdict"])):
        return None
    if row["verdict"] == "tie":
        return "tie"
    won = row["first_reply_id"] if row["verdict"] == "first" else row["second_reply_id"]
    return "reply1" if won == row["reply1_id"] else "reply2"


PAIR_COLUMNS = ["comparison_id", "position", "model 1", "model 2", "model 1 shown first", "model 2 shown first",
                "verdict"]


def pair_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: who won when model 1's reply was shown first, who won when model 2's
    was, and the verdict: the winner's model (or "tie") when both orders agree, "inconsistent"
    when they do not, "unreadable" when an answer held no verdict."""
    rows = []
    for comparison, group in verdicts.groupby("comparison_id", sort=False):
        first = group.iloc[0]
        names = {"reply1": first["model1"], "reply2": first["model2"], "tie": "tie", None: "unreadable"}
        by_order = {}
        for row in group.to_dict("records"):
            by_order["1" if row["first_reply_id"] == row["reply1_id"] else "2"] = _winner(row)
        one, two = by_order.get("1"), by_order.get("2")
        if one is None or two is None:
            verdict = "unreadable"
        else:
            verdict = names[one] if one == two else "inconsistent"
        rows.append([comparison, first["position"], first["model1"], first["model2"], names[one], names[two],
                     verdict])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def verdict_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per model, over its pairs: won and lost (both orders agreeing), tie, inconsistent, unreadable."""
    columns = ["model", "pairs", "won", "lost", "tie", "inconsistent", "unreadable"]
    labels = list(dict.fromkeys(list(pairs["model 1"]) + list(pairs["model 2"])))
    rows = []
    for label in labels:
        mine = pairs[(pairs["model 1"] == label) | (pairs["model 2"] == label)]
        v = mine["verdict"]
        decided = ~v.isin(["tie", "inconsistent", "unreadable"])
        rows.append([label, len(mine), int((v == label).sum()), int((decided & (v != label)).sum()),
                     int((v == "tie").sum()), int((v == "inconsistent").sum()), int((v == "unreadable").sum())])
    return pd.DataFrame(rows, columns=columns)


def position_bias(verdicts: pd.DataFrame) -> dict:
    """How much the order sways the judge: pairs whose verdict changes with the order (of those
    readable in both), and how often the reply shown first won (of the answers naming a winner,
    with its Wilson interval and a two-sided binomial test against 50%)."""
    pairs = pair_table(verdicts)
    readable = pairs[pairs["verdict"] != "unreadable"]
    inconsistent = int((readable["verdict"] == "inconsistent").sum())
    decided = verdicts[verdicts["verdict"].isin(["first", "second"])]
    first_won = int((decided["verdict"] == "first").sum())
    low, high = stats.wilson_interval(first_won, len(decided))
    p = float(stats.scipy_stats().binomtest(first_won, len(decided)).pvalue) if len(decided) else math.nan
    return {"pairs": len(pairs), "readable": len(readable), "inconsistent": inconsistent,
            "inconsistent share": inconsistent / len(readable) if len(readable) else math.nan,
            "decided": len(decided), "first won": first_won,
            "first share": first_won / len(decided) if len(decided) else math.nan,
            "first share low": low, "first share high": high, "p": p}


def position_sentence(bias: dict) -> str:
    if not bias["pairs"]:
        return "The judge has not judged any pair of this evaluation."
    if not bias["readable"]:
        return (f"None of the judge's {stats.plural(bias['pairs'], 'pair', 'pairs')} has a readable verdict in "
                "both orders: position bias cannot be checked.")
    text = (f"Position bias: the verdict changed with the order on {bias['inconsistent']} of "
            f"{stats.plural(bias['readable'], 'pair', 'pairs')} judged in both orders "
            f"({bias['inconsistent share']:.0%}; 0% means order never swayed it)")
    if bias["decided"]:
        text += (f"; the reply shown first won {bias['first won']} of {bias['decided']} answers naming a winner "
                 f"({bias['first share']:.0%}, 95% CI {bias['first share low']:.0%}–{bias['first share high']:.0%}, "
                 f"{stats.p_text(bias['p'])}; near 50% without bias)")
    return text + "."


# --- beside the humans: success rates and agreement ---------------------------------------------
def success_beside(human: pd.DataFrame, judged: pd.DataFrame, threshold: int = SUCCESS_AT,
                   judge: str = "judge") -> pd.DataFrame:
    """`ratings.stats.success_table` of the raters and of the judge, one row each per model,
    side by side (never pooled): "scored by" says whose scores a row counts."""
    parts = [stats.success_table(frame, threshold).assign(**{"scored by": who})
             for frame, who in ((human, "raters"), (judged, judge)) if not frame.empty]
    if not parts:
        return pd.DataFrame(columns=["model", "scored by"] + stats.SUCCESS_COLUMNS[1:])
    table = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(dict.fromkeys(list(human.get("label", [])) + list(judged["label"])))}
    table = table.sort_values("model", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return table[["model", "scored by"] + stats.SUCCESS_COLUMNS[1:]]


TRUST_MIN_REPLIES = 10  # replies rated by both, below which no trust is given
TRUST_MIN_RHO = 0.5  # Spearman's rho between the judge's score and the raters' mean, at least
ALPHA_BAR = 0.667  # Krippendorff's common lowest bar, used when the raters' own alpha cannot be measured
TRUST_RULE = (f"The rule: the judge can be trusted on this task when at least {TRUST_MIN_REPLIES} replies are "
              f"scored by it and by the raters, Spearman's ρ between its score and their mean score is "
              f"{TRUST_MIN_RHO} or more, and adding it as one more rater does not lower Krippendorff's alpha "
              f"below the raters' own (with a single rater per reply: alpha with the judge of {ALPHA_BAR} or more).")


def _units(human: pd.DataFrame, judged: pd.DataFrame | None = None) -> list[list[int]]:
    """Krippendorff's units, one per reply: its raters' scores, plus the judge's when given."""
    units = {key: list(group) for key, group in human.groupby(["position", "variant"])["score"]}
    if judged is not None:
        for key, score in judged.set_index(["position", "variant"])["score"].items():
            if key in units:
                units[key].append(int(score))
    return list(units.values())


def agreement(human: pd.DataFrame, judged: pd.DataFrame) -> dict:
    """The judge against the raters on the replies both scored: Spearman's rho and Kendall's
    tau between the judge's score and the raters' mean score per reply (n, p), and
    Krippendorff's alpha (ordinal) of the raters alone and of the raters plus the judge."""
    mean = human.groupby(["position", "variant"])["score"].mean().rename("human")
    mine = judged.set_index(["position", "variant"])["score"].astype(float).rename("judge")
    both = pd.concat([mine, mean], axis=1, join="inner").dropna()
    n = len(both)
    result = {"n": n, "spearman": math.nan, "spearman p": math.nan, "kendall": math.nan, "kendall p": math.nan}
    if n >= 3 and both["judge"].nunique() > 1 and both["human"].nunique() > 1:
        scipy_stats = stats.scipy_stats()
        rho, tau = scipy_stats.spearmanr(both["judge"], both["human"]), scipy_stats.kendalltau(both["judge"],
                                                                                              both["human"])
        result.update({"spearman": float(rho.statistic), "spearman p": float(rho.pvalue),
                       "kendall": float(tau.statistic), "kendall p": float(tau.pvalue)})
    alone, together = _units(human), _units(human, judged)
    result.update({"alpha raters": stats.krippendorff_alpha_ordinal(alone),
                   "alpha raters items": sum(len(u) >= 2 for u in alone),
                   "alpha with judge": stats.krippendorff_alpha_ordinal(together),
                   "alpha with judge items": sum(len(u) >= 2 for u in together)})
    result["trusted"], result["trust"] = _trust(result)
    return result


def _trust(a: dict) -> tuple[bool, str]:
    """Whether the judge can be trusted on this task by TRUST_RULE, and why, in a sentence."""
    if a["n"] < TRUST_MIN_REPLIES:
        return False, (f"Too few replies scored by both the judge and the raters ({a['n']}; {TRUST_MIN_REPLIES} "
                       "are needed) to say whether the judge can be trusted on this task: go by the raters.")
    problems = []
    if math.isnan(a["spearman"]) or a["spearman"] < TRUST_MIN_RHO:
        rho = "undefined (the scores do not vary)" if math.isnan(a["spearman"]) else f"{a['spearman']:.2f}"
        problems.append(f"Spearman's ρ is {rho}, under {TRUST_MIN_RHO}")
    alone, together = a["alpha raters"], a["alpha with judge"]
    if not math.isnan(alone):
        if math.isnan(together) or together < alone:
            problems.append(f"adding the judge lowers Krippendorff's alpha from {alone:.2f} to {together:.2f}")
    elif math.isnan(together) or together < ALPHA_BAR:
        problems.append(f"alpha between the judge and the raters is {together:.2f}, under {ALPHA_BAR}")
    if problems:
        return False, "Do not trust the judge on this task yet: " + "; ".join(problems) + "."
    alpha = (f"alpha {together:.2f} with it against {alone:.2f} without" if not math.isnan(alone)
             else f"alpha {together:.2f} between it and the raters")
    return True, (f"The judge can be trusted on this task for a first look (ρ = {a['spearman']:.2f} over "
                  f"{a['n']} replies, {alpha}); the raters' scores remain the evidence.")


def agreement_table(a: dict) -> pd.DataFrame:
    """The agreement figures as rows people read: measure, value, replies (n), p."""
    rows = [["Spearman's ρ (judge vs raters' mean)", a["spearman"], a["n"], a["spearman p"]],
            ["Kendall's τ (judge vs raters' mean)", a["kendall"], a["n"], a["kendall p"]],
            ["Krippendorff's alpha, raters alone", a["alpha raters"], a["alpha raters items"], math.nan],
            ["Krippendorff's alpha, raters + judge", a["alpha with judge"], a["alpha with judge items"], math.nan]]
    return stats.rounded(pd.DataFrame(rows, columns=["measure", "value", "replies", "p"]), 3)


def agreement_sentence(a: dict) -> str:
    if a["n"] == 0:
        return "No reply is scored by both the judge and the raters yet: agreement cannot be measured."
    if math.isnan(a["spearman"]):
        return (f"Agreement with the raters on {stats.plural(a['n'], 'reply', 'replies')} scored by both: not "
                "measurable yet (3 or more with varied scores are needed).")
    return (f"Agreement with the raters over {stats.plural(a['n'], 'reply', 'replies')} scored by both: Spearman's "
            f"ρ = {a['spearman']:.2f} ({stats.p_text(a['spearman p'])}), Kendall's τ = {a['kendall']:.2f} "
            f"({stats.p_text(a['kendall p'])}) between the judge's score and the raters' mean.")


