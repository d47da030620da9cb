"""The secret key that protects the caller's low-entropy secrets, kept outside the database.

Four ID digits have 10,000 values: whoever holds a hash of them and the way to compute it finds them
with 10,000 guesses, whatever the work factor. What protects them is a key the database does not
hold. Every secret the account store keeps is therefore an HMAC-SHA256 under a key read from
``settings.secret_key_file`` (``IVR_SECRET_KEY_FILE``, default ``var/secret.key``):

- ID digits: ``hmac$<key id>$<base64 HMAC(key, "id4" | customer id | digits)>``: the customer id is
  in the message, so two customers with the same digits have unrelated hashes.
- caller IDs in the attempt and look-up logs, and the stand-ins for unregistered numbers.

The key file is text, one key a line, ``<key id> <urlsafe base64 of 32 random bytes>`` (the id:
``k<n>-`` and 8 hex digits of the key's SHA-256, so a regenerated key never passes for a lost one), ``#``
comments; the last line is the current key, earlier ones only verify. It is created on first need
(owner-only, 0600, in a folder made 0700) and refused when others may read it or a line is
malformed (the error names the file and line, never the key). ``rotate()`` appends a new key.

Hashes under an older key are re-keyed by the store on the next successful verification (under the
current key, from the digits just given) or by ``ivr db rotate-key --rekey``, which wraps them without
knowing the digits: ``hmac$k2+k1$<HMAC(k2, "wrap" | raw HMAC under k1)>`` (verified by recomputing
both layers; ``k2+k1`` stands for the two key ids). Legacy ``scrypt$...`` hashes still verify and are replaced on success.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from ivr.parts import AccountStoreError

# "k<n>-<first 8 hex of SHA-256 of the key>": a regenerated key never takes the id of a lost one
_KEY_ID = re.compile(r"k([0-9]{1,6})-[0-9a-f]{8}")
_KEY_BYTES = 32


class SecretKeyError(AccountStoreError):
    """The key file is missing where it must exist, unsafe, or malformed; or a hash names an unknown key."""


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class CheckResult:
    """The answer of :meth:`KeyRing.check`: whether the digits matched, and whether the stored hash
    should be replaced by one under the current key (legacy scheme, older or wrapped key)."""

    ok: bool
    stale: bool


def _scrypt_check(digits: str, stored: str) -> bool:
    """A legacy ``scrypt$n$r$p$salt$hash`` (before issue #19): constant-time comparison."""
    _, n, r, p, salt, expected = stored.split("$")
    raw = unb64(expected)
    derived = hashlib.scrypt(digits.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(raw),
                             maxmem=64 * 1024 * 1024)
    return hmac.compare_digest(derived, raw)


class KeyRing:
    """The keys of one key file: the current one signs, all verify. Thread-safe (immutable after load)."""

    def __init__(self, path: Path, keys: dict[str, bytes], current: str) -> None:
        self.path = path
        self._keys = dict(keys)
        self.current_id = current

    # ------------------------------------------------------------ the file
    @classmethod
    def load(cls, path: Path, *, create: bool = True) -> KeyRing:
        """Read the key file; with ``create``, make it (one fresh key) when it does not exist."""
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise SecretKeyError(f"{path}: no such secret key file (IVR_SECRET_KEY_FILE)")
            _create(path)
        try:
            info = path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretKeyError(
                    f"{path}: the secret key file may be read by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"it must be owner-only: chmod 600 {path}")
            text = path.read_text(encoding="ascii")
        except SecretKeyError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretKeyError(f"{path}: cannot read the secret key file: "
                                 f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        keys: dict[str, bytes] = {}
        current = ""
        for number, line in enumerate(text.splitlines(), start=1):
            content = line.split("#", 1)[0].strip()
            if not content:
                continue
            parts = content.split()
            if len(parts) != 2 or not _KEY_ID.fullmatch(parts[0]):
                raise SecretKeyError(f"{path}: line {number}: expected '<key id> <base64 key>' with an id "
                                     "like k1-0a1b2c3d (the line is not shown: it may hold a key)")
            try:
                raw = unb64(parts[1])
            except (ValueError, TypeError):
                raw = b""
            if len(raw) != _KEY_BYTES or hashlib.sha256(raw).hexdigest()[:8] != parts[0].split("-")[1]:
                raise SecretKeyError(f"{path}: line {number}: key {parts[0]}: not {_KEY_BYTES} bytes of "
                                     "urlsafe base64 matching its id")
            if parts[0] in keys:
                raise SecretKeyError(f"{path}: line {number}: key id {parts[0]} appears twice")
            keys[parts[0]] = raw
            current = parts[0]
        if not keys:
            raise SecretKeyError(f"{path}: the secret key file holds no key")
        return cls(path, keys, current)

    def rotate(self) -> KeyRing:
        """Append a new current key to the file (atomically replaced, owner-only); the new ring."""
        number = max(int(k[1:].split("-")[0]) for k in self._keys) + 1
        lines = [f"{kid} {b64(raw)}" for kid, raw in self._keys.items()]
        lines.append(_key_line(number))
        _write_private(self.path, _HEADER + "\n".join(lines) + "\n")
        return KeyRing.load(self.path, create=False)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _key(self, kid: str) -> bytes:
        try:
            return self._keys[kid]
        except KeyError:
            raise SecretKeyError(f"a stored hash names key {kid!r}, which {self.path} does not hold (was the key "
                                 "file replaced? restore it; a new key cannot verify old hashes)") from None

    # ------------------------------------------------------------ ID digits
    @staticmethod
    def _id_message(customer_id: str, digits: str) -> bytes:
        return b"id4\x00" + customer_id.encode() + b"\x00" + digits.encode()

    def hash_id_digits(self, customer_id: str, digits: str) -> str:
        raw = hmac.new(self._keys[self.current_id], self._id_message(customer_id, digits), hashlib.sha256).digest()
        return f"hmac${self.current_id}${b64(raw)}"

    def check(self, customer_id: str, digits: str, stored: str) -> CheckResult:
        """Whether ``digits`` are the customer's, against any scheme the store has used; constant-time.

        Raises ``SecretKeyError`` for a hash under a key this ring lacks (a lost key file must not
        look like wrong digits and lock customers out)."""
        scheme, _, rest = stored.partition("$")
        if scheme == "scrypt":
            try:
                return CheckResult(_scrypt_check(digits, stored), True)
            except (ValueError, TypeError):
                return CheckResult(False, False)
        if scheme != "hmac":
            return CheckResult(False, False)
        chain, _, encoded = rest.partition("$")
        kids = chain.split("+")  # outermost first
        try:
            expected = unb64(encoded)
        except (ValueError, TypeError):
            return CheckResult(False, False)
        value = hmac.new(self._key(kids[-1]), self._id_message(customer_id, digits), hashlib.sha256).digest()
        for kid in reversed(kids[:-1]):
            value = hmac.new(self._key(kid), b"wrap\x00" + value, hashlib.sha256).digest()
        return CheckResult(hmac.compare_digest(value, expected), chain != self.current_id)

    def wrap(self, stored: str) -> str | None:
        """An ``hmac$`` hash under an older key, wrapped under the current one (no digits needed);
        None when it needs nothing (already current) or cannot be wrapped (legacy scrypt)."""
        scheme, _, rest = stored.partition("$")
        chain, _, encoded = rest.partition("$")
        if scheme != "hmac" or chain.split("+")[0] == self.current_id:
            return None
        for kid in chain.split("+"):
            self._key(kid)  # unknown key: refuse rather than wrap something unverifiable
        raw = hmac.new(self._keys[self.current_id], b"wrap\x00" + unb64(encoded), hashlib.sha256).digest()
        return f"hmac${self.current_id}+{chain}${b64(raw)}"

    # ------------------------------------------------------------ phone numbers
    def caller_hashes(self, digits: str) -> list[str]:
        """The caller ID's keyed hash (hex, 64) under the current key first, then under each older key
        (attempts logged before a rotation still count against the same caller)."""
        order = [self.current_id, *(k for k in reversed(self._keys) if k != self.current_id)]
        return [hmac.new(self._keys[k], b"caller\x00" + digits.encode(), hashlib.sha256).hexdigest() for k in order]

    def stand_in(self, number: str) -> str:
        """A keyed digest of a number nobody has (the stand-in verified against): 31 hex digits."""
        return hmac.new(self._keys[self.current_id], b"stand-in\x00" + number.encode(), hashlib.sha256).hexdigest()[:31]

    def fingerprint(self, content: bytes) -> str:
        """A keyed digest of a customer's imported content (with the digits): re-imports that change
        nothing are recognised; without the key it tells nothing."""
        return hmac.new(self._keys[self.current_id], b"content\x00" + content, hashlib.sha256).hexdigest()


_HEADER = ("# ivr secret keys (IVR_SECRET_KEY_FILE): owner-only, never committed, never in the database.\n"
           "# One key a line, '<id> <base64>'; the last line is the current key. `ivr db rotate-key` adds one.\n")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _key_line(number: int) -> str:
    raw = secrets.token_bytes(_KEY_BYTES)
    return f"k{number}-{hashlib.sha256(raw).hexdigest()[:8]} {b64(raw)}"


_create_lock = threading.Lock()


def _create(path: Path) -> None:
    """A new key file with one key; a file another process created first is kept."""
    with _create_lock:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(_HEADER + _key_line(1) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, path)  # appears whole, and never over a key file made meanwhile
        except FileExistsError:
            pass
        except OSError as exc:
            raise SecretKeyError(f"{path}: cannot create the secret key file: {exc.strerror}") from None
        finally:
            temporary.unlink(missing_ok=True)
