"""The ratings store: evaluations, their prompts, variants and replies, the pairs
raters are served, and the ratings themselves (the SQLite machinery under it is
`ratings.db`).

UNIQUE constraints make a double click harmless, and an append-only audit
table keeps every score a rater gave.

An evaluation is a fixed list of prompts and two or more variants (the base
model and runs' adapters). Every reply is generated before rating; every
unordered pair of variants on a prompt is a comparison; each rater sees each
comparison once, with sides drawn for that rater and kept here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import secrets
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd

from ratings import sequential
from ratings.db import Database
from ratings.scale import HIGHEST, LOWEST

ASPECTS = ("adherence", "tone", "clarity")  # optional scores on the same scale beside helpfulness
PREFERENCES = ("A", "B", "tie")
REVEALS = ("end", "each")
NAMES_PER_ADDRESS = 3  # new rater names one address may bring to one evaluation
BROWSER_KEY_MIN = 20  # characters in the random key a browser holds (the server makes it)
RATER_MAX = 60  # characters in a rater's name
# a pair served and not rated within this time is taken as abandoned: it no longer
# keeps other raters off that pair (its rater still gets it back first)
SERVED_EXPIRY = timedelta(minutes=10)
# what a rater is told once the owner has closed rating (Store.close_rating)
CLOSED = ("The owner closed rating of this evaluation: no more pairs are served or rated here. "
          "The ratings already given are kept.")


def _now() -> str:
    return _stamp(datetime.now(timezone.utc))


def _stamp(moment: datetime) -> str:
    """A UTC time as the tables store it: these strings sort as the times do."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _client_hash(client: str) -> str:
    """An address as the tables keep it: hashed, never in the clear."""
    return hashlib.sha256(f"tuner-rater-address:{client}".encode()).hexdigest()[:32]


class RatingError(ValueError):
    """Bad rating input; the message names the field and the value."""


def clean_rater(name) -> str:
    """The one form of a rater's name everything stores and compares (spaces
    collapsed), or a RatingError for an empty or overlong one."""
    name = " ".join(str(name or "").split())
    if not name:
        raise RatingError("Enter your name before rating.")
    if len(name) > RATER_MAX:
        raise RatingError(f"Rater name is {len(name)} characters; use at most {RATER_MAX}.")
    return name


def check_score(score, label: str, required: bool = True) -> int | None:
    scale = f"from {LOWEST} to {HIGHEST}"
    if score is None or score == "":
        if required:
            raise RatingError(f"{label}: choose a score {scale}.")
        return None
    try:
        value = int(score)
    except (TypeError, ValueError, OverflowError):
        raise RatingError(f"{label}: choose a score {scale} (got {score!r}).") from None
    whole = str(score).strip() in {str(value), f"{value}.0"}
    if isinstance(score, bool) or not LOWEST <= value <= HIGHEST or not whole:
        raise RatingError(f"{label}: the score must be a whole number {scale} (got {score!r}).")
    return value


