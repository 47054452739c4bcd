"""A separate process for tests/test_durability.py: it writes through Tuner's own
code and says, line by line on stdout, what has been acknowledged, so the test
can kill it (SIGKILL) or starve it of disk and then check what the files hold.

    python tests/durability_worker.py rate DB TAG THREADS
        Rating threads, forever: each line "ACK <assignment> <rater> <a> <b>" is
        printed only after Store.rate_pair has returned.
    python tests/durability_worker.py diskfull HOME
        Save dataset versions and ratings, then cap the size any file may grow
        to (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG, as on
        a full disk) and keep saving; one JSON line per outcome.
    python tests/durability_worker.py populate HOME
        Dataset versions, an evaluation with replies and ratings; prints them as
        one JSON line, then waits to be killed.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import open_evaluation  # noqa: E402 (tests/, this file's folder, is on sys.path)
from ratings.store import Store  # noqa: E402
from tuner.paths import Layout, StorageError  # noqa: E402

VARIANTS = [{"name": "base", "label": "base", "kind": "base"}, {"name": "run-1", "label": "run-1", "kind": "lora"}]
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def scores_for(assignment_id: int) -> tuple[int, int]:
    """The scores a worker gives a pair: fixed by the assignment, so the test can check them."""
    return 1 + assignment_id % 5, 1 + (assignment_id * 3 + 1) % 5


def evaluation(store: Store, prompts: int = 20) -> int:
    """The store's first evaluation, made (replies included) if there is none."""
    found = store.evaluations()
    if found:
        return found[-1]["id"]
    return open_evaluation(store, "durability", "tiny", [f"Prompt {i}" for i in range(prompts)], VARIANTS,
                           reply="reply {k} to prompt {position}", reply_settings={"t": 0}, latency_s=0.1,
                           new_tokens=5)


def rate_one(store: Store, eval_id: int, rater: str, rng: random.Random) -> tuple[int, int, int] | None:
    pair = store.next_pair(eval_id, rater, rng)
    if pair is None:
        return None
    a, b = scores_for(pair["assignment_id"])
    store.rate_pair(pair["assignment_id"], rater, a, b, preference="A" if a >= b else "B")
    return pair["assignment_id"], a, b


def rate(db: str, tag: str, threads: int) -> None:
    store = Store(Path(db))
    eval_id = evaluation(store)
    say(f"READY {eval_id}")

    def loop(i: int) -> None:
        rng = random.Random(i)
        for round_ in range(10**9):
            rater = f"{tag}-t{i}-{round_}"
            while (done := rate_one(store, eval_id, rater, rng)) is not None:
                say(f"ACK {done[0]} {rater} {done[1]} {done[2]}")

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def rows(n: int, width: int = 0) -> list[dict]:
    pad = "x" * width
    return [{"messages": [{"role": "user", "content": f"Question {i}?{pad}"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(n)]


def diskfull(home: str) -> None:
    from tuner import data as tdata

    layout = Layout(Path(home))
    store = Store(layout.ratings_db)
    eval_id = evaluation(store, prompts=60)
    rng = random.Random(0)
    before = [tdata.save_version(rows(5), "faq", layout.datasets, note="first").name]
    before.append(tdata.save_version(rows(6), "faq", layout.datasets, note="second").name)
    acked = [rate_one(store, eval_id, "early", rng)[0] for _ in range(3)]
    say(json.dumps({"saved": before, "acked": acked}))
    # Hold one connection open for the whole run, as a busy server does: the
    # WAL then only grows, so the cap is reached by a commit, not by a checkpoint.
    keeper = sqlite3.connect(layout.ratings_db)
    keeper.execute("SELECT COUNT(*) FROM ratings").fetchone()

    # From here on no file may grow past `cap` bytes: a real write failure (EFBIG)
    # where the disk would say ENOSPC. The database and its WAL are below it now.
    sizes = [p.stat().st_size for p in layout.root.glob("ratings.db*")]
    cap = max(sizes) + 64 * 1024
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    say(json.dumps({"cap": cap}))

    try:  # a dataset version larger than the cap (the WAL the open connections keep sets the cap's size)
        path = tdata.save_version(rows(max(400, 2 * cap // 2000), width=2000), "faq", layout.datasets,
                                  note="too big")
        say(json.dumps({"dataset": "saved", "path": str(path)}))
    except StorageError as exc:
        say(json.dumps({"dataset": "refused", "message": str(exc)}))

    for n in range(2000):  # ratings until the WAL reaches the cap
        try:
            done = rate_one(store, eval_id, f"late{n // 60}", rng)
        except StorageError as exc:
            say(json.dumps({"rating": "refused", "message": str(exc), "acked_before": n}))
            break
        say(json.dumps({"rating": "acked", "assignment": done[0]}))
    else:
        say(json.dumps({"rating": "never refused"}))

    from ratings import reports

    # a lower cap than the database's size: the backup cannot fit
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        reports.backup_sqlite(layout.ratings_db, layout.root / "exports" / "backup.db")
        say(json.dumps({"backup": "made"}))
    except StorageError as exc:
        say(json.dumps({"backup": "refused", "message": str(exc)}))
    keeper.close()
    say("DONE")


def populate(home: str) -> None:
    from tuner import data as tdata

    layout = Layout(Path(home))
    saved = [tdata.save_version(rows(4 + k), "faq", layout.datasets, note=f"version {k + 1}").name
             for k in range(3)]
    store = Store(layout.ratings_db)
    eval_id = evaluation(store, prompts=4)
    rng = random.Random(1)
    acked = []
    for rater in ("ana", "ben"):
        while (done := rate_one(store, eval_id, rater, rng)) is not None:
            acked.append([done[0], rater, done[1], done[2]])
    say(json.dumps({"datasets": saved, "evaluation": eval_id, "acked": acked}))
    time.sleep(600)  # the test kills this process, as a restart would


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "rate":
        rate(args[0], args[1], int(args[2]))
    elif mode == "diskfull":
        diskfull(args[0])
    elif mode == "populate":
        populate(args[0])
    else:
        sys.exit(f"unknown mode {mode!r}")
