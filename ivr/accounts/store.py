"""``SqlAccountStore``: the AccountStore on SQLAlchemy (SQLite file by default, PostgreSQL by URL).

- One Session per method call, so worker threads may call concurrently; the engine is shared.
- Construction never touches the database: the server starts (and answers calls) when the
  database is down; each method then raises ``AccountStoreError``, and ``healthy()`` is False.
- Every SQLAlchemy / DB-API error becomes ``AccountStoreError`` whose message names the operation
  and the problem but no personal data (statement parameters are hidden from SQLAlchemy's errors).
- SQLite: a busy timeout bounds waits on a locked file; writes start with ``BEGIN IMMEDIATE`` so
  the lockout check and the recording of an attempt are one serialised step. PostgreSQL: connect,
  lock and statement timeouts bound waits the same way; the customer row is locked while checking.
- The ID digits are kept only as salted scrypt hashes and compared in constant time; caller IDs
  of attempts only as a keyed hash (for the per-caller limit) and their last four digits.
- No answer tells whether a phone number is registered: ``verification_subject`` gives the customer
  for a registered number and an opaque stand-in for any other (verification against it fails like
  wrong digits, with the same scrypt work and the same lockout), and the phone numbers a caller keys
  are limited per caller ID and window (``lookup_keyed_phone``), counted in the database.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, delete, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ivr.accounts.api import AccountView, LoanView, TransactionView, VerifyStatus
from ivr.accounts.importer import (
    AccountImportError,
    CustomerData,
    currency_exponent,
    load_file,
    normalize_id_digits,
    normalize_phone,
    parse_data,
)
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
    metadata,
    utc_naive,
)
from ivr.masking import mask_phone, mask_text
from ivr.parts import AccountStoreError

if TYPE_CHECKING:
    from ivr.config import Settings

log = logging.getLogger(__name__)

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32
_CALLER_KEY_NAME = "caller_hash_key"
# Stand-ins for unregistered numbers start with a character no customer id may start with.
_STAND_IN_PREFIX = "~"
_MAX_TRANSACTIONS = 100
_CHUNK = 500  # ids per IN (...) list


# ---------------------------------------------------------------- secrets
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text_: str) -> bytes:
    return base64.urlsafe_b64decode(text_ + "=" * (-len(text_) % 4))


def hash_secret(digits: str) -> str:
    """A salted scrypt hash of the ID digits, self-describing: ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(digits.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                             dklen=_SCRYPT_LEN)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(derived)}"


