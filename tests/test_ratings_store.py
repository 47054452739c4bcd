import json
import random
import sqlite3
import threading

import pytest

from helpers import database_before, open_evaluation
from ratings.store import RatingError, Store

VARIANTS = [{"name": "base", "label": "base (m)", "kind": "base"},
            {"name": "run-1", "label": "lora: run-1", "kind": "lora"}]


def _evaluation(store, n=3, variants=VARIANTS, code=None, reveal="end"):
    """helpers.open_evaluation with this file's names: n prompts "Prompt i", "reply k to prompt p"."""
    return open_evaluation(store, "e", "base-model", [f"Prompt {i}" for i in range(n)], variants,
                           reply="reply {k} to prompt {position}", reply_settings={"t": 0}, latency_s=0.5,
                           new_tokens=7, invite_code=code, reveal=reveal)


def test_schema_is_named_migrations_in_wal_mode(tmp_path):
    store = Store(tmp_path / "r.db")
    Store(tmp_path / "r.db")  # reopening applies nothing twice
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")] == [
        "0001_initial", "0002_rater_keys", "0003_checks", "0004_rating_integrity", "0005_corrections",
        "0006_judge", "0007_rater_claims", "0008_closed_rating", "0009_comparisons_by_prompt"]
    assert store.evaluations() == []


def test_an_evaluation_keeps_its_checks_and_an_older_database_gains_the_column(tmp_path):
    from ratings import checks as rc
    from ratings.db import migrations

    store = Store(tmp_path / "r.db")
    eval_id = store.create_evaluation("e", "m", [{"text": "Write an email", "category": "email"}], VARIANTS,
                                      settings={"max_new_tokens": 4}, checks=["starts with: Subject:"])
    assert store.evaluation(eval_id)["checks"] == ["starts with: Subject:"]
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    (prompt,) = store.prompts(eval_id)
    store.add_reply(prompt["id"], ids["base"], "Hi there, how are", {}, 0.1, 4)
    store.add_reply(prompt["id"], ids["run-1"], "Subject: Hello", {}, 0.1, 2)
    rep = rc.of_evaluation(store.evaluation(eval_id), store.replies(eval_id))
    per = rep.replies.set_index("label")
    assert per.loc["lora: run-1", "all checks"] and not per.loc["base (m)", "all checks"]
    assert per.loc["base (m)", "cut at the token cap"] and not per.loc["lora: run-1", "cut at the token cap"]
    # a database made before the checks existed: the migration adds the column, old rows read as no checks
    old = tmp_path / "old.db"
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

    older = Migrations(migrations.name)  # the schema as it was: the first two migrations only
    for m in migrations._migrations[:2]:
        older(name=m.name)(m.fn)
    db = sqlite_utils.Database(old)
    older.apply(db)
    db["evaluations"].insert({"name": "before", "base_model": "m", "created_at": "x"})
    db.close()
    upgraded = Store(old)
    assert upgraded.evaluation(1)["checks"] == []


def test_pair_hides_variants_until_rating_is_committed(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(1))
    assert set(pair) == {"assignment_id", "prompt", "task", "flags", "reply_a", "reply_b", "done", "total"}
    served = json.dumps(pair)
    assert not any(word in served for word in ("base", "run-1", "lora", "base-model"))
    reveal = store.rate_pair(pair["assignment_id"], "ana", 5, 2, preference="A", comment="A is clearer")
    # the file on disk holds both ratings before the reveal is returned
    rows = sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT v.name, t.score FROM ratings t JOIN replies r ON r.id = t.reply_id "
        "JOIN variants v ON v.id = r.variant_id").fetchall()
    assert sorted(rows) == sorted([(reveal["a"], 5), (reveal["b"], 2)])
    assert {reveal["a"], reveal["b"]} == {"base", "run-1"}
    judged = store.judgements_frame(eval_id)
    assert judged.loc[0, "preference"] == "A" and judged.loc[0, "comment"] == "A is clearer"
    assert store.next_pair(eval_id, "ana", random.Random(1)) is None


THREE = VARIANTS + [{"name": "run-2", "label": "prompt_tuning: run-2", "kind": "prompt_tuning"}]


