"""Owner-only by default: the sign-in bar, and the guard on every handler.

`guard(demo, access)` runs once the app is composed. It wraps the function of
every event on the owner's pages, so each call checks on the server, from the
request itself (cookie or Hugging Face session), that it comes from the owner.
A handler added later is guarded without anyone remembering to: only the
raters' page ("/rate", which holds rating handlers alone), functions marked
`public()`, and gradio's own sign-in button status are left open. Hiding a
button protects nothing; this does.

Refusals: a user action (click, submit, upload) gets a clear error; events the
page fires by itself (load, timer, change) are skipped quietly, so a stranger
on the owner's page sees no data and no storm of errors.

`OwnerGate`, an ASGI middleware put in front of Gradio's app at launch
(`install`), holds the door before any of that:
- a POST from another origin (its Origin or Referer is not this app's) is refused,
  and on any request from another origin the owner's cookie is ignored;
- an owner cookie on a POST counts only with the session's anti-forgery header,
  which the app's own page adds to its requests (`CSRF_JS`) and no other page can read;
- a stranger's call to an owner handler is answered before it enters Gradio's
  queue (an action: 403 with the reason; a page event: completed with no change),
  so a flood of refused calls cannot delay the owner's;
- uploads are the owner's alone (raters never upload), capped per request and
  in total over the uploads still held (Tuner's own folder, `use_upload_folder`);
- the owner signs in and out through POST /tuner/owner/sign-in and /sign-out,
  which set and clear the HttpOnly, SameSite=Strict session cookie;
- the raters' Submit, Next and Change (handlers marked `direct`) are run here, not
  by Gradio's route, with the session's own state and Gradio's answer: a rating is
  ~1 ms of SQLite, Gradio's route around it ~4 ms more (`OwnerGate._direct`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import gradio as gr
from gradio.context import LocalContext

from tuner.access import COOKIE, CSRF_COOKIE, CSRF_HEADER, Access, RateLimiter
from tuner.paths import max_upload, upload_bytes

OWNER_ONLY = "Owner only: sign in as the owner (top of the main page) to do this."
ACTIONS = {"click", "submit", "upload"}
PUBLIC_PAGES = {"rate"}


def public(fn):
    """Mark a handler as callable by anyone (sign-in, raters)."""
    fn._tuner_public = True
    return fn


def direct(fn):
    """Mark a handler that `OwnerGate` may run itself, without Gradio's route, when the
    page POSTs it to /gradio_api/run/… (see `OwnerGate._direct`). Only for an event made
    with queue=False, preprocess=False and postprocess=False whose function takes no
    gr.Request and returns plain values (or a dict of them by component)."""
    fn._tuner_direct = True
    return fn


def _cookies(request) -> dict:
    if request is None:
        return {}
    inner = getattr(request, "request", None)
    if inner is not None:
        return dict(inner.cookies)
    return dict(request.kwargs.get("cookies") or {})


def hf_username(request) -> str | None:
    """The Hugging Face user signed in through gradio's OAuth (on a Space), or None."""
    if request is None:
        return None
    session = None
    inner = getattr(request, "request", None)
    for source in (inner, request):
        try:
            session = getattr(source, "session", None) if source is not None else None
        except (AssertionError, AttributeError):  # no SessionMiddleware: OAuth is off
            session = None
        if session:
            break
    try:
        return session["oauth_info"]["userinfo"]["preferred_username"] if session else None
    except (KeyError, TypeError):
        return None


def sign_in_available() -> bool:
    """Hugging Face sign-in: on a Space with `hf_oauth: true` and gradio's oauth extras."""
    import importlib.util
    import os

    # off a Space, gradio mocks the Hugging Face login (anyone would become this machine's
    # Hugging Face user) and signs sessions with a public key: only on a Space, with its secret
    return (bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(os.environ.get("OAUTH_CLIENT_SECRET"))
            and bool(os.environ.get("SPACE_ID")) and importlib.util.find_spec("authlib") is not None)


def request_is_owner(access: Access, request) -> bool:
    return access.is_owner(_cookies(request), hf_username(request))


