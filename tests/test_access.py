"""Owner-only studio, rater identity and rate limits, called directly over HTTP against
the real server (app.build_app: the studio at /, the raters' page at /rate/, the plain
routes under /tuner/, the gate in front of all), as a stranger's script would."""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from browser import serve
from gradio_http import (call, call_named, config, default_inputs, from_address, is_skip, owner_client,
                         page_headers, sign_in)
from helpers import count_pushes, mark_users, open_evaluation

PASSWORD = "correct horse battery staple"
VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]
OWNER_ONLY = "Owner only"
RATE = "/tuner/rate/"


def _snapshot(home):
    """Every file under the data root with its size and mtime, and every table's row count."""
    files = {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(home.rglob("*")) if p.is_file() and not p.name.startswith("ratings.db")}
    with sqlite3.connect(home / "ratings.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0] for t in tables}
    return files, counts


def _seed(home, model):
    """The ratings store of `home` with "friends' round" open for rating (each test rates its own)."""
    from ratings.store import Store
    from tuner.paths import Layout

    store = Store(Layout(home).ratings_db)
    return store, open_evaluation(store, "friends' round", model, 3, VARIANTS)


@dataclass
class Locked:
    tuner: object  # app.Tuner
    url: str
    home: Path
    store: object
    eval_id: int
    access: object
    model: Path

    @property
    def fns(self) -> dict:
        return self.tuner.studio.fns

    def fn(self, name: str) -> int:
        """The id of the studio's first handler whose function is `name`."""
        return next(i for i, f in self.fns.items() if f.name == name)

    def api(self, api_name: str) -> int:
        return next(i for i, f in self.fns.items() if f.api_name == api_name)


@pytest.fixture(scope="module")
@mark_users("server")
def server(tiny_llama, tmp_path_factory):
    """One locked server for the module (password sign-in): each test makes its own
    evaluations and, where it counts per address, its own loopback address."""
    from tuner.access import Access

    home = tmp_path_factory.mktemp("locked") / "home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "mine.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')
    store, eval_id = _seed(home, tiny_llama)
    access = Access(password=PASSWORD)
    tuner, url = serve(home, tiny_llama, access)
    yield Locked(tuner, url, home, store, eval_id, access, Path(tiny_llama))
    tuner.close()


@pytest.fixture
def locked(server, monkeypatch):
    """The module's server, with this test's own rate limits (a test that spends the sign-in
    guesses or an address's requests leaves the next one a fresh window)."""
    from tuner.access import RateLimiter
    from tuner.ui import access as ui_access

    monkeypatch.setattr(server.access, "sign_in_attempts", RateLimiter(capacity=5, per_seconds=300))
    gate = server.tuner.gate
    monkeypatch.setattr(gate, "public_posts", RateLimiter(ui_access.PUBLIC_POSTS_PER_MINUTE, 60))
    monkeypatch.setattr(gate, "public_gets", RateLimiter(ui_access.PUBLIC_GETS_PER_MINUTE, 60))
    return server


def _join_body(fn_index: int, data: list, event_data=None) -> dict:
    return {"data": data, "fn_index": fn_index, "session_hash": uuid.uuid4().hex[:11], "event_data": event_data,
            "trigger_id": None}


def _refused(answer: httpx.Response) -> bool:
    return answer.status_code == 401 and OWNER_ONLY in answer.text


# --- the studio is the owner's ----------------------------------------------------------------
def test_every_owner_handler_refuses_a_stranger_and_changes_nothing(locked, monkeypatch):
    """Every handler of the studio, by each lane a script can use (the queue, /run, /call, /api),
    and every other studio route: refused before Gradio, with nothing written or queued."""
    fns = locked.fns
    assert len(fns) > 60  # the whole studio, not a handful
    owner = sign_in(locked.url, PASSWORD)
    cfg = config(locked.url, owner)
    with owner_client(locked.url, owner) as page:  # an upload of the owner's a stranger might name
        uploaded = page.post("/gradio_api/upload", files=[("files", ("mine.jsonl", b'{"a": 1}\n', "text/plain"))])
    assert uploaded.status_code == 200, uploaded.text
    upload_path = uploaded.json()[0]
    before = _snapshot(locked.home)
    queued = count_pushes(locked.tuner.studio, monkeypatch)
    refused = set()
    with httpx.Client(base_url=locked.url, timeout=30) as stranger:
        for fn_index, block_fn in fns.items():
            inputs = default_inputs(cfg, fn_index)
            # a select handler gets what a click on a table cell sends
            event = {"index": [0, 0], "value": None, "selected": True} if block_fn.collects_event_data else None
            answers = [stranger.post("/gradio_api/queue/join", json=_join_body(fn_index, inputs, event))]
            if block_fn.api_name:
                for lane in ("run", "call", "api", "call/v2"):
                    answers.append(stranger.post(f"/gradio_api/{lane}/{block_fn.api_name}",
                                                 json={"data": inputs, "fn_index": fn_index}))
            assert all(_refused(a) for a in answers), (block_fn.name, [(a.status_code, a.text[:80]) for a in answers])
            refused.add(block_fn.name)
        # the owner's main actions are among the refused ones
        for name in ("on_start", "on_stop", "on_resume", "on_generate", "on_import", "on_save_split", "on_send",
                     "on_export", "on_propose", "on_exclude_rater", "on_show", "on_revoke"):
            assert name in refused, name
        # every other route of the studio: its page, config, API description, files, queue, upload…
        gets = ["/", "/config", "/config/", "/gradio_api/info", "/gradio_api/openapi.json", "/theme.css",
                "/gradio_api/startup-events", "/gradio_api/heartbeat/abc", "/gradio_api/queue/status",
                "/gradio_api/queue/data?session_hash=abc", "/gradio_api/upload_progress?upload_id=x",
                "/gradio_api/call/owner_sessions/abc", "/gradio_api/deep_link?session_hash=abc", "/manifest.json",
                f"/gradio_api/file={upload_path}", f"/gradio_api/file/{upload_path}",
                f"/gradio_api/file={locked.home / 'datasets' / 'mine.jsonl'}", "/gradio_api/user", "/monitoring"]
        for path in gets:
            assert _refused(stranger.get(path)), path
        files = [("files", ("big.jsonl", b"x" * 1024, "application/json"))]
        assert _refused(stranger.post("/gradio_api/upload", files=files))
        for path in ("/gradio_api/cancel", "/gradio_api/reset", "/gradio_api/component_server",
                     "/gradio_api/process_recording", "/gradio_api/stream/abc", "/gradio_api/stream/abc/close"):
            assert _refused(stranger.post(path, json={"session_hash": "abc", "fn_index": 1, "event_id": "abc"})), path
        # a browser asking for the page is sent to the sign-in page instead
        page = stranger.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 303 and page.headers["location"] == "/tuner/sign-in"
    assert _snapshot(locked.home) == before  # nothing written, nothing deleted
    assert queued == [], "a stranger's refused calls must never enter the queue"


def test_the_same_handlers_answer_the_signed_in_owner(locked):
    url = locked.url
    owner = sign_in(url, PASSWORD)
    cfg = config(url, owner)
    # the owner's page holds every handler the gate lets the owner call, and says who is signed in
    assert {d["id"] for d in cfg["dependencies"]} == set(locked.fns)
    status = next(c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "owner-status")
    assert "Signed in as the owner" in status["props"]["value"]
    assert all(locked.tuner.gate._unknown_handler(json.dumps({"fn_index": i, "data": []}).encode(),
                                                  f"/gradio_api/run/{f.api_name}") is None
               for i, f in locked.fns.items() if f.api_name)
    refresh = locked.fn("refresh_all")
    answered = call(url, refresh, [], cookies=owner)
    assert answered["success"] and not is_skip(answered["data"])
    assert any("friends' round" in str(choice) for choice in answered["data"][1]["choices"])
    # the same handlers through /run and /call (as gradio_client calls them)
    for lane in ("run", "call"):
        listed = call_named(url, "owner_sessions", [], cookies=owner, lane=lane)
        assert listed["success"] and "signed-in browser" in listed["data"][1], (lane, listed)
    with owner_client(url, owner) as page:
        assert page.get("/").status_code == 200 and page.get("/gradio_api/info").status_code == 200
    # a stranger, and a forged cookie, are refused
    for cookies in ({}, {"tuner_owner": "0" * 43, "tuner_csrf": "0" * 64}):
        refused = call(url, refresh, [], cookies=cookies)
        assert not refused["success"] and "HTTP 401" in refused["error"] and OWNER_ONLY in refused["error"]
        assert call_named(url, "owner_sessions", [], cookies=cookies, lane="run")["status"] == 401


def test_sign_in_sets_a_random_httponly_strict_cookie_only_for_the_password_and_limits_guesses(locked):
    url, home = locked.url, locked.home
    right = httpx.post(f"{url}/tuner/owner/sign-in", json={"password": PASSWORD})
    assert right.status_code == 200
    lines = right.headers.get_list("set-cookie")
    session = next(line for line in lines if line.startswith("tuner_owner="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Secure" not in session  # plain http here
    assert "HttpOnly" not in next(line for line in lines if line.startswith("tuner_csrf="))  # the page reads it
    again = httpx.post(f"{url}/tuner/owner/sign-in", json={"password": PASSWORD},
                       headers={"X-Forwarded-Proto": "https"})
    assert right.cookies["tuner_owner"] != again.cookies["tuner_owner"]  # random, not a function of the password
    assert "Secure" in next(line for line in again.headers.get_list("set-cookie") if line.startswith("tuner_owner="))
    # the server keeps only hashes: the data root holds no usable cookie
    db = (home / "owner_sessions.db").read_bytes() + b"".join(
        p.read_bytes() for p in home.glob("owner_sessions.db-*"))
    assert right.cookies["tuner_owner"].encode() not in db and PASSWORD.encode() not in db
    for _ in range(5):
        wrong = httpx.post(f"{url}/tuner/owner/sign-in", json={"password": "guess"})
        assert wrong.status_code == 401 and "not the owner password" in wrong.json()["error"]
    blocked = httpx.post(f"{url}/tuner/owner/sign-in", json={"password": PASSWORD})
    assert blocked.status_code == 429 and "Too many wrong passwords" in blocked.json()["error"]
    assert "tuner_owner" not in blocked.cookies
    for body in (b"not json", b'{"password": 5}', b"[]"):
        odd = httpx.post(f"{url}/tuner/owner/sign-in", content=body)
        assert odd.status_code == 400 and "password" in odd.json()["error"]
    # the sign-in page is a plain page anyone gets; the owner, signed in, is sent on to the studio
    form = httpx.get(f"{url}/tuner/sign-in")
    assert form.status_code == 200 and "Owner password" in form.text
    assert httpx.get(f"{url}/tuner/sign-in", cookies=dict(right.cookies)).status_code == 303


def test_another_site_cannot_use_the_owners_cookie(locked):
    """A page on another origin, same site or not, in the owner's browser."""
    url = locked.url
    owner = sign_in(url, PASSWORD)
    cfg = config(url, owner)
    host = url.split("//", 1)[1]
    refresh = locked.fn("refresh_all")
    export = locked.api("export_adapter")
    for origin in ("http://evil.example", f"http://{host}.evil.example", "http://127.0.0.2:" + host.split(":")[1],
                   "null", f"https://{host}"):
        for path, body in (("/gradio_api/queue/join", {"data": [], "fn_index": refresh, "session_hash": "x1"}),
                           ("/gradio_api/run/export_adapter", {"data": default_inputs(cfg, export)}),
                           ("/tuner/owner/sign-in", {"password": PASSWORD}),
                           ("/tuner/rate/join", {"evaluation": locked.eval_id, "name": "Eve", "code": ""})):
            answer = httpx.post(f"{url}{path}", json=body, cookies=owner,
                                headers={"Origin": origin, "X-Tuner-CSRF": owner["tuner_csrf"]})
            assert answer.status_code == 403 and "another site" in answer.text, (origin, path, answer.text)
    # a Referer from elsewhere (no Origin) counts the same
    answer = httpx.post(f"{url}/gradio_api/queue/join", cookies=owner, json={"data": [], "fn_index": refresh,
                        "session_hash": "x2"}, headers={"Referer": "http://evil.example/page"})
    assert answer.status_code == 403
    # the owner's cookie without the page's anti-forgery header is a stranger's (a form post, say)
    with httpx.Client(base_url=url, cookies={"tuner_owner": owner["tuner_owner"]}) as bare:
        assert _refused(bare.post("/gradio_api/queue/join", json=_join_body(refresh, [])))
    wrong = call(url, refresh, [], cookies={**owner, "tuner_csrf": "1" * 64})
    assert "HTTP 401" in wrong["error"]
    # a GET from another site's page does not carry the owner's rights either
    assert httpx.get(f"{url}/config", cookies=owner, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 401
    # the app's own page (same origin, with the header) is the owner
    mine = call(url, refresh, [], cookies=owner)
    assert mine["success"] and not is_skip(mine["data"])
    with owner_client(url, owner) as page:
        same = page.post("/gradio_api/queue/join", json={"data": [], "fn_index": refresh, "session_hash": "x3"},
                         headers={"Origin": url})
        assert same.status_code == 200 and "event_id" in same.json()


def test_owner_sessions_are_server_side_listed_revocable_and_end_at_sign_out(locked):
    """A random token per sign-in, kept hashed, with an expiry; Sign out revokes it."""
    url, access = locked.url, locked.access
    access.sessions.revoke_all()  # (the module's earlier sign-ins)
    laptop = sign_in(url, PASSWORD, **{"User-Agent": "laptop browser"})
    phone = sign_in(url, PASSWORD, **{"User-Agent": "phone browser"})
    listed = call(url, locked.api("owner_sessions"), [], cookies=laptop)
    rows = listed["data"][0]["data"]
    assert len(rows) == 2 and {r[5] for r in rows} == {"laptop browser", "phone browser"}
    mine = next(r for r in rows if r[6] == "✓")
    assert mine[5] == "laptop browser"
    assert "HTTP 401" in call(url, locked.api("owner_sessions"), [])["error"]  # a stranger sees no list
    # the owner revokes the phone's session from the laptop: the phone's cookie stops working at once
    phone_id = next(r[0] for r in rows if r[5] == "phone browser")
    revoked = call(url, locked.api("owner_revoke_session"), [phone_id], cookies=laptop)
    assert f"Revoked session {phone_id}" in revoked["data"][1]
    refresh = locked.fn("refresh_all")
    assert "HTTP 401" in call(url, refresh, [], cookies=phone)["error"]
    assert httpx.get(f"{url}/config", cookies=phone).status_code == 401
    assert not is_skip(call(url, refresh, [], cookies=laptop)["data"])
    # Sign out ends the laptop's session on the server, not just in the browser
    with owner_client(url, laptop) as browser:
        out = browser.post("/tuner/owner/sign-out")
        assert out.status_code == 200
        assert any(c.startswith("tuner_owner=;") and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    assert "HTTP 401" in call(url, refresh, [], cookies=laptop)["error"]  # the old cookie, replayed
    assert access.sessions.active() == []


def test_sessions_expire_and_keep_only_hashes(tmp_path):
    from tuner.access import Sessions

    now = [1000.0]
    sessions = Sessions(tmp_path / "s.db", days=1, clock=lambda: now[0])
    token, sid = sessions.create("10.0.0.1", "a browser")
    assert sessions.check(token) == sid and sessions.check(token + "x") is None and sessions.check(None) is None
    now[0] += 86400 - 1
    assert sessions.check(token) == sid
    now[0] += 2
    assert sessions.check(token) is None and sessions.active() == []  # expired
    other, other_id = sessions.create()
    assert Sessions(tmp_path / "s.db", clock=lambda: now[0]).check(other) == other_id  # survives a restart
    assert sessions.revoke_all(keep=None) == 1 and sessions.check(other) is None
    assert oct((tmp_path / "s.db").stat().st_mode & 0o777) == "0o600"


def test_a_flood_of_refused_calls_never_enters_the_queue(locked, monkeypatch):
    """Refused before the queue, so the owner's calls are not delayed."""
    import concurrent.futures

    url = locked.url
    owner = sign_in(url, PASSWORD)
    cfg = config(url, owner)
    queued = count_pushes(locked.tuner.studio, monkeypatch)
    stop, tick = locked.fn("on_stop"), locked.fn("on_tick")

    def flood(k):
        with httpx.Client(base_url=url) as http:
            codes = []
            for j in range(25):
                fn = stop if j % 2 else tick
                answer = http.post("/gradio_api/queue/join", json={"data": default_inputs(cfg, fn), "fn_index": fn,
                                                                   "session_hash": f"flood{k}"})
                codes.append(answer.status_code)
            return codes

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(flood, range(8)) for c in batch]
    assert set(codes) == {401} and len(codes) == 8 * 25  # actions and page events alike: refused
    assert queued == []
    stopped = call(url, stop, default_inputs(cfg, stop), cookies=owner)
    assert stopped["success"] and queued == [(stop, True)]
    # a stranger's page event is refused at once too, and never queued
    answer = call(url, tick, default_inputs(cfg, tick))
    assert "HTTP 401" in answer["error"] and queued == [(stop, True)]


def test_strangers_cannot_upload_and_the_owner_is_capped(locked, monkeypatch):
    """Raters never upload; the owner's uploads are capped per request and in total."""
    url = locked.url
    owner = sign_in(url, PASSWORD)
    cache = locked.home / "uploads"
    before = sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    files = [("files", (f"big{i}.jsonl", b"x" * 1024, "application/json")) for i in range(3)]
    stranger = httpx.post(f"{url}/gradio_api/upload", files=files)
    assert _refused(stranger)
    on_raters = httpx.post(f"{url}/rate/gradio_api/upload", files=files)  # the raters' app takes none either
    assert on_raters.status_code == 405
    assert (sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []) == before
    headers = page_headers(owner)
    mine = httpx.post(f"{url}/gradio_api/upload", files=files[:1], cookies=owner, headers=headers)
    assert mine.status_code == 200
    assert Path(mine.json()[0]).is_relative_to(cache)  # Tuner's own upload folder, in the data root
    gate = locked.tuner.gate
    monkeypatch.setattr(gate, "max_upload", 2048)
    many = httpx.post(f"{url}/gradio_api/upload", files=[("files", (f"f{i}", b"y" * 1024)) for i in range(200)],
                      cookies=owner, headers=headers)
    assert many.status_code == 413 and "too large" in many.text
    monkeypatch.setattr(gate, "upload_cap", 1)  # the folder already holds more than this
    full = httpx.post(f"{url}/gradio_api/upload", files=files[:1], cookies=owner, headers=headers)
    assert full.status_code == 507 and "upload folder is full" in full.text


# --- the raters: their page and their plain routes --------------------------------------------
def test_raters_page_works_without_owner_rights(locked):
    """The raters' page and its routes need no owner: the page, the open evaluations, join, submit."""
    url, store = locked.url, locked.store
    eval_id = open_evaluation(store, "page round", locked.model)
    page = httpx.get(f"{url}/rate", follow_redirects=True)
    assert page.status_code == 200 and "Rate replies" in page.text
    assert httpx.get(f"{url}/rate/config").status_code == 200
    listed = httpx.get(f"{url}{RATE}evaluations").json()["choices"]
    assert any(choice[1] == eval_id for choice in listed)
    with from_address(url, "127.0.0.11") as ann:
        joined = ann.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Ann", "code": ""})
        assert joined.status_code == 200, joined.text
        assert "pair 1 of 3" in joined.json()["progress"]
        saved = ann.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": joined.json()["assignment"],
                                                "a": 5, "b": 4, "preference": "A", "comment": ""})
        assert saved.status_code == 200 and "Saved (1 of 3 done)" in saved.json()["reveal"]
    assert len(store.ratings_frame(eval_id)) == 2
    # the rater's key is an HttpOnly cookie: SameSite=Strict over http; behind a TLS proxy (a Space,
    # whose page frames the app) a partitioned SameSite=None one, the only kind kept in a frame
    for proto, same_site in (("http", "SameSite=Strict"), ("https", "SameSite=None; Secure; Partitioned")):
        with from_address(url, "127.0.0.11", headers={"X-Forwarded-Proto": proto}) as rater:
            joined = rater.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"Rater-{proto}", "code": ""})
            line = next(c for c in joined.headers.get_list("set-cookie") if c.startswith("tuner_rater="))
            assert "HttpOnly" in line and same_site in line, line


