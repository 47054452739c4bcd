"""A stranger's script against the real server: one test per attack that an older design
(a gate that wrapped each Gradio handler of one Blocks) let through, and look-alike paths.
The server runs in this process (tests/browser.py `serve`), so its memory is this process's.

1. a queue flood (the studio's and the raters' queues, /call) delays no owner call;
   a flood of ratings from one address is cut off (429)
2. /cancel and /reset with a huge chunked body are refused unread or capped (413)
3. /call/<name> with another handler's fn_index in the body is refused
4. no page carries the app's secret or a key derived from it
6. X-Forwarded-For is believed only from TUNER_TRUSTED_PROXIES (or a Space's proxy)
9. odd fn_index values and bodies are never answered with a 500
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import statistics
import threading
import time
import uuid

import httpx
import pytest

from browser import serve
from gradio_http import call, config, default_inputs, from_address, owner_client, page_headers, raw, sign_in
from helpers import count_pushes, mark_users, open_evaluation

PASSWORD = "tr0ub4dor&3 but longer"
RATE = "/tuner/rate/"
OWNER_ONLY = "Owner only"


@pytest.fixture(scope="module")
@mark_users("server")
def site(tiny_llama, tmp_path_factory):
    """One locked server for the module (an owner password, as TUNER_OWNER_PASSWORD gives)."""
    from ratings.store import Store
    from tuner.access import Access
    from tuner.paths import Layout

    home = tmp_path_factory.mktemp("stranger") / "home"
    (home / "datasets").mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"Say hi {i}"}, {"role": "assistant", "content": "Hello!"}]}
            for i in range(6)]
    (home / "datasets" / "hi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = Store(Layout(home).ratings_db)
    access = Access(password=PASSWORD)
    tuner, url = serve(home, tiny_llama, access)
    owner = sign_in(url, PASSWORD)
    yield {"tuner": tuner, "url": url, "home": home, "store": store, "access": access, "owner": owner,
           "model": tiny_llama, "cfg": config(url, owner)}
    tuner.close()


def _fn(site, name: str) -> int:
    return next(i for i, f in site["tuner"].studio.fns.items() if f.name == name)


def _p50(seconds: list[float]) -> float:
    return statistics.median(seconds) if seconds else float("nan")


# --- 1. floods ----------------------------------------------------------------------------------
def test_a_strangers_queue_flood_never_enters_a_queue_and_the_owner_stops_a_run(site, monkeypatch):
    """8 threads of a stranger post to the studio's queue, the raters' queue and /call/<name>,
    each with a fresh session_hash, for ~10 s; meanwhile the owner stops a training run through
    the queue. No stranger's event enters either queue; every owner call completes."""
    from tuner.config import TrainConfig
    from tuner.runs import RunManager

    tuner, url, owner, cfg = site["tuner"], site["url"], site["owner"], site["cfg"]
    studio_fns = tuner.studio.fns
    names = [f.api_name for f in studio_fns.values() if f.api_name]
    rater_ids = list(tuner.raters.fns)
    studio_queue = count_pushes(tuner.studio, monkeypatch)
    raters_queue = count_pushes(tuner.raters, monkeypatch)
    stop = _fn(site, "on_stop")

    def owner_calls(n: int, page: httpx.Client) -> tuple[list[float], list[dict]]:
        took, answers = [], []
        for _ in range(n):
            start = time.perf_counter()
            answers.append(call(url, stop, [], client=page))
            took.append(time.perf_counter() - start)
        return took, answers

    with owner_client(url, owner) as page:
        quiet, answers = owner_calls(10, page)
        assert all(a["success"] and a["data"] == ["No run is in progress."] for a in answers), answers
        # a long training run of the owner's, to stop during the flood
        manager = next(c.cell_contents for c in studio_fns[stop].fn.__closure__
                       if isinstance(c.cell_contents, RunManager))
        manager.start(TrainConfig(base_model=str(site["model"]), dataset=str(site["home"] / "datasets" / "hi.jsonl"),
                                  run_name="long", max_steps=100_000, test_fraction=0, validation_fraction=0))
        deadline = time.monotonic() + 120
        while manager.snapshot().status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert manager.snapshot().status == "running", manager.snapshot()

        end = time.monotonic() + 10
        codes: dict[str, list[int]] = {"studio": [], "raters": [], "call": []}
        lock = threading.Lock()

        def flood(k: int) -> None:
            rng = random.Random(k)
            mine = {key: [] for key in codes}
            with from_address(url, "127.0.0.66", timeout=30) as stranger:
                while time.monotonic() < end:
                    fn_index = rng.choice(list(studio_fns))
                    body = {"data": default_inputs(cfg, fn_index), "fn_index": fn_index,
                            "session_hash": uuid.uuid4().hex[:11], "event_data": None, "trigger_id": None}
                    mine["studio"].append(stranger.post("/gradio_api/queue/join", json=body).status_code)
                    mine["raters"].append(stranger.post("/rate/gradio_api/queue/join", json={
                        **body, "fn_index": rng.choice(rater_ids)}).status_code)
                    mine["call"].append(stranger.post(f"/gradio_api/call/{rng.choice(names)}", json={
                        "data": body["data"], "session_hash": body["session_hash"]}).status_code)
            with lock:
                for key, values in mine.items():
                    codes[key].extend(values)

        threads = [threading.Thread(target=flood, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the flood under way
        start = time.perf_counter()
        stopped = call(url, stop, [], client=page)  # the owner's Stop, through the queue
        took_stop = time.perf_counter() - start
        flooded, answers = owner_calls(8, page)
        for thread in threads:
            thread.join()
    assert stopped["success"] and stopped["data"] == ["Stopping after the current step…"], stopped
    assert manager.wait(120).status == "stopped"
    assert all(a["success"] for a in answers), answers
    assert set(codes["studio"]) == {401} and set(codes["call"]) == {401}, {k: set(v) for k, v in codes.items()}
    assert set(codes["raters"]) <= {405, 429}
    sent = sum(len(v) for v in codes.values())
    assert sent > 300, sent  # a flood, not a trickle
    assert studio_queue and all(is_owner for _fn_index, is_owner in studio_queue), "a stranger's event was queued"
    assert len(studio_queue) == 10 + 1 + 8 and raters_queue == []
    print(f"\nowner's call through the queue, p50: {_p50(quiet) * 1000:.0f} ms without a flood, "
          f"{_p50(flooded) * 1000:.0f} ms during a flood of {sent} stranger requests in 10 s "
          f"(the Stop itself: {took_stop * 1000:.0f} ms)")


def test_a_flood_of_ratings_from_one_address_is_cut_off_and_the_owner_goes_on(site):
    url, owner = site["url"], site["owner"]
    eval_id = open_evaluation(site["store"], "flooded round", site["model"])
    stop = _fn(site, "on_stop")
    with owner_client(url, owner) as page:
        quiet = []
        for _ in range(5):
            start = time.perf_counter()
            assert call(url, stop, [], client=page)["success"]
            quiet.append(time.perf_counter() - start)

        def flood(k: int) -> list[int]:
            with from_address(url, "127.0.0.67", timeout=30) as bot:
                return [bot.post(f"{RATE}submit", json={"evaluation": eval_id, "assignment": 1, "a": 5, "b": 1,
                                                        "comment": "x" * 200}).status_code for _ in range(200)]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            running = [pool.submit(flood, k) for k in range(4)]
            flooded = []
            for _ in range(5):
                start = time.perf_counter()
                done = call(url, stop, [], client=page)
                flooded.append(time.perf_counter() - start)
                assert done["success"], done
            codes = [c for f in running for c in f.result()]
        assert set(codes) == {400, 429} and codes.count(400) <= 600 and codes.count(429) >= 200, \
            (codes.count(400), codes.count(429))
        with from_address(url, "127.0.0.67") as bot:
            limited = bot.post(f"{RATE}submit", json={"evaluation": eval_id})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # the owner's calls are not counted; another address's rater is not held up
        assert call(url, stop, [], client=page)["success"]
        assert page.post(f"{RATE}next", json={"evaluation": eval_id}).status_code == 400  # not 429
    with from_address(url, "127.0.0.68") as friend:
        assert friend.get(f"{RATE}evaluations").status_code == 200
        assert friend.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Friend", "code": ""}).status_code == 200
    print(f"\nowner's call through the queue, p50: {_p50(quiet) * 1000:.0f} ms without, "
          f"{_p50(flooded) * 1000:.0f} ms during a flood of {len(codes)} ratings from one address")


# --- 2. huge bodies to /cancel and /reset ---------------------------------------------------------
def _peak_rss_mb(action) -> tuple[float, float]:
    """(RSS before, peak RSS during `action`) of this process, in MB: the kernel's high-water
    mark, reset first, and a 5 ms sampler besides (where the mark cannot be reset)."""
    def status(field: str) -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before, samples, done = status("VmRSS:"), [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(status("VmRSS:"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    peak = max([*samples, status("VmHWM:") if resettable else 0.0])
    return before, peak


def _chunks(megabytes: int = 300):
    chunk = b" " * (1 << 20)  # one buffer, sent again and again: the test allocates 1 MB, not 300
    for _ in range(megabytes):
        yield chunk


@pytest.mark.parametrize("who", ["stranger", "owner"])
def test_cancel_and_reset_refuse_a_huge_chunked_body_without_reading_it(site, who):
    url, owner = site["url"], site["owner"]
    cookies = owner if who == "owner" else {}
    expected = {"/gradio_api/cancel": 413 if who == "owner" else 401,
                "/gradio_api/reset": 413 if who == "owner" else 401,
                "/rate/gradio_api/cancel": 405, "/rate/gradio_api/reset": 405,
                "/gradio_api/queue/join": 413 if who == "owner" else 401}
    answers = {}

    def send_all():
        for path in expected:
            with httpx.Client(base_url=url, cookies=cookies, timeout=120,
                              headers={**page_headers(cookies), "Content-Type": "application/json"}) as http:
                answers[path] = http.post(path, content=_chunks())

    before, peak = _peak_rss_mb(send_all)
    print(f"\n{who}: RSS {before:.0f} MB before, {peak:.0f} MB at the peak")
    assert {p: a.status_code for p, a in answers.items()} == expected, {p: a.text[:100] for p, a in answers.items()}
    assert all("too large" in a.text or OWNER_ONLY in a.text or RATE in a.text for a in answers.values())
    assert peak - before < 100, f"the server's memory grew by {peak - before:.0f} MB (from {before:.0f} MB)"
    # the server goes on answering, the owner's cancel and reset included
    with owner_client(url, owner) as page:
        for path in ("/gradio_api/cancel", "/gradio_api/reset"):
            small = page.post(path, json={"session_hash": "abc", "fn_index": 1, "event_id": "abc"})
            assert small.status_code == 200, small.text


# --- 3. another handler's fn_index in the body -------------------------------------------------
def test_call_by_name_with_another_handlers_fn_index_is_refused(site, monkeypatch):
    """In the old design the gate judged a call by the body's fn_index while Gradio's /call/<name>
    ran the handler the path names: a harmless fn_index let a stranger queue any handler."""
    tuner, url = site["tuner"], site["url"]
    queued = count_pushes(tuner.studio, monkeypatch)
    studio = tuner.studio.fns
    harmless = [i for i, f in studio.items() if f.fn is None][:2] + [_fn(site, "on_tick")]  # JS-only, a timer
    with httpx.Client(base_url=url, timeout=30) as stranger:
        for name in ("export_adapter", "push_to_hub", "owner_revoke_others", "exclude_rater"):
            for fn_index in (*harmless, *tuner.raters.fns, None):
                body = {"data": [], "fn_index": fn_index, "session_hash": uuid.uuid4().hex[:11]}
                for lane in ("call", "call/v2", "run", "api"):
                    answer = stranger.post(f"/gradio_api/{lane}/{name}", json=body)
                    assert answer.status_code == 401 and OWNER_ONLY in answer.text, (lane, name, fn_index)
                # and through the raters' app, which runs nothing
                assert stranger.post(f"/rate/gradio_api/call/{name}", json=body).status_code == 405
    assert queued == []


# --- 4. no secret in any page --------------------------------------------------------------------
def test_no_page_carries_the_app_secret_or_a_key_made_from_it(site):
    home, url, owner, access = site["home"], site["url"], site["owner"], site["access"]
    secret = (home / "secret.key").read_text(encoding="utf-8").strip()
    assert len(secret) >= 32
    csrf_key = hashlib.sha256(f"csrf:{secret}".encode()).hexdigest()
    assert access.csrf_key.hex() == csrf_key
    forbidden = {"secret.key": secret, "sha256(csrf:secret)": csrf_key,
                 "sha256(session:secret)": hashlib.sha256(f"session:{secret}".encode()).hexdigest(),
                 "the owner's session token": owner["tuner_owner"]}
    pages = ("/", "/config", "/rate", "/rate/", "/rate/config", "/tuner/sign-in", "/gradio_api/info",
             "/rate/gradio_api/info", "/tuner/rate/evaluations", "/gradio_api/openapi.json",
             "/rate/gradio_api/openapi.json")
    seen = {}
    for who, cookies in (("stranger", {}), ("owner", owner)):
        with httpx.Client(base_url=url, cookies=cookies, timeout=60, follow_redirects=True) as http:
            for path in pages:
                answer = http.get(path)
                seen[(who, path)] = answer.status_code
                found = [name for name, value in forbidden.items() if value in answer.text]
                assert not found, (who, path, found)
    # the owner did get the studio's pages (what is checked is their content, not a refusal)
    # (the raters' app has no API: its info and openapi.json are not served)
    assert all(seen[("owner", p)] == 200 for p in pages if p != "/tuner/sign-in" and "/rate/gradio_api/" not in p), seen
    assert seen[("stranger", "/rate/gradio_api/info")] == seen[("owner", "/rate/gradio_api/openapi.json")] == 404
    assert seen[("stranger", "/config")] == 401 and seen[("stranger", "/rate/config")] == 200


# --- 6. who is asking -----------------------------------------------------------------------------
def test_x_forwarded_for_from_loopback_is_not_believed_without_trusted_proxies(site):
    url, store = site["url"], site["store"]
    # ten wrong passwords, each from a "new" address the sender wrote: limited after five
    with from_address(url, "127.0.0.61") as guesser:
        codes = [guesser.post("/tuner/owner/sign-in", json={"password": f"guess {i}"},
                              headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(10)]
    assert codes == [401] * 5 + [429] * 5, codes
    # the raters' names cap (3 per address) holds across changing headers and fresh cookies
    eval_id = open_evaluation(store, "forwarded round", site["model"])
    answers = []
    for i in range(5):
        with from_address(url, "127.0.0.62", headers={"X-Forwarded-For": f"203.0.113.{i}"}) as browser:
            answers.append(browser.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"sock{i}", "code": ""}))
    assert [a.status_code for a in answers] == [200, 200, 200, 409, 409]
    assert "under 3 names" in answers[3].json()["error"]
    # the owner's session list shows the connection's address, not the header's
    with from_address(url, "127.0.0.63", headers={"X-Forwarded-For": "6.6.6.6"}) as laptop:
        assert laptop.post("/tuner/owner/sign-in", json={"password": PASSWORD}).status_code == 200
    assert site["access"].sessions.active()[0]["client"] == "127.0.0.63"


@pytest.fixture
@mark_users("server")
def behind_a_proxy(tiny_llama, tmp_path, monkeypatch):
    """A server told to believe the proxy at 127.0.0.1 (TUNER_TRUSTED_PROXIES, read when it starts)."""
    from ratings.store import Store
    from tuner.access import Access
    from tuner.paths import Layout

    monkeypatch.setenv("TUNER_TRUSTED_PROXIES", "127.0.0.1")
    home = tmp_path / "home"
    store = Store(Layout(home).ratings_db)
    access = Access(password=PASSWORD)
    tuner, url = serve(home, tiny_llama, access)
    yield url, store, access, tiny_llama
    tuner.close()


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(behind_a_proxy):
    url, store, access, model = behind_a_proxy

    def guess(forwarded: str, source: str = "127.0.0.1") -> int:
        with from_address(url, source, headers={"X-Forwarded-For": forwarded}) as http:
            return http.post("/tuner/owner/sign-in", json={"password": "wrong"}).status_code

    # each client the proxy names is counted apart
    assert [guess(f"198.51.100.{i}") for i in range(10)] == [401] * 10
    # the right-most entry the trusted proxy did not write: what the sender prepends changes nothing
    assert [guess(f"10.9.9.{i}, 203.0.113.9") for i in range(7)] == [401] * 5 + [429] * 2
    assert guess("203.0.113.9, 127.0.0.1") == 429  # a trusted hop after it is skipped
    # an untrusted connection's header is not believed: that connection is counted
    assert [guess(f"198.51.100.{50 + i}", source="127.0.0.2") for i in range(6)] == [401] * 5 + [429]
    with from_address(url, "127.0.0.1", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.10, 127.0.0.1"}) as http:
        assert http.post("/tuner/owner/sign-in", json={"password": PASSWORD}).status_code == 200
    assert access.sessions.active()[0]["client"] == "203.0.113.10"
    # five friends behind the proxy: five addresses, all admitted
    eval_id = open_evaluation(store, "proxied round", model)
    for i in range(5):
        with from_address(url, "127.0.0.1", headers={"X-Forwarded-For": f"203.0.113.{20 + i}"}) as friend:
            joined = friend.post(f"{RATE}join", json={"evaluation": eval_id, "name": f"friend{i}", "code": ""})
            assert joined.status_code == 200, joined.text


def test_client_address_and_trusted_proxies():
    import ipaddress

    from tuner.access import SPACE_PROXY, client_address, trusted_proxies

    def scope(peer: str, forwarded: str | None = None) -> dict:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
        return {"client": (peer, 5000), "headers": headers}

    assert trusted_proxies({}) == () and trusted_proxies({"TUNER_TRUSTED_PROXIES": " , "}) == ()
    assert trusted_proxies({"SPACE_ID": "me/tuner"}) == (SPACE_PROXY,)
    listed = trusted_proxies({"TUNER_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1", "SPACE_ID": "me/tuner"})
    assert listed == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"),
                      ipaddress.ip_network("::1/128"))  # set: it replaces the Space's default
    for bad in ("nonsense", "10.0.0.0/99", "127.0.0.1;10.0.0.1"):
        with pytest.raises(ValueError, match="TUNER_TRUSTED_PROXIES: .* is not an address or network like"):
            trusted_proxies({"TUNER_TRUSTED_PROXIES": bad})
    # no proxy trusted: the connection's address, whatever the header says (loopback included)
    assert client_address(scope("127.0.0.1", "6.6.6.6"), ()) == "127.0.0.1"
    assert client_address({"client": None, "headers": []}, ()) == "unknown"
    # a network of proxies: the right-most entry that is not one of them
    assert client_address(scope("10.1.2.3", "6.6.6.6, 203.0.113.9, 10.7.7.7"), listed) == "203.0.113.9"
    assert client_address(scope("10.1.2.3", "10.5.5.5, 10.6.6.6"), listed) == "10.1.2.3"  # all proxies
    assert client_address(scope("10.1.2.3"), listed) == "10.1.2.3"  # no header
    assert client_address(scope("192.0.2.1", "203.0.113.9"), listed) == "192.0.2.1"  # not a proxy of ours
    assert client_address(scope("::1", "2001:db8::5"), listed) == "2001:db8::/64"  # an IPv6 home: its /64
    headers = {"client": ("10.1.2.3", 1), "headers": [(b"x-forwarded-for", b"6.6.6.6"),
                                                      (b"x-forwarded-for", b"203.0.113.7")]}
    assert client_address(headers, listed) == "203.0.113.7"  # a repeated header: its entries in order
    # on a Space every request comes through its proxy, whatever its address
    space = trusted_proxies({"SPACE_ID": "me/tuner"})
    assert client_address(scope("172.16.0.9", "6.6.6.6, 203.0.113.9"), space) == "203.0.113.9"
    assert client_address(scope("172.16.0.9", "x" * 500), space) == "x" * 64  # kept short


# --- 9. odd fn_index and odd bodies --------------------------------------------------------------
ODD_FN_INDEX = [-1, 99999, "x", 1.5, True, None]
ODD_BODIES = [b"[1, 2]", b'"a string"', b"", b"{not json", b"null", b"1e999",
              b'{"data": [], "fn_index": 1, "session_hash": 1e999}', b'{"data": [NaN], "fn_index": Infinity}']
ODD_FIELDS = [-1, 99999, "x", 1.5, True, None, [], {}, "9" * 13, "\uff11\uff12", "1 OR 1=1", "\x00", "z" * 5000]


def _odd_bodies() -> list[bytes]:
    bodies = [json.dumps({"data": [], "fn_index": value, "session_hash": "abcdefgh", "event_id": "abc"}).encode()
              for value in ODD_FN_INDEX]
    return bodies + ODD_BODIES


def test_odd_fn_index_and_bodies_are_never_a_500(site, capfd):
    url = site["url"]
    eval_id = open_evaluation(site["store"], "odd round", site["model"])
    studio = ["/gradio_api/queue/join", "/gradio_api/run/x", "/gradio_api/call/x", "/gradio_api/cancel",
              "/gradio_api/reset", "/gradio_api/run/owner_sessions", "/gradio_api/call/owner_sessions",
              "/gradio_api/api/owner_sessions", "/rate/gradio_api/queue/join", "/rate/gradio_api/call/x"]
    plain = ["/tuner/sign-in", "/tuner/owner/sign-in", f"{RATE}evaluations", f"{RATE}join", f"{RATE}next",
             f"{RATE}submit", f"{RATE}change", "/tuner/hf/login", "/tuner/x"]
    owner = sign_in(url, PASSWORD)  # a session of this test's own: its last request signs it out
    capfd.readouterr()
    answers = []
    for who, cookies, subnet in (("stranger", {}, "127.0.1"), ("owner", owner, "127.0.2")):
        # (each part from an address of its own: what is checked is the answers, not the rate limits)
        with from_address(url, f"{subnet}.1", cookies=cookies, timeout=30) as http:
            for path in studio + plain:
                for body in _odd_bodies():
                    answer = http.post(path, content=body, headers={"Content-Type": "application/json"})
                    answers.append((who, path, body[:60], answer.status_code))
            for path in ("/tuner/sign-in?next=%00", f"{RATE}evaluations?evaluation=-1", "/tuner/owner/sign-in"):
                answers.append((who, path, "GET", http.get(path).status_code))
        # the raters' routes with odd values where a rater's page sends ids, names, scores and text
        for k, field in enumerate(("evaluation", "assignment", "name", "code", "panel", "a", "b", "preference",
                                   "comment", "aspects_a")):
            with from_address(url, f"{subnet}.{10 + k}", cookies=cookies, timeout=30) as http:
                for value in ODD_FIELDS:
                    body = {"evaluation": eval_id, "assignment": 1, "name": f"Odd{k}", "a": 3, "b": 3, field: value}
                    for route in ("join", "next", "submit", "change"):
                        answer = http.post(f"{RATE}{route}", json=body)
                        answers.append((who, route, f"{field}={value!r}"[:60], answer.status_code))
        with from_address(url, f"{subnet}.2", cookies=cookies, timeout=30) as http:
            for body in _odd_bodies():  # sign-out last: it ends the owner's session
                answer = http.post("/tuner/owner/sign-out", content=body, headers={"Content-Type": "application/json"})
                answers.append((who, "/tuner/owner/sign-out", body[:60], answer.status_code))
    failed = [a for a in answers if a[3] >= 500]
    assert not failed, failed
    assert len(answers) > 600
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    # the odd studio calls of a stranger were refused before anything read them
    assert all(code == 401 for who, path, _b, code in answers if who == "stranger" and path.startswith("/gradio_api"))


# --- look-alike paths ------------------------------------------------------------------------------
STUDIO_MARKS = ("owner-sessions", "Start training", "export_adapter", "Signed in as the owner")


def test_look_alike_paths_never_reach_the_studio_for_a_stranger(site, monkeypatch):
    url, owner = site["url"], site["owner"]
    queued = count_pushes(site["tuner"].studio, monkeypatch)
    with owner_client(url, owner) as page:  # an upload of the owner's, for the file routes
        uploaded = page.post("/gradio_api/upload", files=[("files", ("notes.txt", b"payroll-upload-secret",
                                                                    "text/plain"))])
    assert uploaded.status_code == 200
    upload = uploaded.json()[0]
    join = json.dumps({"data": [], "fn_index": _fn(site, "refresh_all"), "session_hash": "lookalike1"}).encode()
    gets = ["/RATE/", "/Rate/config", "/rate/../config", "/rate%2f..%2fconfig", "/rate/..%2fconfig",
            "/rate/./../config", "/tuner/rate/../../config", "/tuner/rate/..%2f..%2fconfig",
            "/tuner/sign-in/../../config", "/tuner/sign-in/..%2f..%2fgradio_api/info",
            "/tuner/hf/../../gradio_api/info",
            "/tuner/rate/evaluations/../../../", "//config", "//gradio_api/info", "/./config", "/%63onfig",
            "/config/", "/config?x=/rate/", "/config#/rate/", f"{url}/config", "/rate/gradio_api/../../config",
            f"/rate/gradio_api/file={upload}", f"/rate/gradio_api/file/{upload}", f"/rate//gradio_api/file={upload}",
            f"/rate/gradio_api/%66ile={upload}", f"/rate/file={upload}", f"/tuner/rate/../../gradio_api/file={upload}",
            f"//gradio_api/file={upload}", f"/gradio_api/file={upload}", f"/rate/gradio_api/file=..{upload}"]
    # the raters' app's own streams answer (with "not found" events), but from the raters' app only
    raters_own = ["/rate/gradio_api/call/owner_sessions/abc", "/rate/gradio_api/queue/data?session_hash=lookalike1"]
    posts = ["/rate/../gradio_api/queue/join", "/rate/..%2fgradio_api/queue/join", "//gradio_api/upload",
             "//gradio_api/queue/join", "/gradio_api/upload/", "/gradio_api/queue/join/", "/RATE/gradio_api/queue/join",
             "/tuner/rate/../../gradio_api/queue/join", "/tuner/rate/%2e%2e/%2e%2e/gradio_api/queue/join",
             "/tuner/hf/../gradio_api/queue/join", "/tuner/sign-in/../gradio_api/run/owner_sessions",
             "/tuner/owner/sign-in/../../../gradio_api/call/owner_sessions",
             "/rate/gradio_api/../../gradio_api/queue/join"]
    answers = []
    for target in gets + raters_own:
        status, body = raw(url, "GET", target)
        answers.append(("GET", target, status, body))
    for target in posts:
        status, body = raw(url, "POST", target, join, {"Content-Type": "application/json"})
        answers.append(("POST", target, status, body))
    reached = [(m, t, s, b[:120]) for m, t, s, b in answers
               if (s < 300 and t not in raters_own) or any(mark.encode() in b for mark in STUDIO_MARKS)
               or b"payroll-upload-secret" in b]
    assert not reached, reached
    assert all(s < 500 for _m, _t, s, _b in answers), [(m, t, s) for m, t, s, _b in answers if s >= 500]
    assert queued == []
    # (the same routes, spelled right, do answer the owner: the checks above are not vacuous)
    with owner_client(url, owner) as page:
        assert page.get(f"/gradio_api/file={upload}").content == b"payroll-upload-secret"
        assert page.get("/config").status_code == 200


# --- deep JSON, held streams, slow ratings, the owner's panel, cookieless browsers ---------------
def test_deeply_nested_json_is_refused_never_a_500(site):
    url, owner = site["url"], site["owner"]
    deep = b"[" * 5000 + b"]" * 5000
    headers = {"content-type": "application/json"}
    for target in ("/tuner/owner/sign-in", f"{RATE}join", f"{RATE}submit"):
        answer = httpx.post(url + target, content=deep, headers=headers, timeout=30)
        assert 400 <= answer.status_code < 500, (target, answer.status_code, answer.text[:200])
    with owner_client(url, owner) as http:
        answer = http.post("/gradio_api/queue/join", content=b'{"fn_index": ' + deep + b"}", headers=headers)
        assert 400 <= answer.status_code < 500, answer.text[:200]


def test_the_raters_app_holds_no_stream_open_for_a_stranger(site):
    """Gradio's heartbeat never ends: thousands held open would exhaust the server. The raters'
    page holds no Gradio state, so its app serves none."""
    url = site["url"]
    with from_address(url, "127.0.0.71") as http:
        for session in ("x", uuid.uuid4().hex):
            assert http.get(f"/rate/gradio_api/heartbeat/{session}").status_code == 404
        assert http.get("/rate/gradio_api/queue/data", params={"session_hash": "x"}).status_code == 404


def test_a_slow_rating_does_not_hold_up_the_rest_of_the_server(site):
    """The raters' routes run SQLite in a worker thread: while one waits on a locked database,
    the sign-in page (and the owner's studio) still answer."""
    import sqlite3

    url, store, home = site["url"], site["store"], site["home"]
    eval_id = open_evaluation(store, "slow round", site["model"])
    with from_address(url, "127.0.0.72") as rater:
        assert rater.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Slow", "code": ""}).status_code == 200
        lock = sqlite3.connect(home / "ratings.db", timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        done = threading.Event()
        answers = []

        def rate():
            answers.append(rater.post(f"{RATE}next", json={"evaluation": eval_id}))
            done.set()

        worker = threading.Thread(target=rate)
        try:
            worker.start()
            time.sleep(0.5)  # the rating is now waiting on the database
            page = httpx.get(url + "/tuner/sign-in", timeout=60)
            still_waiting = not done.is_set()
        finally:
            lock.rollback()
            lock.close()
        worker.join(60)
    assert page.status_code == 200 and still_waiting, "the sign-in page waited for the rating"
    assert answers and answers[0].status_code in (200, 409)


def test_the_owners_own_panel_does_not_use_up_the_names_of_the_owners_address(site):
    """Friends may rate in turn at the owner's computer (Compare's panel): those names are not
    counted against the address, so raters sharing the owner's network still get in."""
    url, store, owner = site["url"], site["store"], site["owner"]
    eval_id = open_evaluation(store, "owner's panel round", site["model"])
    with owner_client(url, owner) as http:
        for name in ("Ann", "Bea", "Cid", "Dot"):
            joined = http.post(f"{RATE}join", json={"evaluation": eval_id, "name": name, "panel": "owner"})
            assert joined.status_code == 200, joined.text
        # the name shown picks which of this browser's names rates
        assert http.post(f"{RATE}next", json={"evaluation": eval_id, "name": "Cid"}).json()["progress"].startswith("Cid")
    with from_address(url, "127.0.0.1") as neighbour:  # the owner's own address
        assert neighbour.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Eve", "code": ""}).status_code == 200
    # a stranger cannot claim the owner's panel
    with from_address(url, "127.0.0.73") as stranger:
        joined = stranger.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Fay", "panel": "owner"})
        assert joined.status_code == 200  # as a rater, through the invite check (none set here)
        second = stranger.post(f"{RATE}join", json={"evaluation": eval_id, "name": "Gus", "panel": "owner"})
        assert second.status_code == 409 and "already rates this evaluation as 'Fay'" in second.json()["error"]


def test_a_browser_that_keeps_no_cookie_is_told_what_to_do(site):
    url, store = site["url"], site["store"]
    eval_id = open_evaluation(store, "cookieless round", site["model"])
    joined = httpx.post(url + f"{RATE}join", json={"evaluation": eval_id, "name": "Hal", "code": ""}, timeout=30)
    assert joined.status_code == 200
    lost = httpx.post(url + f"{RATE}next", json={"evaluation": eval_id, "name": "Hal"}, timeout=30)  # no cookie back
    assert lost.status_code == 400 and "sent no rater cookie" in lost.json()["error"]
    assert "Open the raters' link on its own" in lost.json()["error"]


def test_an_ipv6_home_counts_as_one_address():
    from tuner.access import client_address

    def key(host):
        return client_address({"client": (host, 1), "headers": []})

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.7") == "192.0.2.7" and key("192.0.2.7") == "192.0.2.7"
