"""The report and the export files (ratings.reports) of the results gathered from a filled store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd

from helpers import filled_store
from ratings import reports, tables


def test_markdown_report_reads_on_its_own(results):
    _, r = results
    text = reports.report_markdown(r)
    for heading in ("# friends' round", "## Summary", "## Settings", "## Success rate per model", "### By category",
                    "## Per prompt (mean score over the raters)", "## Head to head", "## Agreement between raters",
                    "## Bias checks", "## Automatic metrics", "## Prompts and replies"):
        assert f"\n{heading}\n" in f"\n{text}", heading
    assert "| max_new_tokens | 16 |" in text
    assert "a reply succeeds at **4 or more**" in text
    assert "| base (tiny) | 8 | 2 | 2/8 | 25% |" in text
    # each prompt with its replies side by side, a pipe and a line break kept inside the cell
    assert "| base (tiny) | lora: run-xyz |" in text
    assert "| I do not know. | The CEO is Liisa Kortelainen.<br>She \\| founded it |" in text
    assert "**mean 2.50**: 3 (Ana), 2 (Ben)" in text
    assert "Ben (base (tiny) vs lora: run-xyz): “odd line”" in text or \
        "Ben (lora: run-xyz vs base (tiny)): “odd line”" in text
    assert "**Reference:** Tampere, Finland." in text
    # the automatic check, made before anyone rated, sits beside the human scores
    assert "\n## Automatic check (made right after generation, before anyone rated)\n" in text
    assert "Agreement with the raters: Spearman ρ = " in text  # 8 rated replies with a contained figure
    assert "| answer contained | 0/3 · 0%" in text and "| 3/3 · 100%" in text


def test_report_of_an_evaluation_nobody_rated(tmp_path):
    store, eval_id = filled_store(tmp_path / "ratings.db", rated=False)
    text = reports.report_markdown(tables.gather(store, eval_id))
    assert "No ratings yet" in text
    assert text.count("_not rated_") == 8  # every reply still shown, side by side


def test_the_report_names_a_model_nobody_rated_first(results, tmp_path):
    """Its tables have no row for a model without scores, so its summary says so."""
    _, r = results
    assert "not compared yet" not in reports.report_markdown(r)
    idle = {"name": "run-idle", "label": "prompt_tuning: idle", "kind": "prompt_tuning"}
    r.variants = [*r.variants, idle]
    r.replies = pd.concat([r.replies, r.replies[r.replies["variant"] == "base"].assign(
        variant="run-idle", label=idle["label"])], ignore_index=True)
    summary = reports.report_markdown(r).split("## Summary\n\n", 1)[1]
    assert summary.startswith("- **prompt_tuning: idle: 0 of 4 replies rated — not compared yet.**")


def test_write_exports_writes_six_files_that_train_again(results, tmp_path):
    store, r = results
    paths = reports.write_exports(r, tmp_path / "out", store.path)
    names = [p.name for p in paths]
    assert names == ["evaluation-1-report.md", "evaluation-1-ratings.csv", "evaluation-1-preference-pairs.jsonl",
                     "evaluation-1-kto.jsonl", "evaluation-1-low-rated.csv", "tuner-ratings.db"]
    ratings = pd.read_csv(paths[1])
    assert len(ratings) == 16 and {"rater", "score", "reply", "variant"} <= set(ratings.columns)
    lines = paths[2].read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(tables.preference_pairs(r)) and set(json.loads(lines[0])) >= {"prompt", "chosen", "rejected"}
    kto = [json.loads(line) for line in paths[3].read_text(encoding="utf-8").splitlines()]
    assert kto and all(set(k) >= {"prompt", "completion", "label"} for k in kto)
    # both read back as what `python -m tuner train` takes for dpo and kto
    from tuner import preference
    assert len(preference.load(paths[2], "dpo")) == len(lines) and len(preference.load(paths[3], "kto")) == len(kto)


def test_sqlite_backup_is_a_complete_self_contained_copy(results, tmp_path):
    store, _ = results
    # the live database is in WAL mode: recent writes may sit in the -wal file
    copy = reports.backup_sqlite(store.path, tmp_path / "copy.db")
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 16
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 16
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert not Path(f"{copy}-wal").exists()
    # a backup over an older file replaces it
    assert reports.backup_sqlite(store.path, copy) == copy


def test_markdown_table_escapes_cells():
    text = reports.markdown_table(pd.DataFrame({"a": ["x|y"], "b": ["one\ntwo"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | one<br>two |"]
    assert reports.markdown_table(pd.DataFrame()) == "_(no rows yet)_"