def test_the_raters_gradio_app_runs_nothing_and_takes_no_post(locked, monkeypatch):
    """Replaces the old direct lane's tests (the gate ran the raters' handlers with Gradio's state
    and answer shape): the raters' Blocks has no Python handler at all, every POST to it is
    refused, and its buttons call the plain routes, which keep the rater on the server."""
    url, store = locked.url, locked.store
    raters = locked.tuner.raters
    assert raters.fns and all(f.fn is None for f in raters.fns.values())
    queued = count_pushes(raters, monkeypatch)
    owner = sign_in(url, PASSWORD)
    for path in ("/rate/gradio_api/queue/join", "/rate/gradio_api/run/js_fn", "/rate/gradio_api/call/js_fn",
                 "/rate/gradio_api/api/js_fn", "/rate/gradio_api/upload", "/rate/gradio_api/cancel",
                 "/rate/gradio_api/reset", "/rate/gradio_api/component_server", "/rate/gradio_api/process_recording",
                 "/rate/gradio_api/stream/x", "/rate/login", "/rate/"):
        for cookies in ({}, owner):
            answer = httpx.post(f"{url}{path}", json={"data": [], "fn_index": 0, "session_hash": "abc"},
                                cookies=cookies, headers=page_headers(cookies))
            assert answer.status_code == 405 and RATE in answer.json()["error"], (path, answer.text)
    assert queued == []

    eval_id = open_evaluation(store, "lane round", locked.model)
    with from_address(url, "127.0.0.12") as bo:
        joined = bo.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Bo", "code": ""}).json()
        assert "pair 1 of 3" in joined["progress"] and set(joined) == {"progress", "assignment", "prompt", "a", "b"}
        pair = joined["assignment"]
        scores = {"evaluation": eval_id, "assignment": pair, "a": 5, "b": 3, "preference": "B", "comment": "fine"}
        assert "Saved (1 of 3 done)" in bo.post(f"{RATE}submit", json=scores).json()["reveal"]
        # the same browser (its cookie) finds the same rater and pair: Change, then Next and Submit
        changed = bo.post(f"{RATE}change", json={"evaluation": eval_id, "assignment": pair, "a": 4, "b": 3})
        assert "Reply A 5 → 4" in changed.json()["reveal"], changed.text
        served = bo.post(f"{RATE}next", json={"evaluation": eval_id}).json()
        assert "pair 2 of 3" in served["progress"] and served["assignment"] != pair
        again = bo.post(f"{RATE}submit", json={**scores, "assignment": served["assignment"]})
        assert "Saved (2 of 3 done)" in again.json()["reveal"]
        frame = store.ratings_frame(eval_id)
        assert len(frame) == 4 and set(frame["rater"]) == {"Bo"}
        # no cookie, no rater: a made-up browser is told to start, and nothing is stored
        made_up = httpx.post(f"{url}{RATE}submit", json=scores)
        assert made_up.status_code == 400 and "Press Start rating" in made_up.json()["error"]
        # a script's odd bodies: refused with the reason, nothing stored
        for body, status, why in [(b'"5,5"', 400, "JSON object"), (b"[5, 3]", 400, "JSON object"),
                                  (b"{not json", 400, "JSON object"), (b"", 400, "JSON object"),
                                  ({"evaluation": "x"}, 400, "from the list"),
                                  ({"evaluation": eval_id, "assignment": 10 ** 9, "a": 5, "b": 3}, 400, "not served"),
                                  ({**scores, "comment": "z" * (64 * 1024)}, 413, "too large")]:
            refused = (bo.post(f"{RATE}submit", content=body, headers={"Content-Type": "application/json"})
                       if isinstance(body, bytes) else bo.post(f"{RATE}submit", json=body))
            assert refused.status_code == status and why in refused.json()["error"], (body, refused.text)
        # whatever a script puts where the page sends scores, a choice and a comment: refused by the handler
        bo.post(f"{RATE}next", json={"evaluation": eval_id})
        third = bo.post(f"{RATE}next", json={"evaluation": eval_id}).json()["assignment"]
        for a, b, preference, comment in ([{"x": 1}, 3, None, ""], [[3], 3, None, ""],
                                          ["3; DROP TABLE ratings", 3, None, ""], [3.5, 3, None, ""],
                                          [True, 3, None, ""], [7, 3, None, ""], [4, 3, None, {"not": "text"}],
                                          [4, 3, ["A"], ""], [None, 3, None, ""]):
            odd = bo.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": third, "a": a, "b": b,
                                                 "preference": preference, "comment": comment})
            assert odd.status_code == 200 and "⚠️" in odd.json()["reveal"], (a, b, preference, comment, odd.text)
        assert len(store.ratings_frame(eval_id)) == 4  # nothing more stored
    # a flood from one address is cut off, with the wait
    from tuner.access import RateLimiter

    monkeypatch.setattr(locked.tuner.gate, "public_posts", RateLimiter(capacity=3, per_seconds=60))
    with from_address(url, "127.0.0.13") as flooder:
        flood = [flooder.post(f"{RATE}next", json={"evaluation": eval_id}).status_code for _ in range(5)]
        assert flood == [400, 400, 400, 429, 429]
        last = flooder.post(f"{RATE}submit", json=scores)
        assert "Too many requests from this address" in last.json()["error"] and "retry-after" in last.headers
    # the owner is not limited, and the owner's own panel (Compare) needs no invite code
    coded = open_evaluation(store, "coded round", locked.model, [{"text": "Hi", "task": ""}], invite_code="tea",
                            reply="Reply {letter}", reply_settings={})
    with owner_client(url, owner) as page:
        for _ in range(4):
            assert page.post(f"{RATE}next", json={"evaluation": eval_id}).status_code == 400  # never 429
        panel = page.post(f"{RATE}join", json={"evaluation": coded, "name": "Owner", "code": "", "panel": "owner"})
        assert panel.status_code == 200 and "pair 1 of 1" in panel.json()["progress"], panel.text
    monkeypatch.setattr(locked.tuner.gate, "public_posts", RateLimiter(capacity=600, per_seconds=60))
    with from_address(url, "127.0.0.14") as pretender:  # a stranger who says "owner" still needs the code
        refused = pretender.post(f"{RATE}join", json={"evaluation": coded, "name": "Zed", "code": "",
                                                      "panel": "owner"})
        assert refused.status_code == 409 and "invite code" in refused.json()["error"]


