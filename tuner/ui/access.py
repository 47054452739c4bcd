"""Owner and raters on one server: the door in front of both apps, the owner's sign-in, and the studio's bar.

Tuner serves two Gradio apps on one FastAPI app (app.py `build_app`, with `gr.mount_gradio_app`):
- the owner's **studio** at `/`, mounted with `auth_dependency` (`owner_user`);
- the raters' **page** at `/rate/`, a Blocks with no Python handler at all: its buttons call
  plain JSON routes under `/tuner/rate/` (tuner/ui/rate.py).

`Gate`, an ASGI middleware in front of the whole FastAPI app, holds the door before any
route runs, on the request alone (Starlette's `Request` reads its headers and cookies):
- who is asking: the connection's address, or the one a trusted proxy names
  (`tuner.access.client_address`); whether it is the owner (a live server-side session
  cookie, with the page's anti-forgery header on anything but GET; or the Space owner's
  Hugging Face sign-in): both put in the request's scope for the routes;
- a POST from another origin is refused, and the owner's cookie is ignored on any request
  from another origin;
- every body is capped before it is read (413), whether it says its length or is chunked;
- the studio is the owner's: every one of its routes (page, config, queue, upload, file,
  cancel, reset…) refuses anyone else before Gradio sees the request (a browser is sent to
  the sign-in page, a script gets 401), so a stranger can put nothing in its queue;
- the raters' app takes no POST (it has nothing to run); the public routes are limited per
  address;
- a studio call naming a handler that does not exist is refused (422) before Gradio, which
  would answer it with a 500.

Owner code here imports `gradio` itself only, and reads no private attribute of Gradio.
Rate limits are tuner.access.RateLimiter (a sliding window per key, 40 lines, in-process: a
Space is one process, and slowapi's decorators key on a request the gate already parsed); the
anti-forgery token is an HMAC of the server-side session (double-submit, bound to the
session, which starlette-csrf's random cookie is not).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gradio as gr
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

from tuner.access import COOKIE, CSRF_COOKIE, CSRF_HEADER, Access, RateLimiter, client_address, trusted_proxies
from tuner.paths import max_upload, upload_bytes

SIGN_IN_PAGE = "/tuner/sign-in"
SIGN_IN_PATH = "/tuner/owner/sign-in"
SIGN_OUT_PATH = "/tuner/owner/sign-out"
RATER_API = "/tuner/rate/"
RATERS_APP = "/rate"
HF_ROUTES = "/tuner/hf/"
# plain routes anyone may call (the raters', the sign-in's); everything else but the raters'
# app is the studio's
PUBLIC_ROUTES = (SIGN_IN_PAGE, SIGN_IN_PATH, SIGN_OUT_PATH, RATER_API, HF_ROUTES)

PUBLIC_BODY = 64 * 1024  # a rating: scores, a choice and a comment
STUDIO_BODY = 16 * 1024 * 1024  # the owner's events (an edited table); files go to /upload
PUBLIC_POSTS_PER_MINUTE = 600  # per address: a rater sends ~2 a pair; a class behind one address, ~300
PUBLIC_GETS_PER_MINUTE = 6000  # per address: a page load fetches ~60 files
SCOPE_OWNER = "tuner.owner"
SCOPE_CLIENT = "tuner.client"
SCOPE_HF_USER = "tuner.hf_user"
UPLOADS = "uploads"  # sub-folder of the data root: Tuner's own upload folder


def is_owner(request) -> bool:
    """Whether the gate found this request to be the owner's (a Starlette request, or a gr.Request)."""
    return bool(_scope(request).get(SCOPE_OWNER))


def request_address(request) -> str:
    """The address the gate found for this request (for rate limits and the names cap)."""
    return _scope(request).get(SCOPE_CLIENT) or "unknown"


def hf_username(request) -> str | None:
    """The Hugging Face user signed in through Tuner's sign-in routes (on a Space), or None."""
    return _scope(request).get(SCOPE_HF_USER)


def _scope(request) -> dict:
    inner = getattr(request, "request", None)  # a gr.Request wraps Starlette's
    scope = getattr(inner if inner is not None else request, "scope", None)
    return scope if isinstance(scope, dict) else {}