def test_three_variants_never_show_a_rater_the_same_reply_twice(tmp_path):
    """With k variants each reply is in k-1 pairs; a rater gets k // 2 disjoint
    pairs per prompt, so no score is ever silently replaced, and the raters together cover
    every pair."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2, THREE)
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 6  # 3 pairs a prompt
    assert store.progress(eval_id, "ana") == (0, 2)  # 1 pair a prompt for each rater
    acknowledged = 0
    for rater in ("ana", "ben", "cy"):
        seen = []
        while (pair := store.next_pair(eval_id, rater, random.Random(1))) is not None:
            seen += [pair["reply_a"], pair["reply_b"]]
            store.rate_pair(pair["assignment_id"], rater, 4, 2)
            acknowledged += 2
        assert len(seen) == len(set(seen)) == 4, (rater, seen)  # no reply twice
        assert store.progress(eval_id, rater) == (2, 2)
    assert len(store.ratings_frame(eval_id)) == acknowledged == 12  # every acknowledged score is stored
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit WHERE old_score IS NOT NULL").fetchone()[0] == 0
        rated = conn.execute("SELECT COUNT(DISTINCT comparison_id) FROM assignments WHERE rated_at IS NOT NULL")
        assert rated.fetchone()[0] == 6  # three raters covered all six pairs, one each


def test_four_variants_give_two_disjoint_pairs_per_prompt(tmp_path):
    store = Store(tmp_path / "r.db")
    four = THREE + [{"name": "run-3", "label": "lora: run-3", "kind": "lora"}]
    eval_id = _evaluation(store, 1, four)
    assert store.progress(eval_id, "ana") == (0, 2)
    seen = []
    while (pair := store.next_pair(eval_id, "ana", random.Random(2))) is not None:
        seen += [pair["reply_a"], pair["reply_b"]]
        store.rate_pair(pair["assignment_id"], "ana", 3, 3)
    assert sorted(seen) == [f"reply {k} to prompt 1" for k in range(4)]


def test_each_rater_has_own_queue_and_progress(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 3)
    first = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(first["assignment_id"], "ana", 4, 4)
    assert store.next_pair(eval_id, "ana", random.Random(0))["done"] == 1
    assert store.next_pair(eval_id, "ben", random.Random(0))["done"] == 0
    assert store.progress(eval_id, "ana") == (1, 3)


def test_sides_are_balanced_over_many_pairs(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 40)
    rng = random.Random(7)
    left_base = 0
    for rater in ("ana", "ben", "cy"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            reveal = store.rate_pair(pair["assignment_id"], rater, 3, 3)
            left_base += reveal["a"] == "base"
    assert 0.4 < left_base / 120 < 0.6


def test_a_served_pair_keeps_its_sides_on_reload(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    first = store.next_pair(eval_id, "ana", random.Random(0))
    again = store.next_pair(eval_id, "ana", random.Random(99))
    assert (again["assignment_id"], again["reply_a"]) == (first["assignment_id"], first["reply_a"])


def test_a_second_submit_never_replaces_a_score_and_a_change_is_explicit_and_audited(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2)  # one pair of two rated: nothing revealed yet, a change is allowed
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(pair["assignment_id"], "ana", 2, 3)
    with pytest.raises(RatingError, match="already rated this pair"):  # a double click
        store.rate_pair(pair["assignment_id"], "ana", 5, 3)
    assert sorted(store.ratings_frame(eval_id)["score"]) == [2, 3]
    changed = store.change_scores(pair["assignment_id"], "ana", 5, 3)  # a change of mind, asked for
    assert changed == {"old_a": 2, "old_b": 3, "score_a": 5, "score_b": 3}
    assert sorted(store.ratings_frame(eval_id)["score"]) == [3, 5]
    audit = sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT old_score, new_score FROM audit ORDER BY id").fetchall()
    assert (2, 5) in audit and (3, 3) in audit and len(audit) == 4
    with pytest.raises(RatingError, match="Only a pair you have rated"):
        store.change_scores(pair["assignment_id"], "ben", 1, 1)


def test_one_address_brings_only_a_few_names_to_an_evaluation(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id, other = _evaluation(store, 1), _evaluation(store, 1)
    for name in ("ann", "ann2", "ann3"):
        store.join(eval_id, name, "10.0.0.9")
    store.join(eval_id, "ann", "10.0.0.9")  # a known name comes back
    with pytest.raises(RatingError, match="under 3 names"):
        store.join(eval_id, "ann4", "10.0.0.9")
    store.join(eval_id, "ben", "10.0.0.10")  # another address
    store.join(other, "ann4", "10.0.0.9")  # another evaluation
    raw = (tmp_path / "r.db").read_bytes()
    assert b"10.0.0.9" not in raw  # addresses are kept hashed


def test_the_owner_can_exclude_a_rater_and_the_statistics_follow(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2)
    for rater, score in (("ana", 5), ("stuffer", 1)):
        while (pair := store.next_pair(eval_id, rater, random.Random(0))) is not None:
            store.rate_pair(pair["assignment_id"], rater, score, score)
    table = store.raters(eval_id)
    assert list(table["rater"]) == ["ana", "stuffer"] and list(table["scores"]) == [4, 4]
    assert store.set_excluded(eval_id, "stuffer", True, "25 names from one address")
    assert not store.set_excluded(eval_id, "stuffer", True)  # already
    assert set(store.ratings_frame(eval_id)["rater"]) == {"ana"}
    assert set(store.ratings_frame(eval_id, with_excluded=True)["rater"]) == {"ana", "stuffer"}  # kept
    assert set(store.judgements_frame(eval_id)["rater"]) == {"ana"}
    assert bool(store.raters(eval_id).set_index("rater").loc["stuffer", "excluded"])
    with pytest.raises(RatingError, match="No rater 'nobody'"):
        store.set_excluded(eval_id, "nobody", True)
    assert store.set_excluded(eval_id, "stuffer", False)
    assert set(store.ratings_frame(eval_id)["rater"]) == {"ana", "stuffer"}
    audit = sqlite3.connect(tmp_path / "r.db").execute("SELECT action, rater, detail FROM owner_audit").fetchall()
    assert audit == [("exclude", "stuffer", "25 names from one address"), ("include", "stuffer", None)]


def test_the_reveal_waits_for_the_last_pair_by_default(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2)
    assert store.reveal_of(eval_id) == "end"
    with pytest.raises(ValueError, match="reveal"):
        store.create_evaluation("e", "m", [{"text": "x"}], VARIANTS, reveal="never")
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(pair["assignment_id"], "ana", 4, 2)
    shown = store.rater_reveal(eval_id, "ana")
    assert len(shown) == 1 and {shown[0]["a_label"], shown[0]["b_label"]} == {"base (m)", "lora: run-1"}
    assert store.rater_reveal(eval_id, "ben") == []


@pytest.mark.parametrize("score", [0, 6, "x", None, 2.5, float("inf"), True])
def test_bad_scores_are_refused_with_the_field_named(tmp_path, score):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    with pytest.raises(RatingError, match="Reply A"):
        store.rate_pair(pair["assignment_id"], "ana", score, 3)
    assert store.ratings_frame(eval_id).empty


def test_optional_aspects_and_preference_are_checked(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    with pytest.raises(RatingError, match="Reply B tone"):
        store.rate_pair(pair["assignment_id"], "ana", 3, 3, aspects_b={"tone": 9})
    with pytest.raises(RatingError, match="Preference"):
        store.rate_pair(pair["assignment_id"], "ana", 3, 3, preference="C")
    store.rate_pair(pair["assignment_id"], "ana", 3, 4, aspects_a={"adherence": 2, "clarity": "5"})
    frame = store.ratings_frame(eval_id).set_index("score")
    assert frame.loc[3, "adherence"] == 2 and frame.loc[3, "clarity"] == 5


def test_rater_cannot_rate_someone_elses_pair_and_needs_a_name(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1)
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    with pytest.raises(RatingError, match="not served to you"):
        store.rate_pair(pair["assignment_id"], "ben", 3, 3)
    with pytest.raises(RatingError, match="name"):
        store.next_pair(eval_id, "  ", random.Random(0))


def test_invite_code_is_checked(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 1, code="tea-time")
    with pytest.raises(RatingError, match="invite code"):
        store.check_invite(eval_id, "coffee")
    store.check_invite(eval_id, " tea-time ")
    store.check_invite(_evaluation(store, 1), None)  # no code set: anyone


def test_fifty_concurrent_raters_lose_nothing_and_count_nothing_twice(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 3)
    errors, refused = [], []

    def rater(i):
        try:
            rng = random.Random(i)
            while (pair := store.next_pair(eval_id, f"r{i}", rng)) is not None:
                store.rate_pair(pair["assignment_id"], f"r{i}", 1 + i % 5, 5)
                try:
                    store.rate_pair(pair["assignment_id"], f"r{i}", 2, 2)  # double click: refused
                except RatingError as exc:
                    refused.append(str(exc))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(refused) == 150 and all("already rated" in r for r in refused)
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 50 * 3 * 2
    assert not frame.duplicated(["prompt_id", "variant", "rater"]).any()
    assert all(store.progress(eval_id, f"r{i}") == (3, 3) for i in range(50))
    for i in range(50):  # each rater's own score landed on each of their replies
        mine = frame[frame["rater"] == f"r{i}"]
        assert sorted(mine["score"]) == sorted([1 + i % 5] * 3 + [5] * 3)


def test_a_typed_name_belongs_to_the_browser_holding_its_key(tmp_path):
    store = Store(tmp_path / "r.db")
    name, key = store.claim_rater("  Ana   Lee ")
    assert name == "Ana Lee" and key  # cleaned once, by clean_rater, whatever the spacing typed
    assert store.claim_rater("Ana Lee", {"Ana Lee": key}) == ("Ana Lee", key)
    for keys in (None, {}, {"Ana Lee": "guessed"}):
        with pytest.raises(RatingError, match="another browser"):
            store.claim_rater("Ana  Lee", keys)
    assert store.claim_rater("ben", signed_in=True) == ("ben", None)
    with pytest.raises(RatingError, match="Hugging Face sign-in"):
        store.claim_rater("ben", {"ben": "x"})


# --- connections: one kept per thread ----------------------------------------------------------------
def _connection_id(db) -> int:
    """Which SQLite connection `db` is: a TEMP table lives only on its own connection."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS whoami (n INTEGER)")
    row = db.execute("SELECT n FROM whoami").fetchone()
    if row is None:
        db.execute("INSERT INTO whoami VALUES (?)", [random.getrandbits(40)])
        row = db.execute("SELECT n FROM whoami").fetchone()
    return row[0]


