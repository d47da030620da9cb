"""Console users and the console's audit log, in one small SQLite file (``settings.console_dir/console.db``).

Passwords are stored as scrypt hashes (a random 16-byte salt per user; n=2**14, r=8, p=1: about 50 ms and
16 MB per check, so guessing is slow). Every change made through the console (a draft edit, a publish, a
rollback, a user change) is one audit row: who, when (UTC), what.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROLES = ("viewer", "editor", "publisher", "admin")  # each role can do what the ones before it can
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
DB_FILE = "console.db"


class UserError(ValueError):
    """A user name, role or password is not acceptable, or the user does not exist; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this user has ``role`` or a stronger one."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    user: str
    action: str
    detail: str


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def hash_password(password: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    salt = salt or os.urandom(16)
    return salt, hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return role


class ConsoleStore:
    """Users and the audit log. One short connection per operation (the server calls it from threads)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / DB_FILE
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
        with self._connect() as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, salt BLOB NOT NULL,"
                " hash BLOB NOT NULL, created TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
                " user TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    # -- users
    def add_user(self, name: str, role: str, password: str, *, by: str, replace: bool = False) -> User:
        if not NAME.match(name):
            raise UserError(f"user name {name!r}: a letter, then up to 31 letters, digits, '_' or '-'")
        check_role(role)
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise UserError(f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        salt, digest = hash_password(password)
        with self._connect() as db:
            exists = db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise UserError(f"user {name!r} exists already (--replace sets a new role and password)")
            db.execute("INSERT OR REPLACE INTO users (name, role, salt, hash, created) VALUES (?, ?, ?, ?, ?)",
                       (name, role, salt, digest, _now()))
            self._audit(db, by, "user " + ("replaced" if exists else "added"), f"{name} as {role}")
        return User(name, role)

    def set_role(self, name: str, role: str, *, by: str) -> None:
        check_role(role)
        with self._connect() as db:
            if db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name)).rowcount != 1:
                raise UserError(f"no user {name!r}")
            self._audit(db, by, "user role", f"{name} is now {role}")

    def remove_user(self, name: str, *, by: str) -> None:
        with self._connect() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount != 1:
                raise UserError(f"no user {name!r}")
            self._audit(db, by, "user removed", name)

    def get(self, name: str) -> User | None:
        with self._connect() as db:
            row = db.execute("SELECT name, role FROM users WHERE name = ?", (name,)).fetchone()
        return User(row[0], row[1]) if row else None

    def users(self) -> list[User]:
        with self._connect() as db:
            return [User(n, r) for n, r in db.execute("SELECT name, role FROM users ORDER BY name")]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is theirs; the same work is done for an unknown name (no timing hint)."""
        with self._connect() as db:
            row = db.execute("SELECT name, role, salt, hash FROM users WHERE name = ?", (name,)).fetchone()
        if len(password) > MAX_PASSWORD:
            return None
        salt, stored = (row[2], row[3]) if row else (b"\0" * 16, b"\0" * 32)
        _, digest = hash_password(password, salt)
        if row and hmac.compare_digest(digest, stored):
            return User(row[0], row[1])
        return None

    # -- the audit log
    def record(self, user: str, action: str, detail: str) -> None:
        with self._connect() as db:
            self._audit(db, user, action, detail)

    @staticmethod
    def _audit(db: sqlite3.Connection, user: str, action: str, detail: str) -> None:
        db.execute("INSERT INTO audit (at, user, action, detail) VALUES (?, ?, ?, ?)",
                   (_now(), user, action, detail[:4000]))

    def audit(self, limit: int = 200) -> list[AuditEntry]:
        with self._connect() as db:
            rows = db.execute("SELECT id, at, user, action, detail FROM audit ORDER BY id DESC LIMIT ?",
                              (limit,)).fetchall()
        return [AuditEntry(*row) for row in rows]
