"""Who may do what: the owner's sign-in, and rate limits. No gradio here.

Three modes, from the environment:
- `TUNER_OWNER_PASSWORD` set: the owner signs in with it; the server then
  sets a random session token as an HttpOnly, SameSite=Strict cookie and keeps
  only its SHA-256 (`Sessions`, in the data root), with an expiry; Sign out
  revokes it, and the owner can list and revoke every session. A second,
  readable cookie holds the session's anti-forgery token, which the app's own
  page sends back as a header on every request (see tuner/ui/access.py).
- `TUNER_OWNER` set (on a Space with `hf_oauth: true`): the owner is the
  Hugging Face user of that name, signed in through Hugging Face.
- neither: open mode for local use; everyone is the owner and the page says so.
Both variables may be set; either proof then makes a request the owner's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

COOKIE = "tuner_owner"  # the session token: HttpOnly, never readable by a page
CSRF_COOKIE = "tuner_csrf"  # readable by the app's own page, sent back as CSRF_HEADER
CSRF_HEADER = "x-tuner-csrf"
SESSION_DAYS = 14.0


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Sessions:
    """The owner's signed-in browsers: random tokens, kept only as SHA-256 hashes,
    each with an expiry. A stolen database gives no usable cookie; a stolen cookie
    dies at Sign out, at revocation or at expiry, and guessing the password from
    it is impossible (it does not depend on the password).

    `path=None` keeps them in memory (tests, and a data root that cannot be written)."""

    def __init__(self, path: Path | None = None, days: float = SESSION_DAYS, clock=time.time):
        self.path, self.days, self.clock = path, days, clock
        self._lock = threading.Lock()
        if path is not None:
            path = Path(path)
            if not path.exists():  # owner-readable only, like secret.key
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                                     isolation_level=None, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL" if path is not None else "PRAGMA journal_mode=MEMORY")
        self._conn.execute("""CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, created REAL NOT NULL,
            expires REAL NOT NULL, last_seen REAL NOT NULL, client TEXT, agent TEXT, revoked REAL)""")

    def create(self, client: str = "", agent: str = "") -> tuple[str, str]:
        """A new session: (the token for the cookie, its public id for the list)."""
        token, sid = secrets.token_urlsafe(32), secrets.token_hex(4)
        now = self.clock()
        with self._lock:
            self._conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                               (sid, _hash(token), now, now + self.days * 86400, now, client[:64], agent[:160]))
        return token, sid

    def check(self, token) -> str | None:
        """The session id of a live token (not expired, not revoked), else None."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            return None
        now = self.clock()
        with self._lock:
            row = self._conn.execute("SELECT id, last_seen FROM sessions WHERE token_hash = ? AND revoked IS NULL "
                                     "AND expires > ?", (_hash(token), now)).fetchone()
            if row and now - row[1] > 60:  # last seen, to the minute
                self._conn.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, row[0]))
        return row[0] if row else None

    def revoke(self, sid: str) -> bool:
        with self._lock:
            done = self._conn.execute("UPDATE sessions SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                      (self.clock(), sid)).rowcount
        return bool(done)

    def revoke_token(self, token) -> bool:
        sid = self.check(token)
        return self.revoke(sid) if sid else False

    def revoke_all(self, keep: str | None = None) -> int:
        with self._lock:
            now = self.clock()
            return self._conn.execute("UPDATE sessions SET revoked = ? WHERE revoked IS NULL AND expires > ? "
                                      "AND id IS NOT ?", (now, now, keep)).rowcount

    def active(self) -> list[dict]:
        """Live sessions, newest first: id, created, last_seen, expires (epoch s), client, agent."""
        with self._lock:
            rows = self._conn.execute("SELECT id, created, last_seen, expires, client, agent FROM sessions "
                                      "WHERE revoked IS NULL AND expires > ? ORDER BY created DESC",
                                      (self.clock(),)).fetchall()
        keys = ("id", "created", "last_seen", "expires", "client", "agent")
        return [dict(zip(keys, row)) for row in rows]


@dataclass
class Access:
    password: str | None = None
    owner: str | None = None  # a Hugging Face username
    sign_in_attempts: RateLimiter = field(default_factory=lambda: RateLimiter(capacity=5, per_seconds=300))
    sessions: Sessions = field(default_factory=Sessions)
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def from_env(cls, env: dict | None = None) -> Access:
        env = os.environ if env is None else env
        return cls(password=(env.get("TUNER_OWNER_PASSWORD") or None), owner=(env.get("TUNER_OWNER") or "").strip() or None)

    @property
    def open(self) -> bool:
        return not (self.password or self.owner)

    def csrf_token(self, token: str) -> str:
        """The anti-forgery token of a session: readable by the app's page, useless without the session."""
        return hmac.new(self.csrf_key, token.encode("utf-8"), hashlib.sha256).hexdigest()

    def csrf_ok(self, token, offered) -> bool:
        return (isinstance(token, str) and isinstance(offered, str)
                and hmac.compare_digest(offered.encode("utf-8"), self.csrf_token(token).encode("utf-8")))

    def session_of(self, cookies: dict | None) -> str | None:
        return self.sessions.check((cookies or {}).get(COOKIE)) if not self.open else None

    def is_owner(self, cookies: dict | None, hf_user: str | None) -> bool:
        if self.open:
            return True
        if self.session_of(cookies):
            return True
        return bool(self.owner and hf_user and hf_user.casefold() == self.owner.casefold())

    def sign_in(self, password: str | None, client: str, agent: str = "") -> str:
        """A new session token for a right password; a clear refusal otherwise.

        Wrong guesses are limited per client address (5 in 5 minutes)."""
        if not self.password:
            raise PermissionError("Password sign-in is off: TUNER_OWNER_PASSWORD is not set.")
        allowed, wait = self.sign_in_attempts.peek(client)
        if not allowed:
            raise PermissionError(f"Too many wrong passwords from this address; try again in {wait:.0f} s.")
        if hmac.compare_digest((password or "").encode("utf-8"), self.password.encode("utf-8")):
            return self.sessions.create(client, agent)[0]
        self.sign_in_attempts.allow(client)
        raise PermissionError("That is not the owner password.")

    def describe(self) -> str:
        if self.open:
            return "open"
        ways = []
        if self.password:
            ways.append("password")
        if self.owner:
            ways.append(f"Hugging Face user {self.owner}")
        return " or ".join(ways)


class RateLimiter:
    """At most `capacity` events per `per_seconds` for each key (a sliding window)."""

    MAX_KEYS = 10_000  # keys kept before those with no event in the window are dropped

    def __init__(self, capacity: int, per_seconds: float, clock=time.monotonic):
        self.capacity, self.per_seconds, self.clock = capacity, per_seconds, clock
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _window(self, key: str, now: float) -> deque:
        if len(self._events) > self.MAX_KEYS and key not in self._events:  # many addresses: forget the idle
            self._events = {k: e for k, e in self._events.items() if e and now - e[-1] < self.per_seconds}
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.per_seconds:
            events.popleft()
        return events

    def peek(self, key: str) -> tuple[bool, float]:
        """(would an event be allowed now, seconds until one is)."""
        with self._lock:
            now = self.clock()
            events = self._window(key, now)
            if len(events) < self.capacity:
                return True, 0.0
            return False, self.per_seconds - (now - events[0])

    def allow(self, key: str) -> tuple[bool, float]:
        """Count an event if allowed; (allowed, seconds to wait if not)."""
        with self._lock:
            now = self.clock()
            events = self._window(key, now)
            if len(events) >= self.capacity:
                return False, self.per_seconds - (now - events[0])
            events.append(now)
            return True, 0.0


def app_secret(root: Path) -> str:
    """A random secret kept in the data root (created once, owner-readable only):
    it encrypts what the browser keeps for the app, and survives restarts."""
    path = Path(root) / "secret.key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        time.sleep(0.1)
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    return value


# --- who is asking ---------------------------------------------------------------------
SPACE_PROXY = "space"  # trusted_proxies() on a Hugging Face Space: its front proxy, whatever its address


def trusted_proxies(env: dict | None = None) -> tuple:
    """The proxies whose X-Forwarded-For Tuner believes: TUNER_TRUSTED_PROXIES (addresses or
    networks, comma-separated, e.g. "10.0.0.0/8,127.0.0.1"); on a Hugging Face Space, unset,
    its front proxy (every request reaches the app through it); elsewhere none, so a header
    the sender wrote never changes who the sender is (loopback included)."""
    import ipaddress

    env = os.environ if env is None else env
    text = (env.get("TUNER_TRUSTED_PROXIES") or "").strip()
    if not text:
        return (SPACE_PROXY,) if env.get("SPACE_ID") else ()
    networks = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"TUNER_TRUSTED_PROXIES: {part!r} is not an address or network like "
                             "10.0.0.0/8") from None
    return tuple(networks)


def _trusted(host: str, trusted: tuple) -> bool:
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(not isinstance(net, str) and address in net for net in trusted)


def client_address(scope: dict, trusted: tuple = ()) -> str:
    """Who is asking, for rate limits and the raters' names cap: the connection's address,
    unless it is a trusted proxy; then the right-most X-Forwarded-For entry that is not one
    (a proxy appends the address it saw; the entries before it are whatever the sender wrote)."""
    peer = (scope.get("client") or ("unknown",))[0] or "unknown"
    if not trusted or not (SPACE_PROXY in trusted or _trusted(peer, trusted)):
        return _one_person(peer)
    forwarded = ",".join(v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"x-forwarded-for")
    for entry in reversed([e.strip() for e in forwarded.split(",")]):
        if entry and not _trusted(entry, trusted):
            return _one_person(entry)
    return _one_person(peer)


def _one_person(address: str) -> str:
    """An address as one person's: an IPv6 address by its /64 (one home or phone gets a whole /64,
    so its single addresses would make limits per address free to get around)."""
    import ipaddress

    address = address.strip()[:64]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
