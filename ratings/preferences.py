"""From an evaluation's scores to the next run's data: DPO pairs, KTO examples, the owner's
corrections, and a new version of an SFT dataset that learns them.

The rules (each threshold adjustable):
- KTO uses every scored reply once: a mean score of `desirable_at` (4) or more is a
  desirable completion, `undesirable_at` (2) or less an undesirable one; between them (3)
  it is left out.
- DPO uses pairs of replies to the same prompt: the reply with the higher mean score is
  chosen when the two means differ by at least `margin` (1); closer pairs and ties are
  left out.
- A reply the owner corrected: the correction is a chosen answer against every reply to
  that prompt that scored below the success threshold (the corrected one included), and a
  desirable KTO completion.

Scores come from the raters (excluded raters left out) or, marked as such, from a judge
model (`judge:NAME`, ratings.judge). Rows are in TRL's conversational shapes (tuner.preference),
with where each came from beside them.
"""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from ratings.scale import SUCCESS_AT
from ratings.store import RatingError, Store
from tuner import preference as tpref

RATERS = "raters"
JUDGE_PREFIX = "judge:"
MARGIN = 1.0
DESIRABLE_AT, UNDESIRABLE_AT = 4, 2
CORRECTION_MAX = 20_000  # characters in a corrected reply
# DPO pairs that could teach length rather than quality: one side (the rejected, or the chosen)
# the longer in this share or more of at least LENGTH_SKEW_PAIRS pairs, and the pairs' median ratio
# of words this or more. bench/preference.py's pairs on the formal-email set (six runs): the rejected
# reply the longer in 16–23 of 17–23 pairs, 1.37–1.56× the words (most ran past the 150-word limit); DPO at lr
# 3e-4 or 5e-4 then wrote greedy replies under the 60-word minimum in 3 of 5 runs (10–11 of 16
# held-out ones passing against SFT's 15–16)
LENGTH_SKEW_SHARE, LENGTH_SKEW_PAIRS, LENGTH_SKEW_RATIO = 0.8, 5, 1.2
# the SFT term's weight (TRL's rpo_alpha) that kept DPO's replies at their length against long rejected
# replies: at the bench's settings on three pair sets and at the app's DPO defaults on three
# (docs/does-it-work.md, 2026-12-07/08, AMD); the Train tab offers it in one click
RPO_REMEDY = 10.0


@dataclass
class PreferenceData:
    """Rows for one method, with what was left out and why, in words."""

    method: str
    rows: list[dict]
    source: str
    left_out: dict = field(default_factory=dict)  # reason: count

    def problem(self) -> str | None:
        return tpref.too_few(self.method, self.rows)

    def describe(self) -> str:
        prompts = len({tpref.prompt_key(r) for r in self.rows})
        out = f"{made(self.method, self.rows)} over {prompts} prompt{'s' if prompts != 1 else ''}, from the " \
              f"{self.source} scores"
        skipped = [f"{n} {why}" for why, n in self.left_out.items() if n]
        return out + (f" (left out: {'; '.join(skipped)})" if skipped else "")

    def length_skew(self, rpo_alpha: float = 0.0) -> str | None:
        return length_skew(self.method, self.rows, rpo_alpha)


def longer_side(method: str, rows: list[dict]) -> tuple[str, int, float, float] | None:
    """DPO: the side ("rejected" or "chosen") that is the longer in most pairs (LENGTH_SKEW_*), with
    in how many pairs and the two sides' median words; None when the pairs do not lean. The ratio is
    the median of the pairs' own ratios, so that one long reply cannot set it off."""
    if method != "dpo" or len(rows) < LENGTH_SKEW_PAIRS:
        return None
    words = [(len(r["chosen"][-1]["content"].split()), len(r["rejected"][-1]["content"].split())) for r in rows]
    for side in ("rejected", "chosen"):
        pairs = [(r, c) if side == "rejected" else (c, r) for c, r in words]  # (this side, the other)
        count = sum(mine > theirs for mine, theirs in pairs)
        ratio = statistics.median(mine / max(theirs, 1) for mine, theirs in pairs)
        if count >= LENGTH_SKEW_SHARE * len(pairs) and ratio >= LENGTH_SKEW_RATIO:
            return side, count, *(statistics.median(p[k] for p in pairs) for k in (0, 1))
    return None


def wants_rpo(method: str, rows: list[dict], rpo_alpha: float) -> bool:
    """Whether the SFT term (RPO_REMEDY) is the advice for these pairs: the rejected replies the
    longer, the one case measured, and the run's own weight below it."""
    return _advised(longer_side(method, rows), rpo_alpha)


def _advised(found, rpo_alpha) -> bool:
    return found is not None and found[0] == "rejected" and (rpo_alpha or 0.0) < RPO_REMEDY


