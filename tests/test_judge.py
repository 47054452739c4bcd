"""The judge beside the friends (ratings/judge.py, tuner/ui/judge.py): a real SQLite file, a
real tiny model, a real HTTP server speaking the chat-completions protocol on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from ratings import agreement as ragree
from ratings import judge as rj
from ratings import judge_http
from ratings import stats
from ratings.store import Store

VARIANTS = [{"name": "base", "label": "base (tiny-chat)", "kind": "base"},
            {"name": "run-7", "label": "lora: formal r16 (run-7)", "kind": "lora"}]
PROMPTS = ["Write to my landlord about the broken heater", "Thank a colleague for covering my shift",
           "Ask a teacher for an extension", "Invite the team to a farewell lunch"]
KEY_ENV = "TEST_JUDGE_API_KEY"


def _evaluation(store: Store, prompts=PROMPTS) -> int:
    """Two variants; the fine-tuned one writes letters ("Dear …"), the other one does not."""
    eval_id = store.create_evaluation("letters", "tiny-chat", [{"text": p} for p in prompts], VARIANTS)
    ids = {v["name"]: v["id"] for v in store.variants(eval_id)}
    for p in store.prompts(eval_id):
        store.add_reply(p["id"], ids["base"], f"ok. {p['text'].lower()} i guess", {}, 0.1, 5)
        store.add_reply(p["id"], ids["run-7"], f"Dear reader, about this: {p['text']}. Kind regards", {}, 0.1, 9)
    store.open_for_rating(eval_id)
    return eval_id


def _rate_all(store: Store, eval_id: int, rater: str, score_of) -> None:
    """A rater rates every pair they are served; score_of(reply text) gives the score."""
    rng = random.Random(rater)
    while (pair := store.next_pair(eval_id, rater, rng)) is not None:
        store.rate_pair(pair["assignment_id"], rater, score_of(pair["reply_a"]), score_of(pair["reply_b"]))


def _sections(content: str) -> dict[str, str]:
    """The texts between the judge prompt's [X] … [End of X] markers."""
    return {m.group(1): m.group(2) for m in re.finditer(r"\[(Reply A|Reply B|Reply)\]\n(.*?)\n\[End of", content, re.S)}


def letter_judge(body: dict) -> tuple[int, bytes]:
    """A sensible judge: a letter ("Dear …") scores 5, anything else 2; in a pair the letter wins."""
    content = body["messages"][-1]["content"]
    parts = _sections(content)
    if "Reply A" in parts:
        answer = "A" if "Dear" in parts["Reply A"] else "B"
    else:
        answer = "Score: 5" if "Dear" in parts["Reply"] else "I would give it a 2."
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()


class _Endpoint:
    """An OpenAI-compatible server in a thread: records every request, answers with `answer(body)`
    (`body` None for a GET)."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(body)

            def do_GET(self):  # what a followed 301/302/303 turns a POST into
                self._answer(None)

            def _answer(self, body):
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                status, payload, *extra = outer.answer(body)  # (status, payload[, more headers])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Back-off of hundredths of a second between tries (the default waits seconds): the same tries,
    and a Retry-After is still waited as the server says."""
    monkeypatch.setattr(judge_http, "RETRY", dataclasses.replace(judge_http.RETRY, first_wait=0.01,
                                                                 longest_wait=0.05))


@pytest.fixture
def endpoint():
    started = []

    def start(answer=letter_judge) -> _Endpoint:
        started.append(_Endpoint(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _rows(store: Store, table: str) -> list[dict]:
    with store.db() as db:
        return list(db.query(f"SELECT * FROM {table} ORDER BY id"))


# --- reading answers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, score", [
    ("4", 4), ("Score: 4", 4), ("**4**/5", 4), ("I'd give it a 4.", 4), ("4 out of 5", 4),
    ("On a 1-5 scale, this is a 3", 3), ("1 to 5: 2", 2), ("<think>maybe a 2?</think>5", 5), ("4.5", 4),
    ("10", None), ("0", None), ("four", None), ("", None), ("The reply is polite.", None),
])
def test_a_score_is_the_first_standalone_digit_from_one_to_five(answer, score):
    assert rj.parse_score(answer) == score


@pytest.mark.parametrize("answer, verdict", [
    ("A", "first"), ("B", "second"), ("b", "second"), ("**A**", "first"), ("A.", "first"),
    ("Reply A is better.", "first"), ("reply b", "second"), ("Assistant B", "second"), ("[[B]]", "second"),
    ("[[C]]", "tie"), ("tie", "tie"), ("It's a tie.", "tie"), ("They are equally helpful", "tie"),
    ("A good reply is B", "second"), ("The answer is A", "first"), ("Both are fine, but B wins", "second"),
    ("<think>A seems off</think>B", "second"), ("I cannot decide", None), ("", None),
])
def test_a_verdict_is_reply_a_reply_b_or_a_tie_whichever_is_named_first(answer, verdict):
    assert rj.parse_verdict(answer) == verdict


def test_the_judge_is_asked_with_the_raters_rubric_and_sees_no_model_name():
    score = rj.score_messages("Say hi", "Hello!")[-1]["content"]
    assert "5 = usable as is" in score and "1 = wrong or harmful" in score and "single digit from 1 to 5" in score
    assert "[Reply]\nHello!\n" in score and "Say hi" in score
    pair = rj.pair_messages("Say hi", "first text", "second text")[-1]["content"]
    assert pair.index("first text") < pair.index("second text") and "[Reply A]\nfirst text" in pair