def test_a_thread_keeps_its_connection_and_other_threads_have_their_own(tmp_path):
    from ratings.db import Database

    database = Database(tmp_path / "r.db")
    with database.db() as db:
        first = _connection_id(db)
    with database.db() as db:
        assert _connection_id(db) == first  # kept between calls
    seen = []
    worker = threading.Thread(target=lambda: seen.append(_connection_id(database.db().__enter__())))
    worker.start()
    worker.join()
    assert seen and seen[0] != first  # a connection belongs to the thread that opened it
    database.close()
    with database.db() as db:
        assert _connection_id(db) != first  # closed: the next call opens a fresh one


def test_a_call_inside_another_gets_its_own_connection_and_leaves_the_outer_transaction_alone(tmp_path):
    from ratings.db import Database

    database = Database(tmp_path / "r.db")
    with database.write() as outer:
        outer.execute("INSERT INTO rater_keys VALUES ('x', 'key', 'h', 't')")
        with database.db() as inner:  # a read inside a write (it sees only what is committed)
            assert _connection_id(inner) != _connection_id(outer)
            assert inner.execute("SELECT COUNT(*) FROM rater_keys").fetchone()[0] == 0
        assert outer.conn.in_transaction  # the inner call's exit did not end the outer transaction
    with database.db() as db:
        assert db.execute("SELECT COUNT(*) FROM rater_keys").fetchone()[0] == 1


