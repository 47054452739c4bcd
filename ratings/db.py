"""The SQLite machinery under the ratings store: connections, group commit, the schema.

One connection per thread, kept between calls (sqlite connections belong to the
thread that opened them; Gradio handlers run on a pool of threads), WAL so readers
never block the writer, a busy timeout so concurrent writers queue instead of
failing, `BEGIN IMMEDIATE` for writes, `synchronous=FULL` so an acknowledged
rating survives a power cut, and the schema as named migrations (sqlite-utils),
applied on open. What the tables mean is `ratings.store`'s business.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from tuner.paths import StorageError

migrations = Migrations("tuner.ratings")
# The migrations are the schema's history: once applied somewhere they are never
# edited, so their 1–5 CHECKs stay literal even though ratings.scale names the scale.


# the schema as first released (later migrations add to it; never edit this text)
INITIAL_SCHEMA = """
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        base_model TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',   -- generation settings, fixed and recorded
        rules TEXT NOT NULL DEFAULT '[]',      -- keyword rules that flag prompts
        invite_code TEXT,                      -- raters must give it when set
        created_at TEXT NOT NULL
    );
    CREATE TABLE variants (
        id INTEGER PRIMARY KEY,
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        name TEXT NOT NULL,                    -- 'base' or a run id
        label TEXT NOT NULL,                   -- what tables show
        kind TEXT NOT NULL,                    -- base, lora, prompt_tuning, ...
        UNIQUE (evaluation_id, name)
    );
    CREATE TABLE prompts (
        id INTEGER PRIMARY KEY,
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        position INTEGER NOT NULL,
        external_id TEXT,
        task TEXT,
        text TEXT NOT NULL,                    -- what raters read
        messages TEXT NOT NULL,                -- what the models saw (with any rule tag)
        reference TEXT,
        category TEXT,
        flags TEXT NOT NULL DEFAULT '[]',
        UNIQUE (evaluation_id, position)
    );
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        variant_id INTEGER NOT NULL REFERENCES variants(id),
        text TEXT NOT NULL,
        settings TEXT NOT NULL,
        latency_s REAL,
        new_tokens INTEGER,
        flags TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        UNIQUE (prompt_id, variant_id)
    );
    CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        reply1_id INTEGER NOT NULL REFERENCES replies(id),
        reply2_id INTEGER NOT NULL REFERENCES replies(id),
        UNIQUE (reply1_id, reply2_id)
    );
    -- which reply this rater sees on the left: drawn per comparison and per rater
    CREATE TABLE assignments (
        id INTEGER PRIMARY KEY,
        comparison_id INTEGER NOT NULL REFERENCES comparisons(id),
        rater TEXT NOT NULL,
        left_reply_id INTEGER NOT NULL REFERENCES replies(id),
        right_reply_id INTEGER NOT NULL REFERENCES replies(id),
        created_at TEXT NOT NULL,
        rated_at TEXT,
        preference TEXT CHECK (preference IN ('A', 'B', 'tie')),
        comment TEXT,
        UNIQUE (comparison_id, rater)
    );
    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        reply_id INTEGER NOT NULL REFERENCES replies(id),
        rater TEXT NOT NULL,
        score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
        adherence INTEGER CHECK (adherence BETWEEN 1 AND 5),
        tone INTEGER CHECK (tone BETWEEN 1 AND 5),
        clarity INTEGER CHECK (clarity BETWEEN 1 AND 5),
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
    CREATE INDEX assignments_rater ON assignments(rater);