def owner_user(access: Access):
    """The studio's `auth_dependency`: "owner" for the owner's request, else None (Gradio's 401).
    The gate refuses a stranger first; this keeps Gradio's own check on every studio route."""
    def user(request) -> str | None:
        return "owner" if is_owner(request) else None

    return user


def sign_in_available() -> bool:
    """Hugging Face sign-in: on a Space with `hf_oauth: true`, with authlib installed."""
    import importlib.util

    # off a Space anyone could claim to be anyone: only on a Space, with its OAuth secret
    return (bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(os.environ.get("OAUTH_CLIENT_SECRET"))
            and bool(os.environ.get("SPACE_ID")) and importlib.util.find_spec("authlib") is not None)


# In the studio's <head>: every same-origin request its page makes carries the session's
# anti-forgery token (from the readable tuner_csrf cookie, which only pages of this origin
# can read). Gradio's client calls the global fetch.
CSRF_JS = """
<script>
(() => {
  const read = () => (document.cookie.match(/(?:^|;\\s*)%s=([^;]+)/) || [])[1];
  const original = window.fetch;
  window.fetch = function (input, init) {
    try {
      const token = read();
      const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url, location.href);
      if (token && url.origin === location.origin) {
        init = Object.assign({}, init || {});
        const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
        headers.set('%s', token);
        init.headers = headers;
      }
    } catch (e) { /* never break a request over the header */ }
    return original.call(this, input, init);
  };
})();
</script>
""" % (CSRF_COOKIE, CSRF_HEADER)

SIGN_OUT_JS = """
async () => {
  await fetch(location.origin + '%s', {method: 'POST', credentials: 'same-origin'});
  location.href = location.origin + '%s';
}
""" % (SIGN_OUT_PATH, SIGN_IN_PAGE)


def owner_bar(access: Access) -> None:
    """The top of the studio: the open-mode banner, or who is signed in, Sign out and (for
    password sign-in) the signed-in browsers, each revocable. Only the owner sees the studio."""
    if access.open:
        gr.Markdown("⚠️ **Open mode:** anyone who can reach this address can change datasets, training, "
                    "evaluations and exports. Set `TUNER_OWNER_PASSWORD` (or `TUNER_OWNER` with Hugging Face "
                    "sign-in on a Space) before you share a link.", elem_id="open-banner")
        return
    with gr.Row():
        gr.Markdown("✅ Signed in as the owner. Raters use the link that ends in `/rate`.", elem_id="owner-status")
        sign_out = gr.Button("Sign out", scale=0, elem_id="owner-sign-out", size="sm")
    sign_out.click(None, None, None, js=SIGN_OUT_JS)
    sessions_panel(access)  # password or Hugging Face sign-in: both make server-side sessions


SESSION_COLUMNS = ["session", "signed in", "last seen", "expires", "address", "browser", "this browser"]


