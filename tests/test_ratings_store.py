import random
import sqlite3
import threading

import pytest

from ratings.store import RatingError, Store


def _evaluation(store, n=3):
    eval_id = store.create_evaluation("e", "base-model", "run-1",
                                      [{"text": f"Prompt {i}"} for i in range(n)])
    for p in store.prompts(eval_id):
        store.add_reply(p["id"], "base", "base-model", f"base reply {p['position']}", {"t": 0})
        store.add_reply(p["id"], "tuned", "run-1", f"tuned reply {p['position']}", {"t": 0})
    return eval_id


def test_schema_is_named_migrations_in_wal_mode(tmp_path):
    store = Store(tmp_path / "r.db")
    Store(tmp_path / "r.db")  # reopening applies nothing twice
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert names == ["0001_initial"]
    assert store.evaluations() == []


def test_pair_hides_variants_until_rating_is_committed(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(1))
    assert set(pair) == {"assignment_id", "prompt", "reply_a", "reply_b", "done", "total"}
    assert "base-model" not in str(pair) and "run-1" not in str(pair)
    reveal = store.rate_pair(pair["assignment_id"], "ana", 5, 2)
    # the file on disk has both ratings before we look at the reveal
    rows = sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT r.variant, t.score FROM ratings t JOIN replies r ON r.id = t.reply_id").fetchall()
    assert sorted(rows) == sorted([(reveal["a"], 5), (reveal["b"], 2)])
    assert {reveal["a"], reveal["b"]} == {"base", "tuned"}
    assert store.next_pair(eval_id, "ana", random.Random(1)) is None


def test_each_rater_has_own_queue_and_progress(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 3)
    first = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(first["assignment_id"], "ana", 4, 4)
    assert store.next_pair(eval_id, "ana", random.Random(0))["done"] == 1
    assert store.next_pair(eval_id, "ben", random.Random(0))["done"] == 0


def test_sides_are_balanced_over_many_pairs(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 40)
    rng = random.Random(7)
    left_base = 0
    for rater in ("ana", "ben", "cy"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            reveal = store.rate_pair(pair["assignment_id"], rater, 3, 3)
            left_base += reveal["a"] == "base"
    assert 0.35 < left_base / 120 < 0.65


def test_rerating_replaces_score_and_is_audited(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(pair["assignment_id"], "ana", 2, 3)
    store.rate_pair(pair["assignment_id"], "ana", 5, 3)  # a double click or a change of mind
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 2
    assert sorted(frame["score"]) == [3, 5]
    audit = sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT old_score, new_score FROM audit ORDER BY id").fetchall()
    assert (2, 5) in audit and len(audit) == 4


@pytest.mark.parametrize("score", [0, 6, "x", None, 2.5])
def test_bad_scores_are_refused_with_the_field_named(tmp_path, score):
    store = Store(tmp_path / "r.db")
    pair = store.next_pair(_evaluation(store, 1), "ana", random.Random(0))
    with pytest.raises(RatingError, match="Reply A"):
        store.rate_pair(pair["assignment_id"], "ana", score, 3)
    assert store.ratings_frame(1).empty


def test_rater_cannot_rate_someone_elses_pair_and_needs_a_name(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    with pytest.raises(RatingError, match="not served to you"):
        store.rate_pair(pair["assignment_id"], "ben", 3, 3)
    with pytest.raises(RatingError, match="name"):
        store.next_pair(eval_id, "  ", random.Random(0))


def test_concurrent_raters_lose_nothing_and_count_nothing_twice(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 4)
    errors = []

    def rater(i):
        try:
            rng = random.Random(i)
            while (pair := store.next_pair(eval_id, f"r{i}", rng)) is not None:
                store.rate_pair(pair["assignment_id"], f"r{i}", 1 + i % 5, 5)
                store.rate_pair(pair["assignment_id"], f"r{i}", 1 + i % 5, 5)  # double click
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 20 * 4 * 2
    assert not frame.duplicated(["prompt_id", "variant", "rater"]).any()