def check_secret(digits: str, stored: str) -> bool:
    """Whether ``digits`` match the stored hash; constant-time comparison."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = hashlib.scrypt(digits.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                 dklen=len(_unb64(expected)))
        return hmac.compare_digest(derived, _unb64(expected))
    except (ValueError, TypeError):
        log.warning("a stored ID hash is malformed", extra={"event": "verify_hash_malformed"})
        return False


_DUMMY_HASH = f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(_SCRYPT_LEN))}"


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
        self._caller_key: bytes | None = None
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

    # ------------------------------------------------------------ schema and data
    def init_schema(self) -> None:
        """Create the tables that are missing (existing data is kept) and the store's hashing key."""
        try:
            with self._serial, self._engine.begin() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as exc:
            message = self._describe("creating the schema", exc)
            log.warning(message, extra={"part": "accounts", "event": "db_error"})
            raise AccountStoreError(message) from exc
        self._load_caller_key()

    def import_customers(self, data: Sequence[CustomerData] | Mapping[str, Any], source_name: str) -> int:
        """Insert the customers, replacing those with the same id, in one transaction.

        ``data`` is what ``importer.load_file`` returns, or raw parsed file content (validated here).
        A phone number or loan id that belongs to another customer already in the database raises
        ``AccountImportError`` naming ``source_name``; nothing is imported then. Verification
        attempts and disclosures of replaced customers are kept. Returns the number of customers.
        """
        customers = parse_data(data, source_name) if isinstance(data, Mapping) else list(data)
        hashes = [hash_secret(c.id_last4) for c in customers]  # slow: before the write lock
        ids = [c.customer_id for c in customers]
        now = self._now()
        with self._transaction(f"import from {source_name}", write=True) as session:
            self._check_conflicts(session, customers, source_name)
            for chunk in _chunks(ids):
                loans_of = select(Loan.loan_id).where(Loan.customer_id.in_(chunk))
                for statement in (
                    delete(Transaction).where(Transaction.customer_id.in_(chunk)),
                    delete(Installment).where(Installment.loan_id.in_(loans_of)),
                    delete(Loan).where(Loan.customer_id.in_(chunk)),
                    delete(Account).where(Account.customer_id.in_(chunk)),
                    delete(PhoneNumber).where(PhoneNumber.customer_id.in_(chunk)),
                    delete(Customer).where(Customer.id.in_(chunk)),
                ):
                    session.execute(statement.execution_options(synchronize_session=False))
            for customer, secret_hash in zip(customers, hashes, strict=True):
                session.add(_customer_row(customer, secret_hash, now))
            session.flush()
        log.info("imported %d customers from %s", len(customers), source_name,
                 extra={"part": "accounts", "event": "import"})
        return len(customers)

    def import_file(self, path: Path | str) -> int:
        """Read, validate and import a YAML or JSON customer file (see ``importer``)."""
        return self.import_customers(load_file(path), str(path))

    def _check_conflicts(self, session: Session, customers: Sequence[CustomerData], source: str) -> None:
        ids = {c.customer_id for c in customers}
        phones = {p: (c, n) for c in customers for n, p in enumerate(c.phones)}
        loans = {loan.loan_id: (c, n) for c in customers for n, loan in enumerate(c.loans)}
        for chunk in _chunks(sorted(phones)):
            rows = session.execute(
                select(PhoneNumber.phone, PhoneNumber.customer_id).where(PhoneNumber.phone.in_(chunk))
            ).all()
            for phone, owner in rows:
                if owner not in ids:
                    customer, n = phones[phone]
                    raise AccountImportError(
                        source, f"customers[{customer.index}] ({customer.customer_id}).phones[{n}]",
                        f"phone {mask_phone(phone)} already belongs to customer {owner} (not in this file)",
                        customer.line)
        for chunk in _chunks(sorted(loans)):
            rows = session.execute(
                select(Loan.loan_id, Loan.customer_id).where(Loan.loan_id.in_(chunk))
            ).all()
            for loan_id, owner in rows:
                if owner not in ids:
                    customer, n = loans[loan_id]
                    raise AccountImportError(
                        source, f"customers[{customer.index}] ({customer.customer_id}).loans[{n}].id",
                        f"loan id {loan_id} already belongs to customer {owner} (not in this file)",
                        customer.line)

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
        for customer_id, name, secret_hash in rows:
            same = wanted.get(customer_id)
            if (same is None or same.name != name or set(same.phones) != phones.get(customer_id, set())
                    or not check_secret(same.id_last4, secret_hash)):
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
        digest = hmac.new(self._load_caller_key(), b"stand-in:" + number.encode(), hashlib.sha256).hexdigest()
        return _STAND_IN_PREFIX + digest[:31]

    def lookup_keyed_phone(self, phone: str, *, call_id: str, caller_id: str) -> str | None:
        """``verification_subject`` for a number the caller keyed, counted against the caller ID's
        budget: ``phone_lookup_limit`` look-ups per ``phone_lookup_window_s`` (withheld and invalid
        caller IDs share one budget, ``phone_lookup_limit_withheld``). None once the budget is spent:
        nothing is looked up and nothing recorded.

        Every look-up counts, whether the number is registered or not: counting only the misses would
        tell a caller who is not stopped after N numbers that one of them was a customer's."""
        call = _cap(call_id, 128)
        self._load_caller_key()  # its row is what concurrent look-ups queue on (below)
        caller_hash, caller_masked = self._caller_identity(caller_id)
        now = self._now()
        limit = self._phone_lookup_limit if caller_hash is not None else self._phone_lookup_limit_withheld
        with self._transaction("counting phone look-ups", write=True) as session:
            # PostgreSQL: one look-up count at a time (SQLite: BEGIN IMMEDIATE already serialises).
            session.execute(select(StoreMeta.name).where(StoreMeta.name == _CALLER_KEY_NAME).with_for_update()).all()
            same_caller = (PhoneLookup.caller_hash == caller_hash if caller_hash is not None
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

    def _caller_identity(self, caller_id: str) -> tuple[str | None, str]:
        """The caller ID as the store keeps it: its keyed hash (None: withheld or not a number) and its
        masked form (last four digits)."""
        caller_digits = normalize_phone(caller_id)
        caller_masked = mask_phone(caller_digits or _cap(caller_id, 64))[-24:]
        if not caller_digits:
            return None, caller_masked
        return hmac.new(self._load_caller_key(), caller_digits.encode(), hashlib.sha256).hexdigest(), caller_masked

    def verify_id_last4(self, customer_id: str, digits: str, *, call_id: str, caller_id: str) -> VerifyStatus:
        customer = _cap(customer_id, 32)
        call = _cap(call_id, 128)
        caller_hash, caller_masked = self._caller_identity(caller_id)

        with self._transaction("reading the ID hash") as session:
            stored: str | None = session.execute(
                select(Customer.id_last4_hash).where(Customer.id == customer)
            ).scalar_one_or_none()
        answer = normalize_id_digits(digits)
        # The same scrypt work whether or not the customer exists or the answer is well formed.
        matches = check_secret(answer or "", stored or _DUMMY_HASH) and stored is not None and answer is not None

        now = self._now()
        window_start = now - self._lockout
        with self._transaction("recording a verification attempt", write=True) as session:
            # PostgreSQL: serialise attempts on one customer (SQLite: BEGIN IMMEDIATE already has).
            session.execute(select(Customer.id).where(Customer.id == customer).with_for_update()).all()
            # A success resets the customer's count (not the caller's: an attacker who knows
            # one secret must not launder failures against others). Ids order the attempts.
            last_ok_id = session.execute(
                select(func.max(VerificationAttempt.id)).where(
                    VerificationAttempt.customer_id == customer,
                    VerificationAttempt.result == VerifyStatus.OK.value,
                    VerificationAttempt.attempted_at > window_start,
                )
            ).scalar_one_or_none()
            customer_failures = session.execute(
                select(func.count()).select_from(VerificationAttempt).where(
                    VerificationAttempt.customer_id == customer,
                    VerificationAttempt.result == VerifyStatus.WRONG.value,
                    VerificationAttempt.attempted_at > window_start,
                    VerificationAttempt.id > (last_ok_id or 0),
                )
            ).scalar_one()
            caller_failures = 0
            if caller_hash is not None:  # withheld or invalid caller IDs are not lumped together
                caller_failures = session.execute(
                    select(func.count()).select_from(VerificationAttempt).where(
                        VerificationAttempt.caller_hash == caller_hash,
                        VerificationAttempt.result == VerifyStatus.WRONG.value,
                        VerificationAttempt.attempted_at > window_start,
                    )
                ).scalar_one()
            if customer_failures >= self._lockout_failures or caller_failures >= self._lockout_failures:
                status = VerifyStatus.LOCKED
            else:
                status = VerifyStatus.OK if matches else VerifyStatus.WRONG
            session.add(VerificationAttempt(
                customer_id=customer, call_id=call, caller_hash=caller_hash, caller_masked=caller_masked,
                attempted_at=now, result=status.value, success=status is VerifyStatus.OK,
            ))
        log.info("ID verification for customer %s from caller %s: %s", customer, caller_masked, status.value,
                 extra={"part": "accounts", "event": "verify", "outcome": status.value,
                        **({"call_id": call} if call else {})})
        return status

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

    # ------------------------------------------------------------ the caller-ID hashing key
    def _load_caller_key(self) -> bytes:
        """The store's random HMAC key for caller IDs: read once, created on first need."""
        with self._key_lock:
            if self._caller_key is not None:
                return self._caller_key
            with self._transaction("reading the store key") as session:
                value = session.execute(
                    select(StoreMeta.value).where(StoreMeta.name == _CALLER_KEY_NAME)
                ).scalar_one_or_none()
            if value is None:
                try:
                    with self._transaction("creating the store key", write=True) as session:
                        session.add(StoreMeta(name=_CALLER_KEY_NAME, value=_b64(secrets.token_bytes(32))))
                except AccountStoreError as exc:
                    if not isinstance(exc.__cause__, IntegrityError):  # another process made it first
                        raise
                with self._transaction("reading the store key") as session:
                    value = session.execute(
                        select(StoreMeta.value).where(StoreMeta.name == _CALLER_KEY_NAME)
                    ).scalar_one()
            self._caller_key = _unb64(value)
            return self._caller_key


def _customer_row(data: CustomerData, secret_hash: str, now: dt.datetime) -> Customer:
    accounts = {a.number: Account(number=a.number, currency=a.currency, balance=a.balance) for a in data.accounts}
    return Customer(
        id=data.customer_id,
        name=data.name,
        id_last4_hash=secret_hash,
        imported_at=now,
        phones=[PhoneNumber(phone=p) for p in data.phones],
        accounts=list(accounts.values()),
        loans=[
            Loan(
                loan_id=loan.loan_id, currency=loan.currency, outstanding=loan.outstanding, status=loan.status,
                next_due_date=loan.next_due_date, next_due_amount=loan.next_due_amount,
                installments=[Installment(due_date=i.due_date, amount=i.amount, paid=i.paid) for i in loan.schedule],
            )
            for loan in data.loans
        ],
        transactions=[
            Transaction(date=t.date, amount=t.amount, currency=t.currency, description=t.description,
                        account=accounts[t.account_number] if t.account_number else None)
            for t in data.transactions
        ],
    )


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
