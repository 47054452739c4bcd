"""Call a running Gradio app's event handlers over HTTP, as any script could:
no browser, no gradio_client conveniences, any fn_index, any cookie, any path
(`raw` sends a request line exactly as written), from any loopback address."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from urllib.parse import urlsplit

import httpx


def call(url: str, fn_index: int, data: list, cookies: dict | None = None, session_hash: str | None = None,
         timeout: float = 60.0, event_data: dict | None = None, client: httpx.Client | None = None) -> dict:
    """Join the queue for one event and wait for its end.

    `client`: a connection kept open across calls, as a browser keeps one (a new
    httpx.Client costs ~30 ms of CPU for its TLS context, even for plain http).
    Returns {"success": bool, "data": [...] or None, "error": str or None}."""
    with _client(url, cookies, timeout, client) as http:
        return _call(http, fn_index, data, session_hash or uuid.uuid4().hex[:11], event_data)


def _client(url: str, cookies: dict | None, timeout: float, client: httpx.Client | None):
    """The caller's open connection, or a new one for this call only."""
    if client is not None:
        return contextlib.nullcontext(client)
    return httpx.Client(base_url=url, cookies=cookies or {}, headers=page_headers(cookies), timeout=timeout)


def page_headers(cookies: dict | None) -> dict:
    """What the app's own page adds to its requests: the session's anti-forgery
    header, read from the readable tuner_csrf cookie (tuner.ui.access.CSRF_JS)."""
    token = (cookies or {}).get("tuner_csrf")
    return {"X-Tuner-CSRF": token} if token else {}


def sign_in(url: str, password: str, **headers) -> dict:
    """Sign in as the owner through the app's route; the cookies the browser would keep."""
    answer = httpx.post(f"{url}/tuner/owner/sign-in", json={"password": password}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.cookies)


def _call(client: httpx.Client, fn_index: int, data: list, session_hash: str, event_data: dict | None) -> dict:
    joined = client.post("/gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": session_hash,
        "event_data": event_data, "trigger_id": None})
    if joined.status_code != 200:
        return {"success": False, "data": None, "error": f"HTTP {joined.status_code}: {joined.text[:300]}"}
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                return {"success": bool(message.get("success")), "data": output.get("data"),
                        "error": output.get("error")}
    return {"success": False, "data": None, "error": "the stream ended without a result"}


def call_named(url: str, api_name: str, data: list, cookies: dict | None = None, lane: str = "call",
               timeout: float = 60.0, client: httpx.Client | None = None) -> dict:
    """Run a handler by its api_name as a script would: POST /gradio_api/call/<name> and read
    its stream (lane "call"), or one POST to /gradio_api/run/<name> (lane "run").
    Returns {"success", "data", "error", "status"} like `call` (status: the POST's)."""
    with _client(url, cookies, timeout, client) as http:
        posted = http.post(f"/gradio_api/{lane}/{api_name}", json={"data": data})
        if posted.status_code != 200:
            return {"success": False, "data": None, "error": f"HTTP {posted.status_code}: {posted.text[:300]}",
                    "status": posted.status_code}
        if lane == "run":
            return {"success": True, "data": posted.json().get("data"), "error": None, "status": 200}
        event = posted.json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/{api_name}/{event}") as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    payload = line[5:].strip()
                    data = json.loads(payload) if kind == "complete" else None
                    return {"success": kind == "complete", "data": data,
                            "error": None if kind == "complete" else payload, "status": 200}
    return {"success": False, "data": None, "error": "the stream ended without a result", "status": 200}


def call_as_page(cfg: dict, url: str, fn_index: int, data: list, cookies: dict | None = None,
                 session_hash: str | None = None, timeout: float = 60.0,
                 client: httpx.Client | None = None) -> dict:
    """Send an event the way the page itself does: through the queue, or, for an
    event made with queue=False, as one POST to /gradio_api/run/<api_name>."""
    dependency = next(d for d in cfg["dependencies"] if d["id"] == fn_index)
    if dependency.get("queue") is not False:
        return call(url, fn_index, data, cookies, session_hash, timeout, client=client)
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash or uuid.uuid4().hex[:11],
            "event_data": None, "trigger_id": None}
    with _client(url, cookies, timeout, client) as http:
        answer = http.post(f"/gradio_api/run/{dependency['api_name']}", json=body)
    if answer.status_code != 200:
        return {"success": False, "data": None, "error": f"HTTP {answer.status_code}: {answer.text[:300]}"}
    return {"success": True, "data": answer.json().get("data"), "error": None}


def config(url: str, cookies: dict | None = None) -> dict:
    """The page's config; the studio's is the owner's alone (pass the owner's cookies)."""
    answer = httpx.get(f"{url}/config", cookies=cookies or {}, timeout=30)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    return answer.json()


def default_inputs(cfg: dict, fn_index: int) -> list:
    """The values the page itself would send: each input component's initial value."""
    values = {c["id"]: c.get("props", {}).get("value") for c in cfg["components"]}
    dependency = next(d for d in cfg["dependencies"] if d["id"] == fn_index)
    return [values.get(i) for i in dependency["inputs"]]


def owner_client(url: str, cookies: dict, timeout: float = 60.0, **options) -> httpx.Client:
    """A connection as the owner's page makes its requests: the cookies and the anti-forgery header."""
    return httpx.Client(base_url=url, cookies=cookies, headers=page_headers(cookies), timeout=timeout, **options)


def from_address(url: str, address: str, cookies: dict | None = None, timeout: float = 60.0,
                 headers: dict | None = None, **options) -> httpx.Client:
    """A connection whose source is another loopback address (127.0.0.2, …): to the server,
    another machine, so rate limits and the raters' names cap count it apart."""
    return httpx.Client(base_url=url, cookies=cookies or {}, headers={**page_headers(cookies), **(headers or {})},
                        timeout=timeout, transport=httpx.HTTPTransport(local_address=address), **options)


def raw(url: str, method: str, target: str, body: bytes = b"", headers: dict | None = None,
        timeout: float = 30.0) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request with the request line exactly as given (httpx would tidy
    /rate/../x into /x); returns (status, body). The connection is closed after it."""
    parts = urlsplit(url)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def is_skip(data: list | None, cfg: dict | None = None, fn_index: int | None = None) -> bool:
    """True when every output is a no-op update (gr.skip()). Server-side state
    outputs (None in the answer) are left out when `cfg` names the event."""
    if data is None:
        return False
    if cfg is not None:
        kinds = {c["id"]: c.get("type") for c in cfg["components"]}
        outputs = next(d for d in cfg["dependencies"] if d["id"] == fn_index)["outputs"]
        data = [d for d, o in zip(data, outputs) if kinds.get(o) != "state"]
    return all(_noop(d) for d in data)


def _noop(update) -> bool:
    return isinstance(update, dict) and all(k == "__type__" or _noop(v) for k, v in update.items())
