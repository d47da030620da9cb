"""Keyed secrets (issue #19): a dump of the robot's database without the key reveals no ID digits;
the key file is owner-only and never in the database; key rotation; legacy scrypt hashes; migrations
and the start check of ``ivr serve``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ivr.accounts import commands, schema
from ivr.accounts.api import VerifyStatus
from ivr.accounts.importer import load_file
from ivr.accounts.keys import KeyRing, SecretKeyError
from ivr.accounts.store import SqlAccountStore
from ivr.config import Settings

DEMO = Path(commands.__file__).resolve().parent / "demo.yaml"
SECRETS = {"C001": "4821", "C002": "7305", "C003": "6193"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "secret.key"


def demo_store(tmp_path: Path, key_file: Path, name: str = "accounts.db") -> SqlAccountStore:
    store = SqlAccountStore(f"sqlite:///{tmp_path / name}", secret_key_file=key_file)
    store.init_schema()
    store.import_file(DEMO)
    return store


def dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT * FROM "{n}"').fetchall() for n in names}


# ---------------------------------------------------------------- the dump without the key
def test_a_dump_without_the_key_reveals_no_id_digits(tmp_path: Path, key_file: Path) -> None:
    """An attacker with the whole database file and the code, but not the key file, tries all 10,000
    candidates against every stored value under every scheme the code uses, with every key the
    database could hold: none matches. With the key, the same search finds each customer's digits
    (so the search itself is sound)."""
    store = demo_store(tmp_path, key_file)
    assert store.verify_id_last4("C001", "4821", call_id="c", caller_id="13800000001") is VerifyStatus.OK
    store.close()
    rows = dump(tmp_path / "accounts.db")
    hashes = {cid: h for cid, _, h, *_ in rows["customers"]}
    candidates = [f"{n:04d}" for n in range(10_000)]
    stolen_keys = [str(v).encode() for table in rows.values() for row in table for v in row if v is not None]

    def search(customer: str, stored: str, keys: list[bytes]) -> list[str]:
        raw = base64.urlsafe_b64decode(stored.rsplit("$", 1)[1] + "=")
        found = []
        for key in keys:
            for digits in candidates:
                message = b"id4\x00" + customer.encode() + b"\x00" + digits.encode()
                if hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), raw):
                    found.append(digits)
        return found

    for customer, stored in hashes.items():
        assert stored.startswith("hmac$")
        # the usual guesses of a key, and every value the dump holds (a key kept in the database would be here)
        guesses = [b"", b"ivr", b"secret", *stolen_keys[:200]]
        assert search(customer, stored, guesses) == [], customer
        # unkeyed hashes of the digits are not there either
        for digits in candidates:
            for plain in (hashlib.sha256(digits.encode()).hexdigest(),
                          hashlib.sha256((customer + digits).encode()).hexdigest()):
                assert plain not in repr(rows)
    # the dump holds no key material: no 32-byte base64 value in store_meta
    assert all(len(str(value)) < 40 for _, value in rows["store_meta"])
    # with the key the search works: that is the whole protection, and why the key lives elsewhere
    key = KeyRing.load(key_file, create=False)._key(KeyRing.load(key_file).current_id)
    for customer, stored in hashes.items():
        assert search(customer, stored, [key]) == [SECRETS[customer]]


def test_the_key_file_is_owner_only_outside_the_database(tmp_path: Path, key_file: Path) -> None:
    store = demo_store(tmp_path, key_file)
    store.close()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key_line = next(line for line in key_file.read_text().splitlines() if line.startswith("k1-"))
    assert key_line.split()[1].encode() not in (tmp_path / "accounts.db").read_bytes()
    os.chmod(key_file, 0o644)  # readable by others: refused, and the message says how to fix it
    with pytest.raises(SecretKeyError, match=r"secret\.key: .*may be read by others \(mode 0644\).*chmod 600"):
        KeyRing.load(key_file)
    os.chmod(key_file, 0o600)
    key_file.write_text("k1-00000000 not-a-key\n")
    with pytest.raises(SecretKeyError) as info:
        KeyRing.load(key_file)
    assert "line 1" in str(info.value) and "not-a-key" not in str(info.value)


def test_two_customers_with_the_same_digits_have_unrelated_hashes(key_file: Path) -> None:
    ring = KeyRing.load(key_file)
    assert ring.hash_id_digits("C001", "1234") != ring.hash_id_digits("C002", "1234")
    assert ring.hash_id_digits("C001", "1234") == ring.hash_id_digits("C001", "1234")


def test_a_lost_key_is_an_error_not_wrong_digits(tmp_path: Path, key_file: Path) -> None:
    """A replaced key file must not turn every customer's right digits into failures and lockouts."""
    store = demo_store(tmp_path, key_file)
    store.close()
    key_file.unlink()
    fresh = SqlAccountStore(f"sqlite:///{tmp_path / 'accounts.db'}", secret_key_file=tmp_path / "other.key")
    with pytest.raises(SecretKeyError, match="does not hold"):
        fresh.verify_id_last4("C001", "4821", call_id="c", caller_id="")
    with pytest.raises(schema.SchemaError, match="refusing to serve"):
        fresh.start_check()
    fresh.close()


