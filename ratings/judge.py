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
  server, a hosted API), through the standard library only; an API key is read from an
  environment variable the owner names, never typed into the page or stored. No redirect is
  followed (the key would go along), and an endpoint on a loopback, private or link-local
  address (this machine, its network, the cloud metadata service) is refused unless the
  owner allows it (`allow_private`; the app sets it from TUNER_JUDGE_ALLOW_PRIVATE=1).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin, urlparse, urlunparse

import pandas as pd

from ratings import stats
from ratings.scale import HIGHEST, LOWEST, MEANINGS, SPAN, SUCCESS_AT
from ratings.store import Store
from tuner import models

Progress = Callable[[int, int], None]


class JudgeError(RuntimeError):
    """A judge that cannot be used or that answered nothing usable; the message says why."""


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


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def key_name_allowed(name: str) -> bool:
    """Whether a judge may send the variable `name` as its key: a name ending in _API_KEY, or one the
    server lists in TUNER_JUDGE_KEYS (comma-separated); never Tuner's own settings (TUNER_…)."""
    listed = {n.strip() for n in os.environ.get("TUNER_JUDGE_KEYS", "").split(",") if n.strip()}
    if name.upper().startswith("TUNER_"):
        return False
    return name.endswith("_API_KEY") or name in listed


def _api_key(key_env: str) -> str | None:
    """The key in the environment variable the owner named (the name, never the key, is typed)."""
    name = (key_env or "").strip()
    if not name:
        return None
    if not ENV_NAME.match(name):
        raise JudgeError("The API key box takes the NAME of an environment variable that holds the key (letters, "
                         "digits and _, e.g. OPENAI_API_KEY), not the key itself: set the variable on the server "
                         "(a Space secret) and type its name.")
    if not key_name_allowed(name):
        raise JudgeError(f"The environment variable {name} is not one a judge may send: its name must end in "
                         "_API_KEY (e.g. OPENAI_API_KEY), or be listed in TUNER_JUDGE_KEYS on the server, so that no "
                         "other secret of the server (HF_TOKEN, the owner's password) can be sent to an endpoint.")
    key = os.environ.get(name)
    if not key:
        raise JudgeError(f"The environment variable {name} (the judge's API key) is not set on this server: set it "
                         "(on a Space: a secret) and restart, or leave the box empty for a server that needs no key.")
    return key


def endpoint_url(url: str) -> str:
    """The chat-completions address of an OpenAI-compatible server's base URL."""
    url = (url or "").strip()
    try:
        parsed = urlparse(url)
    except ValueError:  # "http://[::1"
        parsed = urlparse("")
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        raise JudgeError(f"A judge endpoint must be an http:// or https:// URL such as http://localhost:11434/v1 "
                         f"(got {url!r}).")
    base = url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def _public(url: str) -> str:
    """A URL without any user:password part, to name it in tables and messages."""
    parsed = urlparse(url)
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1]))


# --- where a judge's requests (and its key) may go ---------------------------------------------------
ALLOW_PRIVATE_ENV = "TUNER_JUDGE_ALLOW_PRIVATE"  # =1: the owner allows endpoints on private addresses


def private_allowed_by_env() -> bool:
    """Whether the server's owner set TUNER_JUDGE_ALLOW_PRIVATE=1 (also true/yes): endpoints on this
    machine or its network (a local Ollama or llama.cpp server) may be used as judges."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in {"1", "true", "yes"}


def private_address(ip: str) -> bool:
    """Whether an IP address is not a public one: loopback (127/8, ::1), private (10/8, 172.16/12,
    192.168/16, fc00::/7), link-local (169.254/16 with the cloud metadata address, fe80::/10),
    unspecified (0.0.0.0, ::), shared (100.64/10) or reserved; an IPv4-mapped IPv6 address as its IPv4."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # "fe80::1%eth0": the zone does not matter
    except ValueError:
        return True  # not an address we can judge: refuse
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def _private_refused(shown: str, host: str, ip: str) -> JudgeError:
    named = ip if host.strip("[]") == ip else f"{host} resolves to {ip}"
    return JudgeError(f"The judge endpoint {shown} is on a private or local address ({named}): Tuner refuses "
                      "those by default, so that a judge (and its key) cannot be pointed at this machine, its "
                      "network or the cloud metadata service (169.254.169.254). For a judge you run yourself "
                      "(Ollama or llama.cpp's server on localhost, a server on your network), set "
                      f"{ALLOW_PRIVATE_ENV}=1 in the server's environment and restart Tuner.")


