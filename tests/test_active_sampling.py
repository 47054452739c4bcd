"""The store's scheduler teaches the undecided decisions first (active sampling), and the owner
can close rating. Real SQLite files in tmp_path, the store's own API, ratings.sequential's own
decisions; scores are scripted per model so that what gets decided, and when, is known."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter

import pytest

from helpers import database_before, open_evaluation
from ratings import sequential
from ratings.store import CLOSED, RatingError, Store

THREE = [{"name": "base", "label": "base", "kind": "base"},
         {"name": "a", "label": "A", "kind": "lora"},
         {"name": "b", "label": "B", "kind": "lora"}]
PROMPTS = 16  # enough for A to be decided (about 11 prompts that A wins) with some prompts to spare
A_WINS = {"base": 1, "a": 5, "b": 1}  # A succeeds on every prompt, the base and B never: A is decided, B never


def _evaluation(store, prompts=PROMPTS, variants=THREE) -> int:
    """Replies read "<variant> <prompt position>", so a served pair tells the test who wrote what."""
    return open_evaluation(store, "active", "m", prompts, variants, reply="{variant} {position}")


def _who(pair: dict) -> tuple[str, str, int]:
    """(variant of reply A, variant of reply B, prompt position) of a served pair."""
    (left, position), (right, _) = pair["reply_a"].split(), pair["reply_b"].split()
    return left, right, int(position)


def _rate(store, rater: str, pair: dict, scores: dict) -> None:
    left, right, _ = _who(pair)
    store.rate_pair(pair["assignment_id"], rater, scores[left], scores[right])


def _decided(store, eval_id) -> dict[str, str | None]:
    return {d.model: d.decided for d in sequential.for_evaluation(store, eval_id)}


def _rated_pairs(store, eval_id) -> set[tuple[int, frozenset]]:
    """(prompt position, the two variants) of every pair rated so far."""
    frame = store.judgements_frame(eval_id, with_excluded=True)
    return {(int(r.position), frozenset((r.left_variant, r.right_variant))) for r in frame.itertuples()}


def _rate_until_a_is_decided(store, eval_id, raters=("r0", "r1", "r2")) -> str:
    """Raters take turns, one pair at a time, until A is decided; the rater of the deciding pair."""
    rng = random.Random(7)
    for turn in range(len(raters) * PROMPTS):
        rater = raters[turn % len(raters)]
        _rate(store, rater, store.next_pair(eval_id, rater, rng), A_WINS)
        if _decided(store, eval_id)["A"]:
            return rater
    raise AssertionError("A was never decided")


class TodaysOrder(Store):
    """The scheduler with no decision to teach: the order it falls back to (today's order)."""

    def undecided_variants(self, evaluation_id):
        base, _ = super().undecided_variants(evaluation_id)
        return base, []


def test_active_choice_never_serves_a_reply_twice_and_keeps_every_variant_covered(tmp_path):
    """Four raters rate a 3-variant evaluation together to the end, A getting decided on the
    way (so the scheduler switches to base-vs-B pairs, then back to today's order): nobody
    scores a reply twice, everyone gets one pair per prompt, every pair of every prompt is
    rated, and no variant's share of the scores falls far below its fair share after any round
    (while the base-vs-undecided pairs come first the base is in each of them, and while A is
    decided and B is not, A waits: measured, at least 64% of the fair share)."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store)
    raters, rng = ("ana", "ben", "cy", "dee"), random.Random(3)
    scores = {"base": 2, "a": 5}
    rounds, decided_at = 0, None
    while True:
        served = [(r, p) for r in raters if (p := store.next_pair(eval_id, r, rng)) is not None]
        if not served:
            break
        for rater, pair in served:
            _rate(store, rater, pair, {**scores, "b": rng.randint(1, 5)})
        rounds += 1
        decided_at = decided_at or (_decided(store, eval_id)["A"] and rounds)
        counts = Counter(store.ratings_frame(eval_id)["variant"])
        fair = sum(counts.values()) / 3
        assert all(counts[v] >= 0.55 * fair for v in ("base", "a", "b")), (rounds, counts)
    assert decided_at and decided_at < rounds  # the switch happened while raters were still rating
    assert rounds == PROMPTS and all(store.progress(eval_id, r) == (PROMPTS, PROMPTS) for r in raters)
    frame = store.ratings_frame(eval_id)
    assert not frame.duplicated(["prompt_id", "variant", "rater"]).any()  # no reply twice for a rater
    assert len(frame) == 2 * PROMPTS * len(raters)
    pairs = _rated_pairs(store, eval_id)
    assert pairs == {(p, frozenset(two)) for p in range(1, PROMPTS + 1)
                     for two in (("base", "a"), ("base", "b"), ("a", "b"))}  # every pair of every prompt


def test_base_against_the_undecided_variant_comes_before_pairs_that_teach_no_decision(tmp_path):
    """A is decided, B is not: the (base, B) pairs on prompts where no one has rated that pair
    are served first, before the A-B pairs and the base-A pairs nobody has rated either; once
    they are all served, today's order. Today's order itself serves an A-B pair first here (its
    two variants have fewer scores), so this test fails on it."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store)
    _rate_until_a_is_decided(store, eval_id)
    assert _decided(store, eval_id) == {"A": "better", "B": None}
    base_id, undecided = store.undecided_variants(eval_id)
    assert [v["name"] for v in store.variants(eval_id) if v["id"] in undecided] == ["b"]
    rated = _rated_pairs(store, eval_id)
    teaching = {p for p in range(1, PROMPTS + 1) if (p, frozenset(("base", "b"))) not in rated}
    untaught = [(p, two) for p in range(1, PROMPTS + 1) for two in (("a", "b"), ("base", "a"))
                if (p, frozenset(two)) not in rated]
    assert teaching and untaught  # both kinds are there to choose from
    # today's order, on a copy of the file as it is now, serves a newcomer something else
    with sqlite3.connect(tmp_path / "r.db") as here, sqlite3.connect(tmp_path / "copy.db") as copy:
        here.backup(copy)
    control = _who(TodaysOrder(tmp_path / "copy.db").next_pair(eval_id, "control", random.Random(0)))
    assert {control[0], control[1]} != {"base", "b"}
    # newcomers, each served one pair (served pairs count as being rated, so each gets another)
    got = []
    for k in range(len(teaching) + 1):
        left, right, position = _who(store.next_pair(eval_id, f"new{k}", random.Random(k)))
        got.append((position, {left, right}))
    assert [two for _, two in got[:-1]] == [{"base", "b"}] * len(teaching)
    assert {p for p, _ in got[:-1]} == teaching  # each prompt where base-B has not entered the test
    assert got[-1][1] != {"base", "b"}  # none left: today's order (least-covered pairs)


def test_with_two_variants_the_order_is_todays(tmp_path):
    """One fine-tuned model: its undecided pairs are the unrated ones, which today's order
    serves first anyway. Two files with the same evaluation, the same raters and seeds: the
    same pairs in the same order."""
    two = THREE[:2]
    orders = []
    for cls in (Store, TodaysOrder):
        store = cls(tmp_path / f"{cls.__name__}.db")
        eval_id = _evaluation(store, 6, two)
        rng, served = random.Random(11), []
        for _ in range(6):
            for rater in ("ana", "ben", "cy"):
                pair = store.next_pair(eval_id, rater, rng)
                served.append(_who(pair))
                _rate(store, rater, pair, A_WINS)
        orders.append(served)
    assert orders[0] == orders[1]
    # (A is still undecided with 6 prompts: the active order was in play all along)
    assert Store(tmp_path / "Store.db").undecided_variants(eval_id)[1]


def test_the_kept_decisions_follow_a_changed_score_and_an_excluded_rater(tmp_path):
    """The scheduler keeps the decisions between pairs; a replaced score or an excluded rater
    can undo one, and then it must not serve from the old ones."""
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store)
    decider = _rate_until_a_is_decided(store, eval_id)
    a_id = next(v["id"] for v in store.variants(eval_id) if v["name"] == "a")
    assert a_id not in store.undecided_variants(eval_id)[1]
    # the deciding pair was base vs A: scored the other way round, A is no longer decided
    last = store.rating_sequence(eval_id).iloc[-1]
    assert {last["label_a"], last["label_b"]} == {"base", "A"}
    base_left = last["label_a"] == "base"
    changed = store.change_scores(int(last["assignment"]), decider, *((5, 1) if base_left else (1, 5)))
    assert changed["old_a"] != changed["score_a"]
    assert _decided(store, eval_id)["A"] is None
    assert a_id in store.undecided_variants(eval_id)[1]
    assert store.undecided_variants(eval_id) == Store(tmp_path / "r.db").undecided_variants(eval_id)
    store.change_scores(int(last["assignment"]), decider, *((1, 5) if base_left else (5, 1)))  # back again
    assert a_id not in store.undecided_variants(eval_id)[1]
    # excluding a rater takes their prompts out of the test: A is open again
    store.set_excluded(eval_id, decider, True, "test")
    assert _decided(store, eval_id)["A"] is None and a_id in store.undecided_variants(eval_id)[1]
    store.set_excluded(eval_id, decider, False)
    assert a_id not in store.undecided_variants(eval_id)[1]


