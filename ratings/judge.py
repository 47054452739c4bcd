"""A judge beside the friends: a model that scores every reply of an evaluation with the
raters' own 1–5 rubric, and judges each rated pair in both orders.

Blind like the raters: the judge is shown the prompt as raters read it and the reply
texts, never a model's name. Its scores and verdicts go to their own tables
(`judge_scores`, `judge_verdicts`, migration 0006_judge), never into `ratings`: the
Results tables the raters feed do not change. `judge_frame` gives its scores in the
shape of `Store.ratings_frame` (rater "judge:<name>"), so any statistic of
`ratings.stats` can be computed on them beside the humans'.

Two kinds of judge, one interface (`Judge.ask`: conversations in, answers out):
- a model Tuner loads itself (a local folder, the bundled model, a Hub id), answering
  greedily through `tuner.generate.Generator`;
- an OpenAI-compatible endpoint (`{url}/chat/completions`: Ollama, vLLM, llama.cpp's
  server, a hosted API), asked through `ratings.judge_http` (httpx, retries on a busy server;
  the key named by an environment variable, no redirect followed, private addresses refused
  unless the owner allows them).

This module asks the judge and keeps what it said; `ratings.agreement` reads it against the
raters (pair verdicts in both orders, position bias, agreement, the trust rule), and `report`
gathers both for the Results tab.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ratings import agreement as ragree
from ratings import judge_http, stats
from ratings.judge_http import JudgeError
from ratings.scale import HIGHEST, LOWEST, MEANINGS, SPAN, SUCCESS_AT
from ratings.store import Store
from tuner import models

Progress = Callable[[int, int], None]


POOR_JUDGE = ("SmolLM2-135M is a poor judge: a model this small mostly picks whichever reply is shown first and "
              "often answers with no score at all, so its verdicts say little about quality. It is allowed (it "
              "shows how judging works); use a larger model or an endpoint to learn anything.")


def judge_warning(source: str) -> str | None:
    """The sentence to show when the chosen judge is known to judge poorly (the bundled 135M)."""
    name = (source or "").strip()
    return POOR_JUDGE if name.lower() in {models.BUNDLED, models.BUNDLED_HUB_ID.lower()} else None


# --- what the judge is asked -------------------------------------------------------------------
SYSTEM = ("You are a careful, impartial judge of a chat assistant's replies. You are shown a user's message and "
          "replies to it; judge only the text in front of you.")
SCALE = "\n".join(f"{score} = {text}" for score, text in MEANINGS.items())  # the raters' rubric, highest first


def score_messages(prompt: str, reply: str) -> list[dict]:
    """The conversation that asks for one reply's score: the rubric, the prompt, the reply."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": (
        f"Score how helpful the reply is to the user's message, on this scale ({SPAN}):\n{SCALE}\n"
        f"(A score of {SUCCESS_AT} or more counts as a success.)\n\n"
        f"[User's message]\n{prompt}\n[End of the user's message]\n\n[Reply]\n{reply}\n[End of the reply]\n\n"
        f"Answer with a single digit from {LOWEST} to {HIGHEST} and nothing else.")}]


