"""``SqlAccountStore``: the AccountStore on SQLAlchemy (SQLite file by default, PostgreSQL by URL).

- One Session per method call, so worker threads may call concurrently; the engine is shared.
- Construction never touches the database: the server starts (and answers calls) when the
  database is down; each method then raises ``AccountStoreError``, and ``healthy()`` is False.
- Every SQLAlchemy / DB-API error becomes ``AccountStoreError`` whose message names the operation
  and the problem but no personal data (statement parameters are hidden from SQLAlchemy's errors).
- SQLite: a busy timeout bounds waits on a locked file; writes start with ``BEGIN IMMEDIATE`` so
  the lockout check and the recording of an attempt are one serialised step. PostgreSQL: connect,
  lock and statement timeouts bound waits the same way; the customer row is locked while checking.
- The ID digits are kept only as keyed hashes (HMAC-SHA256 under the key file's key, outside the
  database: ``ivr.accounts.keys``) and compared in constant time; legacy scrypt hashes still verify
  and are re-keyed on success, as are hashes under an older key. Caller IDs of attempts are kept
  only as a keyed hash (for the per-caller limit) and their last four digits.
- No answer tells whether a phone number is registered: ``verification_subject`` gives the customer
  for a registered number and an opaque stand-in for any other (verification against it fails like
  wrong digits, with the same work and the same lockout), and the phone numbers a caller keys
  are limited per caller ID and window (``lookup_keyed_phone``), counted in the database.
- The schema comes from the migrations (``init_schema`` runs them; ``ivr.accounts.schema``); imports
  stream in batches (``import_path``; ``ivr.accounts.bulk``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, delete, event, func, insert, literal, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool, StaticPool

from ivr.accounts import bulk, schema
from ivr.accounts.api import AccountView, LoanView, TransactionView, VerifyStatus
from ivr.accounts.importer import (
    CustomerData,
    currency_exponent,
    normalize_id_digits,
    normalize_phone,
    parse_data,
)
from ivr.accounts.keys import CheckResult, KeyRing, SecretKeyError
from ivr.accounts.models import (
    Account,
    Customer,
    Disclosure,
    Installment,
    Loan,
    PhoneLookup,
    PhoneNumber,
    StoreMeta,
    Transaction,
    VerificationAttempt,
    utc_naive,
)
from ivr.masking import mask_phone, mask_text
from ivr.parts import AccountStoreError

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

_LOOKUP_LOCK = "phone_lookup_lock"  # the store_meta row phone look-ups queue on (migration 0002)
# Stand-ins for unregistered numbers start with a character no customer id may start with.
_STAND_IN_PREFIX = "~"
_MAX_TRANSACTIONS = 100
_CHUNK = 500  # ids per IN (...) list
# A well-formed hash no digits match: verification against a customer without one does the same work.
_DUMMY_DIGEST = "A" * 43
_REKEY_BATCH = 2000
_ANALYZE_AFTER = 10_000  # customers written by one import


def default_key_file() -> Path:
    from ivr.config import Settings

    return Settings().secret_key_file


@dataclass(frozen=True)
class InstallmentView:
    due_date: dt.date
    amount: Decimal
    paid: bool


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def fixed_date_clock(iso_date: str) -> Callable[[], dt.datetime]:
    """A clock whose date is ``iso_date`` (settings.fixed_date) and whose time of day runs on, so
    answers that depend on "today" (days overdue) stay the same in replays and golden transcripts."""
    try:
        day = dt.date.fromisoformat(iso_date)
    except ValueError:
        raise AccountStoreError(f"fixed_date {iso_date!r} is not an ISO date (YYYY-MM-DD)") from None

    def now() -> dt.datetime:
        real = dt.datetime.now().astimezone()
        return real.replace(year=day.year, month=day.month, day=day.day)

    return now


def _cap(value: object, length: int) -> str:
    return value[:length] if isinstance(value, str) else ""


def _money(amount: Decimal, currency: str) -> Decimal:
    """The exact amount with as many places as the currency has (1234000 KRW, 1234.56 CNY)."""
    return amount.quantize(Decimal(1).scaleb(-currency_exponent(currency)))


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start:start + _CHUNK])


class SqlAccountStore:
    """The AccountStore (see ``ivr.accounts.api``) on a SQL database. Thread-safe; blocking."""

    def __init__(
        self,
        url: str,
        *,
        lockout_failures: int = 5,
        lockout_s: float = 1800,
        clock: Callable[[], dt.datetime] = _utc_now,
        busy_timeout_s: float = 2.0,
        write_wait_s: float = 10.0,
        phone_lookup_limit: int = 10,
        phone_lookup_limit_withheld: int = 100,
        phone_lookup_window_s: float = 3600,
        secret_key_file: Path | str | None = None,
    ) -> None:
        if lockout_failures < 1 or lockout_s <= 0 or busy_timeout_s <= 0:
            raise ValueError("lockout_failures, lockout_s and busy_timeout_s must be positive")
        if phone_lookup_limit < 1 or phone_lookup_limit_withheld < 1 or phone_lookup_window_s <= 0:
            raise ValueError("phone_lookup_limit, phone_lookup_limit_withheld and phone_lookup_window_s "
                             "must be positive")
        self._lockout_failures = lockout_failures
        self._lockout = dt.timedelta(seconds=lockout_s)
        self._phone_lookup_limit = phone_lookup_limit
        self._phone_lookup_limit_withheld = phone_lookup_limit_withheld
        self._phone_lookup_window = dt.timedelta(seconds=phone_lookup_window_s)
        self._clock = clock
        self._key_file = Path(secret_key_file) if secret_key_file is not None else default_key_file()
        self._keyring: KeyRing | None = None
        self._key_lock = threading.Lock()
        # An in-memory SQLite database is one shared connection: take turns on it.
        self._serial: AbstractContextManager[Any] = nullcontext()
        # SQLite has one writer at a time; its busy handler polls with growing sleeps and no order,
        # so under load (100 calls verifying at once) writers starved past the busy timeout.
        # Writers of this process queue on a lock instead; the busy timeout is left for other processes.
        self._write_lock: threading.Lock | None = None
        self._write_wait_s = write_wait_s
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError, TypeError):
            raise AccountStoreError("account store: the database URL is not a valid URL") from None
        # for messages: never the password
        self.url_display: str = parsed.render_as_string(hide_password=True)
        self._dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
        if self._dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
            database = parsed.database or ""
            if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
                kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
                self._serial = threading.Lock()
            else:
                self._write_lock = threading.Lock()
                # Connections kept open (SQLAlchemy 1.4 gives file databases a NullPool): each new one cost
                # a connect and its pragmas, and the last one closing checkpointed the WAL with an fsync,
                # ~20 ms per verification (python -m ivr.accounts.bench).
                kwargs["poolclass"] = QueuePool
                kwargs["pool_size"] = 8
                kwargs["max_overflow"] = 32
                kwargs["pool_timeout"] = busy_timeout_s
            if database not in ("", ":memory:") and not database.startswith("file:"):
                folder = Path(database).expanduser().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # the methods will report it, the constructor must not
                    log.warning("cannot create the folder %s of the SQLite database: %s", folder,
                                exc.strerror or type(exc).__name__, extra={"part": "accounts"})
        elif self._dialect == "postgresql":
            kwargs["pool_pre_ping"] = True
            kwargs["pool_timeout"] = busy_timeout_s
            if parsed.get_driver_name() == "psycopg2":
                wait_ms = max(1, int(busy_timeout_s * 1000))
                # A statement still running when the caller has stopped waiting is cancelled by the server.
                statement_ms = max(wait_ms, int(write_wait_s * 1000))
                kwargs["connect_args"] = {
                    "connect_timeout": max(2, math.ceil(busy_timeout_s)),
                    "options": f"-c lock_timeout={wait_ms} -c statement_timeout={statement_ms}",
                }
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self._engine = create_engine(parsed, **kwargs)
        except (SQLAlchemyError, ImportError) as exc:
            raise AccountStoreError(
                f"account store: cannot use database URL {self.url_display}: {type(exc).__name__}"
            ) from None
        if self._dialect == "sqlite":
            _sqlite_transactions(self._engine)
        self._reader = sessionmaker(bind=self._engine, future=True, expire_on_commit=False)
        self._writer = sessionmaker(bind=self._engine.execution_options(ivr_sqlite_begin="IMMEDIATE"),
                                    future=True, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlAccountStore:
        """The store of ``settings.database_url`` with the configured lockout; waits bounded below
        the lookup timeout, so a locked database fails before the caller's timeout fires."""
        return cls(
            settings.database_url,
            clock=fixed_date_clock(settings.fixed_date) if settings.fixed_date else _utc_now,
            lockout_failures=settings.lockout_failures,
            lockout_s=settings.lockout_s,
            phone_lookup_limit=settings.phone_lookup_limit,
            phone_lookup_limit_withheld=settings.phone_lookup_limit_withheld,
            phone_lookup_window_s=settings.phone_lookup_window_s,
            secret_key_file=settings.secret_key_file,
            busy_timeout_s=max(0.1, min(2.0, settings.lookup_timeout_s / 2)),
            write_wait_s=settings.lookup_timeout_s,
        )

    def close(self) -> None:
        """Release the pooled connections."""
        self._engine.dispose()

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _transaction(self, what: str, *, write: bool = False) -> Iterator[Session]:
        factory = self._writer if write else self._reader
        queue = self._write_lock if write and self._write_lock is not None else None
        if queue is not None and not queue.acquire(timeout=self._write_wait_s):
            message = f"account store: {what} failed ({self._dialect}): busy for {self._write_wait_s:.0f} s"
            log.warning(message, extra={"part": "accounts", "event": "db_error"})
            raise AccountStoreError(message)
        try:
            with self._serial, factory() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            message = self._describe(what, exc)
            log.warning(message, extra={"part": "accounts", "event": "db_error"})
            raise AccountStoreError(message) from exc
        finally:
            if queue is not None:
                queue.release()

    def _describe(self, what: str, exc: SQLAlchemyError) -> str:
        orig = getattr(exc, "orig", None)
        if isinstance(exc, IntegrityError):
            detail = "conflicting data (integrity constraint)"
        elif isinstance(exc, OperationalError | InterfaceError) and orig is not None:
            lines = str(orig).strip().splitlines()
            detail = mask_text(lines[0])[:200] if lines else type(orig).__name__
        else:
            detail = type(orig or exc).__name__
        return f"account store: {what} failed ({self._dialect}): {detail}"

    def _now(self) -> dt.datetime:
        return utc_naive(self._clock())

    def _today(self) -> dt.date:
        """The calendar date of the call, in the server's local time zone."""
        moment = self._clock()
        return (moment.astimezone() if moment.tzinfo else moment).date()

    def _no_statement_timeout(self, session: Session) -> None:
        """Bulk work (imports, re-keying) is not bounded by the per-call statement timeout (PostgreSQL)."""
        if self._dialect == "postgresql":
            session.execute(text("SET LOCAL statement_timeout = 0"))

    # ------------------------------------------------------------ schema and data
    def init_schema(self) -> None:
        """Bring the schema to the newest revision (``ivr db upgrade``; existing data is kept; a database
        made before migrations is adopted) and make sure the secret key is there."""
        try:
            with self._serial, self._engine.begin() as conn:
                schema.upgrade(conn)
        except SQLAlchemyError as exc:
            message = self._describe("upgrading the schema", exc)
            log.warning(message, extra={"part": "accounts", "event": "db_error"})
            raise AccountStoreError(message) from exc
        self.keys()

    def schema_revision(self) -> str | None:
        with self._serial, self._engine.connect() as conn:
            return schema.current_revision(conn)

    def start_check(self) -> None:
        """Before serving: the schema must be the one this code knows, and every stored hash's key
        must be in the key file (which must be owner-only). ``SchemaError`` when not; a database that does not
        answer is left to the calls (they apologise and transfer; ``/health`` says so)."""
        try:
            with self._serial, self._engine.connect() as conn:
                schema.check(conn)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("start check: the account database does not answer (%s); serving anyway",
                        type(exc).__name__, extra={"part": "accounts", "event": "db_error"})
            return
        try:
            unknown = self.key_usage(unknown_only=True)
        except SecretKeyError as exc:  # unsafe or malformed key file
            raise schema.SchemaError(str(exc)) from None
        if unknown:
            raise schema.SchemaError(f"{sum(unknown.values())} stored ID hash(es) name key(s) "
                                     f"{', '.join(sorted(unknown))} that {self._key_file} does not hold: restore "
                                     "the key file (a new key cannot verify them); refusing to serve")

    def import_customers(self, data: Sequence[CustomerData] | Mapping[str, Any], source_name: str) -> int:
        """Insert the customers, replacing those with the same id, in one transaction.

        ``data`` is what ``importer.load_file`` returns, or raw parsed file content (validated here).
        A phone number or loan id that belongs to another customer already in the database raises
        ``AccountImportError`` naming ``source_name``; nothing is imported then. Verification
        attempts and disclosures of replaced customers are kept. Returns the number of customers.
        """
        customers = parse_data(data, source_name) if isinstance(data, Mapping) else list(data)
        reader = bulk.Reader(Path(source_name), 0, iter([bulk.Record(c.index, c.line, c) for c in customers]),
                             lambda: 0, True)
        summary = self.import_records(reader, atomic=True, batch_size=max(1, len(customers)))
        return summary.accepted

    def import_file(self, path: Path | str) -> int:
        """Read, validate and import a customer file (see ``bulk``), all or nothing."""
        return self.import_path(path, atomic=True).accepted

    def import_path(self, path: Path | str, *, atomic: bool | None = None, batch_size: int = bulk.DEFAULT_BATCH,
                    progress: bool = False, dry_run: bool = False, workers: int = 1) -> bulk.ImportSummary:
        """Import a YAML, JSON, JSON Lines or CSV customer file (``ivr db import``); see ``bulk``.
        ``atomic`` None: all or nothing for YAML/JSON documents, per batch for streamed files."""
        reader = bulk.open_records(path)
        if atomic is None:
            atomic = reader.whole_document
        if dry_run:
            bar = bulk.Progress(reader.total_bytes, progress)
            return bulk.run_import(reader, keys=self.keys(), begin=None, writer=None, atomic=atomic, batch_size=batch_size,
                                   progress=bar, workers=workers)
        return self.import_records(reader, atomic=atomic, batch_size=batch_size, progress=progress, workers=workers)

    def import_records(self, reader: bulk.Reader, *, atomic: bool, batch_size: int = bulk.DEFAULT_BATCH,
                       progress: bool = False, workers: int = 1) -> bulk.ImportSummary:
        source = str(reader.path)
        writer = bulk.BatchWriter(source, self._now())

        @contextmanager
        def begin() -> Iterator[Any]:
            with self._transaction(f"import from {source}", write=True) as session:
                self._no_statement_timeout(session)  # a batch (or an --atomic file) may take longer than a call
                yield session.connection()

        summary = bulk.run_import(reader, keys=self.keys(), begin=begin, writer=writer, atomic=atomic, batch_size=batch_size,
                                  progress=bulk.Progress(reader.total_bytes, progress), workers=workers)
        if summary.inserted + summary.updated >= _ANALYZE_AFTER:  # fresh statistics for the look-ups' plans
            with self._transaction("analysing the tables", write=True) as session:
                self._no_statement_timeout(session)
                session.execute(text("ANALYZE"))
        log.info("imported %d customers from %s (%d inserted, %d updated, %d unchanged, %d rejected)",
                 summary.accepted, source, summary.inserted, summary.updated, summary.unchanged,
                 len(summary.rejected), extra={"part": "accounts", "event": "import"})
        return summary

    def customers_other_than(self, expected: Sequence[CustomerData]) -> list[str]:
        """The ids of the stored customers that are not one of ``expected`` as it stands (same id, name,
        phone numbers and ID digits); ``ivr db init --demo`` refuses a database holding any."""
        wanted = {c.customer_id: c for c in expected}
        with self._transaction("listing customers") as session:
            rows = session.execute(select(Customer.id, Customer.name, Customer.id_last4_hash)
                                   .order_by(Customer.id)).all()
            phones: dict[str, set[str]] = {}
            for phone, owner in session.execute(select(PhoneNumber.phone, PhoneNumber.customer_id)).all():
                phones.setdefault(owner, set()).add(phone)
        others = []
        keys = self.keys()
        for customer_id, name, secret_hash in rows:
            same = wanted.get(customer_id)
            if (same is None or same.name != name or set(same.phones) != phones.get(customer_id, set())
                    or not keys.check(customer_id, same.id_last4, secret_hash).ok):
                others.append(str(customer_id))
        return others

    # ------------------------------------------------------------ AccountStore
    def customer_by_phone(self, phone: str) -> str | None:
        digits = normalize_phone(phone)
        if digits is None:
            return None
        with self._transaction("phone lookup") as session:
            owner: str | None = session.execute(
                select(PhoneNumber.customer_id).where(PhoneNumber.phone == digits)
            ).scalar_one_or_none()
        return owner

    def verification_subject(self, phone: str) -> str:
        """Whom ID digits given for ``phone`` are checked against: its customer when the number is
        registered, else a stand-in no customer can be (``~`` and a keyed hash of the number, the same
        for every call), against which ``verify_id_last4`` answers WRONG (and, after as many failures
        as a customer, LOCKED), with the same work. Which of the two it is, is not for the caller."""
        owner = self.customer_by_phone(phone)
        if owner is not None:
            return owner
        number = normalize_phone(phone) or _cap(phone, 64)
        return _STAND_IN_PREFIX + self.keys().stand_in(number)

    def lookup_keyed_phone(self, phone: str, *, call_id: str, caller_id: str) -> str | None:
        """``verification_subject`` for a number the caller keyed, counted against the caller ID's
        budget: ``phone_lookup_limit`` look-ups per ``phone_lookup_window_s`` (withheld and invalid
        caller IDs share one budget, ``phone_lookup_limit_withheld``). None once the budget is spent:
        nothing is looked up and nothing recorded.

        Every look-up counts, whether the number is registered or not: counting only the misses would
        tell a caller who is not stopped after N numbers that one of them was a customer's."""
        call = _cap(call_id, 128)
        caller_hashes, caller_masked = self._caller_identity(caller_id)
        caller_hash = caller_hashes[0] if caller_hashes else None
        now = self._now()
        limit = self._phone_lookup_limit if caller_hash is not None else self._phone_lookup_limit_withheld
        with self._transaction("counting phone look-ups", write=True) as session:
            # PostgreSQL: one look-up count at a time (SQLite: BEGIN IMMEDIATE already serialises).
            session.execute(select(StoreMeta.name).where(StoreMeta.name == _LOOKUP_LOCK).with_for_update()).all()
            same_caller = (PhoneLookup.caller_hash.in_(caller_hashes) if caller_hashes
                           else PhoneLookup.caller_hash.is_(None))
            count = session.execute(
                select(func.count()).select_from(PhoneLookup).where(
                    same_caller, PhoneLookup.looked_up_at > now - self._phone_lookup_window)
            ).scalar_one()
            allowed = count < limit
            if allowed:
                session.add(PhoneLookup(call_id=call, caller_hash=caller_hash, looked_up_at=now))
        if not allowed:
            log.warning("phone look-up limit reached for caller %s (%d in %.0f s)", caller_masked, count,
                        self._phone_lookup_window.total_seconds(),
                        extra={"part": "accounts", "event": "phone_lookup_limited", **({"call_id": call} if call else {})})
            return None
        return self.verification_subject(phone)

    def _caller_identity(self, caller_id: str) -> tuple[list[str], str]:
        """The caller ID as the store keeps it: its keyed hashes, under the current key first, then
        under older keys (empty: withheld or not a number), and its masked form (last four digits)."""
        caller_digits = normalize_phone(caller_id)
        caller_masked = mask_phone(caller_digits or _cap(caller_id, 64))[-24:]
        if not caller_digits:
            return [], caller_masked
        return self.keys().caller_hashes(caller_digits), caller_masked

    def verify_id_last4(self, customer_id: str, digits: str, *, call_id: str, caller_id: str) -> VerifyStatus:
        customer = _cap(customer_id, 32)
        call = _cap(call_id, 128)
        caller_hashes, caller_masked = self._caller_identity(caller_id)
        caller_hash = caller_hashes[0] if caller_hashes else None
        keys = self.keys()
        answer = normalize_id_digits(digits)
        # A source elsewhere (the system of record) is asked before the write transaction, never inside it.
        outside = None if self._check_id_in_write else self._check_id(customer, answer)

        now = self._now()
        window_start = now - self._lockout
        attempts = VerificationAttempt
        with self._transaction("recording a verification attempt", write=True) as session:
            # PostgreSQL: the customer row is locked while its hash is read, serialising attempts on one
            # customer (SQLite: BEGIN IMMEDIATE already has).
            if outside is not None and self._dialect == "postgresql":  # no customer row here to lock
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:customer))"), {"customer": customer})
            checked, stored = outside or self._check_id(customer, answer, session)
            matches = checked.ok
            # A success resets the customer's count (not the caller's: an attacker who knows
            # one secret must not launder failures against others). Ids order the attempts.
            last_ok_id = select(func.max(attempts.id)).where(
                attempts.customer_id == customer, attempts.result == VerifyStatus.OK.value,
                attempts.attempted_at > window_start,
            ).scalar_subquery()
            customer_count = select(func.count()).select_from(attempts).where(
                attempts.customer_id == customer, attempts.result == VerifyStatus.WRONG.value,
                attempts.attempted_at > window_start, attempts.id > func.coalesce(last_ok_id, 0),
            ).scalar_subquery()
            # withheld or invalid caller IDs are not lumped together
            caller_count: Any = literal(0)
            if caller_hashes:
                caller_count = select(func.count()).select_from(attempts).where(
                    attempts.caller_hash.in_(caller_hashes), attempts.result == VerifyStatus.WRONG.value,
                    attempts.attempted_at > window_start,
                ).scalar_subquery()
            customer_failures, caller_failures = session.execute(select(customer_count, caller_count)).one()
            if customer_failures >= self._lockout_failures or caller_failures >= self._lockout_failures:
                status = VerifyStatus.LOCKED
            else:
                status = VerifyStatus.OK if matches else VerifyStatus.WRONG
            session.execute(insert(VerificationAttempt).values(  # Core: no unit-of-work flush on the call's path
                customer_id=customer, call_id=call, caller_hash=caller_hash, caller_masked=caller_masked,
                attempted_at=now, result=status.value, success=status is VerifyStatus.OK,
            ))
            if status is VerifyStatus.OK and checked.stale and stored is not None and answer is not None:
                # legacy scrypt or an older key: re-keyed now, from the digits just proven right
                session.execute(update(Customer).where(Customer.id == customer, Customer.id_last4_hash == stored)
                                .values(id_last4_hash=keys.hash_id_digits(customer, answer))
                                .execution_options(synchronize_session=False))
        log.info("ID verification for customer %s from caller %s: %s", customer, caller_masked, status.value,
                 extra={"part": "accounts", "event": "verify", "outcome": status.value,
                        **({"call_id": call} if call else {})})
        return status

    _check_id_in_write = True  # the hash is in this database: read (and locked) in the write transaction

    def _check_id(self, customer: str, answer: str | None,
                  session: Session | None = None) -> tuple[CheckResult, str | None]:
        """Whether ``answer`` (normalised, None: malformed) are the customer's ID digits, and the stored
        hash it was checked against (its row locked on PostgreSQL). The same work whether or not the
        customer exists."""
        assert session is not None
        stored: str | None = session.execute(
            select(Customer.id_last4_hash).where(Customer.id == customer).with_for_update()
        ).scalar_one_or_none()
        keys = self.keys()
        checked = keys.check(customer, answer or "", stored or f"hmac${keys.current_id}${_DUMMY_DIGEST}")
        return CheckResult(checked.ok and stored is not None and answer is not None, checked.stale), stored

    def accounts(self, customer_id: str) -> list[AccountView]:
        with self._transaction("reading accounts") as session:
            rows = session.execute(
                select(Account.number, Account.currency, Account.balance)
                .where(Account.customer_id == _cap(customer_id, 32)).order_by(Account.id)
            ).all()
        return [AccountView(number[-4:], currency, _money(balance, currency)) for number, currency, balance in rows]

    def loans(self, customer_id: str) -> list[LoanView]:
        today = self._today()
        with self._transaction("reading loans") as session:
            loans = session.execute(
                select(Loan).where(Loan.customer_id == _cap(customer_id, 32)).order_by(Loan.loan_id)
            ).scalars().all()
        views = []
        for loan in loans:
            overdue_days = 0
            if loan.status == "overdue" and loan.next_due_date is not None:
                overdue_days = max(0, (today - loan.next_due_date).days)
            views.append(LoanView(
                loan_id=loan.loan_id,
                currency=loan.currency,
                outstanding=_money(loan.outstanding, loan.currency),
                status=loan.status,
                days_overdue=overdue_days,
                next_due_date=loan.next_due_date,
                next_due_amount=(None if loan.next_due_amount is None
                                 else _money(loan.next_due_amount, loan.currency)),
            ))
        return views

    def repayment_schedule(self, customer_id: str, loan_id: str) -> list[InstallmentView]:
        """The installments of one of the customer's loans, by due date (empty if none or not theirs)."""
        with self._transaction("reading a repayment schedule") as session:
            rows = session.execute(
                select(Installment.due_date, Installment.amount, Installment.paid, Loan.currency)
                .join(Loan, Loan.loan_id == Installment.loan_id)
                .where(Loan.customer_id == _cap(customer_id, 32), Loan.loan_id == _cap(loan_id, 32))
                .order_by(Installment.due_date)
            ).all()
        return [InstallmentView(due, _money(amount, currency), bool(paid)) for due, amount, paid, currency in rows]

    def recent_transactions(self, customer_id: str, limit: int = 3) -> list[TransactionView]:
        count = max(0, min(int(limit), _MAX_TRANSACTIONS))
        if count == 0:
            return []
        with self._transaction("reading transactions") as session:
            rows = session.execute(
                select(Transaction.date, Transaction.amount, Transaction.currency, Transaction.description)
                .where(Transaction.customer_id == _cap(customer_id, 32))
                .order_by(Transaction.date.desc(), Transaction.id.asc())
                .limit(count)
            ).all()
        return [TransactionView(date, _money(amount, currency), currency, description)
                for date, amount, currency, description in rows]

    def record_disclosure(self, call_id: str, customer_id: str, what: str) -> None:
        with self._transaction("recording a disclosure", write=True) as session:
            session.add(Disclosure(
                call_id=_cap(call_id, 128), customer_id=_cap(customer_id, 32),
                what=mask_text(_cap(what, 400))[:200], disclosed_at=self._now(),
            ))

    def purge_audit(self, before: dt.datetime) -> dict[str, int]:
        """Delete verification attempts and disclosures older than ``before`` (retention, ``ivr purge``).

        Never cuts into the lockout window: attempts younger than ``lockout_s`` are kept whatever
        ``before`` says. Returns the rows deleted per table."""
        cutoff = min(utc_naive(before), self._now() - self._lockout)
        with self._transaction("purging old audit rows", write=True) as session:
            attempts = session.execute(
                delete(VerificationAttempt).where(VerificationAttempt.attempted_at < cutoff)
            ).rowcount
            disclosures = session.execute(delete(Disclosure).where(Disclosure.disclosed_at < cutoff)).rowcount
        return {"verification_attempts": int(attempts or 0), "disclosures": int(disclosures or 0)}

    def healthy(self) -> bool:
        try:
            with self._serial, self._engine.connect() as conn:
                conn.execute(text("SELECT 1")).scalar_one()
        except Exception as exc:  # a health probe reports, it never raises
            log.debug("account store unhealthy: %s", type(exc).__name__, extra={"part": "accounts"})
            return False
        return True

    # ------------------------------------------------------------ the secret key
    def keys(self) -> KeyRing:
        """The key ring of the key file (read once; created on first need, owner-only)."""
        with self._key_lock:
            if self._keyring is None:
                self._keyring = KeyRing.load(self._key_file)
            return self._keyring

    def rotate_key(self) -> KeyRing:
        """A new current key in the key file (older ones keep verifying); this store uses it at once."""
        with self._key_lock:
            self._keyring = KeyRing.load(self._key_file).rotate()
            return self._keyring

    def key_usage(self, *, unknown_only: bool = False) -> dict[str, int]:
        """How many stored ID hashes each key (outermost) or scheme protects, e.g. {"k2": 10, "scrypt": 3}.
        ``unknown_only``: only the key ids the key file lacks."""
        keys = self.keys()
        known = keys.key_ids
        usage: dict[str, int] = {}
        with self._transaction("counting hashes per key") as session:
            for kid in known:
                mine = or_(Customer.id_last4_hash.like(f"hmac${kid}$%"), Customer.id_last4_hash.like(f"hmac${kid}+%"))
                if not unknown_only:
                    usage[kid] = session.execute(select(func.count()).where(mine)).scalar_one()
            if not unknown_only:
                usage["scrypt"] = session.execute(
                    select(func.count()).where(Customer.id_last4_hash.like("scrypt$%"))).scalar_one()
            conditions = [Customer.id_last4_hash.like(f"hmac${kid}$%") for kid in known]
            conditions += [Customer.id_last4_hash.like(f"hmac${kid}+%") for kid in known]
            conditions.append(Customer.id_last4_hash.like("scrypt$%"))
            other = session.execute(select(Customer.id_last4_hash).where(~or_(*conditions)).limit(1000)).scalars().all()
        for stored in other:
            kid = stored.partition("$")[2].partition("$")[0].split("+")[0] or "?"
            usage[kid] = usage.get(kid, 0) + 1
        return {k: v for k, v in usage.items() if v} if not unknown_only else usage

    def rekey(self, batch_size: int = _REKEY_BATCH) -> int:
        """Wrap every ID hash under an older key under the current one (no digits needed, one transaction
        per batch); legacy scrypt hashes need the digits and wait for the next success. The count wrapped."""
        keys = self.keys()
        current = keys.current_id
        done = 0
        while True:
            with self._transaction("re-keying ID hashes", write=True) as session:
                self._no_statement_timeout(session)
                rows = session.execute(
                    select(Customer.id, Customer.id_last4_hash).where(
                        Customer.id_last4_hash.like("hmac$%"),
                        ~Customer.id_last4_hash.like(f"hmac${current}$%"),
                        ~Customer.id_last4_hash.like(f"hmac${current}+%"),
                    ).limit(batch_size)
                ).all()
                for customer_id, stored in rows:
                    wrapped = keys.wrap(stored)
                    if wrapped is not None:
                        session.execute(update(Customer).where(Customer.id == customer_id,
                                                               Customer.id_last4_hash == stored)
                                        .values(id_last4_hash=wrapped).execution_options(synchronize_session=False))
            done += len(rows)
            if len(rows) < batch_size:
                return done


def _sqlite_transactions(engine: Any) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions; writers take the write lock up front; WAL.

    pysqlite would defer BEGIN to the first write, so a read-then-write (the lockout check, then
    the attempt) would not be atomic. Foreign keys are switched on for every connection.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            # WAL: readers never block the writer's commit (with the default rollback journal, many
            # calls reading accounts at once kept verification writes "locked" under load).
            if cursor.execute("PRAGMA database_list").fetchone()[2]:  # a file, not :memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("ivr_sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {'IMMEDIATE' if mode == 'IMMEDIATE' else 'DEFERRED'}")