def test_the_bundled_model_is_named_a_poor_judge_and_still_allowed():
    assert rj.judge_warning("smollm2-135m-instruct") == rj.POOR_JUDGE
    assert rj.judge_warning("HuggingFaceTB/SmolLM2-135M-Instruct") == rj.POOR_JUDGE
    assert "poor judge" in rj.POOR_JUDGE and rj.judge_warning("/models/qwen-7b") is None


# --- an endpoint judge, end to end -------------------------------------------------------------------
def test_an_endpoint_judge_scores_every_reply_and_judges_every_pair_in_both_orders(tmp_path, endpoint,
                                                                                   monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-not-for-the-page")
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    _rate_all(store, eval_id, "ana", lambda text: 5 if "Dear" in text else 2)
    ratings_before, humans_before = _rows(store, "ratings"), store.ratings_frame(eval_id)
    server = endpoint()
    judge = rj.make_judge(server.url, tmp_path / "models", endpoint_model="judge-8b", key_env=KEY_ENV,
                          allow_private=True)  # the fake server is on 127.0.0.1
    seen = []
    counts = rj.run_judge(store, eval_id, judge, progress=lambda done, total: seen.append((done, total)))
    assert counts == {"replies": 8, "scored": 8, "pairs": 4, "verdicts": 8, "decided": 8}
    assert seen[-1] == (16, 16) and len(server.requests) == 16
    names = [v for variant in VARIANTS for v in (variant["name"], variant["label"])] + ["tiny-chat", "lora"]
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == "Bearer sk-test-not-for-the-page"
        assert request["body"]["model"] == "judge-8b" and request["body"]["temperature"] == 0
        sent = json.dumps(request["body"]["messages"])
        assert not [n for n in names if n in sent], sent  # blind: no model name reaches the judge
    assert judge.name == f"judge-8b @ {server.url}" and "sk-test" not in judge.name
    assert b"sk-test-not-for-the-page" not in (tmp_path / "ratings.db").read_bytes()

    scores = _rows(store, "judge_scores")
    replies = store.replies(eval_id).set_index("reply_id")
    assert len(scores) == 8 and {r["judge"] for r in scores} == {judge.name}
    for row in scores:
        assert row["score"] == (5 if "Dear" in replies.loc[row["reply_id"], "reply"] else 2)
        assert row["raw"] in ("Score: 5", "I would give it a 2.")
    verdicts = _rows(store, "judge_verdicts")
    with store.db() as db:
        pairs = {r[0]: {r[1], r[2]} for r in db.execute("SELECT id, reply1_id, reply2_id FROM comparisons")}
    assert len(verdicts) == 8
    for comparison, both in pairs.items():  # each pair asked with each reply shown first once
        shown_first = {v["first_reply_id"] for v in verdicts if v["comparison_id"] == comparison}
        assert shown_first == both
    # the raters' data did not move; the judge's scores come in the raters' frame's shape
    assert _rows(store, "ratings") == ratings_before
    pd.testing.assert_frame_equal(store.ratings_frame(eval_id), humans_before)
    frame = rj.judge_frame(store, eval_id, judge.name)
    assert list(frame.columns) == list(humans_before.columns)
    assert set(frame["rater"]) == {f"judge:{judge.name}"} and len(frame) == 8
    success = stats.success_table(frame).set_index("model")
    assert success.loc["lora: formal r16 (run-7)", "rate"] == 1.0 and success.loc["base (tiny-chat)", "rate"] == 0.0
    # both orders agree, so nothing is inconsistent and the first-shown reply won half the time
    report = rj.report(store, eval_id, judge.name)
    assert list(report.pairs["verdict"]) == ["lora: formal r16 (run-7)"] * 4
    assert report.position["inconsistent"] == 0 and report.position["first share"] == 0.5
    beside = report.success.set_index(["model", "scored by"])
    assert beside.loc[("base (tiny-chat)", "raters"), "rated"] == 4
    assert beside.loc[("base (tiny-chat)", f"judge:{judge.name}"), "rate"] == 0.0
    assert rj.judges(store, eval_id) == [judge.name]


def test_a_rerun_replaces_the_judges_rows_and_a_second_judge_keeps_its_own(tmp_path, endpoint):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    answers = {"text": "3"}
    server = endpoint(lambda body: (200, json.dumps({"choices": [{"message": {"content": answers["text"]}}]}).encode()))
    judge = rj.make_judge(server.url, tmp_path, endpoint_model="m1", allow_private=True)
    rj.run_judge(store, eval_id, judge)
    assert {r["score"] for r in _rows(store, "judge_scores")} == {3}
    answers["text"] = "5"
    rj.run_judge(store, eval_id, judge)
    rows = _rows(store, "judge_scores")
    assert len(rows) == 8 and {r["score"] for r in rows} == {5}  # replaced, not added
    assert len(_rows(store, "judge_verdicts")) == 8
    other = rj.make_judge(server.url + "/", tmp_path, endpoint_model="m2", allow_private=True)
    rj.run_judge(store, eval_id, other)
    assert sorted(rj.judges(store, eval_id)) == sorted([judge.name, other.name])
    assert len(_rows(store, "judge_scores")) == 16
    assert len(rj.judge_frame(store, eval_id, judge.name)) == 8


def test_a_judge_that_always_picks_the_first_reply_is_caught_by_both_orders(tmp_path, endpoint):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    server = endpoint(lambda body: (200, json.dumps({"choices": [{"message": {"content": "A"}}]}).encode()))
    rj.run_judge(store, eval_id, rj.make_judge(server.url, tmp_path, endpoint_model="m", allow_private=True))
    report = rj.report(store, eval_id, f"m @ {server.url}")
    assert list(report.pairs["verdict"]) == ["inconsistent"] * 4
    assert report.position["inconsistent share"] == 1.0 and report.position["first share"] == 1.0
    assert report.position["first won"] == 8 and report.position["p"] == pytest.approx(2 / 2 ** 8)
    assert list(report.verdicts["inconsistent"]) == [4, 4]
    assert report.scores.empty  # "A" holds no score 1–5
    assert "changed with the order on 4 of 4 pairs" in " ".join(report.sentences())


def test_an_unreadable_answer_is_kept_raw_with_no_score(tmp_path, endpoint):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store, PROMPTS[:1])
    server = endpoint(lambda body: (200, json.dumps({"choices": [{"message": {"content": "Hard to say."}}]}).encode()))
    judge = rj.make_judge(server.url, tmp_path, endpoint_model="m", allow_private=True)
    counts = rj.run_judge(store, eval_id, judge)
    assert counts["scored"] == 0 and counts["decided"] == 0
    assert [(r["score"], r["raw"]) for r in _rows(store, "judge_scores")] == [(None, "Hard to say.")] * 2
    assert [(r["verdict"], r["raw"]) for r in _rows(store, "judge_verdicts")] == [(None, "Hard to say.")] * 2
    name = f"m @ {server.url}"
    assert rj.judge_frame(store, eval_id, name).empty
    assert list(rj.unreadable_scores(store, eval_id, name)["raw"]) == ["Hard to say."] * 2
    assert list(rj.report(store, eval_id, name).pairs["verdict"]) == ["unreadable"]