# --- closing rating -------------------------------------------------------------------------------
def _key(tag: str) -> str:
    return f"browser-key-{tag}-0123456789abcdef"


def test_closed_rating_refuses_new_raters_pairs_and_ratings_and_keeps_every_rating(tmp_path):
    store = Store(tmp_path / "r.db")
    eval_id = _evaluation(store, 4)
    rng = random.Random(0)
    assert store.admit(eval_id, "ana", _key("ana"), "10.0.0.1") == "ana"
    for _ in range(2):
        _rate(store, "ana", store.next_pair(eval_id, "ana", rng), A_WINS)
    waiting = store.next_pair(eval_id, "ana", rng)  # served before closing, not rated yet
    before = store.ratings_frame(eval_id)
    assert not store.is_closed(eval_id)
    assert [e["closed"] for e in store.evaluations()] == [0]

    when = store.close_rating(eval_id)
    assert store.close_rating(eval_id) == when  # closing again changes nothing
    assert store.is_closed(eval_id) and store.is_open(eval_id)  # closed, and it still has its pairs
    assert store.evaluation(eval_id)["closed_at"] == when and [e["closed"] for e in store.evaluations()] == [1]
    assert "closed rating" in CLOSED and "already given are kept" in CLOSED
    refusals = {
        "next pair": lambda: store.next_pair(eval_id, "ana", rng),
        "rate": lambda: _rate(store, "ana", waiting, A_WINS),
        "new name": lambda: store.admit(eval_id, "ben", _key("ben"), "10.0.0.2"),
        "old join": lambda: store.join(eval_id, "cy", "10.0.0.3"),
        "another rater's first pair": lambda: store.next_pair(eval_id, "dee", rng),
    }
    for what, attempt in refusals.items():
        with pytest.raises(RatingError) as refused:
            attempt()
        assert str(refused.value) == CLOSED, what
    # the rater already admitted comes back (to see their pairs' models); nothing new was written
    assert store.admit(eval_id, "ana", _key("ana"), "10.0.0.1") == "ana"
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM rater_claims").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 3
    # a rated pair's scores may still be corrected (audited, as before)
    first = store.rating_sequence(eval_id).iloc[0]
    store.change_scores(int(first["assignment"]), "ana", 3, 3)
    after = store.ratings_frame(eval_id)
    assert len(after) == len(before) == 4 and sorted(after["score"]) != sorted(before["score"])

    store.reopen_rating(eval_id)
    assert not store.is_closed(eval_id) and [e["closed"] for e in store.evaluations()] == [0]
    _rate(store, "ana", waiting, A_WINS)  # the pair served before closing can be rated now
    assert store.admit(eval_id, "ben", _key("ben"), "10.0.0.2") == "ben"
    assert store.next_pair(eval_id, "ben", rng) is not None
    assert store.progress(eval_id, "ana") == (3, 4) and len(store.ratings_frame(eval_id)) == 6