def _checked(fn, access: Access, action: bool):
    def allowed() -> bool:
        return request_is_owner(access, LocalContext.request.get(None))

    def refuse():
        if action:
            raise gr.Error(OWNER_ONLY, title="Owner only", print_exception=False)  # expected: no traceback
        return gr.skip()

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def wrapped(*args, **kwargs):
            if not allowed():
                yield refuse()
                return
            async for item in fn(*args, **kwargs):
                yield item
    elif inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if not allowed():
                yield refuse()
                return
            yield from fn(*args, **kwargs)
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped(*args, **kwargs):
            if not allowed():
                return refuse()
            return await fn(*args, **kwargs)
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if not allowed():
                return refuse()
            return fn(*args, **kwargs)
    wrapped._tuner_guarded = True
    return wrapped


def _render_checked(fn, access: Access):
    """A @gr.render body: a stranger gets an empty render, never the owner's data."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if request_is_owner(access, LocalContext.request.get(None)):
            return fn(*args, **kwargs)
        return None
    wrapped._tuner_guarded = True
    return wrapped


def _is_public(block_fn) -> bool:
    fn = block_fn.fn
    if getattr(fn, "_tuner_public", False) or block_fn.page in PUBLIC_PAGES:
        return True
    # gradio's own helpers (the sign-in button's status check); render bodies are guarded apart
    return block_fn.renderable is None and getattr(fn, "__module__", "").startswith("gradio.")


def guard(demo: gr.Blocks, access: Access) -> list[str]:
    """Wrap every owner handler of `demo`; returns the names of those left public."""
    left_open = []
    for block_fn in demo.fns.values():
        if block_fn.fn is None or getattr(block_fn.fn, "_tuner_guarded", False):
            continue
        if block_fn.renderable is not None:
            renderable = block_fn.renderable
            if block_fn.page not in PUBLIC_PAGES and not getattr(renderable.fn, "_tuner_guarded", False):
                renderable.fn = _render_checked(renderable.fn, access)
            continue
        if _is_public(block_fn):
            left_open.append(block_fn.api_name or block_fn.name)
            continue
        events = {event for _block, event in (block_fn.targets or [])}
        block_fn.fn = _checked(block_fn.fn, access, action=bool(events & ACTIONS))
    return left_open


SIGN_IN_PATH = "/tuner/owner/sign-in"
SIGN_OUT_PATH = "/tuner/owner/sign-out"

# In the page's <head>: every same-origin request the app's own page makes carries
# the session's anti-forgery token (from the readable tuner_csrf cookie, which only
# pages of this origin can read). Gradio's client calls the global fetch.
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

_ROOT_JS = "(window.gradio_config && window.gradio_config.root || location.origin).replace(/\\/$/, '')"
SIGN_IN_JS = """
async (password) => {
  const answer = await fetch(%s + '%s', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({password: password || ''})});
  let body = {};
  try { body = await answer.json(); } catch (e) {}
  if (answer.ok && !document.cookie.includes('%s=')) {
    // the browser refused the cookies: a page framed by another site (the huggingface.co Space page)
    return '⚠️ The password is right, but this browser keeps no sign-in cookie inside a page of another ' +
      'site. Open this app at its own address (' + location.origin + ') and sign in there.';
  }
  if (answer.ok) { setTimeout(() => location.reload(), 50); return 'Signed in; reloading…'; }
  return '⚠️ ' + (body.error || ('Sign-in failed (HTTP ' + answer.status + ')'));
}
""" % (_ROOT_JS, SIGN_IN_PATH, CSRF_COOKIE)

SIGN_OUT_JS = """
async () => {
  await fetch(%s + '%s', {method: 'POST', credentials: 'same-origin'});
  location.reload();
}
""" % (_ROOT_JS, SIGN_OUT_PATH)


def owner_bar(access: Access):
    """The top of the owner's page: the open-mode banner, or the owner's sign-in
    (and, for password sign-in, the list of signed-in browsers, each revocable).

    Returns (status function, its output) for the page's load event, or None."""
    if access.open:
        gr.Markdown("⚠️ **Open mode:** anyone who can reach this address can change datasets, training, "
                    "evaluations and exports. Set `TUNER_OWNER_PASSWORD` (or `TUNER_OWNER` with Hugging Face "
                    "sign-in on a Space) before you share a link.", elem_id="open-banner")
        return None
    status = gr.Markdown(elem_id="owner-status")
    with gr.Row():
        if access.password:
            password = gr.Textbox(label="Owner password", type="password", scale=3, elem_id="owner-password")
            sign_in = gr.Button("Sign in as owner", scale=1, elem_id="owner-sign-in")
        if access.owner and sign_in_available():
            gr.LoginButton(scale=1)
        sign_out = gr.Button("Sign out", scale=1, elem_id="owner-sign-out", size="sm")
    if access.password:
        sessions_panel(access)

    @public
    def whoami(request: gr.Request):
        if request_is_owner(access, request):
            return "✅ Signed in as the owner."
        hf = ""
        if access.owner:
            hf = (f"sign in with Hugging Face as {access.owner}" if sign_in_available() else
                  f"sign in with Hugging Face as {access.owner} (not available here: it needs `hf_oauth: true` "
                  "on a Space)")
        how = " or ".join(filter(None, ["enter the owner password" if access.password else "", hf]))
        return (f"🔒 **Owner only.** This page changes data and training; {how} to use it. "
                "Raters: use the link the owner sent you (it ends in `/rate`).")

    if access.password:
        # the password goes to the gate's own route, which sets the HttpOnly cookie
        sign_in.click(None, [password], [status], js=SIGN_IN_JS)
        password.submit(None, [password], [status], js=SIGN_IN_JS)
    sign_out.click(None, None, None, js=SIGN_OUT_JS)
    return whoami, status


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

    def listing(request: gr.Request):
        mine = access.session_of(_cookies(request))
        rows = [[s["id"], when(s["created"]), when(s["last_seen"]), when(s["expires"]), s["client"], s["agent"][:60],
                 "✓" if s["id"] == mine else ""] for s in access.sessions.active()]
        return rows

    def on_show(request: gr.Request):
        rows = listing(request)
        return rows, f"{len(rows)} signed-in browser(s)."

    def on_revoke(sid, request: gr.Request):
        sid = (sid or "").strip()
        if not sid:
            return listing(request), "⚠️ Type a session id from the first column."
        if sid == access.session_of(_cookies(request)):
            return listing(request), "⚠️ That is this browser: use **Sign out** instead."
        done = access.sessions.revoke(sid)
        return listing(request), (f"Revoked session {sid}: that browser must sign in again." if done
                                  else f"⚠️ No live session {sid!r}.")

    def on_others(request: gr.Request):
        count = access.sessions.revoke_all(keep=access.session_of(_cookies(request)))
        return listing(request), f"Signed out {count} other browser(s)."

    show.click(on_show, None, [table, note], api_name="owner_sessions")
    revoke.click(on_revoke, which, [table, note], api_name="owner_revoke_session")
    others.click(on_others, None, [table, note], api_name="owner_revoke_others")