def pair_messages(prompt: str, first: str, second: str) -> list[dict]:
    """The conversation that asks which of two replies is better, `first` shown as Reply A."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": (
        f"Here are two replies to the same user message. Which one is more helpful? Judge by this scale "
        f"({SPAN}):\n{SCALE}\n\n[User's message]\n{prompt}\n[End of the user's message]\n\n"
        f"[Reply A]\n{first}\n[End of Reply A]\n\n[Reply B]\n{second}\n[End of Reply B]\n\n"
        "Answer with one letter: A if Reply A is more helpful, B if Reply B is more helpful, or the word tie "
        "if they are equally helpful. Nothing else.")}]


# --- reading its answers -----------------------------------------------------------------------
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)  # a reasoning model's thoughts
# the scale echoed back ("on a 1-5 scale", "out of 5", "4/5"): not the score itself
_SCALE_ECHO = re.compile(rf"\b{LOWEST}\s*(?:-|–|—|to)\s*{HIGHEST}\b|\bout\s+of\s+{HIGHEST}\b|/\s*{HIGHEST}\b", re.I)
_DIGIT = re.compile(rf"(?<![\w.])([{LOWEST}-{HIGHEST}])(?!\w)")


def parse_score(answer: str) -> int | None:
    """The first standalone digit 1–5 of an answer ("4", "Score: 4", "**4**/5", "I'd give it a 4."),
    or None when there is none ("10", "four", "")."""
    text = _SCALE_ECHO.sub(" ", _THINKING.sub(" ", answer or ""))
    found = _DIGIT.search(text)
    return int(found.group(1)) if found else None


_VERDICT_PATTERNS = (
    (re.compile(r"^\W*([AB])\W*$", re.I), None),  # the whole answer is one letter ("b", "**A**")
    (re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I), None),  # MT-Bench's "[[A]]" ("[[C]]": a tie)
    (re.compile(r"\b(?:reply|response|answer|option|assistant)\s*([AB])\b", re.I), None),
    # a bare capital A or B; "A good reply…" is the article, "A is better" / "A." the verdict
    (re.compile(r"(?<![\w'])([AB])(?![\w'])(?!\s+(?!(?:is|was|wins|seems|does|has|gives|provides|answers)\b)[a-z])"), None),
    (re.compile(r"\b(tie|tied|equal|equally|neither)\b", re.I), "tie"),
)
_VERDICT_OF = {"a": "first", "b": "second", "c": "tie", "tie": "tie"}


def parse_verdict(answer: str) -> str | None:
    """'first' (Reply A), 'second' (Reply B) or 'tie' from an answer ("B", "Reply A is better.",
    "[[B]]", "It's a tie"), whichever is named first; None when the answer names neither."""
    text = _THINKING.sub(" ", answer or "")
    hits = []
    for pattern, fixed in _VERDICT_PATTERNS:
        found = pattern.search(text)
        if found:
            hits.append((found.start(), fixed or _VERDICT_OF[found.group(1).lower()]))
    return min(hits)[1] if hits else None


# --- the judges ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judge:
    name: str  # what the tables and the database call it (never holds a key)
    ask: Callable[..., list[str]]  # ask(conversations, progress=None) -> one answer per conversation
    warning: str | None = None  # e.g. POOR_JUDGE


def local_judge(model: str, generator, max_new_tokens: int = 8) -> Judge:
    """A model Tuner loads itself, answering greedily through the shared generation engine
    (`tuner.generate.Generator`): a digit or a letter needs only a few new tokens."""
    from tuner.generate import GenSettings

    settings = GenSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0, batch_size=8)

    def ask(conversations: list[list[dict]], progress: Progress | None = None) -> list[str]:
        try:
            replies = generator.generate(model, conversations, settings, progress=progress)
        except models.ModelUnavailable as exc:
            raise JudgeError(f"The judge model could not be loaded: {exc}") from None
        return [r.text for r in replies]

    return Judge(model, ask, judge_warning(model))


def endpoint_judge(url: str, model: str, key_env: str = "", timeout: float = 120.0, workers: int = 4,
                   allow_private: bool = False, retry: judge_http.RetryPolicy | None = None) -> Judge:
    """An OpenAI-compatible server as the judge; a few requests at a time on one client, each asked
    again while the server is busy (`retry`, `judge_http.RETRY` by default). The first request that
    still fails stops the run (nothing is stored) with its message. An endpoint on a loopback, private
    or link-local address is refused unless `allow_private` (the owner's TUNER_JUDGE_ALLOW_PRIVATE=1)."""
    address = judge_http.endpoint_url(url)
    model = (model or "").strip()
    if not model:
        raise JudgeError(f"Name the model that {judge_http.public_url(address)} should use (e.g. llama3.1:8b on "
                         "Ollama, the served model's name on vLLM).")
    key = judge_http.api_key(key_env)

    def ask(conversations: list[list[dict]], progress: Progress | None = None) -> list[str]:
        answers: list[str | None] = [None] * len(conversations)
        with judge_http.Endpoint(address, key, timeout, allow_private, retry) as endpoint:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                pending = {pool.submit(endpoint.chat, model, c): i for i, c in enumerate(conversations)}
                for done, future in enumerate(as_completed(pending), start=1):
                    answers[pending[future]] = future.result()
                    if progress:
                        progress(done, len(conversations))
            finally:
                endpoint.abandon()  # a request waiting to ask again gives up: the run is over
                pool.shutdown(wait=True, cancel_futures=True)
        return answers

    base = judge_http.public_url(address).removesuffix("/chat/completions")
    return Judge(f"{model} @ {base}", ask, judge_warning(model))


def make_judge(source: str, models_dir: Path, endpoint_model: str = "", key_env: str = "", generator=None,
               timeout: float = 120.0, allow_private: bool = False) -> Judge:
    """The judge the owner typed: an http(s) URL is an OpenAI-compatible endpoint (with
    `endpoint_model`, and the key in the environment variable `key_env`; on a private address only
    with `allow_private`); anything else a model name for `tuner.models.resolve` (checked now, so an
    offline Hub id fails here)."""
    source = (source or "").strip()
    if not source:
        raise JudgeError("Type a judge: a model (a local folder, smollm2-135m-instruct, a Hub id) or an "
                         "OpenAI-compatible endpoint URL such as http://localhost:11434/v1.")
    if "://" in source:
        return endpoint_judge(source, endpoint_model, key_env, timeout, allow_private=allow_private)
    try:
        models.resolve(source, Path(models_dir))
    except models.ModelUnavailable as exc:
        raise JudgeError(f"The judge model could not be used: {exc}") from None
    if generator is None:
        from tuner.generate import Generator

        generator = Generator(Path(models_dir))
    return local_judge(source, generator)


# --- running it and keeping what it said --------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _comparisons(store: Store, eval_id: int) -> list[dict]:
    with store.db() as db:
        return list(db.query("""SELECT c.id, c.reply1_id, c.reply2_id FROM comparisons c
                                JOIN prompts p ON p.id = c.prompt_id WHERE p.evaluation_id = ?
                                ORDER BY p.position, c.id""", [eval_id]))


def run_judge(store: Store, eval_id: int, judge: Judge, progress: Progress | None = None) -> dict:
    """Ask the judge for a score of every reply and a verdict on every pair, in both orders
    (reply 1 shown first, then reply 2), and store the lot in one transaction, replacing what
    this judge said about this evaluation before. Nothing is stored when the judge fails.
    Returns the counts: replies, scores read, pairs, verdicts read."""
    eval_id = int(eval_id)
    if store.evaluation(eval_id) is None:
        raise JudgeError(f"There is no evaluation #{eval_id}.")
    replies = store.replies(eval_id)
    if replies.empty:
        raise JudgeError("This evaluation has no replies yet: generate them on the Compare tab first.")
    text = dict(zip(replies["reply_id"], replies["reply"]))
    prompt = dict(zip(replies["reply_id"], replies["prompt"]))  # what raters read, no rule tag
    pairs = _comparisons(store, eval_id)
    orders = [(c["id"], first, second) for c in pairs
              for first, second in ((c["reply1_id"], c["reply2_id"]), (c["reply2_id"], c["reply1_id"]))]
    asked = [score_messages(prompt[r], text[r]) for r in replies["reply_id"]]
    asked += [pair_messages(prompt[first], text[first], text[second]) for _c, first, second in orders]
    answers = judge.ask(asked, progress)
    if len(answers) != len(asked):
        raise JudgeError(f"The judge gave {len(answers)} answers to {len(asked)} questions; nothing was stored.")
    scores = [(int(r), a, parse_score(a)) for r, a in zip(replies["reply_id"], answers)]
    verdicts = [(o, a, parse_verdict(a)) for o, a in zip(orders, answers[len(replies):])]
    now = _now()
    with store.write() as db:
        db.execute("DELETE FROM judge_scores WHERE evaluation_id = ? AND judge = ?", [eval_id, judge.name])
        db.execute("DELETE FROM judge_verdicts WHERE evaluation_id = ? AND judge = ?", [eval_id, judge.name])
        db.conn.executemany("INSERT INTO judge_scores (evaluation_id, judge, reply_id, score, raw, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [(eval_id, judge.name, r, s, a, now) for r, a, s in scores])
        db.conn.executemany("INSERT INTO judge_verdicts (evaluation_id, judge, comparison_id, first_reply_id, "
                            "second_reply_id, verdict, raw, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [(eval_id, judge.name, c, f, s, v, a, now) for (c, f, s), a, v in verdicts])
    return {"replies": len(scores), "scored": sum(s is not None for *_x, s in scores), "pairs": len(pairs),
            "verdicts": len(verdicts), "decided": sum(v is not None for *_x, v in verdicts)}


def judges(store: Store, eval_id: int) -> list[str]:
    """The judges that have scored or judged this evaluation, the latest run first."""
    with store.db() as db:
        rows = db.execute("""SELECT judge, MAX(created_at) AS at FROM (
                                 SELECT judge, created_at FROM judge_scores WHERE evaluation_id = :e
                                 UNION ALL SELECT judge, created_at FROM judge_verdicts WHERE evaluation_id = :e)
                             GROUP BY judge ORDER BY at DESC, judge""", {"e": int(eval_id)}).fetchall()
    return [r[0] for r in rows]


def rater_name(judge: str) -> str:
    return f"judge:{judge}"


def judge_frame(store: Store, eval_id: int, judge: str) -> pd.DataFrame:
    """The judge's readable scores in exactly `Store.ratings_frame`'s columns, one row per
    scored reply, rater "judge:<judge>" (no aspects): for `ratings.stats` and preference data."""
    with store.db() as db:
        rows = list(db.query("""
            SELECT p.id AS prompt_id, p.position, p.external_id, p.task, p.category, p.text AS prompt,
                   v.name AS variant, v.label, :rater AS rater, j.score, NULL AS adherence, NULL AS tone,
                   NULL AS clarity, length(r.text) AS reply_chars, p.flags
            FROM judge_scores j JOIN replies r ON r.id = j.reply_id JOIN prompts p ON p.id = r.prompt_id
            JOIN variants v ON v.id = r.variant_id
            WHERE j.evaluation_id = :e AND j.judge = :judge AND j.score IS NOT NULL
            ORDER BY p.position, v.id""", {"e": int(eval_id), "judge": judge, "rater": rater_name(judge)}))
    columns = ["prompt_id", "position", "external_id", "task", "category", "prompt", "variant", "label",
               "rater", "score", "adherence", "tone", "clarity", "reply_chars", "flags"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["flag"] = [", ".join(json.loads(f)) if f and f != "[]" else "" for f in frame["flags"]]
    return frame.drop(columns=["flags"])


def unreadable_scores(store: Store, eval_id: int, judge: str) -> pd.DataFrame:
    """The judge's answers that held no score 1–5: position, model, the raw answer."""
    with store.db() as db:
        rows = list(db.query("""
            SELECT p.position, v.label AS model, j.raw FROM judge_scores j JOIN replies r ON r.id = j.reply_id
            JOIN prompts p ON p.id = r.prompt_id JOIN variants v ON v.id = r.variant_id
            WHERE j.evaluation_id = ? AND j.judge = ? AND j.score IS NULL ORDER BY p.position, v.id""",
                             [int(eval_id), judge]))
    return pd.DataFrame(rows, columns=["position", "model", "raw"])


def verdicts_frame(store: Store, eval_id: int, judge: str) -> pd.DataFrame:
    """One row per pair and order: the comparison, its reply 1 and 2 (models), which reply the
    judge was shown first, its verdict ('first', 'second', 'tie' or None) and raw answer."""
    with store.db() as db:
        rows = list(db.query("""
            SELECT j.comparison_id, p.position, c.reply1_id, c.reply2_id, v1.label AS model1, v2.label AS model2,
                   j.first_reply_id, j.second_reply_id, j.verdict, j.raw
            FROM judge_verdicts j JOIN comparisons c ON c.id = j.comparison_id JOIN prompts p ON p.id = c.prompt_id
            JOIN replies r1 ON r1.id = c.reply1_id JOIN variants v1 ON v1.id = r1.variant_id
            JOIN replies r2 ON r2.id = c.reply2_id JOIN variants v2 ON v2.id = r2.variant_id
            WHERE j.evaluation_id = ? AND j.judge = ? ORDER BY p.position, c.id, j.first_reply_id != c.reply1_id""",
                             [int(eval_id), judge]))
    columns = ["comparison_id", "position", "reply1_id", "reply2_id", "model1", "model2", "first_reply_id",
               "second_reply_id", "verdict", "raw"]
    return pd.DataFrame(rows, columns=columns)


# --- everything the Results tab shows of one judge ------------------------------------------------
@dataclass
class JudgeReport:
    judge: str
    scores: pd.DataFrame  # judge_frame
    unreadable: pd.DataFrame  # answers with no score
    success: pd.DataFrame  # agreement.success_beside
    agreement: dict  # agreement.agreement
    pairs: pd.DataFrame  # agreement.pair_table
    verdicts: pd.DataFrame  # agreement.verdict_table
    position: dict  # agreement.position_bias

    def sentences(self) -> list[str]:
        lines = [judge_warning(self.judge)]  # the bundled 135M: say it is a poor judge
        n = len(self.scores) + len(self.unreadable)
        lines.append(f"{self.judge} scored {len(self.scores)} of {stats.plural(n, 'reply', 'replies')}"
                     + (f" ({len(self.unreadable)} answers held no score 1–5 and are left out)."
                        if len(self.unreadable) else "."))
        lines += [ragree.agreement_sentence(self.agreement), self.agreement["trust"],
                  ragree.position_sentence(self.position)]
        return [line for line in lines if line]


def report(store: Store, eval_id: int, judge: str, threshold: int = SUCCESS_AT,
           human: pd.DataFrame | None = None) -> JudgeReport:
    """One judge on one evaluation, beside the raters (`human`: Store.ratings_frame, read when not given)."""
    human = store.ratings_frame(int(eval_id)) if human is None else human
    scored = judge_frame(store, eval_id, judge)
    verdicts = verdicts_frame(store, eval_id, judge)
    pairs = ragree.pair_table(verdicts)
    return JudgeReport(judge=judge, scores=scored, unreadable=unreadable_scores(store, eval_id, judge),
                       success=ragree.success_beside(human, scored, threshold, rater_name(judge)),
                       agreement=ragree.agreement(human, scored), pairs=pairs, verdicts=ragree.verdict_table(pairs),
                       position=ragree.position_bias(verdicts))