"""


@migrations(name="0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db.executescript(INITIAL_SCHEMA)


@migrations(name="0002_rater_keys")
def _rater_keys(db: sqlite_utils.Database) -> None:
    # a typed-in rater name belongs to the browser that first used it (it holds
    # the key); a Hugging Face sign-in proves the name by itself (kind 'hf')
    db.executescript("""
    CREATE TABLE rater_keys (
        rater TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('key', 'hf')),
        key_hash TEXT,
        created_at TEXT NOT NULL
    );
    """)


@migrations(name="0003_checks")
def _checks(db: sqlite_utils.Database) -> None:
    # the automatic checks of an evaluation (ratings.checks lines), run right after generation
    db.execute("ALTER TABLE evaluations ADD COLUMN checks TEXT NOT NULL DEFAULT '[]'")


@migrations(name="0004_rating_integrity")
def _rating_integrity(db: sqlite_utils.Database) -> None:
    # when raters learn which model wrote which reply: after their last pair ('end', the
    # default: a reveal per pair would teach a rater to spot a model's texts) or after each
    db.execute("ALTER TABLE evaluations ADD COLUMN reveal TEXT NOT NULL DEFAULT 'end'")
    db.executescript("""
    -- the names that rate an evaluation, with the address that first used each (hashed):
    -- one address may bring only a few new names to one evaluation
    CREATE TABLE rater_joins (
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        rater TEXT NOT NULL,
        client_hash TEXT NOT NULL,
        joined_at TEXT NOT NULL,
        PRIMARY KEY (evaluation_id, rater)
    );
    -- raters the owner left out of an evaluation's statistics (their ratings are kept)
    CREATE TABLE excluded_raters (
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        rater TEXT NOT NULL,
        excluded_at TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (evaluation_id, rater)
    );
    -- every owner decision about raters, and every explicit change of a score
    CREATE TABLE owner_audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        evaluation_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        rater TEXT NOT NULL,
        detail TEXT
    );
    """)


@migrations(name="0005_corrections")
def _corrections(db: sqlite_utils.Database) -> None:
    # the owner's better version of a reply, kept beside the reply the raters scored (never
    # over it): preference data takes it as a chosen answer, and it can go into an SFT dataset
    db.executescript("""
    CREATE TABLE corrections (
        reply_id INTEGER PRIMARY KEY REFERENCES replies(id),
        text TEXT NOT NULL,
        corrected_at TEXT NOT NULL
    );
    """)


@migrations(name="0006_judge")
def _judge(db: sqlite_utils.Database) -> None:
    # a judge model's scores and pair verdicts, kept apart from the raters' (never mixed in):
    # `judge` names the model; a score or verdict it gave in no readable form is NULL, with
    # its raw answer kept. Each pair is asked in both orders (first/second = as the judge saw it)
    db.executescript("""
    CREATE TABLE judge_scores (
        id INTEGER PRIMARY KEY,
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        judge TEXT NOT NULL,
        reply_id INTEGER NOT NULL REFERENCES replies(id),
        score INTEGER CHECK (score BETWEEN 1 AND 5),
        raw TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (judge, reply_id)
    );
    CREATE TABLE judge_verdicts (
        id INTEGER PRIMARY KEY,
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        judge TEXT NOT NULL,
        comparison_id INTEGER NOT NULL REFERENCES comparisons(id),
        first_reply_id INTEGER NOT NULL REFERENCES replies(id),
        second_reply_id INTEGER NOT NULL REFERENCES replies(id),
        verdict TEXT CHECK (verdict IN ('first', 'second', 'tie')),
        raw TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (judge, comparison_id, first_reply_id)
    );
    CREATE INDEX judge_scores_eval ON judge_scores(evaluation_id, judge);
    CREATE INDEX judge_verdicts_eval ON judge_verdicts(evaluation_id, judge);
    """)



@migrations(name="0007_rater_claims")
def _rater_claims(db: sqlite_utils.Database) -> None:
    # a name is claimed per evaluation, together with its join (one transaction: a refused join
    # claims nothing): by the browser holding the key (kind 'key'; key_hash is the hash of the
    # random key the server keeps in that browser's HttpOnly cookie; also kept for 'hf', so one
    # browser brings one name) or by a Hugging Face sign-in (kind 'hf'). rater_keys (0002)
    # claimed names for every evaluation at once and before the per-address cap; the names
    # already joined to an evaluation keep their claim there
    db.executescript("""
    CREATE TABLE rater_claims (
        evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
        rater TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('key', 'hf')),
        key_hash TEXT,
        client_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (evaluation_id, rater)
    );
    CREATE INDEX rater_claims_key ON rater_claims(evaluation_id, key_hash);
    INSERT INTO rater_claims (evaluation_id, rater, kind, key_hash, client_hash, created_at)
        SELECT j.evaluation_id, j.rater, k.kind, k.key_hash, j.client_hash, j.joined_at
        FROM rater_joins j JOIN rater_keys k ON k.rater = j.rater;
    """)


@migrations(name="0008_closed_rating")
def _closed_rating(db: sqlite_utils.Database) -> None:
    # when the owner closed rating of an evaluation (NULL: raters may rate it while it has pairs);
    # the ratings given before it closed stay. And the audit rows that replaced a score, indexed on
    # their own: the scheduler reads the latest one to know whether the decisions it keeps still hold
    db.execute("ALTER TABLE evaluations ADD COLUMN closed_at TEXT")
    db.execute("CREATE INDEX audit_changes ON audit(id) WHERE old_score IS NOT NULL")


@migrations(name="0009_comparisons_by_prompt")
def _comparisons_by_prompt(db: sqlite_utils.Database) -> None:
    # one evaluation's pairs found from its prompts: without it every query of one evaluation's
    # assignments (the next pair, the sequence of ratings, the tables) scanned every evaluation's,
    # and a rating got slower with each evaluation in the file (bench/sequential.py: 0.5 s for an
    # evaluation in a new file, 1.3 s for the eighth in the same file)
    db.execute("CREATE INDEX comparisons_prompt ON comparisons(prompt_id)")
    # a rater's pairs served and not yet rated (the scheduler checks them at every pair): the same
    # friends rate evaluation after evaluation, and their rated pairs need not be read for it
    db.execute("CREATE INDEX assignments_unrated ON assignments(rater) WHERE rated_at IS NULL")

# SQLite's result codes for a disk that fails under it, in a person's words
SQLITE_DISK_PROBLEMS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "the disk failed to read or write (it may be full, over a size limit, or failing)",
    "SQLITE_READONLY": "the file or its disk is read-only",
    "SQLITE_CANTOPEN": "the file cannot be opened (missing folder, permissions or no space)",
    "SQLITE_CORRUPT": "the file is damaged",
    "SQLITE_NOTADB": "the file is not a SQLite database",
}


def sqlite_disk_problem(exc: BaseException) -> str | None:
    """What went wrong with the disk under SQLite, or None for other errors."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    for code, problem in SQLITE_DISK_PROBLEMS.items():
        if name == code or name.startswith(code + "_"):
            return f"{problem} (SQLite: {exc})"
    return None