# --- the gate in front of Gradio ------------------------------------------------------
JSON_CAP = 16 * 1024 * 1024  # a queue/join body the gate reads to see which handler it calls (files go to /upload)
# Gradio's POST routes the page uses; any other POST under /gradio_api is refused (process_recording
# would take a stranger's upload, and the app records nothing)
POST_ROUTES = ("/queue/join", "/upload", "/cancel", "/reset", "/run/", "/api/", "/call/")
QUIET_PER_MINUTE = 600  # a stranger's page events answered without the queue, per address
QUIET_PENDING = 64  # completions waiting for one session to read its stream
DIRECT_CAP = 64 * 1024  # a body for a handler the gate runs itself (scores, a choice and a comment)
DIRECT_PER_MINUTE = 600  # such calls per address (a rater sends ~2 a pair; a class behind one address, ~300)


UPLOADS = "uploads"  # sub-folder of the data root: Tuner's own upload folder


def use_upload_folder(root: Path, older_than: float | None = None) -> Path:
    """Make `root`/uploads Gradio's upload folder (GRADIO_TEMP_DIR) and return it.

    Gradio's default, /tmp/gradio, is shared by every Gradio app on the machine, and
    also holds the copies of files handed out for download: a cap over it refused the
    owner's uploads after one large export. Gradio reads the variable when a Blocks and
    its server are made, so this runs before the app is built (one app per process:
    the last one built names the folder). Files left there by an earlier process,
    older than `older_than` seconds, are removed (Gradio forgets them at a restart)."""
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
    """Delete an upload once its handler has read it (only files in Gradio's upload folder)."""
    if not path:
        return
    try:
        from gradio.utils import get_upload_folder  # where gradio keeps uploads (GRADIO_TEMP_DIR)

        cache = Path(get_upload_folder())
        target = Path(path).resolve()
        if target.is_file() and target.is_relative_to(cache.resolve()):
            target.unlink()
            if target.parent != cache.resolve() and not any(target.parent.iterdir()):
                target.parent.rmdir()
    except OSError:
        pass