class Store(Database):
    """The domain on top of the database: every read and write of evaluations,
    pairs, raters and ratings."""

    def __init__(self, path):
        # per evaluation: (what the decisions were computed from, base variant id, undecided variant ids)
        self._undecided: dict[int, tuple] = {}
        self._undecided_lock = threading.Lock()
        self._undecided_computing = threading.Lock()
        super().__init__(path)

    # --- evaluations, variants, prompts, replies -------------------------------------
    def create_evaluation(self, name: str, base_model: str, prompts: list[dict], variants: list[dict],
                          settings: dict | None = None, rules: list | None = None,
                          invite_code: str | None = None, checks: list[str] | None = None,
                          reveal: str = "end") -> int:
        """prompts: dicts with `text` and optional `messages`, `task`, `reference`,
        `category`, `external_id`, `flags`. variants: dicts with `name`, `label`, `kind`.
        `reveal`: when raters learn which model wrote which reply, 'end' (after their
        last pair) or 'each' (after every pair)."""
        if reveal not in REVEALS:
            raise ValueError(f"reveal must be one of {REVEALS} (got {reveal!r})")
        if len(variants) < 2:
            raise ValueError("An evaluation needs at least two variants to compare.")
        if not prompts:
            raise ValueError("An evaluation needs at least one prompt.")
        with self.write() as db:
            eval_id = db["evaluations"].insert({
                "name": name, "base_model": base_model, "settings": json.dumps(settings or {}),
                "rules": json.dumps(rules or []), "invite_code": invite_code or None,
                "checks": json.dumps(list(checks or [])), "reveal": reveal,
                "created_at": _now()}).last_pk
            for v in variants:
                db["variants"].insert({"evaluation_id": eval_id, "name": v["name"],
                                       "label": v.get("label") or v["name"], "kind": v.get("kind", "")})
            for position, p in enumerate(prompts, start=1):
                db["prompts"].insert({
                    "evaluation_id": eval_id, "position": position, "text": p["text"],
                    "external_id": p.get("external_id") or str(position), "task": p.get("task"),
                    "messages": json.dumps(p.get("messages") or [{"role": "user", "content": p["text"]}]),
                    "reference": p.get("reference"), "category": p.get("category"),
                    "flags": json.dumps(p.get("flags") or [])})
        return eval_id

    def evaluation(self, evaluation_id: int) -> dict | None:
        with self.db() as db:
            rows = list(db.query("SELECT * FROM evaluations WHERE id = ?", [evaluation_id]))
        if not rows:
            return None
        row = rows[0]
        row["settings"], row["rules"] = json.loads(row["settings"]), json.loads(row["rules"])
        row["checks"] = json.loads(row.get("checks") or "[]")
        return row

    def evaluations(self) -> list[dict]:
        with self.db() as db:
            return list(db.query("""
                SELECT e.id, e.name, e.base_model, e.created_at, e.invite_code IS NOT NULL AS has_code,
                       (SELECT COUNT(*) FROM prompts p WHERE p.evaluation_id = e.id) AS n_prompts,
                       (SELECT COUNT(*) FROM variants v WHERE v.evaluation_id = e.id) AS n_variants,
                       EXISTS (SELECT 1 FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
                               WHERE p.evaluation_id = e.id) AS open_for_rating,
                       e.closed_at IS NOT NULL AS closed
                FROM evaluations e ORDER BY e.id DESC"""))

    def is_open(self, evaluation_id: int) -> bool:
        """True when the evaluation exists and is open for rating (it has pairs)."""
        with self.db() as db:
            return db.execute("SELECT EXISTS (SELECT 1 FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
                              "WHERE p.evaluation_id = ?)", [int(evaluation_id)]).fetchone()[0] == 1

    def close_rating(self, evaluation_id: int) -> str:
        """The owner closes rating: from now on no new rater is admitted and no pair is served or
        rated (a rater may still change the scores of a pair already rated, until revealed, as
        before). Every rating given so far stays. Closing a closed evaluation changes nothing;
        returns when it was closed (UTC)."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM evaluations WHERE id = ?", [evaluation_id]).fetchone() is None:
                raise RatingError("This evaluation does not exist (any more).")
            db.execute("UPDATE evaluations SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                       [_now(), evaluation_id])
            return db.execute("SELECT closed_at FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()[0]

    def reopen_rating(self, evaluation_id: int) -> None:
        """Undo close_rating: raters may join, be served and rate again."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM evaluations WHERE id = ?", [evaluation_id]).fetchone() is None:
                raise RatingError("This evaluation does not exist (any more).")
            db.execute("UPDATE evaluations SET closed_at = NULL WHERE id = ?", [evaluation_id])

    def is_closed(self, evaluation_id: int) -> bool:
        """True when the owner has closed rating of this evaluation (is_open still says whether it has pairs)."""
        with self.db() as db:
            row = db.execute("SELECT closed_at FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _refuse_if_closed(db, evaluation_id: int) -> None:
        row = db.execute("SELECT closed_at FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()
        if row and row[0]:
            raise RatingError(CLOSED)

    def variants(self, evaluation_id: int) -> list[dict]:
        with self.db() as db:
            return list(db.query("SELECT * FROM variants WHERE evaluation_id = ? ORDER BY id", [evaluation_id]))

    def prompts(self, evaluation_id: int) -> list[dict]:
        with self.db() as db:
            rows = list(db.query("SELECT * FROM prompts WHERE evaluation_id = ? ORDER BY position",
                                 [evaluation_id]))
        for row in rows:
            row["messages"], row["flags"] = json.loads(row["messages"]), json.loads(row["flags"])
        return rows

    def add_reply(self, prompt_id: int, variant_id: int, text: str, settings: dict,
                  latency_s: float | None = None, new_tokens: int | None = None,
                  flags: list | None = None) -> int:
        with self.write() as db:
            db.execute(
                "INSERT INTO replies (prompt_id, variant_id, text, settings, latency_s, new_tokens, flags, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (prompt_id, variant_id) DO UPDATE SET"
                " text=excluded.text, settings=excluded.settings, latency_s=excluded.latency_s,"
                " new_tokens=excluded.new_tokens, flags=excluded.flags",
                [prompt_id, variant_id, text, json.dumps(settings), latency_s, new_tokens,
                 json.dumps(flags or []), _now()])
            return db.execute("SELECT id FROM replies WHERE prompt_id=? AND variant_id=?",
                              [prompt_id, variant_id]).fetchone()[0]

    def replace_replies(self, evaluation_id: int, replies: list[dict], settings: dict) -> None:
        """Put new replies (dicts of add_reply's arguments) in their old ones' places and the
        evaluation's settings to `settings`, in one transaction, only while it is not open for
        rating: raters never see a reply change under them, even when the owner opens rating
        in another tab while a regeneration runs."""
        with self.write() as db:
            if db.execute("SELECT EXISTS (SELECT 1 FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
                          "WHERE p.evaluation_id = ?)", [int(evaluation_id)]).fetchone()[0]:
                raise ValueError(f"evaluation #{evaluation_id} is open for rating; its replies stay as they are")
            for r in replies:
                db.execute(
                    "UPDATE replies SET text = ?, settings = ?, latency_s = ?, new_tokens = ?, flags = ? "
                    "WHERE prompt_id = ? AND variant_id = ?",
                    [r["text"], json.dumps(r["settings"]), r.get("latency_s"), r.get("new_tokens"),
                     json.dumps(r.get("flags") or []), r["prompt_id"], r["variant_id"]])
            db.execute("UPDATE evaluations SET settings = ? WHERE id = ?", [json.dumps(settings), evaluation_id])

    def open_for_rating(self, evaluation_id: int) -> int:
        """Create the comparisons (every pair of variants on every prompt, once both
        replies exist). Returns how many comparisons the evaluation has."""
        with self.write() as db:
            replies = list(db.query("""
                SELECT r.id, r.prompt_id FROM replies r JOIN prompts p ON p.id = r.prompt_id
                WHERE p.evaluation_id = ? ORDER BY r.prompt_id, r.variant_id""", [evaluation_id]))
            by_prompt: dict[int, list[int]] = {}
            for r in replies:
                by_prompt.setdefault(r["prompt_id"], []).append(r["id"])
            for prompt_id, ids in by_prompt.items():
                for first, second in itertools.combinations(ids, 2):
                    db.execute("INSERT OR IGNORE INTO comparisons (prompt_id, reply1_id, reply2_id) VALUES (?, ?, ?)",
                               [prompt_id, first, second])
            return db.execute("""SELECT COUNT(*) FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
                                 WHERE p.evaluation_id = ?""", [evaluation_id]).fetchone()[0]

    def replies(self, evaluation_id: int) -> pd.DataFrame:
        """Every reply with its prompt and variant: for the owner's views and exports."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT p.position, p.external_id, p.task, p.text AS prompt, p.reference, p.category,
                       v.name AS variant, v.label, r.id AS reply_id, r.text AS reply, r.latency_s,
                       r.new_tokens, r.flags
                FROM replies r JOIN prompts p ON p.id = r.prompt_id JOIN variants v ON v.id = r.variant_id
                WHERE p.evaluation_id = ? ORDER BY p.position, v.id""", [evaluation_id]))
        return pd.DataFrame(rows)

    # --- raters --------------------------------------------------------------------------
    def check_invite(self, evaluation_id: int, code: str | None) -> None:
        evaluation = self.evaluation(evaluation_id)
        if evaluation is None:
            raise RatingError("This evaluation does not exist (any more).")
        expected = evaluation["invite_code"]
        if expected and (code or "").strip() != expected:
            raise RatingError("That invite code is not right for this evaluation; ask the owner for the link's code.")

    def claim_rater(self, name: str, keys: dict | None = None, signed_in: bool = False) -> tuple[str, str | None]:
        """Tie a rater name to its proof; returns (the cleaned name, key to keep in the browser).

        A typed name is claimed by the first browser that uses it: it gets a
        random key, and later joins under that name must show it (`keys`: the
        keys this browser holds, by name). A Hugging Face sign-in (`signed_in`)
        is its own proof. Nobody can rate as, or overwrite the ratings of, a
        rater whose proof they lack.

        Superseded by `admit` (this claims a name for every evaluation, and before the
        address cap is checked); kept for older callers."""
        name = clean_rater(name)
        key = (keys or {}).get(name)
        with self.write() as db:
            row = db.execute("SELECT kind, key_hash FROM rater_keys WHERE rater = ?", [name]).fetchone()
            if row is None:
                new_key = None if signed_in else secrets.token_urlsafe(24)
                db.execute("INSERT INTO rater_keys (rater, kind, key_hash, created_at) VALUES (?, ?, ?, ?)",
                           [name, "hf" if signed_in else "key", _hash_key(new_key) if new_key else None, _now()])
                return name, new_key
        kind, key_hash = row
        if signed_in and kind == "hf":
            return name, None
        if not signed_in and kind == "key" and key and hmac.compare_digest(_hash_key(key), key_hash):
            return name, key
        if kind == "hf":
            raise RatingError(f"{name!r} rates with a Hugging Face sign-in; sign in as {name} or pick another name.")
        raise RatingError(f"Someone already rates as {name!r} from another browser. Go on in that browser, "
                          "or pick another name.")

    def join(self, evaluation_id: int, rater: str, client: str, cap: int = NAMES_PER_ADDRESS) -> None:
        """Record that `rater` rates this evaluation from `client` (an address); refuse a
        new name when that address already brought `cap` names to this evaluation
        (throwaway names are how one person would stuff the ballot), and any new name once the
        owner has closed rating. Superseded by `admit`."""
        rater = clean_rater(rater)
        client_hash = _client_hash(client)
        with self.write() as db:
            if db.execute("SELECT 1 FROM rater_joins WHERE evaluation_id = ? AND rater = ?",
                          [evaluation_id, rater]).fetchone():
                return
            self._refuse_if_closed(db, evaluation_id)
            used = db.execute("SELECT COUNT(*) FROM rater_joins WHERE evaluation_id = ? AND client_hash = ?",
                              [evaluation_id, client_hash]).fetchone()[0]
            if used >= cap:
                raise RatingError(f"This address already rates this evaluation under {used} names; go on under "
                                  "one of them (each person rates once).")
            db.execute("INSERT INTO rater_joins VALUES (?, ?, ?, ?)", [evaluation_id, rater, client_hash, _now()])

    def admit(self, evaluation_id: int, name: str, browser_key: str, client: str, signed_in: bool = False,
              cap: int = NAMES_PER_ADDRESS, owner: bool = False) -> str:
        """Admit a rater to one evaluation; returns the cleaned name, or raises RatingError saying why not.

        Replaces claim_rater + join. A name is claimed per evaluation, and only here, in the
        same transaction as every check, so a refused admission writes nothing (names refused
        at the address cap stay free for real raters). `browser_key`: the random key the
        server keeps in this browser's HttpOnly cookie (only its hash is stored). A claimed
        name is admitted again only with the same key, or with a sign-in for a name claimed
        by a Hugging Face sign-in (`signed_in`). A new name must pass, in order: the address
        cap (`cap` names per address per evaluation), one name per browser per evaluation,
        and no reveal yet to anyone from this address in this evaluation (a second name of
        someone who has seen which model wrote which reply would rate unblinded). `owner`: the
        owner's own panel, which friends may use in turn at the owner's computer: none of those
        three checks (the owner is trusted); each name is still claimed by this browser. Once the
        owner has closed rating (close_rating), no new name, not even on the owner's panel; a name
        already admitted is admitted again (to see which model wrote what, to change a score)."""
        name = clean_rater(name)
        if not isinstance(browser_key, str) or len(browser_key) < BROWSER_KEY_MIN:
            raise RatingError(f"This browser's rater key is missing or shorter than {BROWSER_KEY_MIN} characters; "
                              "reload the page (and allow its cookie) to rate.")
        key_hash, client_hash = _hash_key(browser_key), _client_hash(client)
        with self.write() as db:
            if db.execute("SELECT 1 FROM evaluations WHERE id = ?", [evaluation_id]).fetchone() is None:
                raise RatingError("This evaluation does not exist (any more).")
            claim = db.execute("SELECT kind, key_hash FROM rater_claims WHERE evaluation_id = ? AND rater = ?",
                               [evaluation_id, name]).fetchone()
            if claim is not None:
                kind, claimed_hash = claim
                if kind == "hf":
                    if signed_in:
                        return name
                    raise RatingError(f"{name!r} rates with a Hugging Face sign-in; sign in as {name} "
                                      "or pick another name.")
                if claimed_hash and hmac.compare_digest(key_hash, claimed_hash):
                    return name
                raise RatingError(f"Someone already rates as {name!r} from another browser. Go on in that "
                                  "browser, or pick another name.")
            self._refuse_if_closed(db, evaluation_id)  # (a name already admitted may come back: to change the scores of a pair it rated)
            if not owner:
                self._may_add_name(db, evaluation_id, key_hash, client_hash, cap)
            now = _now()
            db.execute("INSERT INTO rater_claims (evaluation_id, rater, kind, key_hash, client_hash, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [evaluation_id, name, "hf" if signed_in else "key", key_hash, client_hash, now])
            # (a name joined without a claim, by the old join alone, keeps its first address)
            db.execute("INSERT OR IGNORE INTO rater_joins VALUES (?, ?, ?, ?)",
                       [evaluation_id, name, client_hash, now])
        return name

    def _may_add_name(self, db, evaluation_id: int, key_hash: str, client_hash: str, cap: int) -> None:
        """Refuse a new name (RatingError): over the address cap, a second name of this browser,
        or from an address where someone has been shown which model wrote which reply."""
        used = db.execute("SELECT COUNT(*) FROM rater_joins WHERE evaluation_id = ? AND client_hash = ?",
                          [evaluation_id, client_hash]).fetchone()[0]
        if used >= cap:
            raise RatingError(f"This address already rates this evaluation under {used} names; go on under "
                              "one of them (each person rates once).")
        held = db.execute("SELECT rater FROM rater_claims WHERE evaluation_id = ? AND key_hash = ? "
                          "ORDER BY created_at LIMIT 1", [evaluation_id, key_hash]).fetchone()
        if held is not None:
            raise RatingError(f"This browser already rates this evaluation as {held[0]!r}; go on as {held[0]}.")
        neighbours = [r for (r,) in db.execute(
            "SELECT rater FROM rater_joins WHERE evaluation_id = ? AND client_hash = ?", [evaluation_id, client_hash])]
        if any(self._revealed(db, evaluation_id, rater) for rater in neighbours):
            raise RatingError("Someone at this address has already seen which model wrote which reply in this "
                              "evaluation; a new name from here would rate unblinded.")

    def rater_of(self, evaluation_id: int, browser_key, hf_user: str | None = None,
                 name: str | None = None) -> str | None:
        """The name this browser (its key) or this Hugging Face sign-in rates under in an
        evaluation, once admitted; else None. The web layer's only source of a rater's name.
        `name`: the name the page shows, which must be one this browser holds (the owner's
        panel may hold several); without it, the browser's first."""
        with self.db() as db:
            if hf_user:
                row = db.execute("SELECT rater FROM rater_claims WHERE evaluation_id = ? AND rater = ? AND kind = 'hf'",
                                 [evaluation_id, clean_rater(hf_user)]).fetchone()
                if row:
                    return row[0]
            if not isinstance(browser_key, str) or len(browser_key) < BROWSER_KEY_MIN:
                return None
            named = ""
            if isinstance(name, str) and name.strip():
                try:
                    named, args = "AND rater = ? ", [evaluation_id, _hash_key(browser_key), clean_rater(name)]
                except RatingError:
                    return None
            else:
                args = [evaluation_id, _hash_key(browser_key)]
            row = db.execute(f"SELECT rater FROM rater_claims WHERE evaluation_id = ? AND key_hash = ? {named}"
                             "ORDER BY created_at LIMIT 1", args).fetchone()
        return row[0] if row else None

    def evaluation_of_assignment(self, assignment_id: int) -> int | None:
        """The evaluation a served pair belongs to (None for no such pair)."""
        with self.db() as db:
            row = db.execute("SELECT p.evaluation_id FROM assignments a JOIN comparisons c ON c.id = a.comparison_id "
                             "JOIN prompts p ON p.id = c.prompt_id WHERE a.id = ?", [assignment_id]).fetchone()
        return row[0] if row else None

    def _revealed(self, db, evaluation_id: int, rater: str) -> bool:
        """Whether `rater` has been shown which model wrote which reply in this evaluation:
        with reveal 'each', once they rated a pair; with 'end', once they rated all theirs."""
        done = self._rated_count(db, evaluation_id, rater)
        if done == 0:
            return False
        row = db.execute("SELECT reveal FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()
        if (row[0] if row else "end") == "each":
            return True
        return done >= self._pairs_per_rater(db, evaluation_id)

    @staticmethod
    def _rated_count(db, evaluation_id: int, rater: str) -> int:
        return db.execute("""SELECT COUNT(*) FROM assignments a JOIN comparisons c ON c.id = a.comparison_id
                             JOIN prompts p ON p.id = c.prompt_id
                             WHERE p.evaluation_id = ? AND a.rater = ? AND a.rated_at IS NOT NULL""",
                          [evaluation_id, rater]).fetchone()[0]

    def _pairs_per_rater(self, db, evaluation_id: int) -> int:
        """How many pairs one rater is served: on each prompt, as many pairs as its
        replies allow without any reply twice (k replies: k // 2 pairs)."""
        rows = db.execute("""SELECT COUNT(DISTINCT r.id) FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
                             JOIN replies r ON r.id IN (c.reply1_id, c.reply2_id)
                             WHERE p.evaluation_id = ? GROUP BY p.id""", [evaluation_id]).fetchall()
        return sum(n // 2 for (n,) in rows)

    def progress(self, evaluation_id: int, rater: str) -> tuple[int, int]:
        """(pairs this rater has rated, pairs this rater is served in all)."""
        return self._progress(evaluation_id, clean_rater(rater))

    def _progress(self, evaluation_id: int, rater: str) -> tuple[int, int]:
        with self.db() as db:
            total = self._pairs_per_rater(db, evaluation_id)
            done = self._rated_count(db, evaluation_id, rater)
        return min(done, total) if total else done, max(total, done)

    def next_pair(self, evaluation_id: int, rater: str, rng: random.Random,
                  now: datetime | None = None) -> dict | None:
        """The next comparison this rater has not rated, with its two replies in
        this rater's own random order. Returns only what the rater may see plus
        the assignment id; which variant is which stays here. `now` (UTC) is when
        the pair is served: what counts as abandoned is measured from it. Refused
        (RatingError) once the owner has closed rating."""
        rater = clean_rater(rater)
        now = now or datetime.now(timezone.utc)
        with self.db() as db:
            self._refuse_if_closed(db, evaluation_id)
        base, undecided = self.undecided_variants(evaluation_id)
        best = self._best_pairs(evaluation_id, rater, base, undecided, _stamp(now - SERVED_EXPIRY))
        if not best:
            return None
        comparison = rng.choice(best)  # ties at random: by id, every rater started on the same pair
        assignment = self._assign(comparison["id"], rater, rng, _stamp(now))
        with self.db() as db:
            texts = {r["id"]: r["text"] for r in db.query(
                "SELECT id, text FROM replies WHERE id IN (?, ?)",
                [assignment["left_reply_id"], assignment["right_reply_id"]])}
            if assignment["comparison_id"] != comparison["id"]:  # a pair served to this rater meanwhile
                comparison = next(db.query("SELECT p.text, p.task, p.flags FROM comparisons c JOIN prompts p "
                                           "ON p.id = c.prompt_id WHERE c.id = ?", [assignment["comparison_id"]]))
        done, total = self._progress(evaluation_id, rater)
        return {
            "assignment_id": assignment["id"],
            "prompt": comparison["text"],
            "task": comparison["task"],
            "flags": json.loads(comparison["flags"]),
            "reply_a": texts[assignment["left_reply_id"]],
            "reply_b": texts[assignment["right_reply_id"]],
            "done": done,
            "total": total,
        }

    def _best_pairs(self, evaluation_id: int, rater: str, base: int | None, undecided: list[int],
                    fresh: str) -> list[dict]:
        """The comparisons this rater may be served, those ranked first (ties: several).

        Never a reply this rater has scored: with three or more variants each reply is in
        several pairs, and a second score of the same text would replace the first. So a
        rater gets k // 2 disjoint pairs per prompt. A pair already served to this rater
        comes back first. Then a pair that teaches an undecided decision (active sampling,
        as Chatbot Arena's): the base reply against a variant whose anytime-valid decision
        (ratings.sequential) is still open, on a prompt where nobody has rated that pair or
        is rating it, since exactly these ratings enter the test (a prompt enters at its first
        rating of the pair); a decided variant's pairs wait. Once no such pair is left, as
        before: the pair fewest raters have (so raters rating together spread over all
        pairs and every prompt keeps being rated for the per-prompt tables), of those the
        pair whose two variants have the fewest scores (so every variant has its share of
        the scores at any moment, not only once everyone is done), then a prompt other
        raters have least (so a rater's second pair on a prompt is rarely one another rater
        holds). A pair served and not yet rated counts as covered until it is abandoned:
        counting only finished ratings served two raters rating together the same pairs.
        With two variants the teaching pairs are the unrated ones, first in that order anyway.
        """
        with self.db() as db:
            return list(db.query("""
                WITH live AS MATERIALIZED (
                    SELECT a.comparison_id, a.rater, c.prompt_id, c.reply1_id, c.reply2_id
                    FROM assignments a JOIN comparisons c ON c.id = a.comparison_id
                    JOIN prompts p ON p.id = c.prompt_id
                    WHERE p.evaluation_id = :evaluation AND (a.rated_at IS NOT NULL OR a.created_at >= :fresh)),
                pair_load AS (SELECT comparison_id, COUNT(*) AS n FROM live GROUP BY comparison_id),
                prompt_load AS (SELECT prompt_id, COUNT(*) AS n FROM live WHERE rater != :rater GROUP BY prompt_id),
                variant_load AS (
                    SELECT variant_id, COUNT(*) AS n FROM (
                        SELECT r.variant_id FROM live l JOIN replies r ON r.id = l.reply1_id UNION ALL
                        SELECT r.variant_id FROM live l JOIN replies r ON r.id = l.reply2_id) GROUP BY variant_id),
                entered AS (SELECT DISTINCT comparison_id FROM live WHERE rater NOT IN (
                    SELECT rater FROM excluded_raters WHERE evaluation_id = :evaluation)),
                open_decision AS (SELECT value AS variant_id FROM json_each(:undecided)),
                ranked AS (
                    SELECT c.id, p.text, p.task, p.flags, RANK() OVER (ORDER BY
                        EXISTS (SELECT 1 FROM assignments s WHERE s.comparison_id = c.id AND s.rater = :rater) DESC,
                        ((r1.variant_id = :base AND r2.variant_id IN open_decision
                          OR r2.variant_id = :base AND r1.variant_id IN open_decision)
                         AND c.id NOT IN entered) DESC,
                        COALESCE(pl.n, 0), COALESCE(v1.n, 0) + COALESCE(v2.n, 0), COALESCE(ql.n, 0)) AS place
                    FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
                    JOIN replies r1 ON r1.id = c.reply1_id JOIN replies r2 ON r2.id = c.reply2_id
                    LEFT JOIN variant_load v1 ON v1.variant_id = r1.variant_id
                    LEFT JOIN variant_load v2 ON v2.variant_id = r2.variant_id
                    LEFT JOIN pair_load pl ON pl.comparison_id = c.id
                    LEFT JOIN prompt_load ql ON ql.prompt_id = c.prompt_id
                    WHERE p.evaluation_id = :evaluation AND NOT EXISTS (
                        SELECT 1 FROM assignments a WHERE a.comparison_id = c.id AND a.rater = :rater
                        AND a.rated_at IS NOT NULL)
                      AND NOT EXISTS (SELECT 1 FROM ratings t WHERE t.rater = :rater
                                      AND t.reply_id IN (c.reply1_id, c.reply2_id))
                      AND NOT EXISTS (
                        SELECT 1 FROM assignments o JOIN comparisons oc ON oc.id = o.comparison_id
                        WHERE o.rater = :rater AND o.comparison_id != c.id AND o.rated_at IS NULL
                          AND oc.prompt_id = c.prompt_id
                          AND (oc.reply1_id IN (c.reply1_id, c.reply2_id)
                               OR oc.reply2_id IN (c.reply1_id, c.reply2_id))))
                SELECT id, text, task, flags FROM ranked WHERE place = 1 ORDER BY id""",
                                 {"evaluation": evaluation_id, "rater": rater, "fresh": fresh, "base": base,
                                  "undecided": json.dumps(undecided)}))

    def undecided_variants(self, evaluation_id: int) -> tuple[int | None, list[int]]:
        """(the base variant's id, the ids of the fine-tuned variants whose anytime-valid decision
        against it, ratings.sequential's, is still open): what the scheduler teaches first.

        Computing the decisions reads every rated pair and runs the betting test, several times
        what serving a pair costs; they are kept per evaluation with what they were computed
        from, and computed again only when that changes: a (base, variant) pair rated for the
        first time on a prompt (a prompt entering a test), a score replaced (an audit row with an
        old score), a rater excluded or let back in. Other ratings change no decision."""
        with self.db() as db:
            row = db.execute("""
                WITH base AS (SELECT MIN(id) AS id FROM variants WHERE evaluation_id = :e)
                SELECT (SELECT id FROM base),
                       (SELECT COUNT(DISTINCT a.comparison_id) FROM assignments a
                        JOIN comparisons c ON c.id = a.comparison_id JOIN prompts p ON p.id = c.prompt_id
                        JOIN replies r1 ON r1.id = c.reply1_id JOIN replies r2 ON r2.id = c.reply2_id
                        WHERE p.evaluation_id = :e AND a.rated_at IS NOT NULL
                          AND (SELECT id FROM base) IN (r1.variant_id, r2.variant_id)
                          AND a.rater NOT IN (SELECT rater FROM excluded_raters WHERE evaluation_id = :e)),
                       (SELECT MAX(id) FROM audit WHERE old_score IS NOT NULL),
                       (SELECT group_concat(rater, char(10)) FROM (
                           SELECT rater FROM excluded_raters WHERE evaluation_id = :e ORDER BY rater))""",
                             {"e": evaluation_id}).fetchone()
        base, key = row[0], tuple(row[1:])
        with self._undecided_lock:
            kept = self._undecided.get(evaluation_id)
        if kept is not None and kept[0] == key:
            return kept[1], list(kept[2])
        variants = self.variants(evaluation_id)
        if key[0] < sequential.fewest_prompts_to_decide(len(variants) - 1):
            # too few prompts in any test for a decision (key[0] sums them over the models): every
            # model is open, known without reading a rating (25 raters' first submissions at once
            # each recomputed the decisions: p95 8 → 117 ms in bench/rating_load.py)
            return base, [v["id"] for v in variants[1:]]
        with self._undecided_computing:  # one computation at a time: the others then find its answer
            with self._undecided_lock:
                kept = self._undecided.get(evaluation_id)
            if kept is not None and kept[0] == key:
                return kept[1], list(kept[2])
            found = sequential.for_evaluation(self, evaluation_id)  # one per variant after the base, in order
            undecided = [v["id"] for v, d in zip(variants[1:], found) if d.decided is None]
            with self._undecided_lock:
                self._undecided[evaluation_id] = (key, base, tuple(undecided))
        return base, undecided

    def _assign(self, comparison_id: int, rater: str, rng: random.Random, at: str) -> dict:
        def assign(db):
            # checked again in the write itself: a pair picked just before the owner closed rating
            # is refused here, not served and then refused at submission
            evaluation = db.execute("SELECT p.evaluation_id FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
                                    "WHERE c.id = ?", [comparison_id]).fetchone()
            if evaluation:
                self._refuse_if_closed(db, evaluation[0])
            return self._assign_in(db, comparison_id, rater, rng, at)

        return self.grouped(assign)

    @staticmethod
    def _assign_in(db, comparison_id: int, rater: str, rng: random.Random, at: str) -> dict:
        """The rater's assignment of this comparison, made if need be; but a pair of this
        evaluation already served to the rater and still ratable comes first. Two calls for
        one rater at once (a double-clicked Next, two tabs) each picked a pair before either
        wrote; a second assignment on the same prompt shares a reply with the first, so the
        one left unrated could never be rated and blocked the rater's last pair for good.
        Writes are serial (Database.grouped), so this check and the insert are one step."""
        found = list(db.query("""
            SELECT a.* FROM assignments a JOIN comparisons c ON c.id = a.comparison_id
            JOIN prompts p ON p.id = c.prompt_id
            WHERE a.rater = :rater AND (a.comparison_id = :comparison OR (
                a.rated_at IS NULL AND p.evaluation_id = (
                    SELECT q.evaluation_id FROM comparisons k JOIN prompts q ON q.id = k.prompt_id
                    WHERE k.id = :comparison)
                AND NOT EXISTS (SELECT 1 FROM ratings t WHERE t.rater = a.rater
                                AND t.reply_id IN (c.reply1_id, c.reply2_id))))
            ORDER BY a.comparison_id != :comparison, a.id LIMIT 1""",
                              {"rater": rater, "comparison": comparison_id}))
        if found:
            return found[0]
        ids = list(db.execute("SELECT reply1_id, reply2_id FROM comparisons WHERE id=?", [comparison_id]).fetchone())
        rng.shuffle(ids)
        db["assignments"].insert({"comparison_id": comparison_id, "rater": rater, "left_reply_id": ids[0],
                                  "right_reply_id": ids[1], "created_at": at})
        return list(db.query("SELECT * FROM assignments WHERE comparison_id=? AND rater=?", [comparison_id, rater]))[0]

    def rate_pair(self, assignment_id: int, rater: str, score_a, score_b, aspects_a: dict | None = None,
                  aspects_b: dict | None = None, preference: str | None = None, comment: str | None = None) -> dict:
        """Commit a rater's judgement of one pair in one transaction, then (and only
        then) return which variant each side was. Refused once the owner has closed rating,
        even for a pair served before (the check and the save are one transaction)."""
        rater = clean_rater(rater)
        a, b = check_score(score_a, "Reply A"), check_score(score_b, "Reply B")
        extra_a = {k: check_score((aspects_a or {}).get(k), f"Reply A {k}", required=False) for k in ASPECTS}
        extra_b = {k: check_score((aspects_b or {}).get(k), f"Reply B {k}", required=False) for k in ASPECTS}
        if preference not in (None, "", *PREFERENCES):
            raise RatingError(f"Preference must be A, B or tie (got {preference!r}).")
        comment = (comment or "").strip()[:2000] or None

        def commit(db):
            found = list(db.query("SELECT * FROM assignments WHERE id=?", [assignment_id]))
            if not found or found[0]["rater"] != rater:
                raise RatingError("This pair was not served to you; load the next pair again.")
            assignment = found[0]
            self._refuse_if_closed(db, db.execute(
                "SELECT p.evaluation_id FROM comparisons c JOIN prompts p ON p.id = c.prompt_id WHERE c.id = ?",
                [assignment["comparison_id"]]).fetchone()[0])
            pair = (assignment["left_reply_id"], assignment["right_reply_id"])
            if assignment["rated_at"] is not None:
                raise RatingError("You already rated this pair; your scores are saved. Press Next pair "
                                  "(or Change my scores to replace them).")
            if db.execute("SELECT 1 FROM ratings WHERE rater = ? AND reply_id IN (?, ?)", [rater, *pair]).fetchone():
                raise RatingError("You already scored one of these replies in another pair; press Next pair.")
            for reply_id, score, extra in ((pair[0], a, extra_a), (pair[1], b, extra_b)):
                self._upsert_rating(db, reply_id, rater, score, extra)
            db.execute("UPDATE assignments SET rated_at=?, preference=?, comment=? WHERE id=?",
                       [_now(), preference or None, comment, assignment_id])
            sides = {r["id"]: r for r in db.query(
                "SELECT r.id, v.name, v.label FROM replies r JOIN variants v ON v.id = r.variant_id"
                " WHERE r.id IN (?, ?)", [assignment["left_reply_id"], assignment["right_reply_id"]])}
            return assignment, sides

        assignment, sides = self.grouped(commit)  # returns once committed
        left, right = sides[assignment["left_reply_id"]], sides[assignment["right_reply_id"]]
        return {"a": left["name"], "a_label": left["label"], "b": right["name"], "b_label": right["label"],
                "score_a": a, "score_b": b}

    def change_scores(self, assignment_id: int, rater: str, score_a, score_b) -> dict:
        """The explicit way to replace a rater's scores of a pair they rated: audited
        (old and new score), never done by a second submit, and only until the rater has
        been shown which model wrote which reply (reveal 'each': every submit shows its pair,
        so never; 'end': until their last pair is rated). Refused, it writes nothing. Allowed
        after the owner closed rating: it corrects a rating already given and adds none."""
        rater = clean_rater(rater)
        a, b = check_score(score_a, "Reply A"), check_score(score_b, "Reply B")

        def commit(db):
            found = list(db.query("SELECT * FROM assignments WHERE id=?", [assignment_id]))
            if not found or found[0]["rater"] != rater or found[0]["rated_at"] is None:
                raise RatingError("Only a pair you have rated can be changed.")
            assignment = found[0]
            evaluation_id = db.execute("SELECT p.evaluation_id FROM comparisons c JOIN prompts p "
                                       "ON p.id = c.prompt_id WHERE c.id = ?",
                                       [assignment["comparison_id"]]).fetchone()[0]
            if self._revealed(db, evaluation_id, rater):
                raise RatingError("Your scores are final: you have seen which model wrote which reply.")
            old = {}
            for reply_id, score in ((assignment["left_reply_id"], a), (assignment["right_reply_id"], b)):
                row = db.execute("SELECT score, adherence, tone, clarity FROM ratings WHERE reply_id=? AND rater=?",
                                 [reply_id, rater]).fetchone()
                old[reply_id] = row[0] if row else None
                extra = dict(zip(ASPECTS, row[1:])) if row else dict.fromkeys(ASPECTS)
                self._upsert_rating(db, reply_id, rater, score, extra)
            return [old[assignment["left_reply_id"]], old[assignment["right_reply_id"]]]

        before = self.grouped(commit)
        return {"old_a": before[0], "old_b": before[1], "score_a": a, "score_b": b}

    def reveal_of(self, evaluation_id: int) -> str:
        with self.db() as db:
            row = db.execute("SELECT reveal FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()
        return row[0] if row else "end"

    def rater_reveal(self, evaluation_id: int, rater: str) -> list[dict]:
        """What a rater may learn once done: for each pair they rated, who wrote A and B."""
        rater = clean_rater(rater)
        with self.db() as db:
            return list(db.query("""
                SELECT p.position, vl.label AS a_label, vr.label AS b_label, tl.score AS score_a, tr.score AS score_b
                FROM assignments a JOIN comparisons c ON c.id = a.comparison_id JOIN prompts p ON p.id = c.prompt_id
                JOIN replies rl ON rl.id = a.left_reply_id JOIN variants vl ON vl.id = rl.variant_id
                JOIN replies rr ON rr.id = a.right_reply_id JOIN variants vr ON vr.id = rr.variant_id
                LEFT JOIN ratings tl ON tl.reply_id = a.left_reply_id AND tl.rater = a.rater
                LEFT JOIN ratings tr ON tr.reply_id = a.right_reply_id AND tr.rater = a.rater
                WHERE p.evaluation_id = ? AND a.rater = ? AND a.rated_at IS NOT NULL
                ORDER BY p.position, a.id""", [evaluation_id, rater]))

    # --- the owner's view of the raters ---------------------------------------------------
    def raters(self, evaluation_id: int) -> pd.DataFrame:
        """One row per rater of an evaluation: pairs rated, mean score given, first and last
        rating, how many names came from the same address, excluded or not."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT t.rater, COUNT(*) AS scores, ROUND(AVG(t.score), 2) AS mean_score,
                       MIN(t.created_at) AS first_at, MAX(t.updated_at) AS last_at,
                       (SELECT COUNT(*) FROM rater_joins j2 WHERE j2.evaluation_id = :e AND j2.client_hash =
                            (SELECT j.client_hash FROM rater_joins j WHERE j.evaluation_id = :e AND j.rater = t.rater))
                           AS names_from_address,
                       EXISTS (SELECT 1 FROM excluded_raters x WHERE x.evaluation_id = :e AND x.rater = t.rater)
                           AS excluded
                FROM ratings t JOIN replies r ON r.id = t.reply_id JOIN prompts p ON p.id = r.prompt_id
                WHERE p.evaluation_id = :e GROUP BY t.rater ORDER BY first_at""", {"e": evaluation_id}))
        columns = ["rater", "scores", "mean_score", "first_at", "last_at", "names_from_address", "excluded"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["excluded"] = frame["excluded"].astype(bool)
        return frame

    def set_excluded(self, evaluation_id: int, rater: str, excluded: bool, reason: str = "") -> bool:
        """Leave a rater out of (or back in) an evaluation's statistics; their ratings stay
        stored and the decision is audited. Returns whether anything changed."""
        rater = clean_rater(rater)
        with self.write() as db:
            known = db.execute("""SELECT 1 FROM ratings t JOIN replies r ON r.id = t.reply_id
                                  JOIN prompts p ON p.id = r.prompt_id WHERE p.evaluation_id = ? AND t.rater = ?""",
                               [evaluation_id, rater]).fetchone()
            if not known:
                raise RatingError(f"No rater {rater!r} has rated this evaluation.")
            if excluded:
                changed = db.execute("INSERT OR IGNORE INTO excluded_raters VALUES (?, ?, ?, ?)",
                                     [evaluation_id, rater, _now(), reason or None]).rowcount
            else:
                changed = db.execute("DELETE FROM excluded_raters WHERE evaluation_id = ? AND rater = ?",
                                     [evaluation_id, rater]).rowcount
            if changed:
                db.execute("INSERT INTO owner_audit (at, evaluation_id, action, rater, detail) VALUES (?, ?, ?, ?, ?)",
                           [_now(), evaluation_id, "exclude" if excluded else "include", rater, reason or None])
        return bool(changed)

    def excluded(self, evaluation_id: int) -> set[str]:
        with self.db() as db:
            return {r[0] for r in db.execute("SELECT rater FROM excluded_raters WHERE evaluation_id = ?",
                                             [evaluation_id])}

    @staticmethod
    def _upsert_rating(db, reply_id: int, rater: str, score: int, extra: dict) -> None:
        old = db.execute("SELECT score FROM ratings WHERE reply_id=? AND rater=?", [reply_id, rater]).fetchone()
        now = _now()
        db.execute("INSERT INTO ratings (reply_id, rater, score, adherence, tone, clarity, created_at, updated_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reply_id, rater) DO UPDATE SET"
                   " score=excluded.score, adherence=excluded.adherence, tone=excluded.tone,"
                   " clarity=excluded.clarity, updated_at=excluded.updated_at",
                   [reply_id, rater, score, extra["adherence"], extra["tone"], extra["clarity"], now, now])
        db.execute("INSERT INTO audit (at, rater, reply_id, old_score, new_score) VALUES (?, ?, ?, ?, ?)",
                   [now, rater, reply_id, old[0] if old else None, score])

    # --- raw scores for the statistics ---------------------------------------------------
    def ratings_frame(self, evaluation_id: int, with_excluded: bool = False) -> pd.DataFrame:
        """One row per rating: prompt, variant, rater, score, the aspects, reply length
        (raters the owner excluded are left out unless `with_excluded`)."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT p.id AS prompt_id, p.position, p.external_id, p.task, p.category, p.text AS prompt,
                       v.name AS variant, v.label, t.rater, t.score, t.adherence, t.tone, t.clarity,
                       length(r.text) AS reply_chars, p.flags
                FROM ratings t JOIN replies r ON r.id = t.reply_id JOIN prompts p ON p.id = r.prompt_id
                JOIN variants v ON v.id = r.variant_id
                WHERE p.evaluation_id = ? AND (? OR t.rater NOT IN (
                    SELECT rater FROM excluded_raters WHERE evaluation_id = p.evaluation_id))
                ORDER BY p.position, v.id, t.rater""", [evaluation_id, with_excluded]))
        columns = ["prompt_id", "position", "external_id", "task", "category", "prompt", "variant", "label",
                   "rater", "score", "adherence", "tone", "clarity", "reply_chars", "flags"]
        frame = pd.DataFrame(rows, columns=columns)
        # the keyword rules' flags of the prompt, as one value to break down by ("escalate, refund")
        frame["flag"] = [", ".join(json.loads(f)) if f and f != "[]" else "" for f in frame["flags"]]
        return frame.drop(columns=["flags"])

    def rating_sequence(self, evaluation_id: int, with_excluded: bool = False) -> pd.DataFrame:
        """One row per rated pair, in the order the pairs were rated: the prompt, the rater and
        each side's model label and score (what ratings.sequential decides on). Raters the owner
        excluded are left out unless `with_excluded`, as in every table."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT a.id AS assignment, p.id AS prompt_id, a.rater, a.rated_at,
                       vl.label AS label_a, tl.score AS score_a, vr.label AS label_b, tr.score AS score_b
                FROM assignments a JOIN comparisons c ON c.id = a.comparison_id JOIN prompts p ON p.id = c.prompt_id
                JOIN replies rl ON rl.id = a.left_reply_id JOIN variants vl ON vl.id = rl.variant_id
                JOIN replies rr ON rr.id = a.right_reply_id JOIN variants vr ON vr.id = rr.variant_id
                JOIN ratings tl ON tl.reply_id = a.left_reply_id AND tl.rater = a.rater
                JOIN ratings tr ON tr.reply_id = a.right_reply_id AND tr.rater = a.rater
                WHERE p.evaluation_id = ? AND a.rated_at IS NOT NULL AND (? OR a.rater NOT IN (
                    SELECT rater FROM excluded_raters WHERE evaluation_id = p.evaluation_id))
                ORDER BY a.rated_at, a.id""", [evaluation_id, with_excluded]))
        columns = ["assignment", "prompt_id", "rater", "rated_at", "label_a", "score_a", "label_b", "score_b"]
        return pd.DataFrame(rows, columns=columns)

    def judgements_frame(self, evaluation_id: int, with_excluded: bool = False) -> pd.DataFrame:
        """One row per rated pair: who was left and right, the preference, the comment
        (raters the owner excluded are left out unless `with_excluded`)."""
        with self.db() as db:
            rows = list(db.query("""
                SELECT a.comparison_id, p.position, a.rater, vl.name AS left_variant, vr.name AS right_variant,
                       a.preference, a.comment, a.rated_at
                FROM assignments a JOIN comparisons c ON c.id = a.comparison_id JOIN prompts p ON p.id = c.prompt_id
                JOIN replies rl ON rl.id = a.left_reply_id JOIN variants vl ON vl.id = rl.variant_id
                JOIN replies rr ON rr.id = a.right_reply_id JOIN variants vr ON vr.id = rr.variant_id
                WHERE p.evaluation_id = ? AND a.rated_at IS NOT NULL AND (? OR a.rater NOT IN (
                    SELECT rater FROM excluded_raters WHERE evaluation_id = p.evaluation_id))
                ORDER BY p.position, a.rater""", [evaluation_id, with_excluded]))
        columns = ["comparison_id", "position", "rater", "left_variant", "right_variant", "preference", "comment",
                   "rated_at"]
        return pd.DataFrame(rows, columns=columns)