def length_skew(method: str, rows: list[dict], rpo_alpha: float = 0.0) -> str | None:
    """DPO: a warning, in words, when most pairs differ in length one way (longer_side): DPO then
    learns the length as readily as what the raters liked, past what the scores meant. It names the
    SFT term where wants_rpo (a run that already has it is not told to add it)."""
    found = longer_side(method, rows)
    if found is None:
        return None
    side, count, mine, theirs = found
    remedy = f"An SFT term on the chosen replies (rpo_alpha {RPO_REMEDY:g}) keeps their length. " \
        if _advised(found, rpo_alpha) else ""
    return (f"in {count} of {len(rows)} pairs the {side} reply is the longer (a median of {mine:.0f} "
            f"words against {theirs:.0f}): DPO may learn to write "
            f"{'shorter' if side == 'rejected' else 'longer'} rather than better. {remedy}Before trusting "
            f"the run, compare its greedy replies with those of the model it starts from, or rate pairs "
            f"where the {'longer' if side == 'rejected' else 'shorter'} reply wins")


def made(method: str, rows: list[dict]) -> str:
    """ "8 preference pairs", "5 desirable and 3 undesirable example(s)"."""
    if method == "dpo":
        return f"{len(rows)} preference pair{'s' if len(rows) != 1 else ''}"
    good = sum(bool(r["label"]) for r in rows)
    return f"{good} desirable and {len(rows) - good} undesirable example(s)"


def scores_of(store: Store, eval_id: int, source: str = RATERS) -> pd.DataFrame:
    """One row per score in Store.ratings_frame's columns, from the raters or a judge."""
    if source == RATERS:
        return store.ratings_frame(eval_id)
    if source.startswith(JUDGE_PREFIX):
        from ratings import judge

        return judge.judge_frame(store, eval_id, source[len(JUDGE_PREFIX):])
    raise ValueError(f"unknown score source {source!r}: use '{RATERS}' or '{JUDGE_PREFIX}NAME'")


def rated_replies(store: Store, eval_id: int, source: str = RATERS) -> pd.DataFrame:
    """Every reply with its prompt's messages, its mean score (NaN when unscored), the
    number of scores, and the owner's correction (None when there is none)."""
    replies = store.replies(eval_id)
    if replies.empty:
        return replies
    scores = scores_of(store, eval_id, source)
    means = (scores.groupby(["position", "variant"])["score"].agg(["mean", "count"]).reset_index()
             .rename(columns={"mean": "mean score", "count": "scores"}))
    rated = replies.merge(means, on=["position", "variant"], how="left")
    rated["scores"] = rated["scores"].fillna(0).astype(int)
    messages = {p["position"]: p["messages"] for p in store.prompts(eval_id)}
    rated["messages"] = [messages[p] for p in rated["position"]]
    fixes = corrections(store, eval_id)
    # object dtype: None stays None (a string column would make it NaN, which is truthy)
    rated["correction"] = pd.Series([fixes.get(int(i)) for i in rated["reply_id"]], index=rated.index, dtype=object)
    return rated


def _reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def dpo_pairs(store: Store, eval_id: int, margin: float = MARGIN, source: str = RATERS,
              threshold: int = SUCCESS_AT) -> PreferenceData:
    """Pairs from the same prompt whose mean scores differ by at least `margin`, plus each
    correction against the prompt's replies that scored below `threshold`."""
    rated = rated_replies(store, eval_id, source)
    data = PreferenceData("dpo", [], source, {"pairs closer than the margin or tied": 0})
    if rated.empty:
        return data
    for _, group in rated.groupby("position", sort=True):
        replies = group.to_dict("records")
        for a, b in itertools.combinations([r for r in replies if r["scores"]], 2):
            if abs(a["mean score"] - b["mean score"]) < margin:
                data.left_out["pairs closer than the margin or tied"] += 1
                continue
            chosen, rejected = (a, b) if a["mean score"] > b["mean score"] else (b, a)
            data.rows.append(_pair(chosen, rejected, chosen["reply"], source))
        for fixed in (r for r in replies if r["correction"]):
            for low in (r for r in replies if r["scores"] and r["mean score"] < threshold):
                if low["reply"].strip() != fixed["correction"].strip():
                    data.rows.append(_pair(fixed, low, fixed["correction"], "correction"))
    return data


def _pair(chosen: dict, rejected: dict, chosen_text: str, source: str) -> dict:
    return {"prompt": chosen["messages"], "chosen": _reply(chosen_text), "rejected": _reply(rejected["reply"]),
            "id": chosen["external_id"], "source": source,
            "chosen_model": "owner's correction" if source == "correction" else chosen["label"],
            "rejected_model": rejected["label"],
            "chosen_score": None if source == "correction" else round(float(chosen["mean score"]), 3),
            "rejected_score": round(float(rejected["mean score"]), 3)}