def test_the_raters_routes_answer_a_failing_store_with_its_message(locked, monkeypatch, caplog):
    """Replaces the old lane's "a failing handler is answered as Gradio would": a store that
    fails (a full disk) is answered with its message and nothing half-saved; a bug is a 500
    that is logged with its traceback, and the server goes on answering."""
    from ratings.store import Store
    from tuner.paths import StorageError

    url, store = locked.url, locked.store
    eval_id = open_evaluation(store, "failing round", locked.model)
    with from_address(url, "127.0.0.15") as cy:
        pair = cy.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Cy", "code": ""}).json()["assignment"]

        def full(*args, **kwargs):
            raise StorageError("the ratings file went away")

        monkeypatch.setattr(Store, "rate_pair", full)
        monkeypatch.setattr(Store, "next_pair", full)
        saved = cy.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": pair, "a": 4, "b": 2})
        assert saved.status_code == 200 and saved.json()["reveal"] == "⚠️ the ratings file went away"
        served = cy.post(f"{RATE}next", json={"evaluation": eval_id})
        assert served.status_code == 409 and served.json()["error"] == "the ratings file went away"

        def broken(*args, **kwargs):
            raise RuntimeError("a bug in next_pair")

        monkeypatch.setattr(Store, "next_pair", broken)
        crashed = cy.post(f"{RATE}next", json={"evaluation": eval_id})
        assert crashed.status_code == 500 and "a bug in next_pair" not in crashed.text  # no internals shown
        monkeypatch.undo()
        key = cy.cookies["tuner_rater"]
    with from_address(url, "127.0.0.15", cookies={"tuner_rater": key}) as cy:  # (a 500 closes its connection)
        assert cy.post(f"{RATE}next", json={"evaluation": eval_id}).status_code == 200
    assert store.ratings_frame(eval_id).empty


