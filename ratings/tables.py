"""Everything the Results tab shows, gathered once: pure pandas over the store's frames.

`gather` reads one evaluation from the store and computes every table (the
statistics in `ratings.stats`, the automatic metrics in `ratings.metrics`);
the tab and the report (`ratings.reports`) both read that one `Results`, so
what the owner sees and what they paste into a report cannot disagree.

Beside them, the data for the next run: preference pairs (prompt/chosen/rejected)
and KTO examples (prompt/completion/label) by ratings.preferences' rules, and the
low-rated replies, with an empty `completion` column to write the better reply in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ratings import checks as rchecks
from ratings import metrics, preferences, stats
from ratings.scale import SUCCESS_AT
from ratings.store import Store

BREAKDOWNS = ("category", "task", "flag", "rater")  # what the success rate can be broken down by
PERCENT = {"rate", "win rate", "left share", "exact match", "answer contained"}


@dataclass
class Results:
    evaluation: dict
    variants: list[dict]
    threshold: int
    scores: pd.DataFrame  # Store.ratings_frame
    judgements: pd.DataFrame  # Store.judgements_frame
    replies: pd.DataFrame  # Store.replies
    success: pd.DataFrame
    per_prompt: pd.DataFrame
    paired: pd.DataFrame
    preferences: pd.DataFrame
    agreement: dict
    position_bias: pd.DataFrame
    lengths: pd.DataFrame
    automatic: pd.DataFrame
    runs: pd.DataFrame
    breakdowns: dict[str, pd.DataFrame] = field(default_factory=dict)
    automatic_by: pd.DataFrame | None = None  # per category, when the prompts have categories
    checks: rchecks.CheckReport | None = None  # the automatic check made right after generation
    check_agreement: dict = field(default_factory=dict)  # the check's headline against the human scores
    # the next run's data by ratings.preferences' default rules (corrections included)
    dpo: preferences.PreferenceData | None = None
    kto: preferences.PreferenceData | None = None

    def check_lines(self) -> list[str]:
        """The automatic check's verdict and its agreement with the raters, in words."""
        if self.checks is None or self.checks.replies.empty:
            return []
        return [rchecks.verdict(self.checks), rchecks.agreement_sentence(self.check_agreement)]

    def summary(self) -> list[str]:
        """The plain sentences that head the tab and the report."""
        if self.scores.empty:
            return stats.headline(self.scores, self.threshold)
        judged = len(self.judgements)
        lines = [f"{len(self.scores)} ratings by {stats.plural(self.scores['rater'].nunique(), 'rater', 'raters')} "
                 f"on {self.scores['position'].nunique()} of {self.replies['position'].nunique()} prompts "
                 f"({stats.plural(judged, 'rated pair', 'rated pairs')})."]
        lines += stats.headline(self.scores, self.threshold)
        lines.append(self.agreement["note"])
        lines += stats.bias_sentences(self.position_bias, self.lengths)
        return lines


FEW_SHARE = 0.5  # a model with less than this part of its even share of the scores is named as under-rated