# ---------------------------------------------------------------- rotation
def test_rotation_rekeys_on_success_and_by_batch(tmp_path: Path, key_file: Path) -> None:
    store = demo_store(tmp_path, key_file)
    k1 = store.keys().current_id
    before = {cid: h for cid, _, h, *_ in dump(tmp_path / "accounts.db")["customers"]}
    assert all(h.startswith(f"hmac${k1}$") for h in before.values())
    ring = store.rotate_key()
    k2 = ring.current_id
    assert k2.startswith("k2-") and ring.key_ids == (k1, k2)
    assert store.key_usage() == {k1: 3}
    # old hashes still verify; a success re-keys that customer under k2
    assert store.verify_id_last4("C001", "4821", call_id="c", caller_id="") is VerifyStatus.OK
    assert store.key_usage() == {k1: 2, k2: 1}
    assert store.verify_id_last4("C002", "0000", call_id="c", caller_id="") is VerifyStatus.WRONG
    assert store.key_usage() == {k1: 2, k2: 1}  # a failure changes nothing
    # the batch wraps the rest under k2 without knowing the digits
    assert store.rekey(batch_size=1) == 2
    after = {cid: h for cid, _, h, *_ in dump(tmp_path / "accounts.db")["customers"]}
    assert after["C002"].startswith(f"hmac${k2}+{k1}$") and after["C003"].startswith(f"hmac${k2}+{k1}$")
    assert store.key_usage() == {k2: 3}
    for customer, digits in SECRETS.items():
        assert store.verify_id_last4(customer, digits, call_id="c", caller_id="") is VerifyStatus.OK
    assert store.verify_id_last4("C003", "6194", call_id="c", caller_id="") is VerifyStatus.WRONG
    # after its success, a wrapped hash is replaced by a plain one under k2
    final = {cid: h for cid, _, h, *_ in dump(tmp_path / "accounts.db")["customers"]}
    assert all(h.startswith(f"hmac${k2}$") for h in final.values())
    store.close()


def test_caller_lockout_survives_a_rotation(tmp_path: Path, key_file: Path) -> None:
    """Failures logged under the old key still count against the same caller ID after a rotation."""
    store = SqlAccountStore(f"sqlite:///{tmp_path / 'a.db'}", secret_key_file=key_file, lockout_failures=3)
    store.init_schema()
    store.import_file(DEMO)
    for customer in ("C001", "C002"):
        assert store.verify_id_last4(customer, "0000", call_id="c", caller_id="13912345678") is VerifyStatus.WRONG
    store.rotate_key()
    assert store.verify_id_last4("C003", "0000", call_id="c", caller_id="13912345678") is VerifyStatus.WRONG
    assert store.verify_id_last4("C003", "6193", call_id="c", caller_id="13912345678") is VerifyStatus.LOCKED
    store.close()


def test_rotate_key_command(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = demo_store(tmp_path, key_file)
    store.close()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'accounts.db'}", secret_key_file=key_file)
    parser = argparse.ArgumentParser(prog="ivr")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["db", "rotate-key", "--rekey"])
    assert args.handler(args, settings) == 0
    out = capsys.readouterr().out
    ring = KeyRing.load(key_file)
    assert len(ring.key_ids) == 2
    assert f"new current key {ring.current_id}" in out and "re-keyed 3" in out and f"{ring.current_id}: 3" in out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for line in key_file.read_text().splitlines():
        if not line.startswith("#"):
            assert line.split()[1] not in out  # no key printed


