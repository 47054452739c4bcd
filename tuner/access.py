"""Who may do what: the owner's sign-in, and rate limits. No gradio here.

Three modes, from the environment:
- `TUNER_OWNER_PASSWORD` set: the owner signs in with it; the browser then
  holds a cookie whose value is an HMAC of the password, checked on every
  owner action on the server.
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
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

COOKIE = "tuner_owner"
_TOKEN_MESSAGE = b"tuner owner v1"


@dataclass
class Access:
    password: str | None = None
    owner: str | None = None  # a Hugging Face username
    sign_in_attempts: RateLimiter = field(default_factory=lambda: RateLimiter(capacity=5, per_seconds=300))

    @classmethod
    def from_env(cls, env: dict | None = None) -> Access:
        env = os.environ if env is None else env
        return cls(password=(env.get("TUNER_OWNER_PASSWORD") or None), owner=(env.get("TUNER_OWNER") or "").strip() or None)

    @property
    def open(self) -> bool:
        return not (self.password or self.owner)

    def token(self) -> str | None:
        if not self.password:
            return None
        return hmac.new(self.password.encode("utf-8"), _TOKEN_MESSAGE, hashlib.sha256).hexdigest()

    def is_owner(self, cookies: dict | None, hf_user: str | None) -> bool:
        if self.open:
            return True
        token = self.token()
        offered = (cookies or {}).get(COOKIE)
        if token and isinstance(offered, str) and hmac.compare_digest(offered, token):
            return True
        return bool(self.owner and hf_user and hf_user.casefold() == self.owner.casefold())

    def sign_in(self, password: str | None, client: str) -> str:
        """The cookie value for a right password; a clear refusal otherwise.

        Wrong guesses are limited per client address (5 in 5 minutes)."""
        if not self.password:
            raise PermissionError("Password sign-in is off: TUNER_OWNER_PASSWORD is not set.")
        allowed, wait = self.sign_in_attempts.peek(client)
        if not allowed:
            raise PermissionError(f"Too many wrong passwords from this address; try again in {wait:.0f} s.")
        if hmac.compare_digest((password or "").encode("utf-8"), self.password.encode("utf-8")):
            return self.token()
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

    def __init__(self, capacity: int, per_seconds: float, clock=time.monotonic):
        self.capacity, self.per_seconds, self.clock = capacity, per_seconds, clock
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _window(self, key: str, now: float) -> deque:
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