def client_address(scope) -> str:
    """Who is asking, for rate limits: on a Hugging Face Space every request comes from its
    proxy, which appends the real address to X-Forwarded-For (the right-most entry; the ones
    before it are whatever the sender wrote); elsewhere the connection's address."""
    forwarded = _header(scope, b"x-forwarded-for") if os.environ.get("SPACE_ID") else None
    if forwarded and forwarded.split(",")[-1].strip():
        return forwarded.split(",")[-1].strip()[:64]
    return (scope.get("client") or ("unknown",))[0] or "unknown"


def request_address(request) -> str:
    """client_address for a gr.Request (a handler's view of the same request)."""
    inner = getattr(request, "request", None)
    scope = getattr(inner, "scope", None)
    if scope is not None:
        return client_address(scope)
    headers = getattr(request, "headers", None) or {}
    host = getattr(getattr(request, "client", None), "host", None) or "unknown"
    return client_address({"client": (host, 0), "headers": [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in dict(headers).items()]})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key == name:
            return value.decode("latin-1")
    return None


class OwnerGate:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app, demo: gr.Blocks, access: Access, upload_cap: int | None = None):
        self.app, self.demo, self.access = app, demo, access
        self.upload_cap = upload_total_cap() if upload_cap is None else upload_cap
        self.max_upload = upload_bytes(max_upload())
        # the files /upload wrote: the cap counts these, not the folder's other files
        # (copies of downloads, another app's)
        self.uploads: set[str] = set()
        self.quiet = RateLimiter(capacity=QUIET_PER_MINUTE, per_seconds=60)
        self.direct_calls = RateLimiter(capacity=DIRECT_PER_MINUTE, per_seconds=60)

    # -- who is asking
    def _foreign(self, scope) -> bool:
        """True when the request says it comes from a page of another origin
        (scheme, host and port; behind a proxy, its X-Forwarded-Host and -Proto)."""
        # Host only (and, on a Space, its own address): X-Forwarded-Host is whatever the sender
        # says, and a page of another site may send it (Gradio's CORS answers any preflight)
        hosts = {h.lower() for h in (_header(scope, b"host"), os.environ.get("SPACE_HOST")) if h}
        schemes = {s.lower() for s in (scope.get("scheme"), _header(scope, b"x-forwarded-proto")) if s}
        if (_header(scope, b"sec-fetch-site") or "same-origin").lower() not in ("same-origin", "none"):
            return True  # the browser itself says the request comes from another origin

        def ours(url: str) -> bool:
            try:
                parts = urlsplit(url)
            except ValueError:
                return False
            return parts.scheme.lower() in schemes and parts.netloc.lower() in hosts

        origin = _header(scope, b"origin")
        if origin is not None:
            return not ours(origin)
        referer = _header(scope, b"referer")
        return referer is not None and not ours(referer)

    @staticmethod
    def _cookies(scope) -> dict:
        jar = SimpleCookie()
        try:
            jar.load(_header(scope, b"cookie") or "")
        except Exception:  # a malformed cookie header: no cookies
            return {}
        return {k: m.value for k, m in jar.items()}

    @staticmethod
    def _drop_owner_cookie(scope) -> None:
        kept = []
        for key, value in scope.get("headers") or []:
            if key == b"cookie":
                parts = [p for p in value.decode("latin-1").split(";")
                         if p.strip().split("=", 1)[0] not in (COOKIE, CSRF_COOKIE)]
                if not parts:
                    continue
                value = ";".join(parts).strip().encode("latin-1")
            kept.append((key, value))
        scope["headers"] = kept

    def _is_owner(self, scope) -> bool:
        session = scope.get("session") or {}
        try:
            hf_user = session["oauth_info"]["userinfo"]["preferred_username"]
        except (KeyError, TypeError):
            hf_user = None
        return self.access.is_owner(self._cookies(scope), hf_user)

    # -- answers
    @staticmethod
    async def _answer(send, status: int, body: dict, cookies: list[str] = ()) -> None:
        data = json.dumps(body).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        headers += [(b"set-cookie", c.encode("latin-1")) for c in cookies]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    async def _read(receive, cap: int) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, original):
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await original()  # after the body: the connection's own messages (a disconnect)
        return receive

    def _client(self, scope) -> str:
        return client_address(scope)

    # -- the owner's sign-in and sign-out
    def _cookie_lines(self, scope, token: str | None) -> list[str]:
        https = scope.get("scheme") == "https" or (_header(scope, b"x-forwarded-proto") or "").lower() == "https"
        secure = "; Secure" if https else ""
        if token is None:
            return [f"{name}=; Path=/; Max-Age=0; SameSite=Strict{secure}" for name in (COOKIE, CSRF_COOKIE)]
        age = int(self.access.sessions.days * 86400)
        return [f"{COOKIE}={token}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}",
                f"{CSRF_COOKIE}={self.access.csrf_token(token)}; Path=/; Max-Age={age}; SameSite=Strict{secure}"]

    async def _sign_in(self, scope, receive, send) -> None:
        body = await self._read(receive, 4096)
        try:
            password = json.loads(body or b"{}").get("password")
        except (ValueError, AttributeError):
            password = None
        if not isinstance(password, str):
            return await self._answer(send, 400, {"error": 'Send {"password": "..."} as JSON.'})
        try:
            token = self.access.sign_in(password, self._client(scope), _header(scope, b"user-agent") or "")
        except PermissionError as exc:
            code = 429 if "Too many" in str(exc) else 401 if "not the owner" in str(exc) else 403
            return await self._answer(send, code, {"error": str(exc)})
        await self._answer(send, 200, {"ok": True}, self._cookie_lines(scope, token))

    async def _sign_out(self, scope, receive, send) -> None:
        await self._read(receive, 4096)
        self.access.sessions.revoke_token(self._cookies(scope).get(COOKIE))
        await self._answer(send, 200, {"ok": True}, self._cookie_lines(scope, None))

    # -- the handlers behind Gradio's routes
    def _owner_only(self, block_fn) -> bool:
        if block_fn is None:
            return False
        if block_fn.renderable is not None:
            return getattr(block_fn.renderable.fn, "_tuner_guarded", False)
        return getattr(block_fn.fn, "_tuner_guarded", False)

    def _by_api_name(self, name: str):
        return next((f for f in self.demo.fns.values() if f.api_name == name), None)

    async def _quiet(self, scope, send, block_fn, session_hash) -> None:
        """Complete a stranger's page event at once, with no change, without the queue
        (as Gradio's own /cancel completes an event)."""
        from gradio.server_messages import ProcessCompletedMessage

        allowed, wait = self.quiet.allow(self._client(scope))
        if not allowed or not isinstance(session_hash, str) or not 0 < len(session_hash) <= 64:
            return await self._answer(send, 429, {"detail": "Too many requests from this address.",
                                                  "error": "Too many requests from this address."})
        queue = self.demo._queue
        if len(queue.pending_event_ids_session.get(session_hash, ())) >= QUIET_PENDING:
            return await self._answer(send, 429, {"detail": "Too many unanswered requests.",
                                                  "error": "Too many unanswered requests."})
        event_id = uuid.uuid4().hex
        async with queue.pending_message_lock:
            if session_hash not in queue.pending_messages_per_session:
                queue.pending_messages_per_session[session_hash] = asyncio.Queue()
            queue.pending_event_ids_session.setdefault(session_hash, set()).add(event_id)
        outputs = [{"__type__": "update"} for _ in block_fn.outputs]
        queue.pending_messages_per_session[session_hash].put_nowait(
            ProcessCompletedMessage(output={"data": outputs}, success=True, event_id=event_id))
        await self._answer(send, 200, {"event_id": event_id})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"].rstrip("/")
        foreign = self._foreign(scope)
        if method == "POST" and foreign:
            return await self._answer(send, 403, {"detail": "Refused: this request comes from a page of another "
                                                  "site.", "error": "Refused: a cross-origin request."})
        cookies = self._cookies(scope)
        if path.endswith(SIGN_IN_PATH) and method == "POST":
            return await self._sign_in(scope, receive, send)
        if COOKIE in cookies and (foreign or (method not in ("GET", "HEAD", "OPTIONS") and not self.access.csrf_ok(
                cookies.get(COOKIE), _header(scope, CSRF_HEADER.encode())))):
            self._drop_owner_cookie(scope)  # another page's request, or one without the page's token
        if path.endswith(SIGN_OUT_PATH) and method == "POST":
            return await self._sign_out(scope, receive, send)
        if method != "POST" or "/gradio_api/" not in path + "/":
            return await self.app(scope, receive, send)
        tail = path.split("/gradio_api", 1)[1]
        if not any(tail == r or (r.endswith("/") and tail.startswith(r)) for r in POST_ROUTES):
            return await self._answer(send, 403, {"detail": "Refused: not a route this app takes.",
                                                  "error": "Refused."})
        if tail == "/upload":
            return await self._upload(scope, receive, send)
        if tail in ("/cancel", "/reset"):
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        named = self._by_api_name(tail[len("/run/"):].split("/", 1)[0]) if tail.startswith("/run/") else None
        if self._runs_direct(named) and length is not None and length.isdigit() and int(length) > DIRECT_CAP:
            # (refused before it is read; a body whose fn_index names it is checked again once read)
            return await self._answer(send, 413, {"detail": "Request too large.", "error": "Request too large."})
        if length is not None and length.isdigit() and int(length) > JSON_CAP:
            return await self._answer(send, 413, {"detail": "Request too large.", "error": "Request too large."})
        body = await self._read(receive, JSON_CAP)
        if body is None:
            return await self._answer(send, 413, {"detail": "Request too large.", "error": "Request too large."})
        try:
            parsed = json.loads(body) if body else {}
            parsed = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            parsed = {}
        index = parsed.get("fn_index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            return await self._answer(send, 422, {"detail": "fn_index must be a whole number.",
                                                  "error": "fn_index must be a whole number."})
        # the function Gradio will run: the body's fn_index wins over a name in the path
        name = next((tail[len(p):].split("/", 1)[0] for p in ("/run/", "/api/", "/call/v2/", "/call/")
                     if tail.startswith(p)), None)
        block_fn = self.demo.fns.get(index) if index is not None else self._by_api_name(name) if name else None
        if self._owner_only(block_fn) and not self._is_owner(scope):
            events = {event for _block, event in (block_fn.targets or [])}
            if tail != "/queue/join" or events & ACTIONS:
                return await self._answer(send, 403, {"detail": OWNER_ONLY, "error": OWNER_ONLY})
            return await self._quiet(scope, send, block_fn, parsed.get("session_hash"))
        if tail.startswith("/run/") and self._runs_direct(block_fn):
            return await self._direct(scope, send, block_fn, parsed, len(body))
        return await self.app(scope, self._replay(body, receive), send)

    def _runs_direct(self, block_fn) -> bool:
        """A handler `_direct` runs: marked `direct`, on an event with no queue and no pre- or
        postprocessing (whose values it passes as they are), and not an owner's (guarded: its
        guard reads Gradio's request, which only Gradio's route makes). Else Gradio runs it."""
        return (block_fn is not None and getattr(block_fn.fn, "_tuner_direct", False)
                and block_fn.queue is False and block_fn.preprocess is False and block_fn.postprocess is False
                and not self._owner_only(block_fn))

    async def _direct(self, scope, send, block_fn, parsed: dict, size: int) -> None:
        """Run a `direct` handler here, as Gradio's /run route would, for a fraction of its
        cost: a rating is ~1 ms of SQLite, and Gradio's route around it (its middlewares,
        FastAPI's routing and body model, the event's bookkeeping) cost ~4 ms of server CPU
        more, which 25 raters pressing Submit together queue for. The same semantics: the
        session's gr.State values are the inputs' and take the outputs' (Gradio's
        SessionState), other inputs come from the body, and the answer has Gradio's shape.
        A session the server does not know is not created here (a new one costs ~65 ms):
        its states are their defaults, as for a new session, and nothing is kept."""
        import anyio

        def refuse(status: int, why: str):
            return self._answer(send, status, {"detail": why, "error": why})

        session_hash, data = parsed.get("session_hash"), parsed.get("data")
        allowed, wait = self.direct_calls.allow(self._client(scope))
        if not allowed:
            return await refuse(429, f"Too many requests from this address; try again in {wait:.0f} s.")
        if size > DIRECT_CAP:
            return await refuse(413, "Request too large.")
        if not isinstance(session_hash, str) or not 0 < len(session_hash) <= 64:
            return await refuse(422, "session_hash must be a short string.")
        if not isinstance(data, list) or len(data) != len(block_fn.inputs):
            return await refuse(422, f"data must be a list of {len(block_fn.inputs)} values.")
        sessions = self.demo.server_app.state_holder
        state = sessions[session_hash] if session_hash in sessions else None
        inputs = [(state[block._id] if state is not None else _default(block)) if block.stateful else value
                  for block, value in zip(block_fn.inputs, data)]
        start = time.perf_counter()
        outputs = block_fn.outputs
        try:
            result = await anyio.to_thread.run_sync(block_fn.fn, *inputs, limiter=self.demo.limiter)
            if isinstance(result, dict) and result and all(isinstance(k, gr.blocks.Block) for k in result):
                result = [result.get(block, {"__type__": "update"}) for block in outputs]
            elif len(outputs) == 1:
                result = [result]
            if not isinstance(result, (list, tuple)) or len(result) != len(outputs):
                raise ValueError(f"{block_fn.name} returned {len(result) if isinstance(result, (list, tuple)) else 1}"
                                 f" values for {len(outputs)} outputs")
        except Exception as exc:  # as Gradio answers a handler's error: logged, and the message if shown
            from gradio.utils import error_payload

            if not isinstance(exc, gr.Error) or exc.print_exception:
                logging.getLogger(__name__).exception("%s failed", block_fn.name)
            return await self._answer(send, 500, error_payload(exc, self.demo.show_error))
        answer = []
        for block, value in zip(outputs, result):
            if block.stateful:
                if isinstance(value, dict) and value.get("__type__") == "update":  # as Gradio: no value, no change
                    if "value" not in value:
                        answer.append(None)
                        continue
                    value = value["value"]
                if state is None and value != _default(block):
                    state = sessions[session_hash]  # a value to keep: the session is made now
                if state is not None:
                    state[block._id] = value
                answer.append(None)
            else:
                answer.append(value)
        took = time.perf_counter() - start
        await self._answer(send, 200, {"data": answer, "is_generating": False, "duration": took,
                                       "average_duration": took, "render_config": None,
                                       "changed_state_ids": []})

    async def _upload(self, scope, receive, send):
        if not self._is_owner(scope):
            return await self._answer(send, 403, {"detail": "Uploads are for the owner only.",
                                                  "error": "Uploads are for the owner only."})
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit():
            return await self._answer(send, 411, {"detail": "An upload needs a Content-Length."})
        if int(length) > self.max_upload + 64 * 1024:
            return await self._answer(send, 413, {"detail": f"Uploads are limited to {max_upload()} a request."})
        if self.held_uploads() + int(length) > self.upload_cap:
            return await self._answer(send, 507, {"detail": "The upload folder is full: finish or remove earlier "
                                                            "uploads (they are deleted once read)."})
        return await self.app(scope, receive, self._noting_uploads(send))

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


def _default(block):
    """A gr.State's value in a new session (Gradio's SessionState: a copy of its default)."""
    import copy

    value = getattr(block, "value", None)
    return copy.deepcopy(value() if callable(value) else value)


def install(demo: gr.Blocks, access: Access, head: str = "", css: str = "") -> None:
    """Put `OwnerGate` in front of the app Gradio builds when `demo` launches, and give
    launch() the page's `head` (Gradio 6 takes it there, not in the Blocks constructor)."""
    from starlette.middleware import Middleware

    original = demo.launch

    @functools.wraps(original)
    def launch(*args, app_kwargs: dict | None = None, **kwargs):
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(OwnerGate, demo=demo, access=access)]
        if head:
            kwargs["head"] = head + (kwargs.get("head") or "")
        if css:
            kwargs["css"] = css + (kwargs.get("css") or "")
        return original(*args, app_kwargs=app_kwargs, **kwargs)

    demo.launch = launch