def test_a_rater_cannot_rate_as_someone_else(locked):
    url, store = locked.url, locked.store
    eval_id = open_evaluation(store, "identity round", locked.model)
    with from_address(url, "127.0.0.16") as ann:
        first = ann.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Ann", "code": ""})
        key = ann.cookies["tuner_rater"]  # what Ann's browser keeps (HttpOnly)
        ann.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": first.json()["assignment"],
                                        "a": 2, "b": 2})
    with from_address(url, "127.0.0.17") as mallory:
        # Mallory types Ann's name: refused, without her key
        forged = mallory.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Ann", "code": ""})
        assert forged.status_code == 409 and "already rates as 'Ann'" in forged.json()["error"]
        mallory.cookies.set("tuner_rater", "not-her-key-but-long-enough-to-pass")
        wrong_key = mallory.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Ann", "code": ""})
        assert wrong_key.status_code == 409 and "already rates as 'Ann'" in wrong_key.json()["error"]
        # nor can she send Ann's name and pair straight to submit: the rater comes from the cookie
        assignment = store.next_pair(eval_id, "Ann", random.Random(0))["assignment_id"]
        mallory.cookies.clear()
        for body in ({"evaluation": eval_id, "assignment": assignment, "a": 1, "b": 1, "name": "Ann"},
                     {"evaluation": eval_id, "assignment": assignment, "a": 1, "b": 1, "rater": "Ann"}):
            direct = mallory.post(f"{RATE}submit", json=body)
            assert direct.status_code == 400 and "Press Start rating" in direct.json()["error"]
        changed = mallory.post(f"{RATE}change", json={"evaluation": eval_id, "assignment": assignment, "a": 1, "b": 1})
        assert changed.status_code == 400
    scores = store.ratings_frame(eval_id)
    assert sorted(scores["score"]) == [2, 2] and set(scores["rater"]) == {"Ann"}
    # Ann's own browser (her key) gets back in
    with from_address(url, "127.0.0.16", cookies={"tuner_rater": key}) as again:
        back = again.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Ann", "code": ""})
        assert "pair 2 of 3" in back.json()["progress"]