# ---------------------------------------------------------------- legacy scrypt hashes
def _scrypt(digits: str) -> str:
    salt = os.urandom(16)
    derived = hashlib.scrypt(digits.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"scrypt${2**14}$8$1${b64(salt)}${b64(derived)}"


def test_legacy_scrypt_hashes_verify_and_are_upgraded(tmp_path: Path, key_file: Path) -> None:
    store = demo_store(tmp_path, key_file)
    with sqlite3.connect(tmp_path / "accounts.db") as conn:  # as the store before #19 wrote them
        for customer, digits in SECRETS.items():
            conn.execute("UPDATE customers SET id_last4_hash = ? WHERE id = ?", (_scrypt(digits), customer))
    assert store.key_usage() == {"scrypt": 3}
    assert store.verify_id_last4("C002", "7306", call_id="c", caller_id="") is VerifyStatus.WRONG
    assert store.verify_id_last4("C002", "7305", call_id="c", caller_id="") is VerifyStatus.OK
    assert store.key_usage() == {store.keys().current_id: 1, "scrypt": 2}
    assert store.rekey() == 0  # scrypt hashes need the digits: they wait for a success
    assert store.verify_id_last4("C002", "7305", call_id="c", caller_id="") is VerifyStatus.OK
    store.close()


# ---------------------------------------------------------------- migrations
OLD_SCHEMA = """
CREATE TABLE customers (id VARCHAR(32) NOT NULL, name VARCHAR(100) NOT NULL, id_last4_hash VARCHAR(200) NOT NULL,
  imported_at DATETIME NOT NULL, CONSTRAINT pk_customers PRIMARY KEY (id));
CREATE TABLE store_meta (name VARCHAR(64) NOT NULL, value VARCHAR(200) NOT NULL, CONSTRAINT pk_store_meta PRIMARY KEY (name));
INSERT INTO store_meta VALUES ('caller_hash_key', 'c2VjcmV0LWtleS1pbi10aGUtZGF0YWJhc2UtMzJieXRlcw');
"""


def test_a_database_from_before_migrations_is_adopted_and_loses_its_in_database_key(
        tmp_path: Path, key_file: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO customers VALUES ('C001', '王芳', ?, '2026-01-01 00:00:00.000000')", (_scrypt("4821"),))
    store = SqlAccountStore(f"sqlite:///{db}", secret_key_file=key_file)
    with pytest.raises(schema.SchemaError, match="ivr db upgrade"):
        store.start_check()  # not served before the upgrade
    store.init_schema()
    store.start_check()
    assert store.schema_revision() == schema.head_revision()
    rows = dump(db)
    assert ("caller_hash_key",) not in [r[:1] for r in rows["store_meta"]]
    assert {"phone_numbers", "accounts", "loans", "transactions", "verification_attempts", "phone_lookups",
            "disclosures", "release_events", "alembic_version"} <= set(rows)
    assert store.verify_id_last4("C001", "4821", call_id="c", caller_id="13800000001") is VerifyStatus.OK
    store.init_schema()  # again: nothing to do
    store.close()


def test_the_start_check_refuses_a_schema_it_does_not_know(tmp_path: Path, key_file: Path) -> None:
    store = demo_store(tmp_path, key_file)
    store.start_check()
    engine = create_engine(f"sqlite:///{tmp_path / 'accounts.db'}", future=True)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(schema.SchemaError, match="revision 9999, which this version of ivr does not know"):
        store.start_check()
    with pytest.raises(schema.SchemaError, match="does not know"):
        store.init_schema()  # and never "upgrades" it either
    engine.dispose()
    store.close()


def test_the_start_check_serves_when_the_database_is_down(tmp_path: Path, key_file: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = SqlAccountStore(f"sqlite:///{blocker}/sub/accounts.db", secret_key_file=key_file)
    store.start_check()  # the calls apologise and transfer; /health says the database is down
    store.close()


def test_migrations_on_a_real_postgresql(key_file: Path) -> None:
    from tests.services import postgres_cluster

    with postgres_cluster() as url:
        store = SqlAccountStore(url, secret_key_file=key_file)
        try:
            store.init_schema()
            store.init_schema()
            store.start_check()
            store.import_customers(load_file(DEMO), str(DEMO))
            assert store.verify_id_last4("C003", "6193", call_id="c", caller_id="") is VerifyStatus.OK
            assert store.schema_revision() == schema.head_revision()
        finally:
            store.close()


def test_ivr_serve_refuses_an_outdated_schema(tmp_path: Path, key_file: Path) -> None:
    """Through the real command line: `ivr serve` stops before listening, naming the problem (a serve
    that started instead would run into the timeout and fail the test)."""
    import subprocess
    import sys

    engine = create_engine(f"sqlite:///{tmp_path / 'accounts.db'}", future=True)
    with engine.begin() as conn:
        schema.upgrade(conn, "0001")  # a database not upgraded since the baseline
    engine.dispose()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "IVR_DATABASE_URL": f"sqlite:///{tmp_path / 'accounts.db'}", "IVR_SECRET_KEY_FILE": str(key_file),
           "IVR_AGI_PORT": "0", "IVR_HTTP_PORT": "0", "IVR_SPOOL_DIR": str(tmp_path / "spool"),
           "IVR_TRANSCRIPTS_DIR": str(tmp_path / "transcripts"), "IVR_LOG_DIR": str(tmp_path / "log"),
           "IVR_SOUNDS_DIR": str(tmp_path / "sounds")}

    def ivr(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ivr", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    served = ivr("serve")
    assert served.returncode == 2, served.stderr[-2000:]
    assert f"revision 0001, not {schema.head_revision()}: run `ivr db upgrade`" in served.stderr
    upgraded = ivr("db", "upgrade")
    assert upgraded.returncode == 0 and f"schema at revision {schema.head_revision()}" in upgraded.stdout
