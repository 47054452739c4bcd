"""Everything the Results tab shows, gathered once, and the files it exports.

`gather` reads one evaluation from the store and computes every table (the
statistics in `ratings.stats`, the automatic metrics in `ratings.metrics`);
the tab and the Markdown report both read that one `Results`, so what the
owner sees and what they paste into a report cannot disagree.

Exports: the raw ratings (CSV), a Markdown report, a copy of the whole SQLite
file (sqlite3's backup API: a consistent snapshot even while raters write),
preference pairs (JSONL prompt/chosen/rejected, for preference tuning) and
the low-rated replies (CSV with an empty `completion` column to write the
better reply in: with its `prompt` column, the Dataset tab imports it as chat
examples).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ratings import checks as rchecks
from ratings import metrics, stats
from ratings.store import Store, sqlite_disk_problem
from tuner.paths import StorageError, fsync_dir, inside, storage_error

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


def gather(store: Store, eval_id: int, threshold: int = stats.SUCCESS,
           runs: dict[str, dict | None] | None = None) -> Results:
    """Read one evaluation and compute every table. `runs` maps a variant's
    name to its run record (for settings, losses, adapter size)."""
    scores, judgements = store.ratings_frame(eval_id), store.judgements_frame(eval_id)
    replies, variants = store.replies(eval_id), store.variants(eval_id)
    prompts = replies.drop_duplicates("position") if not replies.empty else None
    by_category = not replies.empty and replies["category"].fillna("").astype(str).str.strip().ne("").any()
    evaluation = store.evaluation(eval_id)
    check = rchecks.of_evaluation(evaluation, replies) if evaluation and not replies.empty else None
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
        automatic_by=metrics.automatic_table(replies, "category") if by_category else None,
        runs=metrics.run_table(variants, runs or {}),
        breakdowns={by: stats.breakdown_table(scores, by, threshold) for by in breakdown_choices(scores)},
        checks=check, check_agreement=rchecks.agreement(check, scores) if check else {},
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


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped, line breaks as <br>)."""
    if table.empty:
        return "_(no rows yet)_"

    def cell(value) -> str:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