def test_a_script_flooding_ratings_is_slowed_down(locked):
    url, store = locked.url, locked.store
    prompts = [{"text": f"Prompt {i}", "task": ""} for i in range(14)]
    big = open_evaluation(store, "big round", locked.model, prompts, reply="Reply {letter}", reply_settings={})
    answers = []
    with from_address(url, "127.0.0.18") as bot:
        assert bot.get(f"{RATE}evaluations").status_code == 200  # the page load: current evaluations
        pair = bot.post(f"{RATE}join", json={"evaluation": big, "name": "Bot", "code": ""}).json()["assignment"]
        for _ in range(14):
            answers.append(bot.post(f"{RATE}submit", json={"evaluation": big, "assignment": pair, "a": 3,
                                                           "b": 3}).json()["reveal"])
            pair = bot.post(f"{RATE}next", json={"evaluation": big}).json()["assignment"]
    saved = [a for a in answers if a.startswith("Saved")]
    slowed = [a for a in answers if "Too many ratings too fast" in a]
    assert len(saved) == 10 and len(slowed) == 4
    with sqlite3.connect(locked.home / "ratings.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM ratings WHERE rater='Bot'").fetchone()[0] == 20  # 10 pairs × 2


def test_one_address_cannot_stuff_the_ballot_and_the_reveal_waits(locked):
    """Throwaway names from one address are refused after three, and no rater
    learns which model wrote which until their last pair."""
    url, store = locked.url, locked.store
    eval_id = open_evaluation(store, "ballot round", locked.model)
    browsers = [from_address(url, "127.0.0.19") for _ in range(6)]  # six browsers, one address
    try:
        answers = [b.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"throwaway{i}", "code": ""})
                   for i, b in enumerate(browsers)]
        assert all(a.status_code == 200 and "pair 1 of 3" in a.json()["progress"] for a in answers[:3])
        assert all(a.status_code == 409 and "under 3 names" in a.json()["error"] for a in answers[3:]), \
            [a.text for a in answers]
        # the first name rates its three pairs: no reveal until the last
        first, reveals = browsers[0], []
        pair = answers[0].json()["assignment"]
        for _ in range(3):
            reveals.append(first.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": pair, "a": 4,
                                                             "b": 2}).json()["reveal"])
            again = first.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": pair, "a": 1, "b": 1})
            assert "already rated this pair" in again.json()["reveal"]  # a repeat submit says so, replaces nothing
            pair = first.post(f"{RATE}next", json={"evaluation": eval_id}).json()["assignment"]
    finally:
        for b in browsers:
            b.close()
    assert all("Base model" not in r and "LoRA run" not in r for r in reveals[:2]), reveals
    assert "shown after your last pair" in reveals[0]
    assert "last pair" in reveals[2] and "Base model" in reveals[2] and "LoRA run" in reveals[2]
    assert sorted(store.ratings_frame(eval_id)["score"]) == [2, 2, 2, 4, 4, 4]
    # the owner sees the raters and leaves one out; the tables follow, the ratings stay
    owner = sign_in(url, PASSWORD)
    exclude = locked.api("exclude_rater")
    out = call(url, exclude, [eval_id, "throwaway0", "testing"], cookies=owner)
    assert "excluded from" in out["data"][1]
    assert store.ratings_frame(eval_id).empty and len(store.ratings_frame(eval_id, with_excluded=True)) == 6
    assert "HTTP 401" in call(url, exclude, [eval_id, "throwaway1", ""])["error"]  # a stranger: refused