def sessions_panel(access: Access) -> None:
    """Signed-in browsers: listed and revocable by the owner (built empty; filled on request)."""
    import datetime as dt

    def when(epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    with gr.Accordion("Signed-in browsers", open=False, elem_id="owner-sessions-panel"):
        with gr.Row():
            show = gr.Button("Show", size="sm", elem_id="owner-sessions-show")
            others = gr.Button("Sign out every other browser", size="sm", variant="stop",
                               elem_id="owner-sessions-others")
        table = gr.Dataframe(headers=SESSION_COLUMNS, value=None, interactive=False, elem_id="owner-sessions")
        with gr.Row():
            which = gr.Textbox(label="Session to revoke", placeholder="its id, from the first column",
                               scale=3, elem_id="owner-sessions-id")
            revoke = gr.Button("Revoke", scale=1, elem_id="owner-sessions-revoke")
        note = gr.Markdown(elem_id="owner-sessions-note")

    def mine(request: gr.Request) -> str | None:
        return access.session_of(dict(request.cookies))

    def listing(request: gr.Request):
        this = mine(request)
        return [[s["id"], when(s["created"]), when(s["last_seen"]), when(s["expires"]), s["client"], s["agent"][:60],
                 "✓" if s["id"] == this else ""] for s in access.sessions.active()]

    def on_show(request: gr.Request):
        rows = listing(request)
        return rows, f"{len(rows)} signed-in browser(s)."

    def on_revoke(sid, request: gr.Request):
        sid = (sid or "").strip() if isinstance(sid, str) else ""
        if not sid:
            return listing(request), "⚠️ Type a session id from the first column."
        if sid == mine(request):
            return listing(request), "⚠️ That is this browser: use **Sign out** instead."
        done = access.sessions.revoke(sid)
        return listing(request), (f"Revoked session {sid}: that browser must sign in again." if done
                                  else f"⚠️ No live session {sid!r}.")

    def on_others(request: gr.Request):
        count = access.sessions.revoke_all(keep=mine(request))
        return listing(request), f"Signed out {count} other browser(s)."

    show.click(on_show, None, [table, note], api_name="owner_sessions")
    revoke.click(on_revoke, which, [table, note], api_name="owner_revoke_session")
    others.click(on_others, None, [table, note], api_name="owner_revoke_others")


# --- the owner's sign-in: plain routes ---------------------------------------------------
SIGN_IN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tuner: sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5}
input,button{font-size:1rem;padding:.5rem;margin:.25rem 0}input{width:100%%;box-sizing:border-box}
#message{min-height:1.5rem}</style></head>
<body><h1>Tuner</h1>
<p>🔒 <strong>Owner only.</strong> This studio changes data and training. %(how)s</p>
%(password_form)s
%(hf_link)s
<p>Raters: use the link the owner sent you (it ends in <a href="%(raters)s"><code>/rate</code></a>).</p>
<script>
const form = document.getElementById('sign-in');
if (form) form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const message = document.getElementById('message');
  const answer = await fetch(location.origin + '%(sign_in)s', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({password: document.getElementById('password').value})});
  let body = {};
  try { body = await answer.json(); } catch (err) {}
  if (answer.ok && !document.cookie.includes('%(csrf)s=')) {
    message.textContent = '⚠️ The password is right, but this browser keeps no sign-in cookie inside a page of ' +
      'another site. Open this app at its own address (' + location.origin + ') and sign in there.';
  } else if (answer.ok) { message.textContent = 'Signed in; opening the studio…'; location.href = location.origin + '/'; }
  else { message.textContent = '⚠️ ' + (body.error || ('Sign-in failed (HTTP ' + answer.status + ')')); }
});
</script></body></html>
"""


def sign_in_page(access: Access) -> str:
    form = ("<form id='sign-in'><label for='password'>Owner password</label>"
            "<input id='password' type='password' autocomplete='current-password' autofocus>"
            "<button type='submit' id='sign-in-button'>Sign in as owner</button>"
            "<div id='message' role='status'></div></form>") if access.password else ""
    hf = ""
    if access.owner:
        hf = (f"<p><a href='{HF_ROUTES}login'>Sign in with Hugging Face</a> as {access.owner}.</p>"
              if sign_in_available() else
              f"<p>Hugging Face sign-in as {access.owner} is not available here: it needs "
              "<code>hf_oauth: true</code> on a Space.</p>")
    how = " or ".join(filter(None, ["Enter the owner password" if access.password else "",
                                    "sign in with Hugging Face" if access.owner else ""]))
    return SIGN_IN_HTML % {"how": f"{how} to use it." if how else "", "password_form": form, "hf_link": hf,
                           "raters": RATERS_APP + "/", "sign_in": SIGN_IN_PATH, "csrf": CSRF_COOKIE}


def is_https(request) -> bool:
    """Whether the browser reached the app over https: the connection's scheme, or the TLS proxy's
    X-Forwarded-Proto (a Space's: uvicorn believes no proxy header here). A sender who lies only
    gets cookies for itself that plain http does not send back."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def _cookie_lines(access: Access, request: Request, token: str | None) -> list[str]:
    secure = "; Secure" if is_https(request) else ""
    if token is None:
        return [f"{name}=; Path=/; Max-Age=0; SameSite=Strict{secure}" for name in (COOKIE, CSRF_COOKIE)]
    age = int(access.sessions.days * 86400)
    return [f"{COOKIE}={token}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}",
            f"{CSRF_COOKIE}={access.csrf_token(token)}; Path=/; Max-Age={age}; SameSite=Strict{secure}"]


def _with_cookies(response, lines: list[str]):
    for line in lines:
        response.headers.append("set-cookie", line)
    return response


def owner_routes(api, access: Access) -> None:
    """The sign-in page, sign-in and sign-out on the FastAPI app (`api`)."""
    from fastapi.responses import HTMLResponse

    @api.get(SIGN_IN_PAGE, include_in_schema=False)
    def sign_in_form(request: Request):
        if is_owner(request):
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(sign_in_page(access), headers={"Cache-Control": "no-store"})

    @api.post(SIGN_IN_PATH, include_in_schema=False)
    async def sign_in(request: Request):
        try:
            password = (await request.json()).get("password")
        except (ValueError, AttributeError, RecursionError):
            password = None
        if not isinstance(password, str):
            return JSONResponse({"error": 'Send {"password": "..."} as JSON.'}, status_code=400)
        try:
            token = access.sign_in(password, request_address(request), request.headers.get("user-agent", ""))
        except PermissionError as exc:
            code = 429 if "Too many" in str(exc) else 401 if "not the owner" in str(exc) else 403
            return JSONResponse({"error": str(exc)}, status_code=code)
        return _with_cookies(JSONResponse({"ok": True}), _cookie_lines(access, request, token))

    @api.post(SIGN_OUT_PATH, include_in_schema=False)
    def sign_out(request: Request):
        access.sessions.revoke_token(request.cookies.get(COOKIE))
        if "session" in request.scope:  # a Hugging Face sign-in ends too
            request.session.pop("hf_user", None)
        return _with_cookies(JSONResponse({"ok": True}), _cookie_lines(access, request, None))


# --- the door ------------------------------------------------------------------------------
class BodyTooLarge(Exception):
    pass


class Gate:
    """ASGI middleware in front of the FastAPI app: see the module's docstring.

    `studio_fns`: a function giving the studio's handler ids (the keys of its Blocks' `fns`)."""

    def __init__(self, app, access: Access, studio_fns=None, upload_cap: int | None = None,
                 trusted: tuple | None = None):
        self.app, self.access = app, access
        self.studio_fns = studio_fns or (lambda: None)
        self.upload_cap = upload_total_cap() if upload_cap is None else upload_cap
        self.max_upload = upload_bytes(max_upload())
        self.trusted = trusted_proxies() if trusted is None else trusted
        # the files /upload wrote: the cap counts these, not the folder's other files
        self.uploads: set[str] = set()
        self.public_posts = RateLimiter(capacity=PUBLIC_POSTS_PER_MINUTE, per_seconds=60)
        self.public_gets = RateLimiter(capacity=PUBLIC_GETS_PER_MINUTE, per_seconds=60)

    # -- who is asking
    def _foreign(self, request: Request) -> bool:
        """True when the request says it comes from a page of another origin (scheme, host and port)."""
        from urllib.parse import urlsplit

        # Host only (and, on a Space, its own address): X-Forwarded-Host is whatever the sender says
        space_hosts = (os.environ.get("SPACE_HOST") or "").split(",")  # may name several: "a.hf.space,my.domain"
        hosts = {h.strip().lower() for h in (request.headers.get("host"), *space_hosts) if h and h.strip()}
        schemes = {s.lower() for s in (request.url.scheme, request.headers.get("x-forwarded-proto")) if s}
        if request.headers.get("sec-fetch-site", "same-origin").lower() not in ("same-origin", "none"):
            return True  # the browser itself says the request comes from another origin

        def ours(url: str) -> bool:
            try:
                parts = urlsplit(url)
            except ValueError:
                return False
            return parts.scheme.lower() in schemes and parts.netloc.lower() in hosts

        origin = request.headers.get("origin")
        if origin is not None:
            return not ours(origin)
        referer = request.headers.get("referer")
        return referer is not None and not ours(referer)

    def _owner(self, request: Request, foreign: bool) -> bool:
        cookies = request.cookies
        if COOKIE in cookies and (foreign or (request.scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
                                              and not self.access.csrf_ok(
                cookies.get(COOKIE), request.headers.get(CSRF_HEADER)))):
            cookies = {}  # another page's request, or one without the page's token: not the owner's
        # the owner's Hugging Face sign-in made a server-side session (hf_routes): the signed session
        # cookie alone names a rater, never the owner (it could not be revoked)
        return self.access.is_owner(cookies, None)

    # -- answers
    @staticmethod
    async def _refuse(scope, receive, send, status: int, why: str, headers: dict | None = None) -> None:
        await JSONResponse({"detail": why, "error": why}, status_code=status, headers=headers)(scope, receive, send)

    @staticmethod
    def _capped(receive, cap: int):
        """`receive`, raising BodyTooLarge once the body passes `cap` bytes (a chunked body says no length)."""
        size = 0

        async def capped():
            nonlocal size
            message = await receive()
            if message.get("type") == "http.request":
                size += len(message.get("body", b""))
                if size > cap:
                    raise BodyTooLarge
            return message

        return capped

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        path = scope["path"]
        client = client_address(scope, self.trusted)
        foreign = self._foreign(request)
        owner = self._owner(request, foreign)
        scope[SCOPE_CLIENT], scope[SCOPE_OWNER] = client, owner
        scope[SCOPE_HF_USER] = None if foreign else _hf_user(request)
        raters_app = path == RATERS_APP or path.startswith(RATERS_APP + "/")
        public = raters_app or path.startswith(PUBLIC_ROUTES)
        if scope["type"] == "websocket":  # Tuner's pages use none
            if owner and not public:
                return await self.app(scope, receive, send)
            return await send({"type": "websocket.close", "code": 1008})
        method = scope["method"]
        if method == "POST" and foreign:
            return await self._refuse(scope, receive, send, 403, "Refused: this request comes from a page of "
                                      "another site.")
        if not public and not owner:
            if method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", ""):
                return await RedirectResponse(SIGN_IN_PAGE, status_code=303)(scope, receive, send)
            return await self._refuse(scope, receive, send, 401, OWNER_ONLY)
        if not owner:
            limiter = self.public_gets if method in ("GET", "HEAD", "OPTIONS") else self.public_posts
            allowed, wait = limiter.allow(client)
            if not allowed:
                return await self._refuse(scope, receive, send, 429, f"Too many requests from this address; "
                                          f"try again in {wait:.0f} s.", {"Retry-After": str(max(1, round(wait)))})
        refused = _raters_refusal(path, method) if raters_app else _studio_refusal(path, method)
        if refused:
            return await self._refuse(scope, receive, send, *refused)
        upload = not public and path.rstrip("/").endswith("/gradio_api/upload")
        cap = self.max_upload + 64 * 1024 if upload else STUDIO_BODY if owner and not public else PUBLIC_BODY
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return await self._refuse(scope, receive, send, 413, f"Request too large (the limit here is {cap:,} "
                                      "bytes).")
        if upload:
            if length is None:
                return await self._refuse(scope, receive, send, 411, "An upload needs a Content-Length.")
            if self.held_uploads() + int(length) > self.upload_cap:
                return await self._refuse(scope, receive, send, 507, "The upload folder is full: finish or remove "
                                          "earlier uploads (they are deleted once read).")
            send = self._noting_uploads(send)
        receive = self._capped(receive, cap)
        if method == "POST" and not public and not upload and "/gradio_api/" in path:
            body = await self._body(receive, scope, send)
            if body is None:
                return
            why = self._unknown_handler(body, path)
            if why:
                return await self._refuse(scope, receive, send, 422, why)
            receive = _replay(body, receive)
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send, 413, f"Request too large (the limit here is {cap:,} bytes).")

    async def _body(self, receive, scope, send) -> bytes | None:
        chunks = []
        try:
            while True:
                message = await receive()
                if message.get("type") != "http.request":
                    return b"".join(chunks)
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    return b"".join(chunks)
        except BodyTooLarge:
            await self._refuse(scope, receive, send, 413, "Request too large.")
            return None

    def _unknown_handler(self, body: bytes, path: str = "") -> str | None:
        """Why a studio call cannot be run (Gradio answers each of these with a 500), or None: an
        `fn_index` or an endpoint name in the path (/run/<name>, /call/<name>…) that is not one of
        the studio's handlers, or a number JSON cannot carry (1e999, Infinity, NaN)."""
        try:
            parsed = json.loads(body, parse_constant=_not_finite, parse_float=_finite) if body else None
        except _NotFinite:
            return "Numbers in the request must be finite."
        except RecursionError:
            return "The request is nested too deeply."
        except ValueError:
            return None  # Gradio answers a body it cannot read with its own 422
        known = self.studio_fns()
        name = _endpoint(path)
        if name is not None and isinstance(known, dict) and name not in {getattr(f, "api_name", None)
                                                                          for f in known.values()}:
            return f"There is no endpoint {name[:40]!r} in this app."
        if not isinstance(parsed, dict) or "fn_index" not in parsed or parsed["fn_index"] is None:
            return None
        index = parsed["fn_index"]
        if isinstance(index, bool) or not isinstance(index, int):
            return f"fn_index must be a whole number (got {str(index)[:40]!r})."
        if known is not None and index not in known:
            return f"There is no handler {index} in this app."
        return None

    def held_uploads(self) -> int:
        """Bytes of the uploads still on disk (those read and deleted no longer count)."""
        total = 0
        for path in list(self.uploads):
            try:
                total += os.lstat(path).st_size
            except OSError:
                self.uploads.discard(path)
        return total

    def _noting_uploads(self, send):
        """`send`, which also notes the paths a successful upload answered with."""
        answer = {"status": None, "body": b""}

        async def noting(message):
            if message["type"] == "http.response.start":
                answer["status"] = message.get("status")
            elif message["type"] == "http.response.body" and answer["status"] == 200:
                answer["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    try:
                        paths = json.loads(answer["body"] or b"null")
                    except ValueError:
                        paths = None
                    for path in paths if isinstance(paths, list) else []:
                        if isinstance(path, str):
                            self.uploads.add(path)
            await send(message)

        return noting


class _NotFinite(Exception):
    pass


def _not_finite(text):
    raise _NotFinite(text)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotFinite(text)
    return value


def _endpoint(path: str) -> str | None:
    """The handler name a studio call puts in its path (/gradio_api/run/<name>, api/, call/, call/v2/), or None."""
    parts = path.split("/gradio_api/", 1)[-1].strip("/").split("/") if "/gradio_api/" in path else []
    if len(parts) >= 2 and parts[0] in ("run", "api", "call"):
        return parts[2] if parts[0] == "call" and parts[1] == "v2" and len(parts) >= 3 else parts[1]
    return None


# What the raters' page loads from its Gradio app (its page, theme and files): nothing else of it
# is served. Its buttons call the plain routes; its Gradio app runs nothing, serves no file (it
# would serve the studio's: the two share one upload folder and Gradio's static paths) and has no API.
RATERS_PATHS = ("/", "/theme.css", "/config", "/favicon.ico", "/manifest.json")
RATERS_PREFIXES = ("/assets/", "/static/", "/svelte/")  # (no heartbeat: the page holds no Gradio state)
# The POST routes the studio's page uses; any other POST under /gradio_api is refused (Gradio's
# /call/v2 answers a 500 to some bodies, /process_recording would take an upload)
STUDIO_POSTS = ("/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/cancel", "/gradio_api/reset",
                "/gradio_api/run/", "/gradio_api/call/", "/gradio_api/api/")


def _raters_refusal(path: str, method: str) -> tuple[int, str] | None:
    if method not in ("GET", "HEAD", "OPTIONS"):
        return 405, f"The raters' page takes no calls here; its actions are under {RATER_API}."
    tail = path[len(RATERS_APP):] or "/"
    if tail not in RATERS_PATHS and not tail.startswith(RATERS_PREFIXES):
        return 404, "Not a page of the raters' app."
    return None


def _studio_refusal(path: str, method: str) -> tuple[int, str] | None:
    if method != "POST" or "/gradio_api/" not in path + "/" or path.startswith(PUBLIC_ROUTES):
        return None
    tail = path.rstrip("/")
    if tail.startswith("/gradio_api/call/v2/") or not any(
            tail == r or (r.endswith("/") and tail.startswith(r)) for r in STUDIO_POSTS):
        return 404, "Not a route this app takes."
    return None


OWNER_ONLY = f"Owner only: sign in as the owner at {SIGN_IN_PAGE} to use the studio."


def _hf_user(request: Request) -> str | None:
    """The Hugging Face user in the signed session cookie Tuner's sign-in routes set (on a Space)."""
    session = request.scope.get("session")
    user = session.get("hf_user") if isinstance(session, dict) else None
    return user if isinstance(user, str) and user else None


def _replay(body: bytes, original):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()  # after the body: the connection's own messages (a disconnect)

    return receive


# authlib talks to the provider through httpx2 where it is installed, else httpx: their errors (and
# a discovery document or an id_token that does not check out) are caught as Exception
HF_UNREACHABLE = "Hugging Face could not be reached, or its answer did not check out ({}); try again in a moment."


def _hf_next(request: Request) -> str:
    """Where to go after signing in or out: a path of this app, never another site."""
    target = request.query_params.get("next", "/")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _hf_forget_states(request: Request) -> None:
    # authlib keeps one entry per login started; a cookie over 4 KB is dropped by the browser
    for key in [k for k in request.session if k.startswith("_state_huggingface_")]:
        request.session.pop(key, None)


def _hf_failed(why: str):
    import html

    from fastapi.responses import HTMLResponse

    again = f"{HF_ROUTES}login?next=/"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Tuner: sign-in failed</title></head>"
            f"<body><p>Hugging Face sign-in failed: {html.escape(why)}</p>"
            f"<p><a href='{again}'>Try again</a> · <a href='{SIGN_IN_PAGE}'>Sign-in page</a> · "
            f"<a href='{RATERS_APP}/'>Raters' page</a></p></body></html>")
    return HTMLResponse(page, status_code=400, headers={"Cache-Control": "no-store"})