# --- what goes wrong, said clearly -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_names_the_url_and_stores_nothing(tmp_path):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(rj.JudgeError, match=rf"{re.escape(url)}/chat/completions could not be reached"):
        rj.run_judge(store, eval_id, rj.make_judge(url, tmp_path, endpoint_model="m", allow_private=True))
    assert _rows(store, "judge_scores") == [] and _rows(store, "judge_verdicts") == []


@pytest.mark.parametrize("status, payload, message", [
    (500, b"model not loaded", r"answered HTTP 500 Internal Server Error: model not loaded"),
    (401, b'{"error": "bad key"}', r"answered HTTP 401 Unauthorized"),
    (200, b"<html>not an API</html>", r"did not answer with JSON .*<html>not an API"),
    (200, b'{"result": "4"}', r"answered JSON without choices\[0\]\.message\.content"),
    (200, b'{"choices": [{"message": {"content": null}}]}', r"answered a non-text message content: None"),
])
def test_a_failing_endpoint_says_what_it_answered(tmp_path, endpoint, status, payload, message):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    server = endpoint(lambda body: (status, payload))
    with pytest.raises(rj.JudgeError, match=rf"The judge endpoint {re.escape(server.url)}/chat/completions {message}"):
        rj.run_judge(store, eval_id, rj.make_judge(server.url, tmp_path, endpoint_model="m", allow_private=True))
    assert _rows(store, "judge_scores") == [] and _rows(store, "judge_verdicts") == []