def kto_examples(store: Store, eval_id: int, desirable_at: float = DESIRABLE_AT,
                 undesirable_at: float = UNDESIRABLE_AT, source: str = RATERS) -> PreferenceData:
    """Every scored reply whose mean is at least `desirable_at` (desirable) or at most
    `undesirable_at` (undesirable), and every correction (desirable)."""
    if undesirable_at >= desirable_at:
        raise ValueError(f"the undesirable threshold ({undesirable_at}) must be below the desirable one "
                         f"({desirable_at})")
    rated = rated_replies(store, eval_id, source)
    data = PreferenceData("kto", [], source, {"replies scored between the thresholds": 0})
    for r in rated.to_dict("records") if not rated.empty else []:
        if r["scores"]:
            label = True if r["mean score"] >= desirable_at else False if r["mean score"] <= undesirable_at else None
            if label is None:
                data.left_out["replies scored between the thresholds"] += 1
            else:
                data.rows.append({"prompt": r["messages"], "completion": _reply(r["reply"]), "label": label,
                                  "id": r["external_id"], "source": source, "model": r["label"],
                                  "score": round(float(r["mean score"]), 3)})
        if r["correction"]:
            data.rows.append({"prompt": r["messages"], "completion": _reply(r["correction"]), "label": True,
                              "id": r["external_id"], "source": "correction", "model": "owner's correction",
                              "score": None})
    return data


def build(store: Store, eval_id: int, method: str, source: str = RATERS, margin: float = MARGIN,
          desirable_at: float = DESIRABLE_AT, undesirable_at: float = UNDESIRABLE_AT) -> PreferenceData:
    if method == "dpo":
        return dpo_pairs(store, eval_id, margin, source)
    if method == "kto":
        return kto_examples(store, eval_id, desirable_at, undesirable_at, source)
    raise ValueError(f"preference data is for dpo or kto, not {method!r}")


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# --- corrections ---------------------------------------------------------------------------
def correct(store: Store, reply_id: int, text: str) -> None:
    """Keep the owner's better version of a reply (beside it: the reply the raters scored is
    not changed). An empty text removes the correction."""
    text = (text or "").replace("\r\n", "\n").strip()
    if len(text) > CORRECTION_MAX:
        raise RatingError(f"the correction is {len(text):,} characters; at most {CORRECTION_MAX:,}")
    with store.write() as db:
        if db.execute("SELECT 1 FROM replies WHERE id = ?", [int(reply_id)]).fetchone() is None:
            raise RatingError(f"there is no reply {reply_id}")
        if not text:
            db.execute("DELETE FROM corrections WHERE reply_id = ?", [int(reply_id)])
            return
        db.execute("INSERT INTO corrections (reply_id, text, corrected_at) VALUES (?, ?, ?) ON CONFLICT (reply_id)"
                   " DO UPDATE SET text = excluded.text, corrected_at = excluded.corrected_at",
                   [int(reply_id), text, datetime.now(timezone.utc).isoformat(timespec="seconds")])


def corrections(store: Store, eval_id: int) -> dict[int, str]:
    """reply id → corrected text, for one evaluation."""
    with store.db() as db:
        rows = db.execute("""SELECT c.reply_id, c.text FROM corrections c JOIN replies r ON r.id = c.reply_id
                             JOIN prompts p ON p.id = r.prompt_id WHERE p.evaluation_id = ?""", [eval_id])
        return {int(reply_id): text for reply_id, text in rows}


def corrected_chat_rows(store: Store, eval_id: int) -> list[dict]:
    """The corrections as chat examples (the prompt's messages, then the corrected reply), one
    per prompt (the latest), for a new version of an SFT dataset."""
    rated = rated_replies(store, eval_id)
    out = {}
    for r in rated.to_dict("records") if not rated.empty else []:
        if r["correction"]:
            out[r["position"]] = {"messages": r["messages"] + _reply(r["correction"]),
                                  "source": f"correction of evaluation {eval_id}"}
    return [out[k] for k in sorted(out)]


def sources(store: Store, eval_id: int) -> list[str]:
    """Where an evaluation's scores can come from: the raters, and each judge that scored it."""
    with store.db() as db:
        judges = [row[0] for row in db.execute(
            "SELECT DISTINCT judge FROM judge_scores WHERE evaluation_id = ? AND score IS NOT NULL ORDER BY judge",
            [eval_id])]
    return [RATERS] + [JUDGE_PREFIX + j for j in judges]


def with_corrections(rows: list[dict], corrected: list[dict]) -> tuple[list[dict], int]:
    """A dataset's rows with the corrected examples added (those it does not hold already), and
    how many were added. In a dataset saved with its split, they join the training rows."""
    from tuner import data as tdata

    held = {json.dumps(r["messages"], sort_keys=True) for r in rows}
    stored_split = tdata.has_stored_split(rows)
    added = []
    for row in corrected:
        if json.dumps(row["messages"], sort_keys=True) not in held:
            added.append({**row, tdata.SPLIT_FIELD: "train"} if stored_split else dict(row))
    return rows + added, len(added)