def coverage_notes(variants: list[dict], replies: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    """Each model with no or few scores yet, in words ("prompt tuning: 0 of 11 replies
    rated — not compared yet"). The tables have no row for a model nobody rated, so
    without this a model left out of the rating would go unmentioned. Its even share
    is the scores given so far / the number of models; nothing is said before the first
    score (the headline says there are none)."""
    if scores.empty or not variants:
        return []
    share = len(scores) / len(variants)
    notes = []
    for v in variants:
        label = v.get("label") or v["name"]
        mine = scores[scores["variant"] == v["name"]]
        n_replies = int((replies["variant"] == v["name"]).sum()) if not replies.empty else 0
        rated = mine["position"].nunique()
        if mine.empty:
            notes.append(f"{label}: 0 of {n_replies} replies rated — not compared yet.")
        elif len(mine) < FEW_SHARE * share:
            notes.append(f"{label}: {rated} of {n_replies} replies rated, {len(mine)} of {len(scores)} scores "
                         f"(an even share is {share:.0f}) — too few to compare yet; read its rows with care.")
    return notes


def breakdown_choices(scores: pd.DataFrame) -> list[str]:
    """The columns worth breaking down by: those with a value on some rating,
    and (for task) fewer distinct values than prompts, else it is the per-prompt table."""
    choices = []
    for by in BREAKDOWNS:
        values = scores[by].dropna().astype(str).str.strip() if by in scores else pd.Series(dtype=str)
        values = values[values != ""]
        if values.empty or (by == "task" and values.nunique() >= scores["position"].nunique()):
            continue
        choices.append(by)
    return choices


def gather(store: Store, eval_id: int, threshold: int = SUCCESS_AT,
           runs: dict[str, dict | None] | None = None) -> Results:
    """Read one evaluation and compute every table. `runs` maps a variant's
    name to its run record (for settings, losses, adapter size)."""
    scores, judgements = store.ratings_frame(eval_id), store.judgements_frame(eval_id)
    replies, variants = store.replies(eval_id), store.variants(eval_id)
    prompts = replies.drop_duplicates("position") if not replies.empty else None
    by_category = not replies.empty and replies["category"].fillna("").astype(str).str.strip().ne("").any()
    evaluation = store.evaluation(eval_id)
    check = rchecks.of_evaluation(evaluation, replies) if evaluation and not replies.empty else None
    # the prompts' category may be a dataset's difficulty (ratings.generation): headed by its real name
    named = ((evaluation or {}).get("settings") or {}).get("category_column") or "category"
    return Results(
        evaluation=evaluation, variants=variants, threshold=threshold, scores=scores,
        judgements=judgements, replies=replies,
        success=stats.success_table(scores, threshold),
        per_prompt=stats.per_prompt_table(scores, prompts),
        paired=stats.paired_tests(scores),
        preferences=stats.preference_table(judgements, scores),
        agreement=stats.agreement(scores),
        position_bias=stats.position_bias(judgements, scores),
        lengths=stats.length_correlation(scores),
        automatic=metrics.automatic_table(replies),
        automatic_by=metrics.automatic_table(replies, "category").rename(columns={"category": named})
        if by_category else None,
        runs=metrics.run_table(variants, runs or {}),
        breakdowns={named if by == "category" else by:
                    stats.breakdown_table(scores, by, threshold).rename(columns={"category": named})
                    for by in breakdown_choices(scores)},
        checks=check, check_agreement=rchecks.agreement(check, scores) if check else {},
        dpo=preferences.dpo_pairs(store, eval_id, threshold=threshold), kto=preferences.kto_examples(store, eval_id),
    )


# --- tables for people -------------------------------------------------------------------------
def display(table: pd.DataFrame) -> pd.DataFrame:
    """A table as people read it: each "X low"/"X high" pair becomes one
    "X 95% CI" column after X, rates as percentages, p-values as "0.039" or
    "< 0.001", other numbers to at most two decimals, blanks for missing values."""
    out = pd.DataFrame(index=table.index)
    columns = list(table.columns)
    for col in columns:
        if col.endswith((" low", " high")) and col.rsplit(" ", 1)[0] in columns:
            continue
        out[col] = [_cell(col, v) for v in table[col]]
        if f"{col} low" in columns and f"{col} high" in columns:
            out[f"{col} 95% CI"] = [
                "" if pd.isna(lo) else f"{_cell(col, lo)}–{_cell(col, hi)}"
                for lo, hi in zip(table[f"{col} low"], table[f"{col} high"])]
    return out.reset_index(drop=True)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, str)):
        return str(value)
    if column in PERCENT:
        return f"{value:.0%}"
    if column == "p" or column.endswith(" p"):
        return stats.format_p(value)
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


# --- data for the next run --------------------------------------------------------------------
def _reply_means(r: Results) -> pd.DataFrame:
    """Each rated reply with its mean score, the scores given and the raters."""
    grouped = r.scores.groupby(["position", "variant"], sort=False)
    means = grouped["score"].agg(["mean", lambda s: ", ".join(map(str, s))]).reset_index()
    means.columns = ["position", "variant", "mean score", "scores"]
    return r.replies.merge(means, on=["position", "variant"])


def preference_pairs(r: Results) -> list[dict]:
    """DPO pairs in TRL's conversational prompt/chosen/rejected shape, by ratings.preferences'
    rules (means at least 1 apart; corrections chosen), with where each came from."""
    return r.dpo.rows if r.dpo is not None else []


def kto_examples(r: Results) -> list[dict]:
    """KTO examples (prompt/completion/label: desirable at a mean of 4 or more, undesirable at 2 or less)."""
    return r.kto.rows if r.kto is not None else []


LOW_COLUMNS = ["id", "task", "category", "model", "mean score", "scores", "comments", "prompt", "reply",
               "reference", "completion"]


def low_rated(r: Results) -> pd.DataFrame:
    """Replies whose mean score is below the threshold, worst first, with the
    raters' comments on their pairs and an empty `completion` to fill in."""
    rated = _reply_means(r)
    low = rated[rated["mean score"] < r.threshold].sort_values(["mean score", "position"], kind="stable")
    notes = r.judgements.dropna(subset=["comment"])
    rows = []
    for row in low.to_dict("records"):
        mine = notes[(notes["position"] == row["position"])
                     & ((notes["left_variant"] == row["variant"]) | (notes["right_variant"] == row["variant"]))]
        rows.append([row["external_id"], row["task"], row["category"], row["label"], round(row["mean score"], 2),
                     row["scores"], " | ".join(f"{c.rater}: {c.comment}" for c in mine.itertuples()),
                     row["prompt"], row["reply"], row["reference"], ""])
    return pd.DataFrame(rows, columns=LOW_COLUMNS)


def ratings_csv(r: Results) -> pd.DataFrame:
    """One row per rating with its reply's text: the raw data behind every table."""
    reply = r.replies[["position", "variant", "reply", "latency_s", "new_tokens"]]
    return r.scores.merge(reply, on=["position", "variant"], how="left")


