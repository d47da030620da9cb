"""The console's session key, signed expiring session cookies and CSRF tokens (HMAC-SHA256, stdlib only).

A session cookie is ``name.expiry.nonce.signature``: it cannot be forged or extended without the key, it
expires on its own (``SESSION_S``), and the user's role is read from the user table on every request
(a role change or a removal applies at once). The CSRF token of a form is an HMAC of the session's nonce:
a page of another site cannot know it, and it changes with every login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

SESSION_S = 8 * 3600  # a working day
KEY_FILE = "session.key"


def load_key(folder: Path) -> bytes:
    """The console's secret key (32 random bytes, owner-only), created on first need."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"{path}: the console's session key is damaged (delete it: everyone logs in again)") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Session:
    user: str
    expires: int
    nonce: str


class Signer:
    def __init__(self, key: bytes, session_s: int = SESSION_S) -> None:
        self._key = key
        self.session_s = session_s

    def new_session(self, user: str, now: float | None = None) -> tuple[Session, str]:
        session = Session(user, int((now or time.time()) + self.session_s), secrets.token_urlsafe(16))
        body = f"{session.user}.{session.expires}.{session.nonce}"
        return session, f"{body}.{_mac(self._key, 'session|' + body)}"

    def read_session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session the cookie carries, or None (missing, forged, malformed or expired)."""
        if not cookie or len(cookie) > 512:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, _mac(self._key, "session|" + body)):
            return None
        try:
            user, expires, nonce = body.split(".")
            session = Session(user, int(expires), nonce)
        except ValueError:
            return None
        return session if session.expires > (now or time.time()) else None

    def csrf(self, nonce: str) -> str:
        """The CSRF token of a session (or, for the login form, of its pre-session nonce)."""
        return _mac(self._key, "csrf|" + nonce)

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(nonce))
