"""Asking an OpenAI-compatible endpoint (`{url}/chat/completions`: Ollama, vLLM, llama.cpp's
server, a hosted API) for one answer, over httpx; the judging itself is `ratings.judge`.

Where the request (and its key) may go:
- the key is read from an environment variable the owner names (`api_key`), never typed into
  the page or stored, and only a variable a judge may send (`key_name_allowed`);
- no redirect is followed (the key would go along): a 3xx is an error naming both addresses;
- an endpoint on a loopback, private or link-local address (this machine, its network, the cloud
  metadata service) is refused unless the owner allows it (`allow_private`; the app sets it from
  TUNER_JUDGE_ALLOW_PRIVATE=1): every address the name resolves to is checked before the request,
  and the address actually connected to is checked again before any byte is sent (TLS included),
  so a name that resolves elsewhere the second time (DNS rebinding) is caught. httpx has no hook
  for that, so the connection goes through httpcore (httpx's engine) with a network backend that
  checks the peer (`PeerCheckedTransport`). Through a proxy (the environment's, chosen as urllib
  chooses it) the peer is the proxy: only the check before the request applies then.

A busy server is asked again (tenacity): on HTTP 429, 502, 503 and 504 and on a connection that
fails, up to `RetryPolicy.attempts` tries, waiting as Retry-After says (up to
`RetryPolicy.longest_retry_after`) or else with exponential back-off and jitter.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urljoin, urlparse, urlunparse

import httpcore
import httpx
import tenacity


class JudgeError(RuntimeError):
    """A judge that cannot be used or that answered nothing usable; the message says why."""


# --- the key: the name of an environment variable, never the key itself ------------------------------
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def key_name_allowed(name: str) -> bool:
    """Whether a judge may send the variable `name` as its key: a name ending in _API_KEY, or one the
    server lists in TUNER_JUDGE_KEYS (comma-separated); never Tuner's own settings (TUNER_…)."""
    listed = {n.strip() for n in os.environ.get("TUNER_JUDGE_KEYS", "").split(",") if n.strip()}
    if name.upper().startswith("TUNER_"):
        return False
    return name.endswith("_API_KEY") or name in listed


def api_key(key_env: str) -> str | None:
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


# --- the address ------------------------------------------------------------------------------------
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


def public_url(url: str) -> str:
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


class _PeerCheckedBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, refusing a private peer once connected and before anything is
    sent (the TLS handshake comes after connect_tcp): the name may resolve to another address than
    when it was checked (DNS rebinding)."""

    def __init__(self, shown: str):
        self.shown, self.inner = shown, httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        peer = str(stream.get_extra_info("server_addr")[0])
        if private_address(peer):
            stream.close()
            raise _private_refused(self.shown, host, peer)
        return stream

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # never asked: no uds= is given
        raise JudgeError("A judge endpoint is reached over TCP only.")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


# httpcore's errors as httpx's, the most specific first (httpx does the same inside HTTPTransport)
_AS_HTTPX = ((httpcore.ConnectTimeout, httpx.ConnectTimeout), (httpcore.ReadTimeout, httpx.ReadTimeout),
             (httpcore.WriteTimeout, httpx.WriteTimeout), (httpcore.PoolTimeout, httpx.PoolTimeout),
             (httpcore.ConnectError, httpx.ConnectError), (httpcore.ReadError, httpx.ReadError),
             (httpcore.WriteError, httpx.WriteError), (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
             (httpcore.LocalProtocolError, httpx.LocalProtocolError),
             (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
             (httpcore.TimeoutException, httpx.TimeoutException), (httpcore.NetworkError, httpx.NetworkError),
             (httpcore.ProtocolError, httpx.ProtocolError))


class PeerCheckedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore connection pool (httpcore's public API) whose network
    backend refuses a private peer before anything is sent. The response is read whole."""

    def __init__(self, shown: str, ssl_context: ssl.SSLContext):
        self.pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_PeerCheckedBackend(shown))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                           target=request.url.raw_path)
        try:
            answer = self.pool.request(request.method, url, headers=request.headers.raw, content=request.stream,
                                       extensions=request.extensions)
        except Exception as exc:
            mapped = next((to for found, to in _AS_HTTPX if isinstance(exc, found)), None)
            if mapped is None:
                raise  # JudgeError (a private peer) and anything else as it is
            raise mapped(str(exc), request=request) from exc
        return httpx.Response(answer.status, headers=answer.headers, content=answer.content,
                              extensions=answer.extensions)

    def close(self) -> None:
        self.pool.close()