def test_the_key_comes_from_a_named_environment_variable_that_must_be_set(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(rj.JudgeError, match=f"environment variable {KEY_ENV} .* is not set"):
        rj.make_judge(url, tmp_path, endpoint_model="m", key_env=KEY_ENV)
    with pytest.raises(rj.JudgeError, match="NAME of an environment variable"):
        rj.make_judge(url, tmp_path, endpoint_model="m", key_env="sk-live-abc123")
    with pytest.raises(rj.JudgeError, match="Name the model"):
        rj.make_judge(url, tmp_path, endpoint_model=" ")


@pytest.mark.parametrize("name", ["HF_TOKEN", "TUNER_OWNER_PASSWORD", "AWS_SECRET_ACCESS_KEY", "TUNER_X_API_KEY"])
def test_a_stranger_cannot_send_the_servers_other_secrets_to_an_endpoint(tmp_path, monkeypatch, name):
    """On an app without an owner password every visitor is the owner: the key box must not be a way
    to send HF_TOKEN (or the owner's password) to a server of the visitor's choosing."""
    monkeypatch.setenv(name, "secret-value")
    with pytest.raises(rj.JudgeError, match="not one a judge may send"):
        rj.make_judge("http://127.0.0.1:9/v1", tmp_path, endpoint_model="m", key_env=name)
    if not name.startswith("TUNER_"):  # the server's own list lets one through; Tuner's settings never
        monkeypatch.setenv("TUNER_JUDGE_KEYS", f"OTHER, {name}")
        assert rj.make_judge("http://127.0.0.1:9/v1", tmp_path, endpoint_model="m", key_env=name).name


@pytest.mark.parametrize("url", ["ftp://example.com/v1", "file:///etc/passwd", "http://", "javascript://x"])
def test_only_http_and_https_endpoints_are_accepted(tmp_path, url):
    with pytest.raises(rj.JudgeError, match=r"must be an http:// or https:// URL"):
        rj.make_judge(url, tmp_path, endpoint_model="m")


# --- where the key may go: no redirects, no private addresses unless the owner allows them -----------
OK_ANSWER = json.dumps({"choices": [{"message": {"role": "assistant", "content": "4"}}]}).encode()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_the_key_never_leaves(tmp_path, endpoint, monkeypatch, code):
    """The endpoint answers a redirect to another server: that server must get nothing (above all no
    Authorization header), and the message names both addresses."""
    monkeypatch.setenv(KEY_ENV, "sk-must-not-travel")
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    elsewhere = endpoint(lambda body: (200, OK_ANSWER))
    target = f"{elsewhere.url}/chat/completions"
    redirecting = endpoint(lambda body: (code, b"", {"Location": target}))
    judge = rj.make_judge(redirecting.url, tmp_path, endpoint_model="m", key_env=KEY_ENV,
                          allow_private=True)  # both servers are on 127.0.0.1: only the redirect is refused
    with pytest.raises(rj.JudgeError) as err:
        rj.run_judge(store, eval_id, judge)
    assert not any("Authorization" in r["headers"] or "authorization" in r["headers"] for r in elsewhere.requests)
    assert elsewhere.requests == []
    assert redirecting.requests and all(r["method"] == "POST" for r in redirecting.requests)
    said = str(err.value)
    assert f"The judge endpoint {redirecting.url}/chat/completions answered HTTP {code}" in said
    assert f"redirecting to {target}" in said and "does not follow redirects" in said
    assert "sk-must-not-travel" not in said
    assert _rows(store, "judge_scores") == [] and _rows(store, "judge_verdicts") == []


def test_a_relative_redirect_is_named_as_the_address_it_points_to(endpoint):
    server = endpoint(lambda body: (302, b"", {"Location": "/elsewhere/chat/completions"}))
    with pytest.raises(rj.JudgeError, match=re.escape(f"redirecting to {server.url.removesuffix('/v1')}/elsewhere/")):
        judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True)
    assert len(server.requests) == 1


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.20", "169.254.169.254",
    "169.254.1.1", "fc00::1", "fd00:ec2::254", "fe80::1", "fe80::1%2", "0.0.0.0", "::", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "100.100.100.200"])
def test_loopback_private_and_link_local_addresses_are_private(address):
    assert judge_http.private_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not_private(address):
    assert not judge_http.private_address(address)