def test_closing_an_evaluation_that_does_not_exist_says_so(tmp_path):
    store = Store(tmp_path / "r.db")
    for action in (store.close_rating, store.reopen_rating):
        with pytest.raises(RatingError, match="does not exist"):
            action(99)
    assert not store.is_closed(99)


def test_a_database_from_before_closing_gains_the_column_open(tmp_path):
    """A database made with the migrations up to 0007: opening it adds closed_at, every old
    evaluation open as it was, and it can be closed then."""
    db = database_before(tmp_path / "old.db", "0008_closed_rating")
    db["evaluations"].insert({"id": 1, "name": "before", "base_model": "m", "created_at": "x"})
    db.conn.commit()
    assert "closed_at" not in db["evaluations"].columns_dict
    db.close()
    store = Store(tmp_path / "old.db")
    assert store.evaluation(1)["closed_at"] is None and not store.is_closed(1)
    assert [e["closed"] for e in store.evaluations()] == [0]
    store.close_rating(1)
    assert store.is_closed(1)
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert "0008_closed_rating" in [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]


def test_one_evaluations_pairs_are_found_without_reading_every_other_evaluations(tmp_path):
    """The scheduler and the decision read one evaluation's assignments through its prompts
    (migration 0009): without the index SQLite scanned every assignment in the file, and each
    rating got slower with every evaluation kept (bench/sequential.py measured it)."""
    import sqlite3

    store = Store(tmp_path / "ratings.db")
    eval_id = open_evaluation(store, prompts=4)
    with sqlite3.connect(tmp_path / "ratings.db") as conn:
        plan = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT a.id FROM assignments a JOIN comparisons c ON c.id = a.comparison_id "
            "JOIN prompts p ON p.id = c.prompt_id WHERE p.evaluation_id = ? AND a.rated_at IS NOT NULL", [eval_id]))
        unrated = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT 1 FROM assignments o WHERE o.rater = ? AND o.rated_at IS NULL", ["ana"]))
    assert "comparisons_prompt" in plan and "SCAN a" not in plan, plan
    assert "assignments_unrated" in unrated, unrated