def _hf_continue(user: str, target: str):
    """The page the sign-in comes back to: it opens `target` itself, so that request is this
    site's own (a redirect straight from the provider's chain is marked cross-site, and the gate
    would not count the sign-in)."""
    import html

    from fastapi.responses import HTMLResponse

    script_target = json.dumps(target).replace("<", "\\u003c")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Tuner: signed in</title></head><body>"
            f"<p>Signed in with Hugging Face as {html.escape(user)}; opening "
            f"<a id='continue' href='{html.escape(target, quote=True)}'>the app</a>…</p>"
            f"<script>location.replace({script_target});</script></body></html>")
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


def hf_routes(api, access: Access) -> None:
    """Sign in with Hugging Face (on a Space with `hf_oauth: true`): plain routes on authlib's
    Starlette client. The user name goes into Starlette's signed session cookie; the Space
    owner (TUNER_OWNER) is then the owner, anyone else a rater with that name. A sign-in that
    fails (refused, stale state, the provider unreachable) answers a page saying why (400)."""
    if not sign_in_available():
        return
    import logging

    from authlib.integrations.base_client import MismatchingStateError, OAuthError
    from authlib.integrations.starlette_client import OAuth
    provider = (os.environ.get("OPENID_PROVIDER_URL") or "https://huggingface.co").rstrip("/")
    oauth = OAuth()
    oauth.register(name="huggingface", client_id=os.environ["OAUTH_CLIENT_ID"],
                   client_secret=os.environ["OAUTH_CLIENT_SECRET"],
                   client_kwargs={"scope": os.environ.get("OAUTH_SCOPES") or "openid profile"},
                   server_metadata_url=provider + "/.well-known/openid-configuration")
    # SPACE_HOST may name several hosts ("a.hf.space,custom.domain"): the first is the Space's own
    host = (os.environ.get("SPACE_HOST") or "").split(",")[0].strip().rstrip("/")

    back, forget_states, failed = _hf_next, _hf_forget_states, _hf_failed

    @api.get(HF_ROUTES + "login", include_in_schema=False)
    async def login(request: Request):
        forget_states(request)
        request.session["next"] = back(request)
        redirect = f"https://{host}{HF_ROUTES}callback" if host else str(request.url_for("hf_callback"))
        try:
            return await oauth.huggingface.authorize_redirect(request, redirect)
        except Exception as exc:  # the provider's discovery document: unreachable or unreadable
            logging.getLogger(__name__).warning("Hugging Face sign-in: %r", exc)
            return failed(HF_UNREACHABLE.format(type(exc).__name__))

    @api.get(HF_ROUTES + "callback", include_in_schema=False, name="hf_callback")
    async def callback(request: Request):
        try:
            token = await oauth.huggingface.authorize_access_token(request)
            info = token.get("userinfo")
            if not info:  # no id_token: ask the provider's userinfo endpoint
                info = await oauth.huggingface.userinfo(token=token)
        except MismatchingStateError:
            forget_states(request)
            where = f" at https://{host}" if host else ""
            return failed("this browser did not bring back the sign-in it started (its cookie is missing or "
                          f"stale). Open this app at its own address{where}, not inside another page, and "
                          "sign in again.")
        except OAuthError as exc:
            text = ": ".join(filter(None, [exc.error, exc.description]))
            return failed(f"Hugging Face refused it ({text[:200]}).")
        except Exception as exc:  # the provider down, or an answer (an id_token) that does not check out
            logging.getLogger(__name__).warning("Hugging Face sign-in: %r", exc)
            return failed(HF_UNREACHABLE.format(type(exc).__name__))
        user = info.get("preferred_username") if isinstance(info, dict) else None
        if not isinstance(user, str) or not user.strip():
            return failed("Hugging Face did not say who you are (no user name).")
        user = user.strip()
        request.session["hf_user"] = user
        target = request.session.pop("next", "/")
        target = target if isinstance(target, str) and target.startswith("/") and not target.startswith("//") else "/"
        cookies = []
        if access.owner and user.casefold() == access.owner.casefold():
            # the owner gets a server-side session, as a password sign-in does: listed, revocable,
            # ended by Sign out (the signed session cookie alone could not be revoked)
            token = access.sessions.create(request_address(request), request.headers.get("user-agent", ""))[0]
            cookies = _cookie_lines(access, request, token)
        return _with_cookies(_hf_continue(user, target), cookies)

    @api.get(HF_ROUTES + "logout", include_in_schema=False)
    def logout(request: Request):
        request.session.pop("hf_user", None)
        access.sessions.revoke_token(request.cookies.get(COOKIE))
        return RedirectResponse(back(request), status_code=303)