def _check_host(address: str, shown: str) -> None:
    """Refuse an endpoint whose host resolves to any private address (every address is checked)."""
    parsed = urlparse(address)
    host = parsed.hostname or ""
    for *_, sockaddr in socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80),
                                           type=socket.SOCK_STREAM):
        if private_address(str(sockaddr[0])):
            raise _private_refused(shown, host, str(sockaddr[0]))


class _PeerChecked(http.client.HTTPConnection):
    """A connection that, once connected and before anything is sent (TLS included), refuses a private
    peer: the name may resolve to another address than when it was checked (DNS rebinding). Through a
    proxy the peer is the proxy, not the endpoint: nothing to check then."""

    shown, check_peer = "", True  # set by _connection

    def connect(self):
        super().connect()
        if self.check_peer and not self._tunnel_host:  # _tunnel_host: an https endpoint through a proxy
            peer = str(self.sock.getpeername()[0])
            if private_address(peer):
                self.sock.close()
                self.sock = None
                raise _private_refused(self.shown, self.host, peer)


class _PeerCheckedHTTPS(http.client.HTTPSConnection, _PeerChecked):
    """HTTPS: HTTPSConnection.connect runs _PeerChecked.connect (the check) before its TLS handshake."""


def _connection(cls, shown: str, check_peer: bool):
    def connection(*args, **kwargs):
        made = cls(*args, **kwargs)
        made.shown, made.check_peer = shown, check_peer
        return made

    return connection


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, shown: str):
        super().__init__()
        self.shown = shown

    def http_open(self, req):  # through a proxy (has_proxy) the peer is the proxy
        return self.do_open(_connection(_PeerChecked, self.shown, not req.has_proxy()), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, shown: str):
        super().__init__()
        self.shown = shown

    def https_open(self, req):
        return self.do_open(_connection(_PeerCheckedHTTPS, self.shown, True), req, context=self._context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would send the Authorization header (the key) to wherever a 3xx
    points. The 3xx then comes back as an HTTPError, which chat_completion turns into a message."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(shown: str, allow_private: bool) -> urllib.request.OpenerDirector:
    handlers = [_NoRedirects()]
    if not allow_private:
        handlers += [_CheckedHTTPHandler(shown), _CheckedHTTPSHandler(shown)]
    return urllib.request.build_opener(*handlers)


def chat_completion(url: str, model: str, messages: list[dict], key: str | None = None,
                    timeout: float = 120.0, allow_private: bool = False) -> str:
    """One answer from an OpenAI-compatible `/chat/completions` endpoint (temperature 0). No redirect
    is followed; an endpoint on a private address is refused unless `allow_private`."""
    address = endpoint_url(url)
    shown = _public(address)
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(address, data=body, headers=headers, method="POST")
    try:
        if not allow_private:
            _check_host(address, shown)
        with _opener(shown, allow_private).open(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            location = (exc.headers.get("Location") or "").strip() if exc.headers else ""
            exc.close()
            target = _public(urljoin(address, location)) if location else "no address (no Location header)"
            raise JudgeError(f"The judge endpoint {shown} answered HTTP {exc.code}, redirecting to {target}; "
                             "Tuner does not follow redirects (your key would go along): set the final address "
                             "as the judge instead.") from None
        detail = exc.read()[:300].decode("utf-8", "replace").strip()
        raise JudgeError(f"The judge endpoint {shown} answered HTTP {exc.code} {exc.reason}"
                         f"{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # refused, unknown host, timed out, not HTTP at all, a bad port
        reason = getattr(exc, "reason", exc)
        raise JudgeError(f"The judge endpoint {shown} could not be reached ({reason}): is the server running "
                         "and the URL right?") from None
    return _content(raw, shown)


def _content(raw: bytes, shown: str) -> str:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        start = raw[:120].decode("utf-8", "replace")
        raise JudgeError(f"The judge endpoint {shown} did not answer with JSON ({exc}); it began: {start!r}") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"The judge endpoint {shown} answered JSON without choices[0].message.content: "
                         f"{json.dumps(data)[:200]}") from None
    if not isinstance(content, str):
        raise JudgeError(f"The judge endpoint {shown} answered a non-text message content: {content!r:.100}")
    return content


def endpoint_judge(url: str, model: str, key_env: str = "", timeout: float = 120.0, workers: int = 4,
                   allow_private: bool = False) -> Judge:
    """An OpenAI-compatible server as the judge; a few requests at a time. The first failing
    request stops the run (nothing is stored) with its message. An endpoint on a loopback, private
    or link-local address is refused unless `allow_private` (the owner's TUNER_JUDGE_ALLOW_PRIVATE=1)."""
    address = endpoint_url(url)
    model = (model or "").strip()
    if not model:
        raise JudgeError(f"Name the model that {_public(address)} should use (e.g. llama3.1:8b on Ollama, "
                         "the served model's name on vLLM).")
    key = _api_key(key_env)

    def ask(conversations: list[list[dict]], progress: Progress | None = None) -> list[str]:
        answers: list[str | None] = [None] * len(conversations)
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            pending = {pool.submit(chat_completion, address, model, c, key, timeout, allow_private): i
                       for i, c in enumerate(conversations)}
            for done, future in enumerate(as_completed(pending), start=1):
                answers[pending[future]] = future.result()
                if progress:
                    progress(done, len(conversations))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return answers

    base = _public(address).removesuffix("/chat/completions")
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


# --- pairs: both orders, consistency, position bias ----------------------------------------------
def _winner(row) -> str | None:
    """Which reply of the pair won in one order: 'reply1', 'reply2', 'tie', or None (unreadable)."""
    if row["verdict"] is None or (isinstance(row["verdict"], float) and math.isnan(row["verdict"])):
        return None
    if row["verdict"] == "tie":
        return "tie"
    won = row["first_reply_id"] if row["verdict"] == "first" else row["second_reply_id"]
    return "reply1" if won == row["reply1_id"] else "reply2"


PAIR_COLUMNS = ["comparison_id", "position", "model 1", "model 2", "model 1 shown first", "model 2 shown first",
                "verdict"]


def pair_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: who won when model 1's reply was shown first, who won when model 2's
    was, and the verdict: the winner's model (or "tie") when both orders agree, "inconsistent"
    when they do not, "unreadable" when an answer held no verdict."""
    rows = []
    for comparison, group in verdicts.groupby("comparison_id", sort=False):
        first = group.iloc[0]
        names = {"reply1": first["model1"], "reply2": first["model2"], "tie": "tie", None: "unreadable"}
        by_order = {}
        for row in group.to_dict("records"):
            by_order["1" if row["first_reply_id"] == row["reply1_id"] else "2"] = _winner(row)
        one, two = by_order.get("1"), by_order.get("2")
        if one is None or two is None:
            verdict = "unreadable"
        else:
            verdict = names[one] if one == two else "inconsistent"
        rows.append([comparison, first["position"], first["model1"], first["model2"], names[one], names[two],
                     verdict])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def verdict_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per model, over its pairs: won and lost (both orders agreeing), tie, inconsistent, unreadable."""
    columns = ["model", "pairs", "won", "lost", "tie", "inconsistent", "unreadable"]
    labels = list(dict.fromkeys(list(pairs["model 1"]) + list(pairs["model 2"])))
    rows = []
    for label in labels:
        mine = pairs[(pairs["model 1"] == label) | (pairs["model 2"] == label)]
        v = mine["verdict"]
        decided = ~v.isin(["tie", "inconsistent", "unreadable"])
        rows.append([label, len(mine), int((v == label).sum()), int((decided & (v != label)).sum()),
                     int((v == "tie").sum()), int((v == "inconsistent").sum()), int((v == "unreadable").sum())])
    return pd.DataFrame(rows, columns=columns)


def position_bias(verdicts: pd.DataFrame) -> dict:
    """How much the order sways the judge: pairs whose verdict changes with the order (of those
    readable in both), and how often the reply shown first won (of the answers naming a winner,
    with its Wilson interval and a two-sided binomial test against 50%)."""
    pairs = pair_table(verdicts)
    readable = pairs[pairs["verdict"] != "unreadable"]
    inconsistent = int((readable["verdict"] == "inconsistent").sum())
    decided = verdicts[verdicts["verdict"].isin(["first", "second"])]
    first_won = int((decided["verdict"] == "first").sum())
    low, high = stats.wilson_interval(first_won, len(decided))
    p = float(stats._scipy_stats().binomtest(first_won, len(decided)).pvalue) if len(decided) else math.nan
    return {"pairs": len(pairs), "readable": len(readable), "inconsistent": inconsistent,
            "inconsistent share": inconsistent / len(readable) if len(readable) else math.nan,
            "decided": len(decided), "first won": first_won,
            "first share": first_won / len(decided) if len(decided) else math.nan,
            "first share low": low, "first share high": high, "p": p}


def position_sentence(bias: dict) -> str:
    if not bias["pairs"]:
        return "The judge has not judged any pair of this evaluation."
    if not bias["readable"]:
        return (f"None of the judge's {stats.plural(bias['pairs'], 'pair', 'pairs')} has a readable verdict in "
                "both orders: position bias cannot be checked.")
    text = (f"Position bias: the verdict changed with the order on {bias['inconsistent']} of "
            f"{stats.plural(bias['readable'], 'pair', 'pairs')} judged in both orders "
            f"({bias['inconsistent share']:.0%}; 0% means order never swayed it)")
    if bias["decided"]:
        text += (f"; the reply shown first won {bias['first won']} of {bias['decided']} answers naming a winner "
                 f"({bias['first share']:.0%}, 95% CI {bias['first share low']:.0%}–{bias['first share high']:.0%}, "
                 f"{_p(bias['p'])}; near 50% without bias)")
    return text + "."


# --- beside the humans: success rates and agreement ---------------------------------------------
def success_beside(human: pd.DataFrame, judged: pd.DataFrame, threshold: int = SUCCESS_AT,
                   judge: str = "judge") -> pd.DataFrame:
    """`ratings.stats.success_table` of the raters and of the judge, one row each per model,
    side by side (never pooled): "scored by" says whose scores a row counts."""
    parts = [stats.success_table(frame, threshold).assign(**{"scored by": who})
             for frame, who in ((human, "raters"), (judged, judge)) if not frame.empty]
    if not parts:
        return pd.DataFrame(columns=["model", "scored by"] + stats.SUCCESS_COLUMNS[1:])
    table = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(dict.fromkeys(list(human.get("label", [])) + list(judged["label"])))}
    table = table.sort_values("model", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return table[["model", "scored by"] + stats.SUCCESS_COLUMNS[1:]]


TRUST_MIN_REPLIES = 10  # replies rated by both, below which no trust is given
TRUST_MIN_RHO = 0.5  # Spearman's rho between the judge's score and the raters' mean, at least
ALPHA_BAR = 0.667  # Krippendorff's common lowest bar, used when the raters' own alpha cannot be measured
TRUST_RULE = (f"The rule: the judge can be trusted on this task when at least {TRUST_MIN_REPLIES} replies are "
              f"scored by it and by the raters, Spearman's ρ between its score and their mean score is "
              f"{TRUST_MIN_RHO} or more, and adding it as one more rater does not lower Krippendorff's alpha "
              f"below the raters' own (with a single rater per reply: alpha with the judge of {ALPHA_BAR} or more).")


def _units(human: pd.DataFrame, judged: pd.DataFrame | None = None) -> list[list[int]]:
    """Krippendorff's units, one per reply: its raters' scores, plus the judge's when given."""
    units = {key: list(group) for key, group in human.groupby(["position", "variant"])["score"]}
    if judged is not None:
        for key, score in judged.set_index(["position", "variant"])["score"].items():
            if key in units:
                units[key].append(int(score))
    return list(units.values())


def agreement(human: pd.DataFrame, judged: pd.DataFrame) -> dict:
    """The judge against the raters on the replies both scored: Spearman's rho and Kendall's
    tau between the judge's score and the raters' mean score per reply (n, p), and
    Krippendorff's alpha (ordinal) of the raters alone and of the raters plus the judge."""
    mean = human.groupby(["position", "variant"])["score"].mean().rename("human")
    mine = judged.set_index(["position", "variant"])["score"].astype(float).rename("judge")
    both = pd.concat([mine, mean], axis=1, join="inner").dropna()
    n = len(both)
    result = {"n": n, "spearman": math.nan, "spearman p": math.nan, "kendall": math.nan, "kendall p": math.nan}
    if n >= 3 and both["judge"].nunique() > 1 and both["human"].nunique() > 1:
        scipy_stats = stats._scipy_stats()
        rho, tau = scipy_stats.spearmanr(both["judge"], both["human"]), scipy_stats.kendalltau(both["judge"],
                                                                                              both["human"])
        result.update({"spearman": float(rho.statistic), "spearman p": float(rho.pvalue),
                       "kendall": float(tau.statistic), "kendall p": float(tau.pvalue)})
    alone, together = _units(human), _units(human, judged)
    result.update({"alpha raters": stats.krippendorff_alpha_ordinal(alone),
                   "alpha raters items": sum(len(u) >= 2 for u in alone),
                   "alpha with judge": stats.krippendorff_alpha_ordinal(together),
                   "alpha with judge items": sum(len(u) >= 2 for u in together)})
    result["trusted"], result["trust"] = _trust(result)
    return result


def _trust(a: dict) -> tuple[bool, str]:
    """Whether the judge can be trusted on this task by TRUST_RULE, and why, in a sentence."""
    if a["n"] < TRUST_MIN_REPLIES:
        return False, (f"Too few replies scored by both the judge and the raters ({a['n']}; {TRUST_MIN_REPLIES} "
                       "are needed) to say whether the judge can be trusted on this task: go by the raters.")
    problems = []
    if math.isnan(a["spearman"]) or a["spearman"] < TRUST_MIN_RHO:
        rho = "undefined (the scores do not vary)" if math.isnan(a["spearman"]) else f"{a['spearman']:.2f}"
        problems.append(f"Spearman's ρ is {rho}, under {TRUST_MIN_RHO}")
    alone, together = a["alpha raters"], a["alpha with judge"]
    if not math.isnan(alone):
        if math.isnan(together) or together < alone:
            problems.append(f"adding the judge lowers Krippendorff's alpha from {alone:.2f} to {together:.2f}")
    elif math.isnan(together) or together < ALPHA_BAR:
        problems.append(f"alpha between the judge and the raters is {together:.2f}, under {ALPHA_BAR}")
    if problems:
        return False, "Do not trust the judge on this task yet: " + "; ".join(problems) + "."
    alpha = (f"alpha {together:.2f} with it against {alone:.2f} without" if not math.isnan(alone)
             else f"alpha {together:.2f} between it and the raters")
    return True, (f"The judge can be trusted on this task for a first look (ρ = {a['spearman']:.2f} over "
                  f"{a['n']} replies, {alpha}); the raters' scores remain the evidence.")


def agreement_table(a: dict) -> pd.DataFrame:
    """The agreement figures as rows people read: measure, value, replies (n), p."""
    rows = [["Spearman's ρ (judge vs raters' mean)", a["spearman"], a["n"], a["spearman p"]],
            ["Kendall's τ (judge vs raters' mean)", a["kendall"], a["n"], a["kendall p"]],
            ["Krippendorff's alpha, raters alone", a["alpha raters"], a["alpha raters items"], math.nan],
            ["Krippendorff's alpha, raters + judge", a["alpha with judge"], a["alpha with judge items"], math.nan]]
    return stats._rounded(pd.DataFrame(rows, columns=["measure", "value", "replies", "p"]), 3)


def agreement_sentence(a: dict) -> str:
    if a["n"] == 0:
        return "No reply is scored by both the judge and the raters yet: agreement cannot be measured."
    if math.isnan(a["spearman"]):
        return (f"Agreement with the raters on {stats.plural(a['n'], 'reply', 'replies')} scored by both: not "
                "measurable yet (3 or more with varied scores are needed).")
    return (f"Agreement with the raters over {stats.plural(a['n'], 'reply', 'replies')} scored by both: Spearman's "
            f"ρ = {a['spearman']:.2f} ({_p(a['spearman p'])}), Kendall's τ = {a['kendall']:.2f} "
            f"({_p(a['kendall p'])}) between the judge's score and the raters' mean.")


def _p(p: float) -> str:
    """"p = 0.039" or "p < 0.001"."""
    text = stats.format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


# --- everything the Results tab shows of one judge ------------------------------------------------
@dataclass
class JudgeReport:
    judge: str
    scores: pd.DataFrame  # judge_frame
    unreadable: pd.DataFrame  # answers with no score
    success: pd.DataFrame  # success_beside
    agreement: dict
    pairs: pd.DataFrame  # pair_table
    verdicts: pd.DataFrame  # verdict_table
    position: dict  # position_bias

    def sentences(self) -> list[str]:
        lines = [judge_warning(self.judge)]  # the bundled 135M: say it is a poor judge
        n = len(self.scores) + len(self.unreadable)
        lines.append(f"{self.judge} scored {len(self.scores)} of {stats.plural(n, 'reply', 'replies')}"
                     + (f" ({len(self.unreadable)} answers held no score 1–5 and are left out)."
                        if len(self.unreadable) else "."))
        lines += [agreement_sentence(self.agreement), self.agreement["trust"], position_sentence(self.position)]
        return [line for line in lines if line]


def report(store: Store, eval_id: int, judge: str, threshold: int = SUCCESS_AT,
           human: pd.DataFrame | None = None) -> JudgeReport:
    """One judge on one evaluation, beside the raters (`human`: Store.ratings_frame, read when not given)."""
    human = store.ratings_frame(int(eval_id)) if human is None else human
    scored = judge_frame(store, eval_id, judge)
    verdicts = verdicts_frame(store, eval_id, judge)
    pairs = pair_table(verdicts)
    return JudgeReport(judge=judge, scores=scored, unreadable=unreadable_scores(store, eval_id, judge),
                       success=success_beside(human, scored, threshold, rater_name(judge)),
                       agreement=agreement(human, scored), pairs=pairs, verdicts=verdict_table(pairs),
                       position=position_bias(verdicts))
