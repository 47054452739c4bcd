"""Owner-only actions, rater identity and rate limits, called directly over HTTP
against the real server, as a stranger's script would (issue 8)."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

import httpx

from browser import serve
from gradio_http import call, call_as_page, config, default_inputs, is_skip, sign_in

PASSWORD = "correct horse battery staple"
VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]


def _snapshot(home):
    """Every file under the data root with its size and mtime, and every table's row count."""
    files = {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(home.rglob("*")) if p.is_file() and not p.name.startswith("ratings.db")}
    with sqlite3.connect(home / "ratings.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0] for t in tables}
    return files, counts


def _seed(home, model):
    from ratings.store import Store
    from tuner.paths import Layout

    store = Store(Layout(home).ratings_db)
    prompts = [{"text": f"Write a short note number {i}.", "task": f"note {i}"} for i in range(1, 4)]
    eval_id = store.create_evaluation("friends' round", str(model), prompts, VARIANTS)
    ids = [v["id"] for v in store.variants(eval_id)]
    for p in store.prompts(eval_id):
        for k, vid in enumerate(ids):
            store.add_reply(p["id"], vid, f"Reply {'xy'[k]} to note {p['position']}.", {"max_new_tokens": 16})
    store.open_for_rating(eval_id)
    return store, eval_id


@pytest.fixture
def locked(tiny_llama, tmp_path):
    from tuner.access import Access

    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "mine.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')
    store, eval_id = _seed(home, tiny_llama)
    access = Access(password=PASSWORD)
    demo, url = serve(home, tiny_llama, access)
    yield demo, url, home, store, eval_id, access
    demo.close()


def _by_api(cfg: dict, name: str) -> int:
    return next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == name)