# --- the report -----------------------------------------------------------------------------
def report_markdown(results: Results, now: datetime | None = None) -> str:
    """A report that reads on its own: settings, every table, then each prompt
    with its replies side by side and their scores."""
    e, r = results.evaluation, results
    now = now or datetime.now(timezone.utc)
    parts = [f"# {e['name']}",
             f"Evaluation #{e['id']} of `{e['base_model']}`, created {e['created_at']}; report written "
             f"{now.isoformat(timespec='seconds')}. Helpfulness is scored 1–5 (5 usable as is, 4 small edits, "
             f"3 needs work, 2 mostly unhelpful, 1 wrong or harmful); a reply succeeds at **{r.threshold} or "
             "more**. Raters saw the two replies of each pair blind, in a random order per rater.",
             "## Summary", "\n".join(f"- {line}" for line in r.summary()),
             "## Settings", "Generation (the same for every model):",
             markdown_table(pd.DataFrame(
                 [(k, json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in e["settings"].items()],
                 columns=["setting", "value"])),
             "Models and the runs behind them:", markdown_table(display(r.runs))]
    if e["rules"]:
        parts += ["Keyword rules:", "\n".join(f"- `{json.dumps(rule, ensure_ascii=False)}`" for rule in e["rules"])]
    parts += ["## Success rate per model", markdown_table(display(r.success))]
    for by, table in r.breakdowns.items():
        parts += [f"### By {by}", markdown_table(display(table))]
    parts += ["## Per prompt (mean score over the raters)", markdown_table(display(r.per_prompt)),
              "## Head to head", "Stated preferences (win rate = won / pairs with a stated preference):",
              markdown_table(display(r.preferences)),
              "Paired test of the per-prompt mean scores (Wilcoxon signed-rank, two-sided; sign test beside it):",
              markdown_table(display(r.paired.drop(columns=["in words"]))),
              "\n".join(f"- {line}" for line in r.paired["in words"]),
              "## Agreement between raters", r.agreement["note"],
              "## Bias checks", markdown_table(display(r.position_bias)), markdown_table(display(r.lengths)),
              "## Automatic metrics",
              "Exact match and answer contained compare the normalised reply with the reference answer; BLEU "
              "(sacrebleu, corpus) and ROUGE-L (F1) are 0–100. Only replies with a reference count for them.",
              markdown_table(display(r.automatic))]
    if r.automatic_by is not None:
        parts += ["### By category", markdown_table(display(r.automatic_by))]
    if r.checks is not None and not r.checks.replies.empty:
        parts += ["## Automatic check (made right after generation, before anyone rated)",
                  *r.check_lines(), markdown_table(rchecks.display(r.checks.table))]
        if not r.checks.paired.empty:
            parts.append(markdown_table(rchecks.display_paired(r.checks.paired)))
        if e.get("checks"):
            parts.append("Checks: " + "; ".join(f"`{c}`" for c in e["checks"]))
    parts += ["## Prompts and replies", *_prompt_sections(r)]
    return "\n\n".join(parts) + "\n"


def _prompt_sections(r: Results) -> list[str]:
    sections = []
    labels = [v["label"] for v in r.variants]
    comments = _comments(r)
    for position, group in r.replies.groupby("position", sort=True):
        first = group.iloc[0]
        title = " · ".join(str(x) for x in (first["external_id"], first["task"]) if isinstance(x, str) and x)
        lines = [f"### {position}. {title}", "> " + str(first["prompt"]).replace("\n", "\n> ")]
        if metrics.has_reference(first["reference"]):
            lines.append("**Reference:** " + str(first["reference"]).replace("\n", " "))
        by_label = group.set_index("label")
        shown = [lab for lab in labels if lab in by_label.index]
        scores = [_score_line(r.scores, position, lab) for lab in shown]
        lines.append(markdown_table(pd.DataFrame([[by_label.loc[lab, "reply"] for lab in shown], scores],
                                                 columns=shown)))
        lines += [f"- {c}" for c in comments.get(position, [])]
        sections.append("\n\n".join(lines))
    return sections


def _score_line(scores: pd.DataFrame, position: int, label: str) -> str:
    mine = scores[(scores["position"] == position) & (scores["label"] == label)]
    if mine.empty:
        return "_not rated_"
    given = ", ".join(f"{s} ({rater})" for rater, s in zip(mine["rater"], mine["score"]))
    return f"**mean {mine['score'].mean():.2f}**: {given}"


def _comments(r: Results) -> dict[int, list[str]]:
    """The raters' comments per prompt, each with the pair it was about."""
    labels = {v["name"]: v["label"] for v in r.variants}
    found: dict[int, list[str]] = {}
    for row in r.judgements.dropna(subset=["comment"]).itertuples():
        pair = f"{labels.get(row.left_variant, row.left_variant)} vs {labels.get(row.right_variant, row.right_variant)}"
        found.setdefault(row.position, []).append(f"{row.rater} ({pair}): “{' '.join(row.comment.split())}”")
    return found


# --- data for the next run --------------------------------------------------------------------
def _reply_means(r: Results) -> pd.DataFrame:
    """Each rated reply with its mean score, the scores given and the raters."""
    grouped = r.scores.groupby(["position", "variant"], sort=False)
    means = grouped["score"].agg(["mean", lambda s: ", ".join(map(str, s))]).reset_index()
    means.columns = ["position", "variant", "mean score", "scores"]
    return r.replies.merge(means, on=["position", "variant"])


def preference_pairs(r: Results) -> list[dict]:
    """Per prompt and pair of models whose mean scores differ: the prompt, the
    higher-rated reply as chosen, the lower-rated as rejected (TRL's
    prompt/chosen/rejected), with where each came from."""
    rows = []
    rated = _reply_means(r)
    for _, group in rated.groupby("position", sort=True):
        for a, b in itertools.combinations(group.to_dict("records"), 2):
            if a["mean score"] == b["mean score"]:
                continue
            chosen, rejected = (a, b) if a["mean score"] > b["mean score"] else (b, a)
            rows.append({"prompt": chosen["prompt"], "chosen": chosen["reply"], "rejected": rejected["reply"],
                         "id": chosen["external_id"], "task": chosen["task"],
                         "chosen_model": chosen["label"], "rejected_model": rejected["label"],
                         "chosen_score": round(float(chosen["mean score"]), 3),
                         "rejected_score": round(float(rejected["mean score"]), 3)})
    return rows


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


# --- files ---------------------------------------------------------------------------------
def backup_sqlite(source: Path, target: Path) -> Path:
    """A consistent copy of the whole database (sqlite3's online backup reads a
    snapshot, WAL included, while raters keep writing), as one self-contained file.

    Never a file copy (that can catch the database between a write and its WAL):
    the backup goes into a temp file beside `target`, which replaces `target`
    only once complete; a full disk raises StorageError and leaves no file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(exc, "the database backup", target.parent) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        # mode=rw: a missing source is an error, not a new empty database
        src = sqlite3.connect(Path(source).resolve().as_uri() + "?mode=rw", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # one step (pages=-1): one read transaction, so one point in time
                dst.execute("PRAGMA journal_mode=DELETE")  # no -wal file beside the copy
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"the copy failed its check: {check}")
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(tmp, target)
    except (sqlite3.Error, OSError) as exc:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, "the database backup", target.parent) from exc
        problem = sqlite_disk_problem(exc) or str(exc)
        raise StorageError(f"Could not back up {source} to {target}: {problem}. No backup file was left; "
                           "free some disk space or fix the disk, then try again.") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def ratings_csv(r: Results) -> pd.DataFrame:
    """One row per rating with its reply's text: the raw data behind every table."""
    reply = r.replies[["position", "variant", "reply", "latency_s", "new_tokens"]]
    return r.scores.merge(reply, on=["position", "variant"], how="left")


def write_exports(r: Results, folder: Path, database: Path) -> list[Path]:
    """Write the five export files into `folder`; returns their paths. A full or
    failing disk raises StorageError naming the file."""
    folder = Path(folder)
    stem = f"evaluation-{r.evaluation['id']}"
    report = folder / f"{stem}-report.md"
    ratings = folder / f"{stem}-ratings.csv"
    pairs = folder / f"{stem}-preference-pairs.jsonl"
    low = folder / f"{stem}-low-rated.csv"
    current = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        current = report
        report.write_text(report_markdown(r), encoding="utf-8")
        current = ratings
        ratings_csv(r).to_csv(ratings, index=False)
        current = pairs
        pairs.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preference_pairs(r)),
                         encoding="utf-8")
        current = low
        low_rated(r).to_csv(low, index=False)
    except OSError as exc:
        if current != folder:
            current.unlink(missing_ok=True)  # no half-written file to download
        raise storage_error(exc, f"the export file {current.name}", folder) from exc
    backup = backup_sqlite(database, folder / "tuner-ratings.db")
    return [report, ratings, pairs, low, backup]