class _Job:
    """One caller's piece of work in a group commit, and what came of it."""

    def __init__(self, work):
        self.work, self.result, self.error = work, None, None
        self.done = threading.Event()


WRITER_IDLE_S = 5.0  # the group-commit thread ends after this long without work


class Database:
    """A ratings database file: connections to it, write transactions, group commit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._jobs: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._local = threading.local()  # one connection per thread (a connection belongs to its thread)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.db("open") as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrations.apply(db)

    @contextmanager
    def db(self, _action: str = "read"):
        """A connection: this thread's own, opened on its first use and kept for the
        next call (opening one and setting its pragmas cost more than most of the
        queries made on it), or, inside another call's, a short-lived one of its own.
        A disk failure under it becomes StorageError (and the connection is dropped)."""
        kept = not getattr(self._local, "busy", False)
        conn = None
        try:
            wrapped = getattr(self._local, "wrapped", None) if kept else None
            if wrapped is None:
                conn = self._open()
                wrapped = sqlite_utils.Database(conn)  # (its constructor runs a PRAGMA and the plugin hooks)
                if kept:
                    self._local.conn, self._local.wrapped = conn, wrapped
            conn = wrapped.conn
            if kept:
                self._local.busy = True
            yield wrapped
        except sqlite3.Error as exc:
            self._drop(conn)
            conn = None  # closed: nothing left for `finally`
            problem = sqlite_disk_problem(exc)
            if problem is None:
                raise
            done = "Nothing from this action was saved" if _action == "save" else "Nothing was changed"
            verb = "save to" if _action == "save" else _action
            raise StorageError(f"Could not {verb} the ratings database {self.path}: {problem}. {done}; "
                               "free some disk space or fix the disk, then try again.") from exc
        finally:
            if kept:
                self._local.busy = False
                if conn is not None and conn.in_transaction:  # begun, neither committed nor rolled back
                    self._drop(conn)
            elif conn is not None:
                conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self, conn: sqlite3.Connection | None) -> None:
        """Close `conn`, and forget it if it is this thread's kept one (the next call opens a fresh one)."""
        if conn is None:
            return
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = self._local.wrapped = None
        with contextlib.suppress(sqlite3.Error):
            conn.close()  # rolls back anything left open

    def close(self) -> None:
        """Close this thread's kept connection (other threads' close with their threads)."""
        self._drop(getattr(self._local, "conn", None))

    @contextmanager
    def write(self):
        """A write transaction that takes the lock up front (no upgrade deadlocks).
        On any error it is rolled back whole: a rating is in the file with all its
        rows, or not at all."""
        with self.db("save") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # a full disk or an I/O error may already have rolled SQLite back
                if db.conn.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # closing the connection rolls back what is left
                raise

    def grouped(self, work):
        """Run `work(db)` in a write transaction shared with whatever other
        threads of this process are writing at the same moment, and return its
        result once that transaction is committed (group commit).

        With `synchronous=FULL` each commit waits for the disk (measured: see docs/performance.md); 25
        raters pressing Submit together would queue behind 25 of those. Grouped,
        they share one or two. Each piece of work runs in its own savepoint, so a
        refused rating does not undo its neighbours; if the commit itself fails,
        every caller in the group gets the error and nothing of theirs is saved.
        """
        job = _Job(work)
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name=f"sqlite-writer-{self.path.name}",
                                                daemon=True)
                self._writer.start()
            self._jobs.put(job)  # under the lock: an idle writer exits only with the queue empty
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _write_loop(self) -> None:
        while True:
            try:
                first = self._jobs.get(timeout=WRITER_IDLE_S)
            except queue.Empty:  # idle: the thread and its connection go (the next write starts another)
                with self._writer_lock:
                    if self._jobs.empty():
                        self._writer = None
                        self.close()
                        return
                continue
            batch = [first]
            while len(batch) < 64:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.write() as db:
                    for job in batch:
                        db.execute("SAVEPOINT job")
                        try:
                            job.result = job.work(db)
                            db.execute("RELEASE job")
                        except Exception as exc:  # this job only
                            db.execute("ROLLBACK TO job")
                            db.execute("RELEASE job")
                            job.error = exc
            except BaseException as exc:  # the transaction as a whole failed: nobody's work was saved
                for job in batch:
                    job.result, job.error = None, job.error or exc
            for job in batch:
                job.done.set()