# --- modes, errors, what pages carry -----------------------------------------------------------
@pytest.mark.server
def test_open_mode_says_so_and_lets_everyone_in(tiny_llama, tmp_path):
    from tuner.access import Access

    home = tmp_path / "home"
    store, eval_id = _seed(home, tiny_llama)
    tuner, url = serve(home, tiny_llama, Access())
    try:
        cfg = config(url)  # anyone's
        banner = [c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "open-banner"]
        assert banner and "Open mode" in banner[0]["props"]["value"]
        refresh = next(i for i, f in tuner.studio.fns.items() if f.name == "refresh_all")
        answered = call(url, refresh, [])
        assert answered["success"] and not is_skip(answered["data"])
        assert any("friends' round" in str(choice) for choice in answered["data"][1]["choices"])
    finally:
        tuner.close()


def test_access_from_env_and_the_owner_check():
    from tuner.access import Access

    assert Access.from_env({}).open
    both = Access.from_env({"TUNER_OWNER_PASSWORD": "pw", "TUNER_OWNER": "Alice"})
    assert not both.open
    token = both.sign_in("pw", "10.0.0.1")
    assert both.is_owner({"tuner_owner": token}, None)
    assert both.is_owner({}, "alice")  # Hugging Face usernames compare case-blind
    assert not both.is_owner({}, "mallory") and not both.is_owner({"tuner_owner": "x" * 43}, None)
    assert both.csrf_ok(token, both.csrf_token(token)) and not both.csrf_ok(token, both.csrf_token(token + "x"))
    assert Access(password="pw").sessions.check(token) is None  # another server's sessions