def hf_session(api, secret: str) -> None:
    """Starlette's signed session cookie for the Hugging Face sign-in (when it is available),
    added after the gate so that it runs before it: the gate reads the signed-in user."""
    if not sign_in_available():
        return
    import hashlib

    from starlette.middleware.sessions import SessionMiddleware

    api.add_middleware(SessionMiddleware, secret_key=hashlib.sha256(f"session:{secret}".encode()).hexdigest(),
                       same_site="lax", https_only=True, session_cookie="tuner_hf")


def use_upload_folder(root: Path, older_than: float | None = None) -> Path:
    """Make `root`/uploads Gradio's upload folder (GRADIO_TEMP_DIR, its documented setting) and
    return it. Gradio's default, /tmp/gradio, is shared by every Gradio app on the machine, and
    also holds the copies of files handed out for download. Gradio reads the variable when a
    Blocks and its server are made, so this runs before the app is built. Files left there by
    an earlier process, older than `older_than` seconds, are removed."""
    folder = Path(root) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    if older_than is not None:
        cutoff = time.time() - older_than
        for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
            try:
                if path.is_symlink() or path.is_file():
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            except OSError:
                pass
    return folder


def upload_total_cap(env: dict | None = None) -> int:
    """Bytes the owner's uploads may hold in all: TUNER_UPLOAD_TOTAL, else 10 × the per-file limit."""
    env = os.environ if env is None else env
    text = env.get("TUNER_UPLOAD_TOTAL")
    try:
        return upload_bytes(text) if text else 10 * upload_bytes(max_upload(env))
    except ValueError as exc:
        raise ValueError(f"TUNER_UPLOAD_TOTAL: {exc}") from None


def forget_upload(path) -> None:
    """Delete an upload once its handler has read it (only files in the upload folder)."""
    folder = os.environ.get("GRADIO_TEMP_DIR")
    if not path or not folder:
        return
    try:
        cache = Path(folder).resolve()
        target = Path(path).resolve()
        if target.is_file() and target.is_relative_to(cache):
            target.unlink()
            if target.parent != cache and not any(target.parent.iterdir()):
                target.parent.rmdir()
    except OSError:
        pass