def test_a_failed_statement_or_an_abandoned_transaction_costs_the_connection_not_the_next_call(tmp_path):
    from ratings.db import Database

    database = Database(tmp_path / "r.db")
    with database.db() as db:
        first = _connection_id(db)
    with pytest.raises(sqlite3.OperationalError), database.db() as db:
        db.execute("SELECT * FROM no_such_table")
    with database.db() as db:
        assert _connection_id(db) != first  # dropped after the error
        second = _connection_id(db)
    with database.db() as db:
        db.execute("BEGIN IMMEDIATE")  # begun and left open by a careless caller
        db.execute("INSERT INTO rater_keys VALUES ('y', 'key', 'h', 't')")
    with database.db() as db:
        assert _connection_id(db) != second  # that connection was closed, its transaction rolled back
        assert db.execute("SELECT COUNT(*) FROM rater_keys").fetchone()[0] == 0
        assert not db.conn.in_transaction


def test_the_commit_thread_ends_when_idle_and_the_next_write_starts_another(tmp_path, monkeypatch):
    from ratings import db as rdb

    monkeypatch.setattr(rdb, "WRITER_IDLE_S", 0.2)
    database = rdb.Database(tmp_path / "r.db")
    assert database.grouped(lambda db: db.execute("SELECT 1").fetchone()[0]) == 1
    first = database._writer
    first.join(5)
    assert not first.is_alive() and database._writer is None  # idle: gone, with its connection
    results = []
    workers = [threading.Thread(target=lambda i=i: results.append(database.grouped(
        lambda db, i=i: db.execute("SELECT ?", [i]).fetchone()[0]))) for i in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert sorted(results) == list(range(20))  # none lost to a writer that was ending


# --- every variant gets its share of the scores ------------------------------------------------------
FOUR = THREE + [{"name": "run-3", "label": "lora: run-3", "kind": "lora"}]


def _rate_interleaved(store, eval_id, raters, rng):
    """Raters rating at the same time: each round every rater still rating is served a pair
    before any of them submits (serve, serve, rate, rate). Yields the scores per variant
    after each round."""
    while True:
        served = [(r, p) for r in raters if (p := store.next_pair(eval_id, r, rng)) is not None]
        if not served:
            return
        for rater, pair in served:
            store.rate_pair(pair["assignment_id"], rater, 3, 4)
        yield store.ratings_frame(eval_id)["variant"].value_counts()


@pytest.mark.parametrize("variants, raters", [(THREE, ("ana", "ben")), (FOUR, ("ana", "ben", "cy"))],
                         ids=["3 variants, 2 raters", "4 variants, 3 raters"])
def test_raters_rating_together_give_every_variant_its_share_at_every_moment(tmp_path, variants, raters):
    """Two raters served before either submitted once both got base-vs-LoRA on every
    prompt, and the third variant was never shown. A variant's fair share after a round is
    (scores given so far) / (number of variants); each variant must have at least 60% of it
    after every round, not only once everyone is done."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 9, variants)
    names = [v["name"] for v in variants]
    rounds = 0
    for counts in _rate_interleaved(store, eval_id, raters, random.Random(3)):
        rounds += 1
        fair = counts.sum() / len(names)
        got = {name: int(counts.get(name, 0)) for name in names}
        assert all(n >= 0.6 * fair for n in got.values()), (rounds, got, fair)
    assert rounds == store.progress(eval_id, raters[0])[1]  # everyone rated all their pairs
    frame = store.ratings_frame(eval_id)
    assert not frame.duplicated(["prompt_id", "variant", "rater"]).any()  # no reply twice for a rater
    with sqlite3.connect(tmp_path / "r.db") as conn:  # concurrent raters spread over the pairs
        pairs, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT comparison_id) FROM assignments").fetchone()
    assert distinct >= 0.8 * pairs, (distinct, pairs)


def test_two_raters_served_together_get_different_pairs_with_the_third_variant(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 9, THREE)
    first = store.next_pair(eval_id, "ana", random.Random(0))
    second = store.next_pair(eval_id, "ben", random.Random(0))  # before ana submits
    shown = {first["reply_a"], first["reply_b"], second["reply_a"], second["reply_b"]}
    assert {text.split(" to ")[0] for text in shown} == {"reply 0", "reply 1", "reply 2"}  # all three variants


def test_a_pair_abandoned_for_ten_minutes_goes_to_the_next_rater(tmp_path):
    """A served pair keeps others off it while its rater may still submit; once abandoned
    (served longer ago than SERVED_EXPIRY) it counts as uncovered again, and its own rater
    still gets it back first."""
    from datetime import datetime, timedelta, timezone

    from ratings.store import SERVED_EXPIRY

    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2)  # two variants: one pair on each of two prompts
    start = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    ana = store.next_pair(eval_id, "ana", random.Random(0), now=start)
    ben = store.next_pair(eval_id, "ben", random.Random(0), now=start + timedelta(minutes=5))
    assert ben["prompt"] != ana["prompt"]  # ana's pair is hers while she rates it
    later = start + SERVED_EXPIRY + timedelta(minutes=2)  # ana's served pair is stale, ben's is not
    cy = store.next_pair(eval_id, "cy", random.Random(0), now=later)
    assert cy["prompt"] == ana["prompt"]
    again = store.next_pair(eval_id, "ana", random.Random(5), now=later + timedelta(hours=1))
    assert (again["assignment_id"], again["reply_a"]) == (ana["assignment_id"], ana["reply_a"])  # reload
    store.rate_pair(again["assignment_id"], "ana", 4, 4)  # a late submit still counts
    assert store.progress(eval_id, "ana") == (1, 2)


def test_ties_are_broken_by_the_rng_passed_in(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 9, THREE)
    firsts = {store.next_pair(eval_id, f"r{seed}", random.Random(seed))["prompt"] for seed in range(3)}
    assert len(firsts) == 3  # three raters served together start on three different prompts
    # a first rater on a fresh evaluation: every pair ties on every count, so the rng alone
    # chooses; seeded, the choice repeats, and other seeds choose other pairs
    def first_pair(seed: int, name: str) -> str:
        fresh = Store(tmp_path / f"{name}.db")
        pair = fresh.next_pair(_evaluation(fresh, 9, THREE), "Ana", random.Random(seed))
        return f"{pair['prompt']}: {sorted([pair['reply_a'], pair['reply_b']])}"

    assert first_pair(0, "a") == first_pair(0, "b")
    assert len({first_pair(seed, f"s{seed}") for seed in range(6)}) >= 3


# --- Results and Compare name a model with no or few scores --------------------------------------------
def _rate_only(store, eval_id, names, raters):
    """Ratings as the old schedule left them: every rater rated only the `names` pairs."""
    with sqlite3.connect(store.path) as conn:
        pairs = [row[0] for row in conn.execute(
            "SELECT c.id FROM comparisons c JOIN replies r1 ON r1.id = c.reply1_id JOIN replies r2 ON r2.id = c.reply2_id"
            " JOIN variants v1 ON v1.id = r1.variant_id JOIN variants v2 ON v2.id = r2.variant_id"
            " WHERE v1.name = ? AND v2.name = ? ORDER BY c.id", names)]
    for rater in raters:
        for comparison in pairs:
            assignment = store._assign(comparison, rater, random.Random(0), "2026-01-05T09:00:00+00:00")
            store.rate_pair(assignment["id"], rater, 4, 3)


def test_the_coverage_note_names_a_model_nobody_rated_and_one_hardly_rated(tmp_path):
    from ratings import tables

    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 9, THREE)

    def notes():
        return tables.coverage_notes(store.variants(eval_id), store.replies(eval_id), store.ratings_frame(eval_id))

    assert notes() == []  # nothing rated: the headline says so
    _rate_only(store, eval_id, ("base", "run-1"), ("ana", "ben"))
    assert notes() == ["prompt_tuning: run-2: 0 of 9 replies rated — not compared yet."]
    late = store.next_pair(eval_id, "cy", random.Random(0))  # a rater joining later gets the third model
    store.rate_pair(late["assignment_id"], "cy", 3, 3)
    assert notes() == ["prompt_tuning: run-2: 1 of 9 replies rated, 1 of 38 scores (an even share is 13) — too "
                       "few to compare yet; read its rows with care."]
    while (pair := store.next_pair(eval_id, "cy", random.Random(0))) is not None:
        store.rate_pair(pair["assignment_id"], "cy", 3, 3)
    for rater in ("dee", "eve"):
        while (pair := store.next_pair(eval_id, rater, random.Random(0))) is not None:
            store.rate_pair(pair["assignment_id"], rater, 3, 3)
    counts = store.ratings_frame(eval_id)["variant"].value_counts()
    assert counts["run-2"] >= 0.5 * counts.sum() / 3 and notes() == []  # caught up: nothing to say


def test_results_and_compare_say_which_model_is_not_rated_yet(tmp_path):
    import gradio as gr

    from tuner.generate import Generator
    from tuner.runs import RunManager
    from tuner.ui import compare, results

    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 9, THREE)
    _rate_only(store, eval_id, ("base", "run-1"), ("ana", "ben"))
    with gr.Blocks() as demo:
        show, inputs, outputs = results.results_tab(store, None)
        compare.compare_tab(RunManager(tmp_path / "runs", tmp_path / "models"), Generator(tmp_path / "models"),
                            store)
    by_id = {getattr(c, "elem_id", None): c for c in outputs}
    summary = show(eval_id, 4, False, None)[by_id["results-summary"]]
    note = "prompt_tuning: run-2: 0 of 9 replies rated — not compared yet."
    assert summary.splitlines()[0] == f"- ⚠️ **{note}**"  # above everything else
    assert "prompt_tuning" not in "\n".join(summary.splitlines()[1:])  # the tables have no row for it
    handlers = {getattr(b.fn, "__name__", ""): b for b in demo.fns.values()}
    on_coverage = handlers["on_coverage"]
    assert [getattr(c, "elem_id", None) for c in on_coverage.inputs] == ["rate-eval"]
    assert [c.elem_id for c in on_coverage.outputs] == ["rate-coverage"]
    assert on_coverage.fn(eval_id) == f"- ⚠️ {note}"
    assert on_coverage.fn(None) == "" and on_coverage.fn("nonsense") == "" and on_coverage.fn(999) == ""


def test_two_calls_for_one_rater_at_once_serve_one_pair_and_the_rater_can_finish(tmp_path):
    """A double-clicked Next or two tabs: both calls picked a pair before either wrote its
    assignment, so with random tie-breaks the rater held two pairs of one prompt sharing a
    reply; the one shown second was rated, the other could never be, and it blocked the
    rater's last pair for good ("you have rated all 2 pairs" at 1 of 2)."""
    four = [{"name": "base", "label": "base", "kind": "base"},
            *({"name": f"run-{i}", "label": f"r{i}", "kind": "lora"} for i in (1, 2, 3))]
    for trial in range(12):
        store = Store(tmp_path / f"r{trial}.db")
        eval_id = _evaluation(store, 1, four)
        assign, together = store._assign, threading.Barrier(2)

        def after_both_picked(*args, **kwargs):  # both calls have chosen their pair by now
            try:
                together.wait(5)
            except threading.BrokenBarrierError:
                pass
            return assign(*args, **kwargs)

        store._assign = after_both_picked
        served = []
        calls = [threading.Thread(target=lambda k=k: served.append(store.next_pair(eval_id, "Ana", random.Random(
            trial * 2 + k)))) for k in range(2)]
        for call in calls:
            call.start()
        for call in calls:
            call.join()
        store._assign = assign
        assert served[0]["assignment_id"] == served[1]["assignment_id"]
        assert served[0]["prompt"] == served[1]["prompt"] == "Prompt 0"
        with store.db() as db:
            assert db.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 1
        store.rate_pair(served[1]["assignment_id"], "Ana", 3, 4)
        while (pair := store.next_pair(eval_id, "Ana", random.Random(trial))) is not None:
            store.rate_pair(pair["assignment_id"], "Ana", 3, 3)
        assert store.progress(eval_id, "Ana") == (2, 2)  # 4 replies: both disjoint pairs rated


def test_replies_are_replaced_only_while_rating_is_closed_and_with_the_settings_at_once(tmp_path):
    """A regeneration writes its replies and the new cap in one transaction, refused once rating
    is open (the owner may open it from another tab while the replies are being generated)."""
    store = Store(tmp_path / "r.db")
    eval_id = store.create_evaluation("e", "m", [{"text": "Prompt 0"}], VARIANTS, settings={"max_new_tokens": 8})
    ids = [v["id"] for v in store.variants(eval_id)]
    (prompt,) = store.prompts(eval_id)
    for vid in ids:
        store.add_reply(prompt["id"], vid, "cut off mid", {"max_new_tokens": 8}, 0.5, 8)
    new = [{"prompt_id": prompt["id"], "variant_id": vid, "text": "whole reply.", "settings": {"max_new_tokens": 16},
            "latency_s": 0.7, "new_tokens": 5, "flags": []} for vid in ids]
    store.replace_replies(eval_id, new, {"max_new_tokens": 16})
    assert list(store.replies(eval_id)["reply"]) == ["whole reply."] * 2
    assert store.evaluation(eval_id)["settings"] == {"max_new_tokens": 16}
    store.open_for_rating(eval_id)
    with pytest.raises(ValueError, match="open for rating"):
        store.replace_replies(eval_id, [dict(r, text="changed") for r in new], {"max_new_tokens": 32})
    assert list(store.replies(eval_id)["reply"]) == ["whole reply."] * 2
    assert store.evaluation(eval_id)["settings"] == {"max_new_tokens": 16}


# --- name squatting and unblinding: one admission per browser, names claimed per evaluation ----------
def _key(tag: str) -> str:
    """A browser's key, as the server keeps it in an HttpOnly cookie (20 characters or more)."""
    return f"browser-key-{tag}".ljust(32, "x")


def _count(store, sql: str, params=()) -> int:
    with sqlite3.connect(store.path) as conn:
        return conn.execute(sql, params).fetchone()[0]


def _finish(store, eval_id, rater, pairs=None):
    """`rater` rates `pairs` more pairs (all that are left when None)."""
    rated = 0
    while (pairs is None or rated < pairs) and (pair := store.next_pair(eval_id, rater, random.Random(0))):
        store.rate_pair(pair["assignment_id"], rater, 4, 2)
        rated += 1
    return rated


def test_names_refused_at_the_address_cap_are_not_claimed_anywhere(tmp_path):
    """One address once claimed 10 names before the cap refused it, and those names then
    blocked real raters everywhere. A refused admission writes nothing."""
    from ratings.store import NAMES_PER_ADDRESS

    store = Store(tmp_path / "r.db")
    eval_id, other = _evaluation(store, 1), _evaluation(store, 1)
    names = [f"name{i}" for i in range(NAMES_PER_ADDRESS + 4)]
    for i, name in enumerate(names):  # a fresh browser (cleared cookies) for each name
        if i < NAMES_PER_ADDRESS:
            assert store.admit(eval_id, f"  {name} ", _key(f"s{i}"), "10.0.0.9") == name
        else:
            with pytest.raises(RatingError, match=f"under {NAMES_PER_ADDRESS} names"):
                store.admit(eval_id, name, _key(f"s{i}"), "10.0.0.9")
    assert _count(store, "SELECT COUNT(*) FROM rater_claims") == NAMES_PER_ADDRESS
    assert _count(store, "SELECT COUNT(*) FROM rater_joins") == NAMES_PER_ADDRESS
    assert store.admit(eval_id, names[0], _key("s0"), "10.0.0.9") == names[0]  # a known name comes back
    for k, name in enumerate(names[NAMES_PER_ADDRESS:]):  # real raters take the refused names
        assert store.admit(eval_id, name, _key(f"real{k}"), f"10.0.1.{k}") == name
        assert store.admit(other, name, _key(f"elsewhere{k}"), f"10.0.2.{k}") == name
    with pytest.raises(RatingError, match="from another browser"):  # an admitted name stays its browser's
        store.admit(eval_id, names[0], _key("real-x"), "10.0.3.1")
    with pytest.raises(RatingError, match="20"):
        store.admit(eval_id, "short", "abc", "10.0.4.1")
    raw = (tmp_path / "r.db").read_bytes()
    assert b"10.0.0.9" not in raw and _key("s0").encode() not in raw  # address and key kept hashed


def test_a_browser_rates_an_evaluation_under_one_name(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id, other = _evaluation(store, 1), _evaluation(store, 1)
    assert store.admit(eval_id, "ana", _key("b1"), "10.0.0.1") == "ana"
    with pytest.raises(RatingError, match="already rates this evaluation as 'ana'; go on as ana"):
        store.admit(eval_id, "anna", _key("b1"), "10.0.0.2")  # another address changes nothing
    assert _count(store, "SELECT COUNT(*) FROM rater_claims") == 1
    assert _count(store, "SELECT COUNT(*) FROM rater_joins") == 1
    assert store.admit(eval_id, "ana", _key("b1"), "10.0.0.2") == "ana"
    assert store.admit(other, "anna", _key("b1"), "10.0.0.1") == "anna"  # one name per evaluation


def test_a_name_is_claimed_per_evaluation_and_a_sign_in_is_its_own_proof(tmp_path):
    store = Store(tmp_path / "r.db")
    first, second = _evaluation(store, 1), _evaluation(store, 1)
    assert store.admit(first, "Ana  Lee", _key("ana"), "10.0.0.1") == "Ana Lee"
    assert store.admit(second, "Ana Lee", _key("other"), "10.0.0.2") == "Ana Lee"  # free in evaluation 2
    with pytest.raises(RatingError, match="Someone already rates as 'Ana Lee' from another browser"):
        store.admit(first, "Ana Lee", _key("other"), "10.0.0.2")
    with pytest.raises(RatingError, match="Someone already rates as 'Ana Lee' from another browser"):
        store.admit(second, "Ana Lee", _key("ana"), "10.0.0.1")
    assert store.admit(first, "ben", _key("ben"), "10.0.0.3", signed_in=True) == "ben"
    with pytest.raises(RatingError, match="'ben' rates with a Hugging Face sign-in"):
        store.admit(first, "ben", _key("ben"), "10.0.0.3")
    assert store.admit(first, "ben", _key("ben-laptop"), "10.0.0.4", signed_in=True) == "ben"
    with pytest.raises(RatingError, match="does not exist"):
        store.admit(999, "cy", _key("cy"), "10.0.0.5")


@pytest.mark.parametrize("reveal", ["end", "each"])
def test_after_a_reveal_the_address_brings_no_new_name(tmp_path, reveal):
    """A rater who had seen which model wrote which reply once came back under a second
    name and rated unblinded. Before any reveal a second name from the address is allowed (a
    household, an office) up to the cap; after it, none."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2, reveal=reveal)  # two pairs for each rater
    store.admit(eval_id, "ana", _key("ana"), "10.0.0.7")
    assert store.admit(eval_id, "ben", _key("ben"), "10.0.0.7") == "ben"  # nothing revealed yet
    assert _finish(store, eval_id, "ana", 1) == 1  # under 'each' that pair was revealed
    unblinded = "already seen which model wrote which reply in this evaluation"
    if reveal == "each":
        with pytest.raises(RatingError, match=unblinded):
            store.admit(eval_id, "cy", _key("cy"), "10.0.0.7")
    else:
        assert store.admit(eval_id, "cy", _key("cy"), "10.0.0.7") == "cy"
        with pytest.raises(RatingError, match="under 3 names"):
            store.admit(eval_id, "dee", _key("dee"), "10.0.0.7")
        store = Store(tmp_path / "r2.db")  # under the cap, a finished rater closes the address
        eval_id = _evaluation(store, 2)
        store.admit(eval_id, "ana", _key("ana"), "10.0.0.7")
        _finish(store, eval_id, "ana", 1)
    claims = _count(store, "SELECT COUNT(*) FROM rater_claims")
    _finish(store, eval_id, "ana")
    with pytest.raises(RatingError, match=unblinded):
        store.admit(eval_id, "eve", _key("eve"), "10.0.0.7")
    assert _count(store, "SELECT COUNT(*) FROM rater_claims") == claims  # nothing written
    assert _count(store, "SELECT COUNT(*) FROM rater_joins") == claims
    assert store.admit(eval_id, "ana", _key("ana"), "10.0.0.7") == "ana"  # known names come back
    assert store.admit(eval_id, "eve", _key("eve"), "10.0.0.8") == "eve"  # another address


@pytest.mark.parametrize("reveal", ["end", "each"])
def test_scores_are_final_once_revealed(tmp_path, reveal):
    """Scores once were changed after the reveal (20 changes, 40 audit rows): no more."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 2, reveal=reveal)
    first = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(first["assignment_id"], "ana", 4, 2)
    if reveal == "end":  # not revealed yet: a change of mind is allowed, and audited
        assert store.change_scores(first["assignment_id"], "ana", 3, 2)["score_a"] == 3
        assert _count(store, "SELECT COUNT(*) FROM audit") == 4
        _finish(store, eval_id, "ana")  # the last pair: now everything is revealed
    audit, scores = _count(store, "SELECT COUNT(*) FROM audit"), sorted(store.ratings_frame(eval_id)["score"])
    with sqlite3.connect(store.path) as conn:
        rated = [row[0] for row in conn.execute("SELECT id FROM assignments WHERE rated_at IS NOT NULL")]
    for assignment_id in rated:
        with pytest.raises(RatingError, match="Your scores are final: you have seen which model wrote which reply"):
            store.change_scores(assignment_id, "ana", 5, 5)
    assert _count(store, "SELECT COUNT(*) FROM audit") == audit  # no audit row, no change
    assert sorted(store.ratings_frame(eval_id)["score"]) == scores


def test_claims_made_before_the_upgrade_keep_their_names(tmp_path):
    """An evaluation rated under the old global claims: the migration carries each joined name's
    claim into that evaluation, so no one else takes a name that already has ratings."""
    from ratings.store import _hash_key

    db = database_before(tmp_path / "old.db", "0007_rater_claims")
    db["evaluations"].insert({"id": 1, "name": "before", "base_model": "m", "created_at": "x"})
    db.execute("INSERT INTO rater_keys VALUES ('ana', 'key', ?, 't'), ('ben', 'hf', NULL, 't')",
               [_hash_key(_key("old-ana"))])
    db.execute("INSERT INTO rater_joins VALUES (1, 'ana', 'h1', 't'), (1, 'ben', 'h2', 't')")
    db.conn.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    with pytest.raises(RatingError, match="another browser"):
        store.admit(1, "ana", _key("thief"), "10.0.0.1")
    with pytest.raises(RatingError, match="Hugging Face"):
        store.admit(1, "ben", _key("thief"), "10.0.0.1")
    assert store.admit(1, "ana", _key("old-ana"), "10.0.0.2") == "ana"  # the key her browser held
    assert store.admit(1, "ben", _key("ben"), "10.0.0.3", signed_in=True) == "ben"