def test_every_owner_handler_refuses_a_stranger_and_changes_nothing(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    before = _snapshot(home)
    owner_fns = {i: f for i, f in demo.fns.items() if getattr(f.fn, "_tuner_guarded", False)}
    assert len(owner_fns) > 60  # the whole owner page, not a handful
    refused, skipped = [], []
    queued = _count_pushes(demo)
    for fn_index, block_fn in owner_fns.items():
        # a select handler gets what a click on a table cell sends
        event = {"index": [0, 0], "value": None, "selected": True} if block_fn.collects_event_data else None
        result = call(url, fn_index, default_inputs(cfg, fn_index), event_data=event)
        events = {event for _b, event in block_fn.targets}
        if events & {"click", "submit", "upload"}:
            assert not result["success"] and "Owner only" in (result["error"] or ""), (block_fn.name, result)
            refused.append(block_fn.api_name)
        else:
            assert result["success"] and is_skip(result["data"], cfg, fn_index), (block_fn.name, events, result)
            skipped.append(block_fn.name)
    # the actions the issue names are among the refused ones
    for name in ("on_start", "on_stop", "on_resume", "on_generate", "on_import", "on_save_split", "on_send",
                 "on_export", "on_propose", "rate_join"):
        assert name in refused, name
    assert _snapshot(home) == before  # nothing written, nothing deleted
    assert queued == [], "a stranger's refused calls must never enter the queue"


def _count_pushes(demo) -> list:
    """Every event that enters Gradio's queue, by fn_index (a spy on the real queue)."""
    seen = []
    original = demo._queue.push

    async def push(body, request, username):
        seen.append(body.fn_index)
        return await original(body=body, request=request, username=username)

    demo._queue.push = push
    return seen


def test_the_same_handlers_answer_the_signed_in_owner(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    owner = sign_in(url, PASSWORD)
    status = call(url, _by_api(cfg, "owner_status"), [], cookies=owner)
    assert status["success"] and "Signed in as the owner" in status["data"][0]
    stranger = call(url, _by_api(cfg, "owner_status"), [])
    assert "Owner only" in stranger["data"][0]
    refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
    answered = call(url, refresh, [], cookies=owner)
    assert answered["success"] and not is_skip(answered["data"])
    assert any("friends' round" in str(choice) for choice in answered["data"][1]["choices"])
    # a forged cookie is a stranger's
    forged = call(url, refresh, [], cookies={"tuner_owner": "0" * 43, "tuner_csrf": "0" * 64})
    assert is_skip(forged["data"])


def test_sign_in_sets_a_random_httponly_strict_cookie_only_for_the_password_and_limits_guesses(locked):
    demo, url, home, store, eval_id, access = locked
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


def test_another_site_cannot_use_the_owners_cookie(locked):
    """Issue 14.1: a page on another origin, same site or not, in the owner's browser."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    owner = sign_in(url, PASSWORD)
    host = url.split("//", 1)[1]
    refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
    export = _by_api(cfg, "export_adapter")
    for origin in ("http://evil.example", f"http://{host}.evil.example", "http://127.0.0.2:" + host.split(":")[1],
                   "null", f"https://{host}"):
        for path, body in (("/gradio_api/queue/join", {"data": [], "fn_index": refresh, "session_hash": "x1"}),
                           ("/gradio_api/run/export_adapter", {"data": default_inputs(cfg, export)}),
                           ("/tuner/owner/sign-in", {"password": PASSWORD})):
            answer = httpx.post(f"{url}{path}", json=body, cookies=owner,
                                headers={"Origin": origin, "X-Tuner-CSRF": owner["tuner_csrf"]})
            assert answer.status_code == 403 and "another site" in answer.text, (origin, path, answer.text)
    # a Referer from elsewhere (no Origin) counts the same
    answer = httpx.post(f"{url}/gradio_api/queue/join", cookies=owner, json={"data": [], "fn_index": refresh,
                        "session_hash": "x2"}, headers={"Referer": "http://evil.example/page"})
    assert answer.status_code == 403
    # the owner's cookie without the page's anti-forgery header is a stranger's (a form post, say)
    bare = call(url, refresh, [], cookies={"tuner_owner": owner["tuner_owner"]})
    assert bare["success"] and is_skip(bare["data"])
    wrong = call(url, refresh, [], cookies={**owner, "tuner_csrf": "1" * 64})
    assert is_skip(wrong["data"])
    # the app's own page (same origin, with the header) is the owner
    mine = call(url, refresh, [], cookies=owner)
    assert mine["success"] and not is_skip(mine["data"])
    with httpx.Client(base_url=url, cookies=owner) as page:
        same = page.post("/gradio_api/queue/join", json={"data": [], "fn_index": refresh, "session_hash": "x3"},
                         headers={"Origin": url, "X-Tuner-CSRF": owner["tuner_csrf"]})
        assert same.status_code == 200 and "event_id" in same.json()


def test_owner_sessions_are_server_side_listed_revocable_and_end_at_sign_out(locked):
    """Issue 14.2: a random token per sign-in, kept hashed, with an expiry; Sign out revokes it."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    laptop = sign_in(url, PASSWORD, **{"User-Agent": "laptop browser"})
    phone = sign_in(url, PASSWORD, **{"User-Agent": "phone browser"})
    listed = call(url, _by_api(cfg, "owner_sessions"), [], cookies=laptop)
    rows = listed["data"][0]["data"]
    assert len(rows) == 2 and {r[5] for r in rows} == {"laptop browser", "phone browser"}
    mine = next(r for r in rows if r[6] == "✓")
    assert mine[5] == "laptop browser"
    assert call(url, _by_api(cfg, "owner_sessions"), [])["error"]  # a stranger sees no list
    # the owner revokes the phone's session from the laptop: the phone's cookie stops working at once
    phone_id = next(r[0] for r in rows if r[5] == "phone browser")
    revoked = call(url, _by_api(cfg, "owner_revoke_session"), [phone_id], cookies=laptop)
    assert f"Revoked session {phone_id}" in revoked["data"][1]
    refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
    assert is_skip(call(url, refresh, [], cookies=phone)["data"])
    assert not is_skip(call(url, refresh, [], cookies=laptop)["data"])
    # Sign out ends the laptop's session on the server, not just in the browser
    with httpx.Client(base_url=url, cookies=laptop, headers={"X-Tuner-CSRF": laptop["tuner_csrf"]}) as browser:
        out = browser.post("/tuner/owner/sign-out")
        assert out.status_code == 200
        assert any(c.startswith("tuner_owner=;") and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    assert is_skip(call(url, refresh, [], cookies=laptop)["data"])  # the old cookie, replayed
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


def test_a_flood_of_refused_calls_never_enters_the_queue(locked):
    """Issue 14.4: refused before the queue, so the owner's calls are not delayed."""
    import concurrent.futures

    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    owner = sign_in(url, PASSWORD)
    queued = _count_pushes(demo)
    stop = next(i for i, f in demo.fns.items() if f.name == "on_stop")
    tick = next(i for i, f in demo.fns.items() if f.name == "on_tick")

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
    assert set(codes) == {200, 403} and codes.count(403) == 8 * 12  # actions refused, page events answered
    assert queued == []
    stopped = call(url, stop, default_inputs(cfg, stop), cookies=owner)
    assert stopped["success"] and queued == [stop]
    # a stranger's page event is completed at once, with no change
    answer = call(url, tick, default_inputs(cfg, tick))
    assert answer["success"] and is_skip(answer["data"], cfg, tick) and queued == [stop]


def test_strangers_cannot_upload_and_the_owner_is_capped(locked, monkeypatch):
    """Issue 14.3: raters never upload; the owner's uploads are capped per request and in total."""
    demo, url, home, store, eval_id, access = locked
    owner = sign_in(url, PASSWORD)
    cache = Path(demo.GRADIO_CACHE)
    before = sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    files = [("files", (f"big{i}.jsonl", b"x" * 1024, "application/json")) for i in range(3)]
    stranger = httpx.post(f"{url}/gradio_api/upload", files=files)
    assert stranger.status_code == 403 and "owner only" in stranger.text
    assert (sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []) == before
    headers = {"X-Tuner-CSRF": owner["tuner_csrf"]}
    mine = httpx.post(f"{url}/gradio_api/upload", files=files[:1], cookies=owner, headers=headers)
    assert mine.status_code == 200
    gate = _gate(demo)
    monkeypatch.setattr(gate, "max_upload", 2048)
    many = httpx.post(f"{url}/gradio_api/upload", files=[("files", (f"f{i}", b"y" * 1024)) for i in range(200)],
                      cookies=owner, headers=headers)
    assert many.status_code == 413 and "a request" in many.text
    monkeypatch.setattr(gate, "upload_cap", 1)  # the folder already holds more than this
    full = httpx.post(f"{url}/gradio_api/upload", files=files[:1], cookies=owner, headers=headers)
    assert full.status_code == 507 and "upload folder is full" in full.text


def _gate(demo):
    """The OwnerGate instance in the running app's middleware stack."""
    from tuner.ui.access import OwnerGate

    layer = demo.app.middleware_stack
    while layer is not None and not isinstance(layer, OwnerGate):
        layer = getattr(layer, "app", None)
    assert layer is not None
    return layer


def test_raters_page_works_without_owner_rights(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    # the raters' events skip Gradio's queue: the page POSTs each to /gradio_api/run/<name>
    for name in ("rater_join", "rater_submit", "rater_next"):
        assert next(d for d in cfg["dependencies"] if d.get("api_name") == name)["queue"] is False, name
    session = "rater-ann-01"
    joined = call_as_page(cfg, url, _by_api(cfg, "rater_join"), [eval_id, "Ann", "", {}], session_hash=session)
    assert joined["success"], joined
    progress = joined["data"][3]
    assert "pair 1 of 3" in progress
    data = [5, 4, "A", "", None, None, None, None, None, None]
    saved = call_as_page(cfg, url, _by_api(cfg, "rater_submit"), [None, None, None, *data], session_hash=session)
    assert saved["success"] and "Saved (1 of 3 done)" in saved["data"][0]
    assert len(store.ratings_frame(eval_id)) == 2


def test_the_gate_runs_the_raters_handlers_itself_with_gradios_state_and_answer(locked):
    """Submit, Next and Change, POSTed by the page to /gradio_api/run/…, are run by OwnerGate
    (tuner.ui.access.direct), not by Gradio's route: the same session state (set by a join
    that Gradio ran), Gradio's answer shape, no session made for a stranger's made-up one,
    and a stranger's odd bodies refused with the reason and nothing stored."""
    from tuner.ui.access import DIRECT_CAP

    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    join, submit, next_pair = (_by_api(cfg, n) for n in ("rater_join", "rater_submit", "rater_next"))
    joined = call_as_page(cfg, url, join, [eval_id, "Bo", "", {}], session_hash="bo-browser")
    assert "pair 1 of 3" in joined["data"][3]
    runs = {i: demo.fns[i].total_runs for i in (submit, next_pair)}
    scores = [None, None, None, 5, 3, "B", "fine", None, None, None, None, None, None]
    raw = httpx.post(f"{url}/gradio_api/run/rater_submit", json={
        "data": scores, "fn_index": submit, "session_hash": "bo-browser", "event_data": None, "trigger_id": None})
    assert raw.status_code == 200, raw.text
    answer = raw.json()
    assert {"data", "is_generating", "duration", "average_duration", "render_config",
            "changed_state_ids"} <= set(answer)
    assert len(answer["data"]) == len(demo.fns[submit].outputs) == 2
    assert "Saved (1 of 3 done)" in answer["data"][0]
    assert answer["data"][1] is None  # a state's value never goes to the browser
    # the assignment (a state output the handler did not return) is left as it was: Change finds the pair
    changed = call_as_page(cfg, url, _by_api(cfg, "rater_change"), [None, None, None, 4, 3], session_hash="bo-browser")
    assert "Reply A 5 → 4" in changed["data"][0], changed
    served = call_as_page(cfg, url, next_pair, [None, None], session_hash="bo-browser")
    assert served["success"] and "pair 2 of 3" in served["data"][0]
    assert served["data"][1] is None  # a state's value never goes to the browser
    again = call_as_page(cfg, url, submit, scores, session_hash="bo-browser")  # the assignment Next kept
    assert "Saved (2 of 3 done)" in again["data"][0]
    assert {i: demo.fns[i].total_runs for i in (submit, next_pair)} == runs  # Gradio's route ran none of them
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 4 and set(frame["rater"]) == {"Bo"}

    sessions = demo.server_app.state_holder
    made_up = call_as_page(cfg, url, submit, scores, session_hash="never-seen-before")
    assert "Press Start rating" in made_up["data"][0]
    assert "never-seen-before" not in sessions  # no session (and its ~65 ms) for a made-up name

    def post(body: dict | bytes) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.post(f"{url}/gradio_api/run/rater_submit", content=body,
                              headers={"content-type": "application/json"})
        return httpx.post(f"{url}/gradio_api/run/rater_submit", json={"fn_index": submit, **body})

    for body, status, why in [
            ({"data": "5,5", "session_hash": "bo-browser"}, 422, "data must be a list of 13 values"),
            ({"data": scores[:5], "session_hash": "bo-browser"}, 422, "data must be a list of 13 values"),
            ({"data": scores}, 422, "session_hash"),
            ({"data": scores, "session_hash": "x" * 65}, 422, "session_hash"),
            ({"data": scores, "session_hash": 7}, 422, "session_hash"),
            ({"data": [*scores[:6], "z" * DIRECT_CAP, *scores[7:]], "session_hash": "bo-browser"}, 413, "too large")]:
        refused = post(body)
        assert refused.status_code == status and why in refused.json()["error"], (body, refused.text)
    # whatever a script puts where the page sends scores, a choice and a comment: refused by the handler
    call_as_page(cfg, url, join, [eval_id, "Cy", "", {}], session_hash="cy-browser")
    for odd in ([{"x": 1}, 3, None, ""], [[3], 3, None, ""], ["3; DROP TABLE ratings", 3, None, ""],
                [3.5, 3, None, ""], [True, 3, None, ""], [7, 3, None, ""], [4, 3, None, {"not": "text"}],
                [4, 3, ["A"], ""], [None, 3, None, ""]):
        odd_answer = call_as_page(cfg, url, submit, [None, None, None, *odd, *[None] * 6], session_hash="cy-browser")
        assert odd_answer["success"] and "⚠️" in odd_answer["data"][0], (odd, odd_answer)
    assert len(store.ratings_frame(eval_id)) == 4  # nothing more stored
    # a flood from one address is cut off, with the wait
    from tuner.access import RateLimiter

    _gate(demo).direct_calls = RateLimiter(capacity=3, per_seconds=60)
    flood = [post({"data": scores, "session_hash": f"flood-{i}"}).status_code for i in range(5)]
    assert flood == [200, 200, 200, 429, 429]
    assert "Too many requests from this address" in post({"data": scores, "session_hash": "f"}).json()["error"]

    # the owner's own rating panel (Compare) is guarded: Gradio's route runs it, with its request
    owner = sign_in(url, PASSWORD)
    compare = _by_api(cfg, "rate_next")
    before = demo.fns[compare].total_runs
    answered = call_as_page(cfg, url, compare, [None, None], cookies=owner, session_hash="owner-tab")
    assert answered["success"] and demo.fns[compare].total_runs == before + 1


@pytest.mark.parametrize("show_error", [True, False])
def test_the_raters_lane_answers_a_failing_or_miscounted_handler_as_gradio_would(show_error, caplog):
    """A `direct` handler that raises, or returns one value for two outputs: 500 with Gradio's
    error payload (the message only where the app shows errors), and the traceback in the log."""
    import socket

    import gradio as gr

    from tuner.access import Access
    from tuner.ui.access import direct, install

    def broken(text):
        raise RuntimeError("the ratings file went away")

    def miscounted(text):
        return "one value"

    raw = {"queue": False, "preprocess": False, "postprocess": False}
    with gr.Blocks() as demo:
        box, out, other = gr.Textbox(), gr.Textbox(), gr.Textbox()
        gr.Button().click(direct(broken), box, out, api_name="broken", **raw)
        gr.Button().click(direct(miscounted), box, [out, other], api_name="miscounted", **raw)
        # marked, but on an event that preprocesses its values: Gradio's route runs it, not the lane
        gr.Button().click(direct(lambda text: text.upper()), box, out, api_name="processed", queue=False)
    install(demo, Access(password=PASSWORD))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=show_error)
    try:
        url = f"http://127.0.0.1:{port}"
        cfg = config(url)
        for name, message in (("broken", "the ratings file went away"),
                              ("miscounted", "miscounted returned 1 values for 2 outputs")):
            answer = httpx.post(f"{url}/gradio_api/run/{name}", json={
                "data": ["hi"], "fn_index": _by_api(cfg, name), "session_hash": "s-1"})
            assert answer.status_code == 500, answer.text
            assert answer.json()["error"] == (message if show_error else None)
            logged = [r for r in caplog.records if r.getMessage() == f"{name} failed"]
            assert logged and logged[-1].exc_info  # logged, with its traceback
        processed = _by_api(cfg, "processed")
        answer = httpx.post(f"{url}/gradio_api/run/processed", json={
            "data": ["hi"], "fn_index": processed, "session_hash": "s-1"})
        assert answer.status_code == 200 and answer.json()["data"] == ["HI"]
        assert demo.fns[processed].total_runs == 1  # counted by Gradio's route: it ran there
    finally:
        demo.close()


def test_a_rater_cannot_rate_as_someone_else(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    join, submit = _by_api(cfg, "rater_join"), _by_api(cfg, "rater_submit")
    first = call(url, join, [eval_id, "Ann", "", {}], session_hash="ann-browser")
    key = first["data"][2]["Ann"]  # what Ann's browser keeps
    call(url, submit, [None, None, None, 2, 2, None, "", None, None, None, None, None, None], session_hash="ann-browser")
    # Mallory types Ann's name: refused, without her key
    forged = call(url, join, [eval_id, "Ann", "", {}], session_hash="mallory")
    assert "already rates as 'Ann'" in forged["data"][3]
    wrong_key = call(url, join, [eval_id, "Ann", "", {"Ann": "not-her-key"}], session_hash="mallory")
    assert "already rates as 'Ann'" in wrong_key["data"][3]
    # nor can she send Ann's name and assignment straight to submit: the rater is server-side state
    assignment = store.next_pair(eval_id, "Ann", random.Random(0))["assignment_id"]
    forged_values = [assignment, "Ann", eval_id, 1, 1, None, "", None, None, None, None, None, None]
    direct = call(url, submit, forged_values, session_hash="mallory")
    assert "Press Start rating" in direct["data"][0]
    posted = call_as_page(cfg, url, submit, forged_values, session_hash="mallory")  # the page's own path
    assert "Press Start rating" in posted["data"][0]
    scores = store.ratings_frame(eval_id)
    assert sorted(scores["score"]) == [2, 2] and set(scores["rater"]) == {"Ann"}
    # Ann's own browser (her key) gets back in
    again = call(url, join, [eval_id, "Ann", "", {"Ann": key}], session_hash="ann-again")
    assert "pair 2 of 3" in again["data"][3]


def test_a_script_flooding_ratings_is_slowed_down(locked, tiny_llama):
    demo, url, home, store, eval_id, access = locked
    prompts = [{"text": f"Prompt {i}", "task": ""} for i in range(14)]
    big = store.create_evaluation("big round", str(tiny_llama), prompts, VARIANTS)
    ids = [v["id"] for v in store.variants(big)]
    for p in store.prompts(big):
        for vid in ids:
            store.add_reply(p["id"], vid, f"Reply {vid}", {})
    store.open_for_rating(big)
    cfg = config(url)
    join, submit, next_pair = _by_api(cfg, "rater_join"), _by_api(cfg, "rater_submit"), _by_api(cfg, "rater_next")
    call(url, _by_api(cfg, "rater_refresh"), [], session_hash="bot")  # the page load: current evaluations
    call(url, join, [big, "Bot", "", {}], session_hash="bot")
    answers = []
    for _ in range(14):
        answers.append(call(url, submit, [None, None, None, 3, 3, None, "", None, None, None, None, None, None],
                            session_hash="bot")["data"][0])
        call(url, next_pair, [None, None], session_hash="bot")
    saved = [a for a in answers if a.startswith("Saved")]
    slowed = [a for a in answers if "Too many ratings too fast" in a]
    assert len(saved) == 10 and len(slowed) == 4
    with sqlite3.connect(home / "ratings.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM ratings WHERE rater='Bot'").fetchone()[0] == 20  # 10 pairs × 2


def test_open_mode_says_so_and_lets_everyone_in(tiny_llama, tmp_path):
    from tuner.access import Access

    home = tmp_path / "home"
    store, eval_id = _seed(home, tiny_llama)
    demo, url = serve(home, tiny_llama, Access())
    try:
        cfg = config(url)
        banner = [c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "open-banner"]
        assert banner and "Open mode" in banner[0]["props"]["value"]
        refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
        answered = call(url, refresh, [])
        assert answered["success"] and not is_skip(answered["data"])
    finally:
        demo.close()


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


def test_the_page_config_and_html_carry_no_owner_data(tiny_llama, trained_run, tmp_path):
    """Issue 14.6: after a restart, /config, / and /rate show a stranger nothing of the owner's
    (owner components are built empty and filled by guarded load handlers)."""
    import shutil

    from tuner.access import Access

    home = tmp_path / "home-with-secrets"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "acme-payroll-questions.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')
    store, eval_id = _seed(home, tiny_llama)
    run_dir = trained_run.parent
    shutil.copytree(run_dir, home / "runs" / run_dir.name)
    demo, url = serve(home, tiny_llama, Access(password=PASSWORD))
    try:
        secrets = ["acme-payroll-questions", "friends' round", "friends&#x27; round", run_dir.name, str(home),
                   str(tmp_path)]
        for path in ("/config", "/", "/rate", "/rate/config", "/gradio_api/info"):
            answer = httpx.get(f"{url}{path}", timeout=30)
            found = [s for s in secrets if s in answer.text]
            assert not found, (path, found)
        # the owner, signed in, gets them through the load handlers
        owner = sign_in(url, PASSWORD)
        refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
        assert "friends' round" in str(call(url, refresh, [], cookies=owner)["data"])
    finally:
        demo.close()


def test_one_address_cannot_stuff_the_ballot_and_the_reveal_waits(locked, tiny_llama):
    """Issue 14.5: throwaway names from one address are refused after three, and no rater
    learns which model wrote which until their last pair."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    join, submit = _by_api(cfg, "rater_join"), _by_api(cfg, "rater_submit")
    call(url, _by_api(cfg, "rater_refresh"), [], session_hash="s0")
    answers = [call(url, join, [eval_id, f"throwaway{i}", "", {}], session_hash=f"s{i}")["data"][3]
               for i in range(6)]
    assert all("pair 1 of 3" in a for a in answers[:3])
    assert all("under 3 names" in a for a in answers[3:]), answers
    # the first name rates its three pairs: no reveal until the last
    reveals = []
    for _ in range(3):
        reveals.append(call(url, submit, [None, None, None, 4, 2, None, "", None, None, None, None, None, None],
                            session_hash="s0")["data"][0])
        again = call(url, submit, [None, None, None, 1, 1, None, "", None, None, None, None, None, None],
                     session_hash="s0")["data"][0]
        assert "already rated this pair" in again  # a repeat submit says so, and replaces nothing
        call(url, _by_api(cfg, "rater_next"), [None, None], session_hash="s0")
    assert all("Base model" not in r and "LoRA run" not in r for r in reveals[:2]), reveals
    assert "shown after your last pair" in reveals[0]
    assert "last pair" in reveals[2] and "Base model" in reveals[2] and "LoRA run" in reveals[2]
    assert sorted(store.ratings_frame(eval_id)["score"]) == [2, 2, 2, 4, 4, 4]
    # the owner sees the raters and leaves one out; the tables follow, the ratings stay
    owner = sign_in(url, PASSWORD)
    out = call(url, _by_api(cfg, "exclude_rater"), [eval_id, "throwaway0", "testing"], cookies=owner)
    assert "excluded from" in out["data"][1]
    assert store.ratings_frame(eval_id).empty and len(store.ratings_frame(eval_id, with_excluded=True)) == 6
    assert call(url, _by_api(cfg, "exclude_rater"), [eval_id, "throwaway1", ""])["error"]  # a stranger: refused


def test_expected_errors_leave_no_traceback_in_the_server_log(locked, capfd):
    """Issue 14: bad input is answered with a message, and the server log stays clean."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    owner = sign_in(url, PASSWORD)
    capfd.readouterr()
    answers = []
    for api in ("export_adapter", "export_merged", "push_to_hub"):
        fn = _by_api(cfg, api)
        answers.append(call(url, fn, default_inputs(cfg, fn), cookies=owner))
    for name in ("on_start", "on_resume", "on_load", "on_generate", "on_export"):
        fn = next(i for i, f in demo.fns.items() if f.name == name)
        answers.append(call(url, fn, default_inputs(cfg, fn), cookies=owner))
    assert all(a["success"] for a in answers), [a for a in answers if not a["success"]]
    assert all("⚠️" in json.dumps(a["data"], ensure_ascii=False) for a in answers), answers
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-2000:]


def test_the_gate_holds_against_the_review_findings(locked, monkeypatch):
    """A security review of the gate (issue 14): forged forwarding headers, the browser's own
    Sec-Fetch-Site, routes that take uploads, fn_index tricks, unanswered completions."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    queued = _count_pushes(demo)
    refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
    export = _by_api(cfg, "export_adapter")
    join = {"data": [], "fn_index": refresh, "session_hash": "evil1"}
    # a page of another site that also sends X-Forwarded-Host naming itself
    forged = httpx.post(f"{url}/gradio_api/queue/join", json=join,
                        headers={"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example",
                                 "X-Forwarded-Proto": "https"})
    assert forged.status_code == 403
    # the browser's own word: a cross-site fetch, whatever Origin it claims
    owner = sign_in(url, PASSWORD)
    for site in ("cross-site", "same-site"):
        answer = httpx.post(f"{url}/gradio_api/queue/join", json=join, cookies=owner,
                            headers={"X-Tuner-CSRF": owner["tuner_csrf"], "Sec-Fetch-Site": site})
        assert answer.status_code == 403, site
    # POST routes the app does not take (process_recording would store a stranger's file)
    for path in ("/gradio_api/process_recording", "/gradio_api/component_server", "/gradio_api/stream/x"):
        assert httpx.post(f"{url}{path}", files={"video": ("a.mp4", b"x" * 1000, "video/mp4")}).status_code == 403
    # fn_index as a string, and a public name in the path with an owner fn_index in the body
    assert httpx.post(f"{url}/gradio_api/queue/join", json={**join, "fn_index": str(export)}).status_code == 422
    for path in ("/gradio_api/run/rater_refresh", "/gradio_api/api/rater_refresh", "/gradio_api/call/rater_refresh"):
        answer = httpx.post(f"{url}{path}", json={"data": default_inputs(cfg, export), "fn_index": export})
        assert answer.status_code == 403 and "Owner only" in answer.text, path
    # a stranger's page events that never read their stream: a bounded number per session
    codes = [httpx.post(f"{url}/gradio_api/queue/join", json={**join, "session_hash": "never-reads"}).status_code
             for _ in range(70)]
    assert codes.count(200) == 64 and codes[-1] == 429
    assert queued == []
    # a body over the cap is refused from its Content-Length, before it is read
    big = httpx.post(f"{url}/gradio_api/queue/join", content=b"{" + b" " * (17 * 1024 * 1024) + b"}",
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413


def test_rate_limits_key_on_the_space_proxys_address_and_hf_sign_in_needs_a_space(monkeypatch):
    from tuner.ui.access import client_address, sign_in_available

    scope = {"client": ("10.0.0.5", 1234), "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]}
    assert client_address(scope) == "10.0.0.5"  # not on a Space: the connection's address
    monkeypatch.setenv("SPACE_ID", "me/tuner")
    assert client_address(scope) == "203.0.113.9"  # the proxy's entry, not the sender's "6.6.6.6"
    monkeypatch.setenv("OAUTH_CLIENT_ID", "x")
    monkeypatch.delenv("OAUTH_CLIENT_SECRET", raising=False)
    assert not sign_in_available()  # gradio would sign sessions with a public key
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "y")
    assert not sign_in_available()  # off a Space gradio mocks the login


def test_on_a_space_each_rater_is_counted_by_their_own_address(locked, monkeypatch):
    """Every request reaches a Space from its proxy: keyed on the connection, the cap of 3
    names per address would stop the 4th friend. The proxy's X-Forwarded-For entry counts."""
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    monkeypatch.setenv("SPACE_ID", "me/tuner")
    join = _by_api(cfg, "rater_join")
    answers = []
    for i in range(5):
        with httpx.Client(base_url=url, headers={"X-Forwarded-For": f"203.0.113.{i}"}) as friend:
            answers.append(call(url, join, [eval_id, f"friend{i}", "", {}], session_hash=f"f{i}",
                                client=friend)["data"][3])
    assert all("pair 1 of 3" in a for a in answers), answers