def test_a_private_endpoint_is_refused_by_default_and_allowed_by_the_owner(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-stays-home")
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    server = endpoint()
    refused = rj.make_judge(server.url, tmp_path, endpoint_model="m", key_env=KEY_ENV)  # the default
    with pytest.raises(rj.JudgeError) as err:
        rj.run_judge(store, eval_id, refused)
    said = str(err.value)
    assert f"The judge endpoint {server.url}/chat/completions" in said and "127.0.0.1" in said
    assert "private or local address" in said and "TUNER_JUDGE_ALLOW_PRIVATE=1" in said
    assert server.requests == []  # refused before connecting: not even a request without the key
    assert _rows(store, "judge_scores") == [] and _rows(store, "judge_verdicts") == []
    allowed = rj.make_judge(server.url, tmp_path, endpoint_model="m", key_env=KEY_ENV, allow_private=True)
    assert rj.run_judge(store, eval_id, allowed)["scored"] == 8
    assert server.requests and all(r["headers"]["Authorization"] == "Bearer sk-stays-home" for r in server.requests)


def _resolving(monkeypatch, answers):
    """socket.getaddrinfo answering `answers(host)` (a list of IPs) for the hosts it names; no DNS."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        ips = answers(host)
        if ips is None:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port or 0, 0, 0) if ":" in ip else (ip, port or 0)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch):
    # the cloud metadata service behind a harmless-looking name; one private address among public ones
    _resolving(monkeypatch, lambda host: {"metadata.judge.test": ["169.254.169.254"],
                                          "mixed.judge.test": ["93.184.216.34", "10.0.0.7"]}.get(host))
    for host, ip in (("metadata.judge.test", "169.254.169.254"), ("mixed.judge.test", "10.0.0.7")):
        with pytest.raises(rj.JudgeError, match=rf"{re.escape(host)} resolves to {re.escape(ip)}.*"
                                                r"TUNER_JUDGE_ALLOW_PRIVATE=1"):
            judge_http.chat_completion(f"http://{host}/v1", "m", [{"role": "user", "content": "hi"}], key="sk-x")


def _rebinding(monkeypatch) -> list:
    """rebind.judge.test resolves to a public address when first asked, then to 127.0.0.1 (DNS
    rebinding); the lookups made are listed in the list returned."""
    calls = []

    def answers(host):
        if host != "rebind.judge.test":
            return None
        calls.append(host)
        return ["93.184.216.34"] if len(calls) == 1 else ["127.0.0.1"]

    _resolving(monkeypatch, answers)
    return calls


def test_a_name_that_changes_to_a_private_address_after_the_check_is_refused(endpoint, monkeypatch):
    """DNS rebinding: the name resolves to a public address when checked, then to 127.0.0.1 when connecting;
    the address actually connected to is checked too, before anything is sent."""
    server = endpoint(lambda body: (200, OK_ANSWER))
    port = server.server.server_address[1]
    calls = _rebinding(monkeypatch)
    with pytest.raises(rj.JudgeError, match=r"private or local address .*127\.0\.0\.1.*TUNER_JUDGE_ALLOW_PRIVATE"):
        judge_http.chat_completion(f"http://rebind.judge.test:{port}/v1", "m", [{"role": "user", "content": "hi"}],
                           key="sk-x")
    assert len(calls) >= 2 and server.requests == []


def test_the_peer_is_checked_before_the_tls_handshake(endpoint, monkeypatch):
    """https: the connected address is refused before a byte of TLS is sent (the server here speaks
    plain HTTP, so a handshake would have failed with a TLS error instead)."""
    server = endpoint(lambda body: (200, OK_ANSWER))
    port = server.server.server_address[1]
    _rebinding(monkeypatch)
    with pytest.raises(rj.JudgeError, match=r"private or local address .*127\.0\.0\.1"):
        judge_http.chat_completion(f"https://rebind.judge.test:{port}/v1", "m", [{"role": "user", "content": "hi"}],
                                   key="sk-x")
    assert server.requests == []


def test_the_environments_proxy_is_used_as_before(endpoint, monkeypatch):
    """HTTP_PROXY is honoured as urllib honoured it: the request goes to the proxy, naming the endpoint;
    the endpoint's own address is still checked first (the proxy's peer is the proxy)."""
    proxy = endpoint(lambda body: (200, OK_ANSWER))
    for name in ("HTTP_PROXY", "NO_PROXY", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/v1"))
    _resolving(monkeypatch, lambda host: {"judge.example.test": ["93.184.216.34"],
                                          "private.example.test": ["10.0.0.7"]}.get(host))
    said = judge_http.chat_completion("http://judge.example.test/v1", "m", [{"role": "user", "content": "hi"}])
    assert said == "4" and [r["path"] for r in proxy.requests] == ["http://judge.example.test/v1/chat/completions"]
    with pytest.raises(rj.JudgeError, match=r"private.example.test resolves to 10\.0\.0\.7"):
        judge_http.chat_completion("http://private.example.test/v1", "m", [{"role": "user", "content": "hi"}])
    assert len(proxy.requests) == 1


# --- a busy server is asked again ---------------------------------------------------------------------
def _busy_then_ok(first_status: int, busy_times: int, headers: dict | None = None):
    """An endpoint answer: `first_status` (with `headers`) to the first `busy_times` requests, then "4";
    the time of every request is kept in `.seen`."""
    def answer(body):
        answer.seen.append(time.monotonic())
        if len(answer.seen) <= busy_times:
            return first_status, b'{"error": "busy"}', headers or {}
        return 200, OK_ANSWER

    answer.seen = []
    return answer


def test_a_429_with_retry_after_is_waited_out_and_asked_again(endpoint):
    answer = _busy_then_ok(429, 1, {"Retry-After": "1"})
    server = endpoint(answer)
    said = judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True)
    assert said == "4" and len(server.requests) == 2
    assert answer.seen[1] - answer.seen[0] >= 0.95  # the second try came after the second Retry-After asked for
    assert server.requests[0]["body"] == server.requests[1]["body"]


def test_a_judge_run_survives_a_rate_limit_and_stores_every_answer(tmp_path, endpoint):
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store, PROMPTS[:1])
    server = endpoint(_busy_then_ok(429, 1, {"Retry-After": "1"}))
    judge = rj.make_judge(server.url, tmp_path, endpoint_model="m", allow_private=True)
    counts = rj.run_judge(store, eval_id, judge)
    assert counts == {"replies": 2, "scored": 2, "pairs": 1, "verdicts": 2, "decided": 0}  # "4" names no reply
    assert len(server.requests) == 5 and [r["score"] for r in _rows(store, "judge_scores")] == [4, 4]


def test_a_server_that_stays_unavailable_gives_a_clear_error_after_the_last_try(endpoint):
    server = endpoint(_busy_then_ok(503, 10 ** 6))
    policy = judge_http.RetryPolicy(attempts=3, first_wait=0.01, longest_wait=0.02)
    with pytest.raises(rj.JudgeError) as err:
        judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True,
                                   retry=policy)
    said = str(err.value)
    assert said.startswith(f"The judge endpoint {server.url}/chat/completions answered HTTP 503 Service Unavailable")
    assert "the same after 3 tries" in said and "try again later" in said
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [502, 504])
def test_a_bad_gateway_or_a_gateway_timeout_is_asked_again(endpoint, status):
    server = endpoint(_busy_then_ok(status, 2))
    assert judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True) == "4"
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 500])
def test_an_error_that_asking_again_would_not_mend_is_tried_once(endpoint, status):
    server = endpoint(_busy_then_ok(status, 1))
    with pytest.raises(rj.JudgeError, match=f"answered HTTP {status}"):
        judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True)
    assert len(server.requests) == 1


def test_a_retry_after_longer_than_tuner_waits_ends_the_tries_at_once(endpoint):
    server = endpoint(_busy_then_ok(429, 10 ** 6, {"Retry-After": "3600"}))
    with pytest.raises(rj.JudgeError, match=r"answered HTTP 429 Too Many Requests.*asks to wait 3600 s"):
        judge_http.chat_completion(server.url, "m", [{"role": "user", "content": "hi"}], allow_private=True)
    assert len(server.requests) == 1


def test_a_refused_connection_is_tried_again_then_named():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    policy = judge_http.RetryPolicy(attempts=3, first_wait=0.01, longest_wait=0.02)
    with pytest.raises(rj.JudgeError, match=rf"{re.escape(url)}/chat/completions could not be reached .*after 3 tries"):
        judge_http.chat_completion(url, "m", [{"role": "user", "content": "hi"}], allow_private=True, retry=policy)


def test_a_failed_run_does_not_wait_for_the_requests_still_waiting_to_retry(tmp_path, endpoint):
    """Scores are rate-limited for 20 s, pair questions fail at once: the run fails at once."""
    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store, PROMPTS[:1])
    server = endpoint(lambda body: (500, b"broken") if "Reply A" in body["messages"][-1]["content"]
                      else (429, b"", {"Retry-After": "20"}))
    started = time.monotonic()
    with pytest.raises(rj.JudgeError, match="answered HTTP 500"):
        rj.run_judge(store, eval_id, rj.make_judge(server.url, tmp_path, endpoint_model="m", allow_private=True))
    assert time.monotonic() - started < 10 and _rows(store, "judge_scores") == []


def test_retry_after_is_read_as_seconds_or_as_a_date():
    import httpx
    from datetime import datetime, timezone

    def said(value):
        return judge_http.retry_after(httpx.Response(429, headers={"Retry-After": value} if value else {}),
                                      now=datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc))

    assert said("7") == 7.0 and said("0") == 0.0 and said(None) is None and said("soon") is None
    assert said("Thu, 01 Jan 2026 12:00:30 GMT") == 30.0 and said("Thu, 01 Jan 2026 11:00:00 GMT") == 0.0


def test_the_default_retry_policy():
    policy = judge_http.RetryPolicy()
    assert (policy.attempts, policy.first_wait, policy.longest_wait, policy.longest_retry_after) == (5, 1.0, 30.0, 60.0)
    assert judge_http.RETRY_STATUSES == {429, 502, 503, 504}


def test_a_hub_judge_that_cannot_be_fetched_says_so(tmp_path):
    with pytest.raises(rj.JudgeError, match="The judge model could not be used: Model 'someone/judge-xl'") as err:
        rj.make_judge("someone/judge-xl", tmp_path / "models")
    assert "cannot be reached" in str(err.value) or "could not be fetched" in str(err.value)
    with pytest.raises(rj.JudgeError, match="Type a judge"):
        rj.make_judge("  ", tmp_path)
    with pytest.raises(rj.JudgeError, match="neither"):
        rj.make_judge(str(tmp_path / "no-such-folder"), tmp_path)


# --- a local model as the judge ---------------------------------------------------------------------
def test_a_local_model_judges_through_the_generation_engine(tiny_llama, trained_run, tmp_path):
    from ratings.evalsets import from_lines
    from ratings.generation import generate_evaluation, variants_for
    from tuner.generate import GenSettings, Generator

    run = {"run_id": "run.1", "path": str(trained_run.parent),
           "config": {"base_model": str(tiny_llama), "method": "lora"}}
    base_model, variants = variants_for([run])
    store = Store(tmp_path / "ratings.db")
    generator = Generator(tmp_path / "models", precision="fp32")
    eval_id = generate_evaluation(store, generator, "e", base_model, from_lines("Say hi 1\nHow are you?"),
                                  variants, GenSettings(max_new_tokens=4, batch_size=4))
    judge_engine = Generator(tmp_path / "models", precision="fp32")
    judge = rj.make_judge(str(tiny_llama), tmp_path / "models", generator=judge_engine)
    assert judge.name == str(tiny_llama) and judge.warning is None
    seen = []
    counts = rj.run_judge(store, eval_id, judge, progress=lambda done, total: seen.append((done, total)))
    assert counts["replies"] == 4 and counts["pairs"] == 2 and counts["verdicts"] == 4
    assert seen[-1] == (8, 8)
    assert judge_engine.model_name == str(tiny_llama)  # the shared engine loaded the judge
    scores, verdicts = _rows(store, "judge_scores"), _rows(store, "judge_verdicts")
    # a random-weight model writes noise: whatever it wrote is kept, and read the one way
    assert all(r["score"] == rj.parse_score(r["raw"]) for r in scores)
    assert all(r["verdict"] == rj.parse_verdict(r["raw"]) for r in verdicts)
    # it was asked exactly the blind questions (greedy: the same questions give the same answers)
    replies = store.replies(eval_id).set_index("reply_id")
    asked = [rj.score_messages(replies.loc[r["reply_id"], "prompt"], replies.loc[r["reply_id"], "reply"])
             for r in scores]
    asked += [rj.pair_messages(replies.loc[v["first_reply_id"], "prompt"], replies.loc[v["first_reply_id"], "reply"],
                               replies.loc[v["second_reply_id"], "reply"]) for v in verdicts]
    assert judge.ask(asked) == [r["raw"] for r in scores] + [v["raw"] for v in verdicts]
    assert not any(v.label in json.dumps(asked) or v.name in json.dumps(asked) for v in variants)
    frame = rj.judge_frame(store, eval_id, judge.name)
    assert list(frame.columns) == list(store.ratings_frame(eval_id).columns)
    assert len(frame) == sum(r["score"] is not None for r in scores)


# --- statistics by hand --------------------------------------------------------------------------------
def _frame(rows) -> pd.DataFrame:
    """(reply position, rater, score) → a ratings_frame-shaped frame, one model per position's variant."""
    return pd.DataFrame([{"position": p, "variant": "v", "label": "model", "rater": r, "score": s}
                         for p, r, s in rows])