@pytest.mark.server
def test_the_page_config_and_html_carry_no_owner_data(tiny_llama, trained_run, tmp_path):
    """After a restart, what a stranger can fetch (/config, /, /rate and their API
    descriptions, the sign-in page) shows nothing of the owner's data."""
    import shutil

    from tuner.access import Access

    home = tmp_path / "home-with-secrets"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "acme-payroll-questions.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')
    from ratings.store import Store
    from tuner.paths import Layout

    store = Store(Layout(home).ratings_db)
    open_evaluation(store, "friends' round", tiny_llama)
    closed = store.create_evaluation("closed payroll round", str(tiny_llama), [{"text": "Hi", "task": ""}], VARIANTS)
    run_dir = trained_run.parent
    shutil.copytree(run_dir, home / "runs" / run_dir.name)
    tuner, url = serve(home, tiny_llama, Access(password=PASSWORD))
    try:
        secrets = ["acme-payroll-questions", "closed payroll round", run_dir.name, str(home), str(tmp_path),
                   "Base model", "LoRA run"]
        for path in ("/config", "/", "/rate", "/rate/", "/rate/config", "/gradio_api/info", "/rate/gradio_api/info",
                     "/tuner/sign-in", "/tuner/rate/evaluations"):
            answer = httpx.get(f"{url}{path}", timeout=30, follow_redirects=True)
            found = [s for s in secrets if s in answer.text]
            assert not found, (path, found)
        # (the open evaluation is listed for raters by name alone; the closed one is not)
        assert closed not in [choice[1] for choice in httpx.get(f"{url}/tuner/rate/evaluations").json()["choices"]]
        # the owner, signed in, gets them through the load handlers
        owner = sign_in(url, PASSWORD)
        refresh = next(i for i, f in tuner.studio.fns.items() if f.name == "refresh_all")
        mine = str(call(url, refresh, [], cookies=owner)["data"])
        assert "friends' round" in mine and run_dir.name in mine
    finally:
        tuner.close()


def test_expected_errors_leave_no_traceback_in_the_server_log(locked, capfd):
    """Bad input is answered with a message, and the server log stays clean."""
    url = locked.url
    owner = sign_in(url, PASSWORD)
    cfg = config(url, owner)
    capfd.readouterr()
    answers = []
    for api in ("export_adapter", "export_merged", "push_to_hub"):
        fn = locked.api(api)
        answers.append(call(url, fn, default_inputs(cfg, fn), cookies=owner))
    for name in ("on_start", "on_resume", "on_load", "on_generate", "on_export"):
        fn = locked.fn(name)
        answers.append(call(url, fn, default_inputs(cfg, fn), cookies=owner))
    assert all(a["success"] for a in answers), [a for a in answers if not a["success"]]
    assert all("⚠️" in json.dumps(a["data"], ensure_ascii=False) for a in answers), answers
    # and a stranger's refusals, and the raters' odd requests, leave none either
    httpx.post(f"{url}/gradio_api/queue/join", json={"data": [], "fn_index": 1, "session_hash": "abc"})
    httpx.post(f"{url}{RATE}submit", content=b"{not json")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-2000:]