def _environment_proxy(address: str) -> str | None:
    """The proxy the environment sets for this address (HTTPS_PROXY, NO_PROXY…), chosen as urllib
    chooses it (the judge's client was urllib's until httpx)."""
    parsed = urlparse(address)
    proxy = urllib.request.getproxies().get(parsed.scheme.lower())
    if not proxy or urllib.request.proxy_bypass(parsed.netloc.rsplit("@", 1)[-1]):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


# --- asking again ------------------------------------------------------------------------------------
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # busy or restarting: worth asking again


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a request is asked again (RETRY_STATUSES, failed connections)."""

    attempts: int = 5  # tries in all, the first included
    first_wait: float = 1.0  # seconds of back-off before the second try, doubling (with jitter) after
    longest_wait: float = 30.0  # the back-off's cap
    longest_retry_after: float = 60.0  # a Retry-After longer than this ends the tries at once


RETRY = RetryPolicy()


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """The seconds a response's Retry-After asks to wait (delta-seconds or an HTTP date), or None."""
    value = (response.headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _tls_failure(exc: BaseException) -> bool:
    """Whether a connection failed on TLS (a certificate): asking again would fail the same way."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _retryable_error(exc: BaseException) -> bool:
    """A connection refused, reset or closed without an answer, a name not resolved for now."""
    transient = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                 httpx.RemoteProtocolError, socket.gaierror)
    return isinstance(exc, transient) and not _tls_failure(exc)


def _asked_to_wait(state: tenacity.RetryCallState) -> float | None:
    outcome = state.outcome
    if outcome is None or outcome.failed:
        return None
    return retry_after(outcome.result())


@dataclass
class _GaveUp:
    """What the last try gave when the tries ran out (a response or an exception), and how many."""

    outcome: tenacity.Future
    tries: int
    seconds: float


# --- one endpoint, one client ------------------------------------------------------------------------
class Endpoint:
    """One OpenAI-compatible server: one httpx client (thread-safe; connections kept alive) for
    every question of a judge run. `chat` asks one question, asking again while the server is busy."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 120.0, allow_private: bool = False,
                 retry: RetryPolicy | None = None):
        self.address = endpoint_url(url)
        self.shown = public_url(self.address)
        self.key, self.allow_private, self.retry = key, allow_private, retry or RETRY
        self.stopped = threading.Event()  # set by `abandon`: the run has failed, stop waiting to retry
        context = ssl.create_default_context()  # the system's certificates, as urllib used
        proxy = _environment_proxy(self.address)
        if proxy or allow_private:
            self.client = httpx.Client(proxy=proxy, verify=context, trust_env=False, follow_redirects=False,
                                       timeout=timeout)
        else:
            self.client = httpx.Client(transport=PeerCheckedTransport(self.shown, context), trust_env=False,
                                       follow_redirects=False, timeout=timeout)
        self.check_before = not allow_private  # through a proxy, the only check there is

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.abandon()
        self.client.close()

    def abandon(self) -> None:
        """Wake every thread waiting to ask again: it gives up (the run has already failed)."""
        self.stopped.set()

    def _sleep(self, seconds: float) -> None:
        if self.stopped.wait(seconds):
            raise JudgeError(f"The judge run stopped while waiting to ask {self.shown} again.")

    def _post(self, body: bytes) -> httpx.Response:
        if self.check_before:
            _check_host(self.address, self.shown)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return self.client.post(self.address, content=body, headers=headers)

    def _retrying(self) -> tenacity.Retrying:
        """Ask again on RETRY_STATUSES and on a failed connection: wait as Retry-After says, else back off."""
        policy = self.retry
        backoff = tenacity.wait_exponential_jitter(initial=policy.first_wait, max=policy.longest_wait,
                                                   jitter=policy.first_wait)

        def wait(state: tenacity.RetryCallState) -> float:
            asked = _asked_to_wait(state)
            return backoff(state) if asked is None else asked

        def too_long(state: tenacity.RetryCallState) -> bool:
            return (_asked_to_wait(state) or 0.0) > policy.longest_retry_after

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts) | too_long, wait=wait, sleep=self._sleep,
            retry=(tenacity.retry_if_exception(_retryable_error)
                   | tenacity.retry_if_result(lambda r: r.status_code in RETRY_STATUSES)),
            retry_error_callback=lambda state: _GaveUp(state.outcome, state.attempt_number,
                                                       state.seconds_since_start or 0.0))

    def chat(self, model: str, messages: list[dict]) -> str:
        """One answer (temperature 0). No redirect is followed; a private endpoint is refused unless allowed."""
        body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode("utf-8")
        tries, seconds = 1, 0.0
        try:
            answer = self._retrying()(self._post, body)
            if isinstance(answer, _GaveUp):
                tries, seconds = answer.tries, answer.seconds
                answer = answer.outcome.result()  # the last response, or its exception raised
        except (httpx.RequestError, httpx.InvalidURL, OSError, ValueError) as exc:
            # refused, unknown host, timed out, not HTTP at all, a bad port
            again = f" after {tries_said(tries)}" if tries > 1 else ""
            raise JudgeError(f"The judge endpoint {self.shown} could not be reached ({exc}){again}: is the server "
                             "running and the URL right?") from None
        return self._read(answer, tries, seconds)

    def _read(self, response: httpx.Response, tries: int, seconds: float) -> str:
        code = response.status_code
        if 300 <= code < 400:
            location = (response.headers.get("location") or "").strip()
            target = public_url(urljoin(self.address, location)) if location else "no address (no Location header)"
            raise JudgeError(f"The judge endpoint {self.shown} answered HTTP {code}, redirecting to {target}; "
                             "Tuner does not follow redirects (your key would go along): set the final address "
                             "as the judge instead.")
        if code >= 400 or code < 200:
            detail = response.content[:300].decode("utf-8", "replace").strip()
            text = f"The judge endpoint {self.shown} answered HTTP {code} {response.reason_phrase}"
            text += f": {detail}" if detail else ""
            if code in RETRY_STATUSES:
                text += _gave_up(response, tries, seconds, self.retry)
            raise JudgeError(text)
        return _content(response.content, self.shown)


def tries_said(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


def _gave_up(response: httpx.Response, tries: int, seconds: float, policy: RetryPolicy) -> str:
    asked = retry_after(response)
    if asked is not None and asked > policy.longest_retry_after:
        return (f" (it asks to wait {asked:.0f} s before asking again, longer than the "
                f"{policy.longest_retry_after:.0f} s Tuner waits: try again later)")
    return f" (the same after {tries_said(tries)} over {seconds:.0f} s: the server is busy or down; try again later)"


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


def chat_completion(url: str, model: str, messages: list[dict], key: str | None = None, timeout: float = 120.0,
                    allow_private: bool = False, retry: RetryPolicy | None = None) -> str:
    """One answer from an OpenAI-compatible `/chat/completions` endpoint (temperature 0), on a client
    of its own (a judge run shares one: `Endpoint`). No redirect is followed; an endpoint on a
    private address is refused unless `allow_private`; a busy server is asked again (`retry`)."""
    with Endpoint(url, key, timeout, allow_private, retry) as endpoint:
        return endpoint.chat(model, messages)
