"""Sign in with Hugging Face (tuner/ui/access.py `hf_routes`) against a fake OpenID provider.

The provider is a real HTTP server on a free loopback port (http.server in a thread) that
serves the discovery document, /authorize (never followed: the test plays the browser),
/token (no id_token, so authlib's callback must ask /userinfo) and /userinfo. The code the
test sends to the callback names the user the provider vouches for.

The session cookie (tuner_hf) is Secure, so httpx would not send it over http: the tests
carry it themselves, as a Cookie header, the way a browser carries it over https.
"""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from browser import free_port
from helpers import mark_users, open_evaluation

VARIANTS = [{"name": "base", "label": "base (tiny)", "kind": "base"},
            {"name": "run-xyz", "label": "lora: run-xyz", "kind": "lora"}]
CLIENT_ID, CLIENT_SECRET = "tuner-test-client", "tuner-test-secret"
OWNER = "OwnerUser"
SESSION = "tuner_hf"
HF_ENV = ("SPACE_ID", "SPACE_HOST", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")


class FakeProvider:
    """An OpenID provider on 127.0.0.1: `/token` swaps code "<user>" for a bearer token that
    `/userinfo` answers with that user's preferred_username. Codes with a special meaning:
    "down" (the token endpoint fails with a 503 page), "nameless" (userinfo gives no name)."""

    def __init__(self):
        self.tokens: dict[str, str] = {}  # access token -> user
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, form or headers)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body, kind: str = "application/json"):
                data = (json.dumps(body) if kind == "application/json" else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = urlsplit(self.path).path
                provider.requests.append(("GET", path, dict(self.headers)))
                if path == "/.well-known/openid-configuration":
                    base = provider.url
                    return self.answer(200, {"issuer": base, "authorization_endpoint": base + "/authorize",
                                             "token_endpoint": base + "/token",
                                             "userinfo_endpoint": base + "/userinfo",
                                             "jwks_uri": base + "/jwks"})
                if path == "/jwks":
                    return self.answer(200, {"keys": []})
                if path == "/userinfo":
                    bearer = self.headers.get("Authorization", "")
                    user = provider.tokens.get(bearer.removeprefix("Bearer ").strip())
                    if user is None:
                        return self.answer(401, {"error": "invalid_token"})
                    return self.answer(200, {"sub": f"id-{user}", "name": user} if user == "nameless"
                                       else {"sub": f"id-{user}", "preferred_username": user})
                return self.answer(404, {"error": "not found"})

            def do_POST(self):
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                provider.requests.append(("POST", path, {**form, "authorization": self.headers.get("Authorization")}))
                if path != "/token":
                    return self.answer(404, {"error": "not found"})
                code = form.get("code", "")
                if code == "down":
                    return self.answer(503, "<html>Service Unavailable</html>", "text/html")
                token = f"token-{len(provider.tokens)}-{code}"
                provider.tokens[token] = code
                return self.answer(200, {"access_token": token, "token_type": "bearer", "expires_in": 3600,
                                         "scope": "openid profile"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider():
    fake = FakeProvider()
    yield fake
    fake.close()


def _space_env(monkeypatch, provider_url: str, app_port: int) -> None:
    monkeypatch.setenv("SPACE_ID", "someone/tuner-test")
    monkeypatch.setenv("SPACE_HOST", f"127.0.0.1:{app_port}")
    monkeypatch.setenv("OAUTH_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("OAUTH_SCOPES", "openid profile")
    monkeypatch.setenv("OPENID_PROVIDER_URL", provider_url)


@pytest.fixture
@mark_users("server")
def space(tiny_llama, tmp_path, provider, monkeypatch):
    """The app as a Space with `hf_oauth: true` serves it (TUNER_OWNER=OwnerUser), signing in
    through the fake provider; an open evaluation to rate."""
    from app import build_app
    from ratings.store import Store
    from tuner.access import Access
    from tuner.paths import Layout

    port = free_port()
    _space_env(monkeypatch, provider.url, port)
    home = tmp_path / "home"
    store = Store(Layout(home).ratings_db)
    eval_id = open_evaluation(store, "friends' round", "tiny", 2, VARIANTS)  # two pairs
    tuner = build_app(home, default_model=str(tiny_llama), rng=random.Random(5), access=Access(owner=OWNER))
    url = tuner.start("127.0.0.1", port)
    yield url.rstrip("/"), port, store, eval_id
    tuner.close()


def _session(response: httpx.Response) -> str | None:
    """The tuner_hf cookie's value a response sets ("" when it clears it), or None."""
    for line in response.headers.get_list("set-cookie"):
        if line.startswith(SESSION + "="):
            value = line.split(";", 1)[0].split("=", 1)[1]
            return "" if value == "null" or "expires=thu, 01 jan 1970" in line.lower() else value
    return None


def _call(url: str, method: str, path: str, cookie: str | None = None, owner: str | None = None,
          **kwargs) -> httpx.Response:
    """One request with no cookie jar: the session cookie (and the owner's session `owner`, if
    given) go as a Cookie header, as a browser on https sends them."""
    headers = dict(kwargs.pop("headers", {}))
    jar = ([f"{SESSION}={cookie}"] if cookie else []) + ([f"tuner_owner={owner}"] if owner else [])
    if jar:
        headers["Cookie"] = "; ".join(jar)
    return httpx.request(method, url + path, headers=headers, follow_redirects=False, timeout=30, **kwargs)


def _start(url: str, port: int, provider: FakeProvider, next_page: str = "/") -> tuple[str, str]:
    """GET /tuner/hf/login: checks the redirect to the provider; (the state, the session cookie)."""
    started = _call(url, "GET", "/tuner/hf/login", params={"next": next_page})
    assert started.status_code in (302, 303, 307), started.text
    target = urlsplit(started.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == provider.url + "/authorize"
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["redirect_uri"] == f"https://127.0.0.1:{port}/tuner/hf/callback"
    assert set(query["scope"].split()) == {"openid", "profile"}
    assert query.get("state")
    line = next(v for v in started.headers.get_list("set-cookie") if v.startswith(SESSION + "="))
    assert "secure" in line.lower() and "httponly" in line.lower() and "samesite=lax" in line.lower()
    cookie = _session(started)
    assert cookie
    return query["state"], cookie


def _owner_token(response: httpx.Response) -> str | None:
    """The owner's server-side session token a response sets, or None."""
    for line in response.headers.get_list("set-cookie"):
        if line.startswith("tuner_owner="):
            return line.split(";", 1)[0].split("=", 1)[1] or None
    return None


def _sign_in(url: str, port: int, provider: FakeProvider, user: str, next_page: str = "/",
             with_owner: bool = False):
    """The whole sign-in as `user`; the session cookie that now carries the sign-in (and, with
    `with_owner`, the owner's session token the callback set, or None)."""
    state, cookie = _start(url, port, provider, next_page)
    back = _call(url, "GET", "/tuner/hf/callback", cookie, params={"code": user, "state": state})
    # a page of this site that opens `next_page` itself: a redirect straight from the provider's
    # chain is marked cross-site by the browser (Sec-Fetch-Site), and the gate ignores sign-ins on those
    assert back.status_code == 200, back.text
    assert f"location.replace({json.dumps(next_page)})" in back.text
    signed = _session(back)
    assert signed, "the callback must set the signed-in session cookie"
    return (signed, _owner_token(back)) if with_owner else signed


HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_the_owner_signs_in_with_hugging_face_and_opens_the_studio(space, provider):
    url, port, _store, _eval_id = space
    # before: a browser is sent to the sign-in page, which offers the Hugging Face link
    refused = _call(url, "GET", "/", headers=HTML)
    assert refused.status_code == 303 and refused.headers["location"] == "/tuner/sign-in"
    page = _call(url, "GET", "/tuner/sign-in", headers=HTML)
    assert "Sign in with Hugging Face" in page.text and "/tuner/hf/login" in page.text

    cookie, token = _sign_in(url, port, provider, OWNER, with_owner=True)
    assert token, "the owner's sign-in makes a server-side owner session"
    # the provider was asked for the token with the code, then for the user (no id_token)
    token_call = next(r for r in provider.requests if r[:2] == ("POST", "/token"))
    assert token_call[2]["code"] == OWNER and token_call[2]["grant_type"] == "authorization_code"
    assert token_call[2]["redirect_uri"] == f"https://127.0.0.1:{port}/tuner/hf/callback"
    assert any(r[:2] == ("GET", "/userinfo") for r in provider.requests)

    studio = _call(url, "GET", "/", cookie, token, headers=HTML)
    assert studio.status_code == 200, (studio.status_code, studio.headers.get("location"))
    assert "<title>Tuner</title>" in studio.text or "gradio" in studio.text.lower()
    config = _call(url, "GET", "/config", cookie, token)  # a studio route a script would call
    assert config.status_code == 200, config.text[:300]
    # the sign-in page sends the owner on to the studio
    assert _call(url, "GET", "/tuner/sign-in", cookie, token, headers=HTML).headers.get("location") == "/"
    # the signed session cookie alone (which cannot be revoked) is a rater's sign-in, not the owner's
    assert _call(url, "GET", "/", cookie, headers=HTML).status_code == 303

    # sign out: the owner's session is revoked on the server, so a copy of both cookies opens nothing
    out = _call(url, "GET", "/tuner/hf/logout", cookie, token, params={"next": "/rate/"})
    assert out.status_code == 303 and out.headers["location"] == "/rate/"
    after = _session(out)
    assert after is not None and after != cookie
    for replay in ((after or None, None), (cookie, token)):
        again = _call(url, "GET", "/", *replay, headers=HTML)
        assert again.status_code == 303 and again.headers["location"] == "/tuner/sign-in"


def test_another_hugging_face_user_is_not_the_owner(space, provider):
    url, port, _store, _eval_id = space
    cookie = _sign_in(url, port, provider, "mallory")
    page = _call(url, "GET", "/", cookie, headers=HTML)
    assert page.status_code == 303 and page.headers["location"] == "/tuner/sign-in"
    script = _call(url, "GET", "/config", cookie)
    assert script.status_code == 401 and "Owner only" in script.json()["error"]
    # a forged cookie (the owner's name, unsigned) is no sign-in either
    forged = _call(url, "GET", "/", "eyJoZl91c2VyIjogIk93bmVyVXNlciJ9", headers=HTML)
    assert forged.status_code == 303


def test_a_rater_signed_in_with_hugging_face_rates_under_that_name(space, provider):
    url, port, store, eval_id = space
    cookie = _sign_in(url, port, provider, "ana", next_page="/rate/")
    origin = {"Origin": url}
    joined = _call(url, "POST", "/tuner/rate/join", cookie, headers=origin, json={"evaluation": eval_id, "code": ""})
    assert joined.status_code == 200, joined.text
    assert joined.json()["progress"].startswith("ana · pair 1 of 2")
    pair = joined.json()["assignment"]
    # the sign-in alone says who rates (no rater cookie sent back here)
    rated = _call(url, "POST", "/tuner/rate/submit", cookie, headers=origin,
                  json={"evaluation": eval_id, "assignment": pair, "a": 4, "b": 2, "preference": "A"})
    assert rated.status_code == 200 and "⚠️" not in rated.json()["reveal"], rated.text
    frame = store.ratings_frame(eval_id)
    assert len(frame) == 2 and set(frame["rater"]) == {"ana"}
    # a browser without the sign-in cannot take the name by typing it
    typed = _call(url, "POST", "/tuner/rate/join", headers=origin,
                  json={"evaluation": eval_id, "name": "ana", "code": ""})
    assert typed.status_code in (400, 409) and "ana" not in (typed.json().get("progress") or "")
    # signed out, the same browser is no longer ana
    out = _session(_call(url, "GET", "/tuner/hf/logout", cookie))
    after = _call(url, "POST", "/tuner/rate/next", out or None, headers=origin, json={"evaluation": eval_id})
    assert after.status_code == 400 and "Start rating" in after.json()["error"]


def test_a_failed_sign_in_says_why_and_signs_no_one_in(space, provider):
    url, port, _store, _eval_id = space

    def refused(response: httpx.Response, words: str) -> None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        assert words in response.text, response.text[:500]
        signed = _session(response)
        if signed:  # whatever session comes back holds no sign-in
            page = _call(url, "GET", "/", signed, headers=HTML)
            assert page.status_code == 303

    state, cookie = _start(url, port, provider)
    # a state this browser did not start (a forged callback), and a callback with no cookie at all
    refused(_call(url, "GET", "/tuner/hf/callback", cookie, params={"code": OWNER, "state": "forged"}),
            "did not bring back the sign-in")
    refused(_call(url, "GET", "/tuner/hf/callback", params={"code": OWNER, "state": state}),
            "did not bring back the sign-in")
    # the user said no on the provider's page
    state, cookie = _start(url, port, provider)
    refused(_call(url, "GET", "/tuner/hf/callback", cookie,
                  params={"error": "access_denied", "error_description": "The user said no", "state": state}),
            "The user said no")
    # the provider's token endpoint is down
    state, cookie = _start(url, port, provider)
    refused(_call(url, "GET", "/tuner/hf/callback", cookie, params={"code": "down", "state": state}),
            "could not be reached")
    # the provider vouches for no user name
    state, cookie = _start(url, port, provider)
    refused(_call(url, "GET", "/tuner/hf/callback", cookie, params={"code": "nameless", "state": state}),
            "no user name")
    # a state is good once: replaying a finished callback signs no one in
    state, cookie = _start(url, port, provider)
    ok = _call(url, "GET", "/tuner/hf/callback", cookie, params={"code": "ana", "state": state})
    assert ok.status_code == 200 and "Signed in with Hugging Face as ana" in ok.text
    refused(_call(url, "GET", "/tuner/hf/callback", _session(ok), params={"code": OWNER, "state": state}),
            "did not bring back the sign-in")


@pytest.mark.server
def test_sign_in_with_the_provider_unreachable_says_so(tiny_llama, tmp_path, monkeypatch):
    from app import build_app
    from tuner.access import Access

    port = free_port()
    _space_env(monkeypatch, f"http://127.0.0.1:{free_port()}", port)  # nothing listens there
    tuner = build_app(tmp_path / "home", default_model=str(tiny_llama), rng=random.Random(1),
                      access=Access(owner=OWNER))
    try:
        url = tuner.start("127.0.0.1", port).rstrip("/")
        started = _call(url, "GET", "/tuner/hf/login")
        assert started.status_code == 400 and "could not be reached" in started.text, started.text[:300]
    finally:
        tuner.close()


@pytest.mark.server
def test_without_a_space_there_is_no_hugging_face_sign_in(tiny_llama, tmp_path, monkeypatch):
    from app import build_app
    from tuner.access import Access

    for name in HF_ENV:
        monkeypatch.delenv(name, raising=False)
    tuner = build_app(tmp_path / "home", default_model=str(tiny_llama), rng=random.Random(1),
                      access=Access(owner=OWNER))
    try:
        url = tuner.start("127.0.0.1", free_port()).rstrip("/")
        login = _call(url, "GET", "/tuner/hf/login", params={"next": "/"})
        assert login.status_code in (401, 404), (login.status_code, login.headers.get("location"))
        assert _session(login) is None
        callback = _call(url, "GET", "/tuner/hf/callback", params={"code": OWNER, "state": "x"})
        assert callback.status_code in (401, 404)
        page = _call(url, "GET", "/tuner/sign-in", headers=HTML)
        assert page.status_code == 200
        assert f"Hugging Face sign-in as {OWNER} is not available here" in page.text
        assert "/tuner/hf/login" not in page.text
        assert _call(url, "GET", "/", headers=HTML).status_code == 303
    finally:
        tuner.close()