def test_the_gate_refuses_forged_headers_cross_site_fetches_upload_routes_and_fn_index_tricks(locked, monkeypatch):
    """The gate against forged forwarding headers, the browser's own Sec-Fetch-Site, routes
    that take uploads, fn_index tricks, unanswered completions and bodies over the cap."""
    url = locked.url
    owner = sign_in(url, PASSWORD)
    cfg = config(url, owner)
    queued = count_pushes(locked.tuner.studio, monkeypatch)
    refresh = locked.fn("refresh_all")
    export = locked.api("export_adapter")
    join = {"data": [], "fn_index": refresh, "session_hash": "evil1"}
    # a page of another site that also sends X-Forwarded-Host naming itself
    forged = httpx.post(f"{url}/gradio_api/queue/join", json=join,
                        headers={"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example",
                                 "X-Forwarded-Proto": "https"})
    assert forged.status_code == 403
    # the browser's own word: a cross-site fetch, whatever Origin it claims
    for site in ("cross-site", "same-site"):
        answer = httpx.post(f"{url}/gradio_api/queue/join", json=join, cookies=owner,
                            headers={**page_headers(owner), "Sec-Fetch-Site": site})
        assert answer.status_code == 403, site
    # POST routes that store a file (process_recording would keep a stranger's): the owner's alone
    uploads = sorted((locked.home / "uploads").rglob("*"))
    for path in ("/gradio_api/process_recording", "/gradio_api/component_server", "/gradio_api/stream/x"):
        assert _refused(httpx.post(f"{url}{path}", files={"video": ("a.mp4", b"x" * 1000, "video/mp4")}))
    assert sorted((locked.home / "uploads").rglob("*")) == uploads
    # fn_index as a string, and a harmless name in the path with an owner fn_index in the body
    assert _refused(httpx.post(f"{url}/gradio_api/queue/join", json={**join, "fn_index": str(export)}))
    with owner_client(url, owner) as page:
        answer = page.post("/gradio_api/queue/join", json={**join, "fn_index": str(export)})
        assert answer.status_code == 422 and "whole number" in answer.text
    for path in ("/gradio_api/run/owner_sessions", "/gradio_api/api/owner_sessions",
                 "/gradio_api/call/owner_sessions"):
        answer = httpx.post(f"{url}{path}", json={"data": default_inputs(cfg, export), "fn_index": export})
        assert _refused(answer), path
    # a stranger's page events that never read their stream: none is accepted, so none waits
    codes = {httpx.post(f"{url}/gradio_api/queue/join", json={**join, "session_hash": "never-reads"}).status_code
             for _ in range(70)}
    assert codes == {401}
    assert queued == []
    # a body over the cap: a stranger is refused before it is read; the owner's, from its Content-Length
    body = b"{" + b" " * (17 * 1024 * 1024) + b"}"
    big = httpx.post(f"{url}/gradio_api/queue/join", content=body, headers={"Content-Type": "application/json"})
    assert _refused(big)
    big = httpx.post(f"{url}/gradio_api/queue/join", content=body, cookies=owner,
                     headers={**page_headers(owner), "Content-Type": "application/json"})
    assert big.status_code == 413


def test_rate_limits_key_on_the_space_proxys_address_and_hf_sign_in_needs_a_space(monkeypatch):
    from tuner.access import client_address, trusted_proxies
    from tuner.ui.access import sign_in_available

    scope = {"client": ("10.0.0.5", 1234), "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]}
    assert client_address(scope, trusted_proxies({})) == "10.0.0.5"  # not on a Space: the connection's address
    on_space = trusted_proxies({"SPACE_ID": "me/tuner"})
    assert client_address(scope, on_space) == "203.0.113.9"  # the proxy's entry, not the sender's "6.6.6.6"
    monkeypatch.setenv("SPACE_ID", "me/tuner")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "x")
    monkeypatch.delenv("OAUTH_CLIENT_SECRET", raising=False)
    assert not sign_in_available()  # sessions would be signed with a public key
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "y")
    assert not sign_in_available()  # off a Space anyone could claim to be anyone


@pytest.mark.server
def test_on_a_space_each_rater_is_counted_by_their_own_address(tiny_llama, tmp_path, monkeypatch):
    """Every request reaches a Space from its proxy: keyed on the connection, the cap of 3
    names per address would stop the 4th friend. The proxy's X-Forwarded-For entry counts."""
    from tuner.access import Access

    monkeypatch.setenv("SPACE_ID", "me/tuner")  # read when the server (its gate) starts
    home = tmp_path / "home"
    store, eval_id = _seed(home, tiny_llama)
    tuner, url = serve(home, tiny_llama, Access(password=PASSWORD))
    try:
        answers = []
        for i in range(5):
            with httpx.Client(base_url=url, headers={"X-Forwarded-For": f"203.0.113.{i}"}) as friend:
                answers.append(friend.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"friend{i}",
                                                                "code": ""}).json().get("progress", ""))
        assert all("pair 1 of 3" in a for a in answers), answers
        # and the cap still holds for one address behind the proxy
        more = []
        for i in range(2):
            with httpx.Client(base_url=url, headers={"X-Forwarded-For": "203.0.113.0"}) as same:
                more.append(same.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"again{i}", "code": ""}))
        assert [m.status_code for m in more] == [200, 200]
        with httpx.Client(base_url=url, headers={"X-Forwarded-For": "203.0.113.0"}) as fourth:
            refused = fourth.post(f"{RATE}join", json={"evaluation": eval_id, "name": "again2", "code": ""})
        assert refused.status_code == 409 and "under 3 names" in refused.json()["error"]
    finally:
        tuner.close()
