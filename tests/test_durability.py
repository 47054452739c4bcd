"""Nothing lost: real SQLite files, real processes, real failures.

The writers run in a separate process (tests/durability_worker.py) that prints
a line for each save only after it returns, so "acknowledged" means what a
rater's browser would have been told. The test then kills that process with
SIGKILL, starves it of disk (RLIMIT_FSIZE: writes past a size fail with EFBIG,
as they fail with ENOSPC on a full disk), or backs the database up under it,
and opens the files afresh.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ratings import reports
from ratings.store import RatingError, Store
from tuner import data as tdata
from tuner import records
from tuner.paths import Layout
from tuner.runs import RunManager

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "durability_worker.py"
sys.path.insert(0, str(WORKER.parent))
import durability_worker as worker  # noqa: E402


class Worker:
    """tests/durability_worker.py in its own process, its stdout read line by line."""

    def __init__(self, *args, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def line(self, timeout: float = 60) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"worker silent for {timeout} s") from None
        assert line is not None, f"worker ended early: {self.proc.stderr.read()[-3000:]}"
        return line

    def kill(self) -> list[str]:
        """SIGKILL; returns what it had printed before dying (acknowledged too)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)
        rest = []
        while not self.lines.empty() and (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return rest


def acks(lines) -> list[tuple[int, str, int, int]]:
    found = []
    for line in lines:
        if line.startswith("ACK "):
            _, assignment, rater, a, b = line.split()
            found.append((int(assignment), rater, int(a), int(b)))
    return found


def check_database(path: Path, acked, in_flight: int = 0) -> sqlite3.Connection:
    """The file is sound, holds every acknowledged rating with its scores, and no
    rating half-saved: each rated pair has both ratings and an audit row each.
    At most `in_flight` pairs may be committed without having been acknowledged
    (killed between the commit and the reply)."""
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for assignment, rater, a, b in acked:
        row = conn.execute("SELECT rater, left_reply_id, right_reply_id, rated_at FROM assignments WHERE id=?",
                           [assignment]).fetchone()
        assert row is not None and row[0] == rater and row[3] is not None, (assignment, rater)
        scores = dict(conn.execute("SELECT reply_id, score FROM ratings WHERE rater=? AND reply_id IN (?, ?)",
                                   [rater, row[1], row[2]]).fetchall())
        assert scores == {row[1]: a, row[2]: b}, (assignment, rater)
    rated = conn.execute("SELECT COUNT(*) FROM assignments WHERE rated_at IS NOT NULL").fetchone()[0]
    ratings = conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    audit = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert ratings == 2 * rated and audit == ratings  # whole ratings only, each audited once
    assert len(acked) <= rated <= len(acked) + in_flight
    return conn


# --- 1. SIGKILL while ratings are being written ---------------------------------------------
@pytest.mark.slow
def test_sigkill_during_rating_writes_loses_no_acknowledged_rating(tmp_path):
    db = tmp_path / "ratings.db"
    acked, threads = [], 4
    for round_ in range(3):  # kill, restart on the same file, kill again
        proc = Worker("rate", db, f"k{round_}", threads)
        assert proc.line().startswith("READY")
        wanted = len(acked) + 15
        while len(acked) < wanted:
            acked += acks([proc.line()])
        acked += acks(proc.kill())  # printed before the kill, so acknowledged too
        assert proc.proc.returncode == -signal.SIGKILL
        # every round may leave one committed, unacknowledged pair per thread
        check_database(db, acked, in_flight=threads * (round_ + 1)).close()
    assert len({(a, r) for a, r, *_ in acked}) == len(acked)  # and no pair acknowledged twice
    # the store opens the file after the kills and carries on
    store = Store(db)
    eval_id = store.evaluations()[0]["id"]
    before = len(store.ratings_frame(eval_id))
    pair = store.next_pair(eval_id, "after", random.Random(0))
    store.rate_pair(pair["assignment_id"], "after", 4, 2)
    assert len(store.ratings_frame(eval_id)) == before + 2


# --- 2. a restart, with a training run in flight ----------------------------------------------
@pytest.mark.slow
def test_restart_keeps_datasets_ratings_and_a_killed_run_resumes(tiny_llama, tmp_path):
    home = tmp_path / "home"
    layout = Layout(home)
    # the server process: saves dataset versions, an evaluation and ratings, then is killed
    server = Worker("populate", home)
    written = json.loads(server.line())
    # a training run of the newest saved version, in its own process
    config = {"base_model": str(tiny_llama), "dataset": str(layout.datasets / written["datasets"][-1]),
              "method": "lora", "output_dir": str(layout.runs), "max_steps": 300, "per_device_train_batch_size": 1,
              "save_steps": 2, "save_total_limit": 2, "test_fraction": 0, "validation_fraction": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    training = subprocess.Popen([sys.executable, "-m", "tuner", "train", str(tmp_path / "config.json"),
                                 "--run-id", "in-flight"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=dict(os.environ, TUNER_HOME=str(home),
                                                                 PYTHONPATH=str(ROOT)))
    run_dir = layout.runs / "in-flight"
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists():
        assert training.poll() is None, training.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.1)
    # the app, beside the live CLI run: it is running, not to be resumed a second time
    beside = RunManager(layout.runs, layout.models)
    assert beside.get("in-flight")["status"] == "running"
    with pytest.raises(ValueError, match="is running"):
        beside.resume("in-flight")
    training.send_signal(signal.SIGKILL)
    training.wait(30)
    server.kill()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # as the kill left it

    # the restart: fresh objects over the same data root
    layout = Layout(home)
    saved = [label for label in tdata.available(layout.datasets) if label.startswith("saved: ")]
    assert saved == ["saved: faq", "saved: faq-v2", "saved: faq-v3"]
    for k, name in enumerate(written["datasets"]):
        path = layout.datasets / name
        assert tdata.load_jsonl(path).rows == worker.rows(4 + k)
        assert json.loads(tdata.note_path(path).read_text())["note"] == f"version {k + 1}"
    store = Store(layout.ratings_db)
    (evaluation,) = store.evaluations()
    assert (evaluation["id"], evaluation["n_prompts"], evaluation["n_variants"]) == (written["evaluation"], 4, 2)
    replies = store.replies(evaluation["id"])
    assert len(replies) == 8 and set(replies["reply"]) == {f"reply {k} to prompt {p}" for k in (0, 1)
                                                           for p in range(1, 5)}
    acked = [tuple(a) for a in written["acked"]]
    assert len(acked) == 8  # 2 raters × 4 pairs
    check_database(layout.ratings_db, acked).close()
    assert len(store.ratings_frame(evaluation["id"])) == 16
    assert store.progress(evaluation["id"], "ana") == (4, 4)

    manager = RunManager(layout.runs, layout.models)
    assert [(r["run_id"], r["status"]) for r in manager.runs()] == [("in-flight", "interrupted")]
    checkpoint = records.last_complete_checkpoint(run_dir)
    resumed_from = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert resumed_from >= 2
    # the Train tab says so after the restart, instead of "No run yet."
    from tuner.ui.train import runs_frame

    line = manager.idle_line()
    assert "in-flight was interrupted" in line and f"last checkpoint is step {resumed_from}" in line, line
    assert "press Resume" in line
    row = runs_frame(manager).iloc[0]
    assert int(row["steps"]) >= resumed_from and "press Resume" in row["message"]
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["max_steps"] = resumed_from + 2  # resume reads the config from run.json: keep it short
    (run_dir / "run.json").write_text(json.dumps(record))
    manager.resume("in-flight")
    state = manager.wait(timeout=120)
    assert state.status == "completed", state.message
    assert state.summary["global_step"] == resumed_from + 2
    assert manager.get("in-flight")["status"] == "completed"


# --- 3. the disk fills up while saving ------------------------------------------------------------
@pytest.mark.slow
def test_a_full_disk_gives_a_message_and_leaves_nothing_half_written(tmp_path):
    home = tmp_path / "home"
    proc = Worker("diskfull", home)
    first = json.loads(proc.line())
    outcomes = [json.loads(line) for line in iter(proc.line, "DONE")]
    proc.proc.wait(30)
    assert proc.proc.returncode == 0, proc.proc.stderr.read()[-3000:]
    cap = outcomes[0]["cap"]
    by = {key: o for o in outcomes for key in ("dataset", "rating", "backup") if key in o and o[key] != "acked"}

    # the dataset version bigger than the disk allows: refused, named, nothing left
    datasets = home / "datasets"
    assert by["dataset"]["dataset"] == "refused"
    message = by["dataset"]["message"]
    assert 'the dataset "faq"' in message and str(datasets) in message and "File too large" in message
    assert sorted(p.name for p in datasets.iterdir()) == ["faq-v2.jsonl", "faq-v2.note.json", "faq.jsonl",
                                                          "faq.note.json"]
    assert first["saved"] == ["faq.jsonl", "faq-v2.jsonl"]
    assert tdata.load_jsonl(datasets / "faq.jsonl").rows == worker.rows(5)
    assert tdata.load_jsonl(datasets / "faq-v2.jsonl").rows == worker.rows(6)

    # ratings: those acknowledged before the disk filled are kept, the refused one is not half there
    wal = home / "ratings.db-wal"
    assert not wal.exists() or wal.stat().st_size <= cap  # the cap was what stopped it
    assert by["rating"]["rating"] == "refused"
    assert f"ratings database {home / 'ratings.db'}" in by["rating"]["message"]
    assert "disk" in by["rating"]["message"] and "Nothing from this action was saved" in by["rating"]["message"]
    late = [o["assignment"] for o in outcomes if o.get("rating") == "acked"]
    assert len(late) == by["rating"]["acked_before"] >= 1  # some fitted before the cap
    conn = sqlite3.connect(home / "ratings.db")
    rows = conn.execute("SELECT id, rater FROM assignments WHERE id IN (%s)" % ",".join("?" * len(late)),
                        late).fetchall()
    conn.close()
    acked = [(a, "early", *worker.scores_for(a)) for a in first["acked"]]
    acked += [(a, rater, *worker.scores_for(a)) for a, rater in rows]
    assert len(acked) == 3 + len(late)
    check_database(home / "ratings.db", acked).close()  # and nothing beyond what was acknowledged

    # the backup that does not fit: refused, no file at all
    assert by["backup"]["backup"] == "refused" and "back up" in by["backup"]["message"]
    assert list((home / "exports").iterdir()) == []
    assert not [p for p in home.rglob("*") if p.name.endswith((".tmp", "-journal"))]


# --- 4. a backup while raters are writing -----------------------------------------------------------
@pytest.mark.slow
def test_backup_under_writes_is_a_consistent_snapshot(tmp_path):
    db = tmp_path / "ratings.db"
    proc = Worker("rate", db, "live", 3)
    assert proc.line().startswith("READY")
    acked: list = []
    lock = threading.Lock()

    def collect():  # keep reading acknowledgements while backups are taken
        while True:
            try:
                line = proc.lines.get(timeout=60)
            except queue.Empty:
                return
            if line is None:
                return
            with lock:
                acked.extend(acks([line]))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    def wait_for(count):
        deadline = time.time() + 60
        while len(acked) < count:
            assert time.time() < deadline and proc.proc.poll() is None, "the raters stopped writing"
            time.sleep(0.05)

    wait_for(5)
    backups, after = [], 0
    target = tmp_path / "exports" / "tuner-ratings.db"
    for k in range(4):
        if k == 3:
            wait_for(after + 4)  # the last backup comes after more acknowledged ratings
        with lock:
            before = list(acked)
        reports.backup_sqlite(db, target)
        with lock:
            after = len(acked)
        assert proc.proc.poll() is None  # the raters were writing all along
        # every rating acknowledged before the backup began is in it, and nothing half-saved
        # (acknowledgements of what it may hold beyond those can still be in the pipe)
        conn = check_database(target, before, in_flight=10**9)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        backups.append(set(conn.execute("SELECT reply_id, rater, score FROM ratings").fetchall()))
        conn.close()
        time.sleep(0.3)
    proc.kill()
    reader.join(30)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tuner-ratings.db"]  # no temp file left
    assert len(backups[0]) < len(backups[-1])  # the backups did catch the writes going on
    conn = sqlite3.connect(db)
    live = set(conn.execute("SELECT reply_id, rater, score FROM ratings").fetchall())
    conn.close()
    assert len(backups[-1]) <= len(live) <= 2 * (len(acked) + 3)  # one pair in flight per thread at the kill
    for earlier, later in zip(backups, backups[1:]):
        assert earlier <= later <= live  # each backup a prefix of the next and of the live file


# --- 5. the same rating submitted twice at once -----------------------------------------------------
def test_double_submit_of_one_pair_makes_one_rating_per_reply(tmp_path):
    """Two submits of one pair at once (a double click): one is stored, the other is
    refused with "already rated"; nothing is replaced, nothing counted twice."""
    store = Store(tmp_path / "ratings.db")
    eval_id = worker.evaluation(store, prompts=5)
    rng = random.Random(3)
    kept = []
    for _ in range(5):
        pair = store.next_pair(eval_id, "ana", rng)
        barrier, results, errors, refusals = threading.Barrier(2), [], [], []

        def submit(score):
            try:
                barrier.wait()  # both requests reach the store together, as a double click's do
                results.append((score, store.rate_pair(pair["assignment_id"], "ana", score, 3)))
            except RatingError as exc:
                refusals.append(str(exc))
            except Exception as exc:  # reported below
                errors.append(exc)

        clicks = [threading.Thread(target=submit, args=(s,)) for s in (4, 5)]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join()
        assert not errors and len(results) == 1 and len(refusals) == 1 and "already rated" in refusals[0]
        kept.append(results[0][0])
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 10 and not frame.duplicated(["prompt_id", "variant", "rater"]).any()
    assert store.progress(eval_id, "ana") == (5, 5)
    with sqlite3.connect(store.path) as conn:
        audit = conn.execute("SELECT reply_id, old_score, new_score FROM audit ORDER BY id").fetchall()
    assert len(audit) == 10 and all(old is None for _r, old, _new in audit)  # one write per reply, none replaced
    assert sorted(frame["score"]) == sorted(kept + [3] * 5)  # the acknowledged submit's scores


@pytest.mark.slow
def test_a_process_exiting_mid_run_stops_the_run_cleanly(tiny_llama, tmp_path):
    """Ctrl-C or a script's end while a run trains: the run stops at a step
    boundary and is saved as stopped (resumable), and the process exits 0
    instead of aborting inside torch."""
    import json as _json
    import subprocess
    import sys as _sys

    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "Hello!"}]}
            for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from tuner.config import TrainConfig
from tuner.runs import RunManager
m = RunManager({str(tmp_path / 'runs')!r}, {str(tmp_path / 'models')!r})
m.start(TrainConfig(base_model={str(tiny_llama)!r}, dataset={str(tmp_path / 'd.jsonl')!r},
                    max_steps=100000, save_steps=100000))
while m.snapshot().step < 2:
    time.sleep(0.1)
"""
    done = subprocess.run([_sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [_json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert record["status"] == "stopped"
