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
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr
from gradio.context import LocalContext

from tuner.access import COOKIE, Access

OWNER_ONLY = "Owner only: sign in as the owner (top of the main page) to do this."
ACTIONS = {"click", "submit", "upload"}
PUBLIC_PAGES = {"rate"}


def public(fn):
    """Mark a handler as callable by anyone (sign-in, raters)."""
    fn._tuner_public = True
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

    return bool(os.environ.get("OAUTH_CLIENT_ID")) and importlib.util.find_spec("authlib") is not None


def request_is_owner(access: Access, request) -> bool:
    return access.is_owner(_cookies(request), hf_username(request))


def _checked(fn, access: Access, action: bool):
    def allowed() -> bool:
        return request_is_owner(access, LocalContext.request.get(None))

    def refuse():
        if action:
            raise gr.Error(OWNER_ONLY, title="Owner only")
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


SET_COOKIE_JS = """
(token) => {
  if (!token) return;
  const secure = location.protocol === 'https:' ? '; Secure' : '';
  document.cookie = `%s=${token}; path=/; max-age=2592000; SameSite=Lax${secure}`;
  location.reload();
}
""" % COOKIE

CLEAR_COOKIE_JS = """
() => { document.cookie = '%s=; path=/; max-age=0; SameSite=Lax'; location.reload(); }
""" % COOKIE


def owner_bar(access: Access):
    """The top of the owner's page: the open-mode banner, or the owner's sign-in.

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
            token = gr.Textbox(visible="hidden", elem_id="owner-token")
        if access.owner and sign_in_available():
            gr.LoginButton(scale=1)
        sign_out = gr.Button("Sign out", scale=1, elem_id="owner-sign-out", size="sm")

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
        @public
        def on_sign_in(text, request: gr.Request):
            client = getattr(getattr(request, "client", None), "host", None) or "unknown"
            try:
                return access.sign_in(text, client), "Signed in; reloading…"
            except PermissionError as exc:
                return "", f"⚠️ {exc}"

        sign_in.click(on_sign_in, [password], [token, status], api_name="owner_sign_in").then(
            None, [token], None, js=SET_COOKIE_JS)
        password.submit(on_sign_in, [password], [token, status], api_name=False).then(
            None, [token], None, js=SET_COOKIE_JS)
    sign_out.click(None, None, None, js=CLEAR_COOKIE_JS)
    return whoami, status
