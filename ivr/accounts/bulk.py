"""Streaming, batched customer imports (``ivr db import``): memory bounded whatever the file size.

Formats, by file name:

- ``.jsonl`` / ``.ndjson``: JSON Lines, one customer a line, in the shape of one item of
  ``customers:`` in ``demo.yaml`` (``{"id": "C001", "name": ..., "phones": [...], "id_last4": "4821",
  "accounts": [...], "loans": [...], "transactions": [...]}``).
- ``.csv``: one customer a row, header ``id,name,phones,id_last4,accounts,loans,transactions``;
  ``phones`` separated by ``;``, the three lists as JSON arrays in their cells (empty cell: none).
- ``.yaml`` / ``.yml`` / ``.json``: the documents ``ivr db import`` has always read (read whole,
  with the same errors and line numbers; meant for ops-sized files).

Every customer goes through the same validation as before (``importer._customer``). Batches of
``batch_size`` customers are upserted: a customer whose keyed content digest is unchanged is only
marked; a changed one is replaced (its history, attempts and disclosures, kept); a new one is
inserted. By default each batch is one transaction and an invalid customer (or one whose phone or
loan belongs to another customer in the database) is rejected, reported with its line, and the
others go in; with ``atomic`` the whole file is one transaction and the first problem raises
``AccountImportError`` and changes nothing (the YAML/JSON documents' behaviour, their default).
Duplicate customer ids are found through ``customers.import_run`` (the import's own id), so no
set of ids is held in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ivr.accounts.importer import AccountImportError, CustomerData, _Ctx, _customer, load_file
from ivr.accounts.keys import KeyRing
from ivr.masking import mask_phone

log = logging.getLogger(__name__)

STREAM_SUFFIXES = (".jsonl", ".ndjson", ".csv")
CSV_FIELDS = ("id", "name", "phones", "id_last4", "accounts", "loans", "transactions")
DEFAULT_BATCH = 2000
_IN = 500  # ids per IN (...) list
_JSON = json.JSONDecoder(parse_float=Decimal)
MAX_LINE_BYTES = 1 << 20  # one customer a line: a longer line is refused, not buffered

# Lightweight tables: amounts go in as integer hundredths (as ``models.Money`` stores them) without
# per-value type processing; the schema itself is in ``models`` and the migrations.
_customers = sa.table("customers", sa.column("id"), sa.column("name"), sa.column("id_last4_hash"),
                      sa.column("imported_at", sa.DateTime), sa.column("content_hash"), sa.column("import_run"))
_phones = sa.table("phone_numbers", sa.column("phone"), sa.column("customer_id"))
_accounts = sa.table("accounts", sa.column("id"), sa.column("customer_id"), sa.column("number"),
                     sa.column("currency"), sa.column("balance"))
_loans = sa.table("loans", sa.column("loan_id"), sa.column("customer_id"), sa.column("currency"),
                  sa.column("outstanding"), sa.column("status"), sa.column("next_due_date"),
                  sa.column("next_due_amount"))
_installments = sa.table("loan_installments", sa.column("loan_id"), sa.column("due_date"),
                         sa.column("amount"), sa.column("paid"))
_transactions = sa.table("transactions", sa.column("customer_id"), sa.column("account_id"),
                         sa.column("date"), sa.column("amount"), sa.column("currency"),
                         sa.column("description"))


@dataclass
class ImportSummary:
    source: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int | None, str]] = field(default_factory=list)  # (line, message)
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def accepted(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def describe(self, max_rejected: int = 20) -> str:
        verb = "would import" if self.dry_run else "imported"
        head = (f"{verb} {self.accepted} customers from {self.source}: {self.inserted} inserted, {self.updated} "
                f"updated, {self.unchanged} unchanged, {len(self.rejected)} rejected ({self.seconds:.1f} s)")
        if self.dry_run:
            head = (f"{self.source}: {self.accepted} valid customers, {len(self.rejected)} rejected "
                    f"(dry run: the database was not read or changed)")
        lines = [head]
        for _, message in self.rejected[:max_rejected]:
            lines.append(f"  rejected: {message}")
        if len(self.rejected) > max_rejected:
            lines.append(f"  ... and {len(self.rejected) - max_rejected} more rejected")
        return "\n".join(lines)


@dataclass(frozen=True)
class Record:
    """One customer as read, not yet validated; ``problem`` when it could not even be parsed."""

    index: int
    line: int | None
    raw: Any
    problem: str | None = None
    text: str | None = None  # a JSON line not yet decoded (decoded where it is validated: maybe a worker)


# ---------------------------------------------------------------- reading
class _CountingLines:
    """Binary lines of a file decoded as UTF-8, counting bytes read (for the progress bar)."""

    def __init__(self, stream: IO[bytes], source: str) -> None:
        self._stream = stream
        self._source = source
        self.bytes_read = 0
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            raw = self._stream.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self.line += 1
            self.bytes_read += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise AccountImportError(self._source, "", f"line longer than {MAX_LINE_BYTES} bytes", self.line)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AccountImportError(self._source, "", f"not UTF-8 text (byte {exc.start} of the line)",
                                         self.line) from None


def _jsonl_records(lines: _CountingLines) -> Iterator[Record]:
    index = 0
    for text in lines:
        if not text.strip():
            continue
        yield Record(index, lines.line, None, text=text)
        index += 1


def _csv_cell_list(text: str, name: str) -> list[Any]:
    if not text.strip():
        return []
    value = json.loads(text, parse_float=Decimal)
    if not isinstance(value, list):
        raise ValueError(f"{name}: must be a JSON array")
    return value


def _csv_records(lines: _CountingLines, source: str) -> Iterator[Record]:
    reader = csv.reader(iter(lines), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise AccountImportError(source, "", f"not valid CSV: {exc}", lines.line) from None
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in CSV_FIELDS]
    missing = [h for h in ("id", "name", "phones", "id_last4") if h not in header]
    if unknown or missing:
        problem = (f"unknown column {unknown[0]!r}" if unknown else f"missing column {missing[0]!r}")
        raise AccountImportError(source, "header", f"{problem} (expected: {', '.join(CSV_FIELDS)})", 1)
    index = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(index, lines.line, None, f"not valid CSV: {exc}")
            index += 1
            continue
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            yield Record(index, line, None, f"{len(row)} cells, the header has {len(header)}")
        else:
            cells = dict(zip(header, row, strict=True))
            item: dict[str, Any] = {"id": cells["id"], "name": cells["name"], "id_last4": cells["id_last4"],
                                    "phones": [p for p in cells["phones"].split(";") if p.strip()]}
            cell_problem: str | None = None
            for name in ("accounts", "loans", "transactions"):
                if name in cells:
                    try:
                        item[name] = _csv_cell_list(cells[name], name)
                    except (ValueError, json.JSONDecodeError) as exc:
                        cell_problem = f"column {name}: not a JSON array ({exc})"
                        break
            yield Record(index, line, None if cell_problem else item, cell_problem)
        index += 1


@dataclass
class Reader:
    """The records of a customer file, and how far reading has got (bytes) for a progress bar."""

    path: Path
    total_bytes: int
    records: Iterator[Record]
    position: Callable[[], int]
    whole_document: bool


def open_records(path: Path | str) -> Reader:
    """The records of ``path``, streamed for JSON Lines and CSV; a YAML/JSON document is read whole."""
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in STREAM_SUFFIXES:
        customers = load_file(path)  # AccountImportError names the file, line and field
        size = path.stat().st_size
        return Reader(path, size, iter([Record(c.index, c.line, c) for c in customers]), lambda: size, True)
    try:
        stream = path.open("rb")
        size = path.stat().st_size
    except FileNotFoundError:
        raise AccountImportError(name, "", "no such file") from None
    except OSError as exc:
        raise AccountImportError(name, "", f"cannot read: {exc.strerror or exc}") from None
    lines = _CountingLines(stream, name)

    def records() -> Iterator[Record]:
        with stream:
            yield from (_csv_records(lines, name) if suffix == ".csv" else _jsonl_records(lines))

    return Reader(path, size, records(), lambda: lines.bytes_read, False)


def validate(record: Record, source: str) -> CustomerData:
    """The record as a validated customer; ``AccountImportError`` naming file, line, customer, field."""
    if isinstance(record.raw, CustomerData):
        return record.raw
    if record.problem is not None:
        raise AccountImportError(source, f"customers[{record.index}]", record.problem, record.line)
    raw = record.raw
    if record.text is not None:
        try:
            raw = _JSON.decode(record.text)
        except json.JSONDecodeError as exc:
            raise AccountImportError(source, f"customers[{record.index}]",
                                     f"not valid JSON: {exc.msg} (column {exc.colno})", record.line) from None
    ctx = _Ctx(source, f"customers[{record.index}]", record.line)
    return _customer(ctx, record.index, raw)


class Prepared(NamedTuple):
    """A validated customer as rows to write: plain values only (cheap to pass between processes)."""

    customer_id: str
    position: int  # index in the file
    line: int | None
    name: str
    phones: tuple[str, ...]
    loan_ids: tuple[str, ...]
    id_hash: str  # keyed (KeyRing.hash_id_digits): the digits never leave the worker in clear
    digest: str  # keyed content digest (KeyRing.fingerprint)
    accounts: tuple[tuple[str, str, int], ...]  # number, currency, balance in hundredths
    loans: tuple[tuple[str, str, int, str, str | None, int | None], ...]
    installments: tuple[tuple[str, str, int, bool], ...]  # loan id, due date, amount, paid
    transactions: tuple[tuple[str | None, str, int, str, str], ...]  # account number, date, amount, currency, text


def _hundredths(amount: Decimal) -> int:
    return int(amount.scaleb(2))


def _content(customer: CustomerData) -> bytes:
    """A canonical serialisation of everything imported for a customer (digits included: the digest
    is keyed, see ``KeyRing.fingerprint``)."""
    return json.dumps([
        customer.customer_id, customer.name, customer.phones, customer.id_last4,
        [[a.number, a.currency, str(a.balance)] for a in customer.accounts],
        [[loan.loan_id, loan.currency, str(loan.outstanding), loan.status, str(loan.next_due_date),
          str(loan.next_due_amount), [[str(i.due_date), str(i.amount), i.paid] for i in loan.schedule]]
         for loan in customer.loans],
        [[str(t.date), str(t.amount), t.currency, t.description, t.account_number] for t in customer.transactions],
    ], ensure_ascii=False, separators=(",", ":")).encode()


def prepare(customer: CustomerData, keys: KeyRing) -> Prepared:
    return Prepared(
        customer.customer_id, customer.index, customer.line, customer.name, customer.phones,
        tuple(x.loan_id for x in customer.loans),
        keys.hash_id_digits(customer.customer_id, customer.id_last4), keys.fingerprint(_content(customer)),
        tuple((a.number, a.currency, _hundredths(a.balance)) for a in customer.accounts),
        tuple((x.loan_id, x.currency, _hundredths(x.outstanding), x.status,
               x.next_due_date.isoformat() if x.next_due_date else None,
               None if x.next_due_amount is None else _hundredths(x.next_due_amount)) for x in customer.loans),
        tuple((x.loan_id, i.due_date.isoformat(), _hundredths(i.amount), i.paid)
              for x in customer.loans for i in x.schedule),
        tuple((t.account_number, t.date.isoformat(), _hundredths(t.amount), t.currency, t.description)
              for t in customer.transactions),
    )


Validated = Prepared | tuple[int | None, AccountImportError]


def _validate_chunk(source: str, records: list[Record], keys: KeyRing | None = None) -> list[Validated]:
    """Validate and prepare a chunk of records: each a ``Prepared``, or (line, error)."""
    ring = keys if keys is not None else _worker_keys[0]
    out: list[Validated] = []
    for record in records:
        try:
            out.append(prepare(validate(record, source), ring))
        except AccountImportError as exc:
            out.append((record.line, exc))
    return out


_CHUNK_RECORDS = 500
_worker_keys: list[KeyRing] = []  # set once in each worker process (``_init_worker``)


def _init_worker(keys: KeyRing) -> None:
    _worker_keys[:] = [keys]


def validated(records: Iterator[Record], source: str, keys: KeyRing, workers: int) -> Iterator[Validated]:
    """``records`` validated and prepared, in order; with ``workers`` > 1 in that many processes
    (parsing, validation and hashing are most of an import's work), at most ``2 * workers`` chunks
    in flight (memory bound)."""
    def chunks() -> Iterator[list[Record]]:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= _CHUNK_RECORDS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    if workers <= 1:
        for chunk in chunks():
            yield from _validate_chunk(source, chunk, keys)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(keys,)) as pool:
        pending: deque[Future[list[Validated]]] = deque()
        for chunk in chunks():
            pending.append(pool.submit(_validate_chunk, source, chunk))
            while len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# ---------------------------------------------------------------- writing
def _chunks(items: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _IN):
        yield list(items[start:start + _IN])


def _where(customer: Prepared, what: str) -> str:
    return f"customers[{customer.position}] ({customer.customer_id}).{what}"


class BatchWriter:
    """Upserts batches of prepared customers on one connection (the caller owns the transaction)."""

    def __init__(self, source: str, now: dt.datetime, *, run_id: str | None = None) -> None:
        self._source = source
        self._now = now
        self.run_id = run_id or secrets.token_hex(8)

    def write(self, conn: Connection, batch: Sequence[Prepared], summary: ImportSummary, *,
              atomic: bool) -> None:
        """Write ``batch``; a customer that conflicts is rejected into ``summary`` (``atomic``: raised)."""
        def reject(customer: Prepared, error: AccountImportError) -> None:
            if atomic:
                raise error
            summary.rejected.append((customer.line, str(error)))

        def duplicate(customer: Prepared) -> AccountImportError:
            return AccountImportError(self._source, _where(customer, "id"),
                                      "duplicate customer id (also earlier in this file)", customer.line)

        # within the batch: the same id twice, a phone or loan on two customers
        accepted: dict[str, Prepared] = {}
        phone_of: dict[str, str] = {}
        loan_of: dict[str, str] = {}
        for customer in batch:
            if customer.customer_id in accepted:
                reject(customer, duplicate(customer))
                continue
            clash = next(((n, p) for n, p in enumerate(customer.phones) if p in phone_of), None)
            if clash is not None:
                reject(customer, AccountImportError(
                    self._source, _where(customer, f"phones[{clash[0]}]"),
                    f"phone {mask_phone(clash[1])} is also listed for customer {phone_of[clash[1]]}", customer.line))
                continue
            loan_clash = next(((n, x) for n, x in enumerate(customer.loan_ids) if x in loan_of), None)
            if loan_clash is not None:
                reject(customer, AccountImportError(
                    self._source, _where(customer, f"loans[{loan_clash[0]}].id"),
                    f"loan id {loan_clash[1]} is also used by customer {loan_of[loan_clash[1]]}", customer.line))
                continue
            accepted[customer.customer_id] = customer
            phone_of.update((p, customer.customer_id) for p in customer.phones)
            loan_of.update((x, customer.customer_id) for x in customer.loan_ids)

        existing: dict[str, tuple[str | None, str | None]] = {}
        for chunk in _chunks(list(accepted)):
            for cid, content_hash, run in conn.execute(
                    sa.select(_customers.c.id, _customers.c.content_hash, _customers.c.import_run)
                    .where(_customers.c.id.in_(chunk))):
                existing[cid] = (content_hash, run)
        for cid, (_, run) in existing.items():
            if run == self.run_id:  # written earlier by this same import: the id is in the file twice
                customer = accepted.pop(cid)
                reject(customer, duplicate(customer))
        # against the database: a phone or loan id of a customer not in this batch
        for column, key, owner_col, items in (
            ("phones", _phones.c.phone, _phones.c.customer_id,
             {p: (c, n) for c in accepted.values() for n, p in enumerate(c.phones)}),
            ("loans", _loans.c.loan_id, _loans.c.customer_id,
             {x: (c, n) for c in accepted.values() for n, x in enumerate(c.loan_ids)}),
        ):
            for chunk in _chunks(sorted(items)):
                for value, owner in conn.execute(sa.select(key, owner_col).where(key.in_(chunk))):
                    customer, n = items[value]
                    if owner in accepted or customer.customer_id not in accepted:
                        continue
                    if column == "phones":
                        error = AccountImportError(
                            self._source, _where(customer, f"phones[{n}]"),
                            f"phone {mask_phone(value)} already belongs to customer {owner} (not in this file)",
                            customer.line)
                    else:
                        error = AccountImportError(
                            self._source, _where(customer, f"loans[{n}].id"),
                            f"loan id {value} already belongs to customer {owner} (not in this file)", customer.line)
                    accepted.pop(customer.customer_id)
                    reject(customer, error)

        unchanged = [cid for cid, c in accepted.items() if cid in existing and existing[cid][0] == c.digest]
        changed = [cid for cid, c in accepted.items() if cid in existing and existing[cid][0] != c.digest]
        new = [cid for cid in accepted if cid not in existing]
        for chunk in _chunks(unchanged):
            conn.execute(_customers.update().where(_customers.c.id.in_(chunk)).values(import_run=self.run_id))
        for chunk in _chunks(changed):
            loans_of = sa.select(_loans.c.loan_id).where(_loans.c.customer_id.in_(chunk))
            for statement in (
                _transactions.delete().where(_transactions.c.customer_id.in_(chunk)),
                _installments.delete().where(_installments.c.loan_id.in_(loans_of)),
                _loans.delete().where(_loans.c.customer_id.in_(chunk)),
                _accounts.delete().where(_accounts.c.customer_id.in_(chunk)),
                _phones.delete().where(_phones.c.customer_id.in_(chunk)),
                _customers.delete().where(_customers.c.id.in_(chunk)),
            ):
                conn.execute(statement)
        self._insert(conn, [accepted[cid] for cid in (*new, *changed)])
        summary.inserted += len(new)
        summary.updated += len(changed)
        summary.unchanged += len(unchanged)

    def _insert(self, conn: Connection, customers: list[Prepared]) -> None:
        if not customers:
            return
        now: Any = self._now.strftime("%Y-%m-%d %H:%M:%S.%f") if conn.dialect.name == "sqlite" else self._now
        _bulk_insert(conn, "customers", ("id", "name", "id_last4_hash", "imported_at", "content_hash", "import_run"),
                     [(c.customer_id, c.name, c.id_hash, now, c.digest, self.run_id) for c in customers])
        _bulk_insert(conn, "phone_numbers", ("phone", "customer_id"),
                     [(p, c.customer_id) for c in customers for p in c.phones])
        _bulk_insert(conn, "accounts", ("customer_id", "number", "currency", "balance"),
                     [(c.customer_id, *account) for c in customers for account in c.accounts])
        _bulk_insert(conn, "loans", ("loan_id", "customer_id", "currency", "outstanding", "status", "next_due_date",
                                     "next_due_amount"),
                     [(loan[0], c.customer_id, *loan[1:]) for c in customers for loan in c.loans])
        _bulk_insert(conn, "loan_installments", ("loan_id", "due_date", "amount", "paid"),
                     [i for c in customers for i in c.installments])
        account_ids: dict[tuple[str, str], int] = {}
        linked = [c.customer_id for c in customers if any(t[0] for t in c.transactions)]
        for chunk in _chunks(linked):
            for account_id, cid, number in conn.execute(
                    sa.select(_accounts.c.id, _accounts.c.customer_id, _accounts.c.number)
                    .where(_accounts.c.customer_id.in_(chunk))):
                account_ids[(cid, number)] = account_id
        _bulk_insert(conn, "transactions", ("customer_id", "account_id", "date", "amount", "currency", "description"),
                     [(c.customer_id, account_ids[(c.customer_id, number)] if number else None, date, amount, currency,
                       text) for c in customers for number, date, amount, currency, text in c.transactions])


def _copy_field(value: Any) -> str:
    """One field of COPY's CSV format: NULL unquoted and empty, every text quoted."""
    kind = type(value)
    if kind is str:
        return '"' + value.replace('"', '""') + '"'
    if kind is int:
        return str(value)
    if value is None:
        return ""
    if kind is bool:
        return "t" if value else "f"
    return '"' + str(value).replace('"', '""') + '"'


def _bulk_insert(conn: Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Many rows at once, through the driver's fastest path (table and column names are constants of
    this module; values are bound parameters, or COPY data): sqlite3 ``executemany``, psycopg2 ``COPY``."""
    if not rows:
        return
    names = ", ".join(columns)
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)
    elif conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        # COPY: no statement per row and no SQL literals; CSV with every text quoted, so an unquoted
        # empty field is NULL and "" an empty text
        buffer = io.StringIO("".join(",".join(map(_copy_field, row)) + "\n" for row in rows))
        cursor = conn.connection.cursor()
        try:
            cursor.copy_expert(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)", buffer)
        finally:
            cursor.close()
    else:
        conn.execute(sa.table(table, *(sa.column(c) for c in columns)).insert(),
                     [dict(zip(columns, row, strict=True)) for row in rows])


# ---------------------------------------------------------------- the whole import
class Progress:
    """A progress bar with rate and ETA (tqdm, on stderr) when it is a terminal; nothing otherwise."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="importing", dynamic_ncols=True)
        self._done = 0

    def update(self, position: int, customers: int) -> None:
        if self._bar is not None:
            self._bar.update(max(0, position - self._done))
            self._bar.set_postfix_str(f"{customers} customers", refresh=False)
            self._done = position

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_import(
    reader: Reader,
    *,
    keys: KeyRing,
    begin: Callable[[], Any] | None,
    writer: BatchWriter | None,
    atomic: bool,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    workers: int = 1,
) -> ImportSummary:
    """Validate and write ``reader``'s customers. ``begin()`` opens a transaction (a context manager
    yielding a Connection): one per batch, or one for everything with ``atomic``. Without ``begin``
    (a dry run) only validation runs."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    source = str(reader.path)
    summary = ImportSummary(source, dry_run=begin is None)
    started = time.monotonic()
    seen = 0

    def flush(conn: Connection, batch: list[Prepared]) -> None:
        if writer is not None and batch:
            writer.write(conn, batch, summary, atomic=atomic)

    def batches() -> Iterator[list[Prepared]]:
        nonlocal seen
        batch: list[Prepared] = []
        for item in validated(reader.records, source, keys, workers):
            seen += 1
            if isinstance(item, Prepared):
                batch.append(item)
            else:
                if atomic:
                    raise item[1]
                summary.rejected.append((item[0], str(item[1])))
            if len(batch) >= batch_size:
                yield batch
                batch = []
                if progress is not None:
                    progress.update(reader.position(), seen)
        if batch:
            yield batch

    try:
        if begin is None:
            for batch in batches():
                summary.inserted += len(batch)  # "valid": nothing is compared with the database
        elif atomic:
            with begin() as conn:
                for batch in batches():
                    flush(conn, batch)
        else:
            for batch in batches():
                with begin() as conn:
                    flush(conn, batch)
    finally:
        if progress is not None:
            progress.update(reader.position(), seen)
            progress.close()
    summary.seconds = time.monotonic() - started
    return summary

