"""The ratings database: SQLite through sqlite-utils, schema as named migrations.

One short-lived connection per call (sqlite connections belong to the thread
that opened them; Gradio handlers run on a pool of threads), WAL so readers
never block the writer, a busy timeout so concurrent writers queue instead of
failing, `BEGIN IMMEDIATE` for writes, `synchronous=FULL` so an acknowledged
rating survives a power cut, UNIQUE constraints so a double click is harmless,
and an append-only audit table.
"""

from __future__ import annotations

import json
import random
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("tuner.ratings")


@migrations(name="0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db.executescript("""
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        base_model TEXT NOT NULL,
        run_id TEXT,
        settings TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE TABLE prompts (
        id INTEGER PRIMARY KEY,
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        position INTEGER NOT NULL,
        text TEXT NOT NULL,
        messages TEXT NOT NULL,
        reference TEXT,
        UNIQUE (evaluation_id, position)
    );
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        variant TEXT NOT NULL,          -- 'base' or 'tuned'
        model TEXT NOT NULL,            -- what produced it: model name, run id
        text TEXT NOT NULL,
        settings TEXT NOT NULL,
        latency_s REAL,
        new_tokens INTEGER,
        created_at TEXT NOT NULL,
        UNIQUE (prompt_id, variant)
    );
    -- which reply this rater sees on the left: drawn per prompt and per rater
    CREATE TABLE assignments (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        rater TEXT NOT NULL,
        left_reply_id INTEGER NOT NULL REFERENCES replies(id),
        right_reply_id INTEGER NOT NULL REFERENCES replies(id),
        created_at TEXT NOT NULL,
        UNIQUE (prompt_id, rater)
    );
    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        reply_id INTEGER NOT NULL REFERENCES replies(id),
        rater TEXT NOT NULL,
        score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (reply_id, rater)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        rater TEXT NOT NULL,
        reply_id INTEGER NOT NULL,
        old_score INTEGER,
        new_score INTEGER NOT NULL
    );
    CREATE INDEX replies_prompt ON replies(prompt_id);
    CREATE INDEX ratings_reply ON ratings(reply_id);
    """)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RatingError(ValueError):
    """Bad rating input; the message names the field and the value."""


def clean_rater(name) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise RatingError("Enter your name before rating.")
    if len(name) > 60:
        raise RatingError(f"Rater name is {len(name)} characters; use at most 60.")
    return name


def check_score(score, label: str) -> int:
    try:
        value = int(score)
    except (TypeError, ValueError, OverflowError):
        raise RatingError(f"{label}: choose a score from 1 to 5 (got {score!r}).") from None
    if not 1 <= value <= 5 or str(score).strip() not in {str(value), f"{value}.0"}:
        raise RatingError(f"{label}: the score must be a whole number from 1 to 5 (got {score!r}).")
    return value


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrations.apply(db)

    @contextmanager
    def db(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            yield sqlite_utils.Database(conn)
        finally:
            conn.close()

    @contextmanager
    def write(self):
        """A write transaction that takes the lock up front (no upgrade deadlocks)."""
        with self.db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- evaluations, prompts, replies -----------------------------------------
    def create_evaluation(self, name: str, base_model: str, run_id: str | None,
                          prompts: list[dict], settings: dict | None = None) -> int:
        """prompts: dicts with `text`, `messages` (the conversation) and optional `reference`."""
        with self.write() as db:
            eval_id = db["evaluations"].insert({
                "name": name, "base_model": base_model, "run_id": run_id,
                "settings": json.dumps(settings or {}), "created_at": _now()}).last_pk
            for position, p in enumerate(prompts, start=1):
                db["prompts"].insert({
                    "evaluation_id": eval_id, "position": position, "text": p["text"],
                    "messages": json.dumps(p.get("messages") or [{"role": "user", "content": p["text"]}]),
                    "reference": p.get("reference")})
        return eval_id

    def prompts(self, evaluation_id: int) -> list[dict]:
        with self.db() as db:
            rows = list(db.query("SELECT * FROM prompts WHERE evaluation_id = ? ORDER BY position",
                                 [evaluation_id]))
        for row in rows:
            row["messages"] = json.loads(row["messages"])
        return rows

    def add_reply(self, prompt_id: int, variant: str, model: str, text: str, settings: dict,
                  latency_s: float | None = None, new_tokens: int | None = None) -> int:
        with self.write() as db:
            db.execute(
                "INSERT INTO replies (prompt_id, variant, model, text, settings, latency_s, new_tokens, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (prompt_id, variant) DO UPDATE SET model=excluded.model, text=excluded.text,"
                " settings=excluded.settings, latency_s=excluded.latency_s, new_tokens=excluded.new_tokens",
                [prompt_id, variant, model, text, json.dumps(settings), latency_s, new_tokens, _now()])
            return db.execute("SELECT id FROM replies WHERE prompt_id=? AND variant=?",
                              [prompt_id, variant]).fetchone()[0]

    def evaluations(self) -> list[dict]:
        with self.db() as db:
            return list(db.query("""
                SELECT e.*, COUNT(DISTINCT p.id) AS n_prompts
                FROM evaluations e LEFT JOIN prompts p ON p.evaluation_id = e.id
                GROUP BY e.id ORDER BY e.id DESC"""))

    # --- blind pairs -------------------------------------------------------------
    def next_pair(self, evaluation_id: int, rater: str, rng: random.Random) -> dict | None:
        """The next prompt this rater has not rated, with its two replies in this
        rater's own random order. Returns only what the rater may see plus the
        assignment id; which variant is which stays here."""
        rater = clean_rater(rater)
        with self.db() as db:
            rows = list(db.query("""
                SELECT p.id, p.position, p.text FROM prompts p
                WHERE p.evaluation_id = ?
                  AND (SELECT COUNT(*) FROM replies r WHERE r.prompt_id = p.id) = 2
                  AND NOT EXISTS (SELECT 1 FROM ratings t JOIN replies r ON r.id = t.reply_id
                                  WHERE r.prompt_id = p.id AND t.rater = ?)
                ORDER BY p.position""", [evaluation_id, rater]))
            total = db.execute("SELECT COUNT(*) FROM prompts WHERE evaluation_id = ?",
                               [evaluation_id]).fetchone()[0]
        if not rows:
            return None
        prompt = rows[0]
        assignment = self._assign(prompt["id"], rater, rng)
        with self.db() as db:
            texts = {r["id"]: r["text"] for r in db.query(
                "SELECT id, text FROM replies WHERE id IN (?, ?)",
                [assignment["left_reply_id"], assignment["right_reply_id"]])}
        return {
            "assignment_id": assignment["id"],
            "prompt": prompt["text"],
            "reply_a": texts[assignment["left_reply_id"]],
            "reply_b": texts[assignment["right_reply_id"]],
            "done": total - len(rows),
            "total": total,
        }

    def _assign(self, prompt_id: int, rater: str, rng: random.Random) -> dict:
        with self.write() as db:
            found = list(db.query("SELECT * FROM assignments WHERE prompt_id=? AND rater=?",
                                  [prompt_id, rater]))
            if found:
                return found[0]
            ids = [r[0] for r in db.execute(
                "SELECT id FROM replies WHERE prompt_id=? ORDER BY variant", [prompt_id])]
            rng.shuffle(ids)
            db["assignments"].insert({"prompt_id": prompt_id, "rater": rater, "left_reply_id": ids[0],
                                      "right_reply_id": ids[1], "created_at": _now()})
            return list(db.query("SELECT * FROM assignments WHERE prompt_id=? AND rater=?",
                                 [prompt_id, rater]))[0]

    def rate_pair(self, assignment_id: int, rater: str, score_a, score_b) -> dict:
        """Commit both scores in one transaction, then (and only then) return
        which variant each side was."""
        rater = clean_rater(rater)
        a, b = check_score(score_a, "Reply A"), check_score(score_b, "Reply B")
        with self.write() as db:
            found = list(db.query("SELECT * FROM assignments WHERE id=?", [assignment_id]))
            if not found or found[0]["rater"] != rater:
                raise RatingError("This pair was not served to you; load the next pair again.")
            assignment = found[0]
            for reply_id, score in ((assignment["left_reply_id"], a), (assignment["right_reply_id"], b)):
                self._upsert_rating(db, reply_id, rater, score)
            sides = {r["id"]: r for r in db.query(
                "SELECT id, variant, model FROM replies WHERE id IN (?, ?)",
                [assignment["left_reply_id"], assignment["right_reply_id"]])}
        left, right = sides[assignment["left_reply_id"]], sides[assignment["right_reply_id"]]
        return {"a": left["variant"], "a_model": left["model"], "b": right["variant"],
                "b_model": right["model"], "score_a": a, "score_b": b}

    @staticmethod
    def _upsert_rating(db, reply_id: int, rater: str, score: int) -> None:
        old = db.execute("SELECT score FROM ratings WHERE reply_id=? AND rater=?",
                         [reply_id, rater]).fetchone()
        now = _now()
        db.execute("INSERT INTO ratings (reply_id, rater, score, created_at, updated_at)"
                   " VALUES (?, ?, ?, ?, ?) ON CONFLICT (reply_id, rater)"
                   " DO UPDATE SET score=excluded.score, updated_at=excluded.updated_at",
                   [reply_id, rater, score, now, now])
        db.execute("INSERT INTO audit (at, rater, reply_id, old_score, new_score) VALUES (?, ?, ?, ?, ?)",
                   [now, rater, reply_id, old[0] if old else None, score])

    # --- raw scores for the statistics ---------------------------------------------
    def ratings_frame(self, evaluation_id: int) -> pd.DataFrame:
        """One row per rating: prompt, variant, model, rater, score."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT p.id AS prompt_id, p.position, p.text AS prompt, r.variant, r.model,
                       t.rater, t.score
                FROM ratings t JOIN replies r ON r.id = t.reply_id JOIN prompts p ON p.id = r.prompt_id
                WHERE p.evaluation_id = ? ORDER BY p.position, r.variant, t.rater""", [evaluation_id]))
        columns = ["prompt_id", "position", "prompt", "variant", "model", "rater", "score"]
        return pd.DataFrame(rows, columns=columns)
