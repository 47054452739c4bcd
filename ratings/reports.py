"""The files the Results tab exports, from one gathered `ratings.tables.Results`.

The raw ratings (CSV), a Markdown report that reads on its own, preference
pairs and KTO examples (JSONL in TRL's prompt/chosen/rejected and
prompt/completion/label shapes: `python -m tuner train` takes them with method
dpo or kto), the low-rated
replies (CSV with an empty `completion` column to write the better reply in:
with its `prompt` column, the Dataset tab imports it as chat examples) and a
copy of the whole SQLite file (sqlite3's backup API: a consistent snapshot
even while raters write). Each file is written aside and renamed into place
(tuner.paths.replacing), so a download is never half a file.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ratings import checks as rchecks
from ratings import metrics, scale
from ratings.db import sqlite_disk_problem
from ratings.preferences import to_jsonl
from ratings.tables import Results, coverage_notes, display, kto_examples, low_rated, preference_pairs, ratings_csv
from tuner.paths import StorageError, atomic_write_text, replacing, storage_error


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
             f"{now.isoformat(timespec='seconds')}. Helpfulness is scored {scale.SPAN} ({scale.IN_WORDS}); "
             f"a reply succeeds at **{r.threshold} or more**. Raters saw the two replies of each pair blind, in a random order per rater.",
             "## Summary", "\n".join(f"- {line}" for line in [
                 *(f"**{note}**" for note in coverage_notes(r.variants, r.replies, r.scores)), *r.summary()]),
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
        parts += [f"### By {r.automatic_by.columns[0]}", markdown_table(display(r.automatic_by))]
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


# --- files ---------------------------------------------------------------------------------
def backup_sqlite(source: Path, target: Path) -> Path:
    """A consistent copy of the whole database (sqlite3's online backup reads a
    snapshot, WAL included, while raters keep writing), as one self-contained file.

    Never a file copy (that can catch the database between a write and its WAL):
    the backup goes into a temp file beside `target`, which replaces `target`
    only once complete; a full disk raises StorageError and leaves no file.
    """
    target = Path(target)
    try:
        with replacing(target, "the database backup", leftovers=("-journal", "-wal", "-shm")) as tmp:
            _backup_into(source, tmp)
    except sqlite3.Error as exc:
        problem = sqlite_disk_problem(exc) or str(exc)
        raise StorageError(f"Could not back up {source} to {target}: {problem}. No backup file was left; "
                           "free some disk space or fix the disk, then try again.") from exc
    return target


def _backup_into(source: Path, copy: Path) -> None:
    # mode=rw: a missing source is an error, not a new empty database
    src = sqlite3.connect(Path(source).resolve().as_uri() + "?mode=rw", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(copy)
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


def write_exports(r: Results, folder: Path, database: Path) -> list[Path]:
    """Write the six export files into `folder`; returns their paths. A full or
    failing disk raises StorageError naming the file and leaves no half of it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, f"the export file {folder.name}", folder) from exc
    stem = f"evaluation-{r.evaluation['id']}"
    files = {f"{stem}-report.md": report_markdown(r),
             f"{stem}-ratings.csv": ratings_csv(r).to_csv(index=False),
             f"{stem}-preference-pairs.jsonl": to_jsonl(preference_pairs(r)),
             f"{stem}-kto.jsonl": to_jsonl(kto_examples(r)),
             f"{stem}-low-rated.csv": low_rated(r).to_csv(index=False)}
    paths = []
    for name, text in files.items():
        atomic_write_text(folder / name, text, f"the export file {name}")
        paths.append(folder / name)
    return [*paths, backup_sqlite(database, folder / "tuner-ratings.db")]