def test_a_judge_equal_to_the_raters_mean_ranks_like_them():
    human = _frame([(1, "x", 1), (2, "x", 2), (3, "x", 4), (4, "x", 5),
                    (1, "y", 1), (2, "y", 3), (3, "y", 4), (4, "y", 5)])  # means 1, 2.5, 4, 5
    judge = _frame([(1, "j", 1), (2, "j", 2), (3, "j", 4), (4, "j", 5)])
    a = ragree.agreement(human, judge)
    assert a["n"] == 4 and a["spearman"] == pytest.approx(1.0) and a["kendall"] == pytest.approx(1.0)
    reverse = ragree.agreement(human, _frame([(1, "j", 5), (2, "j", 4), (3, "j", 2), (4, "j", 1)]))
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["kendall"] == pytest.approx(-1.0)


def test_spearman_and_kendall_by_hand():
    human = _frame([(1, "x", 1), (2, "x", 2), (3, "x", 3), (4, "x", 4)])
    judge = _frame([(1, "j", 1), (2, "j", 3), (3, "j", 2), (4, "j", 4)])  # one swap
    a = ragree.agreement(human, judge)
    assert a["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8: sum of squared rank differences 2
    assert a["kendall"] == pytest.approx((5 - 1) / 6)  # 5 concordant, 1 discordant of 6 pairs
    assert 0 < a["spearman p"] <= 1 and 0 < a["kendall p"] <= 1
    assert "Spearman's ρ = 0.80" in ragree.agreement_sentence(a)


def test_krippendorff_alpha_of_the_raters_alone_and_with_the_judge_by_hand():
    # units [1, 1], [2, 2], [1, 2]: o11 = o22 = 2, o12 = o21 = 1, n1 = n2 = 3, delta12 = (6 - 3)^2 = 9:
    # alpha = 1 - (2 * 9) / (3 * 3 * 9 * 2 / 5) = 4/9
    human = _frame([(1, "x", 1), (2, "x", 2), (3, "x", 1), (1, "y", 1), (2, "y", 2), (3, "y", 2)])
    # with the judge as a third rater [1, 1, 1], [2, 2, 2], [1, 2, 1]: o11 = 4, o22 = 3, o12 = o21 = 1,
    # n1 = 5, n2 = 4, delta12 = 4.5^2: alpha = 1 - 2 * 20.25 / (2 * 5 * 4 * 20.25 / 8) = 0.6
    judge = _frame([(1, "j", 1), (2, "j", 2), (3, "j", 1)])
    a = ragree.agreement(human, judge)
    assert a["alpha raters"] == pytest.approx(4 / 9) and a["alpha with judge"] == pytest.approx(0.6)
    assert a["alpha raters items"] == 3 and a["alpha with judge items"] == 3
    table = ragree.agreement_table(a).set_index("measure")
    assert table.loc["Krippendorff's alpha, raters + judge", "value"] == 0.6


def test_the_trust_rule_needs_ten_replies_a_rank_correlation_and_no_loss_of_alpha():
    values = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    human = _frame([(p, r, v) for r in ("x", "y") for p, v in enumerate(values, start=1)])
    same = _frame([(p, "j", v) for p, v in enumerate(values, start=1)])
    trusted = ragree.agreement(human, same)
    assert trusted["trusted"] and trusted["trust"].startswith("The judge can be trusted on this task")
    few = ragree.agreement(human[human["position"] <= 9], same[same["position"] <= 9])
    assert not few["trusted"] and "Too few replies" in few["trust"] and "(9; 10 are needed)" in few["trust"]
    backwards = ragree.agreement(human, _frame([(p, "j", 6 - v) for p, v in enumerate(values, start=1)]))
    assert not backwards["trusted"] and "Do not trust the judge" in backwards["trust"]
    assert "Spearman's ρ is -1.00" in backwards["trust"] and "lowers Krippendorff's alpha" in backwards["trust"]
    one_rater = ragree.agreement(human[human["rater"] == "x"], same)  # alpha of the raters alone: undefined
    assert math_isnan(one_rater["alpha raters"]) and one_rater["alpha with judge"] == pytest.approx(1.0)
    assert one_rater["trusted"]


def math_isnan(value) -> bool:
    return value != value


def test_position_bias_and_consistency_by_hand():
    def rows(comparison, *orders):
        return [{"comparison_id": comparison, "position": comparison, "reply1_id": 10 * comparison,
                 "reply2_id": 10 * comparison + 1, "model1": "base", "model2": "lora",
                 "first_reply_id": first, "second_reply_id": second, "verdict": verdict, "raw": str(verdict)}
                for first, second, verdict in orders]

    verdicts = pd.DataFrame(
        rows(1, (10, 11, "first"), (11, 10, "second"))  # base won in both orders: consistent
        + rows(2, (20, 21, "first"), (21, 20, "first"))  # whoever is shown first wins: inconsistent
        + rows(3, (30, 31, "tie"), (31, 30, "tie"))
        + rows(4, (40, 41, "first"), (41, 40, None)))  # one answer unreadable
    pairs = ragree.pair_table(verdicts)
    assert list(pairs["verdict"]) == ["base", "inconsistent", "tie", "unreadable"]
    assert list(pairs["model 1 shown first"]) == ["base", "base", "tie", "base"]
    assert list(pairs["model 2 shown first"]) == ["base", "lora", "tie", "unreadable"]
    bias = ragree.position_bias(verdicts)
    assert (bias["pairs"], bias["readable"], bias["inconsistent"]) == (4, 3, 1)
    assert bias["inconsistent share"] == pytest.approx(1 / 3)
    assert (bias["decided"], bias["first won"]) == (5, 4) and bias["first share"] == pytest.approx(0.8)
    assert (bias["first share low"], bias["first share high"]) == pytest.approx(stats.wilson_interval(4, 5))
    assert bias["p"] == pytest.approx(12 / 32)  # 4 or more of 5, either way: (1 + 5 + 5 + 1) / 32
    table = ragree.verdict_table(pairs).set_index("model")
    assert table.loc["base"].tolist() == [4, 1, 0, 1, 1, 1]
    assert table.loc["lora"].tolist() == [4, 0, 1, 1, 1, 1]


def test_success_rates_are_shown_beside_the_raters_never_pooled():
    human = pd.concat([_frame([(1, "x", 5), (2, "x", 2)]),
                       _frame([(1, "x", 4)]).assign(variant="w", label="other")], ignore_index=True)
    judged = _frame([(1, "judge:j", 3), (2, "judge:j", 4)])
    table = ragree.success_beside(human, judged, judge="judge:j")
    assert list(zip(table["model"], table["scored by"])) == [("model", "raters"), ("model", "judge:j"),
                                                             ("other", "raters")]
    raters = stats.success_table(human).set_index("model")
    mine = table[table["scored by"] == "raters"].set_index("model")
    assert mine.loc["model", "rate"] == raters.loc["model", "rate"] == 0.5
    assert table.loc[1, "success"] == "1/2" and table.loc[1, "rate low"] == round(stats.wilson_interval(1, 2)[0], 3)


# --- the Results tab's section ------------------------------------------------------------------------
def test_the_results_tab_shows_the_judge_beside_the_raters(tmp_path, endpoint, monkeypatch):
    import gradio as gr

    from tuner.ui import results

    store = Store(tmp_path / "ratings.db")
    eval_id = _evaluation(store)
    _rate_all(store, eval_id, "ana", lambda text: 5 if "Dear" in text else 2)
    server = endpoint()
    with gr.Blocks() as demo:
        show, inputs, outputs = results.results_tab(store, None)
    handlers = {getattr(b.fn, "__name__", ""): b.fn for b in demo.fns.values()}
    run, typed = handlers["on_run_judge"], handlers["on_judge_typed"]
    assert "poor judge" in typed("smollm2-135m-instruct") and typed("http://localhost:11434/v1") == ""
    by_id = {getattr(c, "elem_id", None): c for c in outputs}
    before = show(eval_id, 4, False, None)
    assert before[by_id["judge-summary"]] == "No judge has scored this evaluation yet."
    success_before = before[by_id["success-table"]]
    monkeypatch.delenv("TUNER_JUDGE_ALLOW_PRIVATE", raising=False)  # by default a server on 127.0.0.1 is refused
    refused = run(eval_id, server.url, "judge-8b", "", 4, progress_bar=lambda *a, **k: None)
    assert "TUNER_JUDGE_ALLOW_PRIVATE=1" in next(iter(refused.values())) and server.requests == []
    monkeypatch.setenv("TUNER_JUDGE_ALLOW_PRIVATE", "1")  # the owner allows it
    done = run(eval_id, server.url, "judge-8b", "", 4, progress_bar=lambda *a, **k: None)
    note = next(v for k, v in done.items() if getattr(k, "elem_id", None) == "judge-note")
    assert "scored 8 of 8 replies and judged 4 pairs in both orders" in note
    after = show(eval_id, 4, False, None)
    assert after[by_id["judge-pick"]]["value"] == f"judge-8b @ {server.url}"
    assert "Position bias" in after[by_id["judge-summary"]]
    pd.testing.assert_frame_equal(after[by_id["success-table"]], success_before)  # the raters' table is theirs
    assert set(after[by_id["judge-success"]]["scored by"]) == {"raters", f"judge:judge-8b @ {server.url}"}
    refused = run(eval_id, "ftp://x/v1", "m", "", 4, progress_bar=lambda *a, **k: None)
    assert "http:// or https://" in next(iter(refused.values()))
    assert sqlite3.connect(tmp_path / "ratings.db").execute("SELECT COUNT(*) FROM judge_scores").fetchone() == (8,)
