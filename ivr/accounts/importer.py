"""Read and validate customer files (YAML or JSON) into plain dataclasses; no database here.

The shape (see ``demo.yaml``)::

    customers:
      - id: C001
        name: 王芳
        phones: ["13800000001"]
        id_last4: "4821"
        accounts:
          - {number: "6222020000005678", currency: CNY, balance: 1234.56}
        loans:
          - {id: L001, outstanding: 20000.00, status: active, next_due_date: 2026-12-15,
             next_due_amount: 1500.00, currency: CNY,            # currency: optional
             schedule: [{due_date: 2026-12-15, amount: 1500.00, paid: false}]}   # optional
        transactions:
          - {date: 2026-11-20, amount: -300.00, description: 还款,
             currency: CNY, account: "6222020000005678"}          # currency, account: optional

A loan's or a transaction's currency defaults to the customer's first account's currency (a
transaction linked to an account: that account's). With a ``schedule`` and no ``next_due_date``,
the next due date and amount are those of the first unpaid installment.

Every problem raises :class:`AccountImportError` naming the file, the line (YAML), the customer
(index and id) and the field. Secrets (the ID digits) are never echoed in an error; phone and
account numbers only masked.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from ivr.masking import mask_phone

LOAN_STATUSES = ("active", "overdue", "closed")
# ISO 4217 currencies without minor units (amounts must be whole); all others have two decimals.
_ZERO_DECIMAL_CURRENCIES = frozenset({"KRW", "JPY", "VND", "CLP", "ISK", "PYG", "UGX", "XAF", "XOF"})
MAX_AMOUNT = Decimal("1e15")  # fits in a 64-bit count of hundredths with room to spare

_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_LOAN_ID = _CUSTOMER_ID
_CURRENCY = re.compile(r"[A-Z]{3}")
_ACCOUNT_NUMBER = re.compile(r"[A-Z0-9]{4,34}")
_FOUR_DIGITS = re.compile(r"[0-9]{4}")
_PHONE_SEPARATORS = re.compile(r"[\s\-+().]")
_PHONE_DIGITS = re.compile(r"[0-9]{3,20}")
_SPACES_DASHES = re.compile(r"[\s\-]")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# the common spelling of an amount, taken without further ado (anything else: the general path)
_PLAIN_AMOUNT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,2})?")
_QUANTUM = {0: Decimal(1), 2: Decimal("0.01")}
MAX_PHONE_INPUT = 64


class AccountImportError(ValueError):
    """A customer file is unreadable or invalid; ``str()`` names the file, place and problem."""

    def __init__(self, source: str, location: str, problem: str, line: int | None = None) -> None:
        self.source = source
        self.location = location
        self.problem = problem
        self.line = line
        where = source + (f": line {line}" if line else "") + (f": {location}" if location else "")
        super().__init__(f"{where}: {problem}")


# ---------------------------------------------------------------- shared normalisation
def normalize_phone(text: object) -> str | None:
    """The digits of a phone number, or None when ``text`` is not one.

    Spaces, dashes, dots, parentheses and ``+`` are dropped (full-width digits are folded to
    ASCII); anything else left over, an empty result, or more than 20 digits means "not a phone".
    Over-long input is refused before any processing.
    """
    if not isinstance(text, str) or not text or len(text) > MAX_PHONE_INPUT:
        return None
    digits = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", text))
    return digits if _PHONE_DIGITS.fullmatch(digits) else None


def normalize_id_digits(text: object) -> str | None:
    """Four ASCII digits (spaces and dashes dropped, full-width folded), or None."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    digits = _SPACES_DASHES.sub("", unicodedata.normalize("NFKC", text))
    return digits if _FOUR_DIGITS.fullmatch(digits) else None


def currency_exponent(currency: str) -> int:
    """Number of decimals of the currency's minor unit (KRW: 0, CNY/USD: 2)."""
    return 0 if currency in _ZERO_DECIMAL_CURRENCIES else 2


# ---------------------------------------------------------------- what a file holds
@dataclass(frozen=True)
class AccountData:
    number: str
    currency: str
    balance: Decimal


@dataclass(frozen=True)
class InstallmentData:
    due_date: dt.date
    amount: Decimal
    paid: bool = False


@dataclass(frozen=True)
class LoanData:
    loan_id: str
    currency: str
    outstanding: Decimal
    status: str
    next_due_date: dt.date | None
    next_due_amount: Decimal | None
    schedule: tuple[InstallmentData, ...] = ()


@dataclass(frozen=True)
class TransactionData:
    date: dt.date
    amount: Decimal
    currency: str
    description: str
    account_number: str | None = None


@dataclass(frozen=True)
class CustomerData:
    customer_id: str
    name: str
    phones: tuple[str, ...]
    id_last4: str = field(repr=False)  # in clear only until the store hashes it
    accounts: tuple[AccountData, ...] = ()
    loans: tuple[LoanData, ...] = ()
    transactions: tuple[TransactionData, ...] = ()
    index: int = field(default=0, compare=False)  # position in the file, for error messages
    line: int | None = field(default=None, compare=False)


# ---------------------------------------------------------------- YAML with line numbers
class _Mapping(dict[str, Any]):
    """A YAML mapping that remembers the line it started on."""

    line: int | None = None


class _Loader(yaml.SafeLoader):
    """Safe YAML; mappings carry their line; dates stay text (validated here); floats are Decimal."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    result = _Mapping()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"field names must be text, not {key!r}", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"field {key!r} appears twice in one mapping", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


def _construct_decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        return Decimal(text)
    except InvalidOperation:  # .inf, .nan spellings Decimal does not take
        return Decimal("NaN")


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


# ---------------------------------------------------------------- entry points
def load_file(path: Path | str) -> list[CustomerData]:
    """Read and validate a customer file: ``.json`` as JSON, anything else as YAML."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AccountImportError(name, "", "no such file") from None
    except UnicodeDecodeError as exc:
        raise AccountImportError(name, "", f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise AccountImportError(name, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_text(text, name, json_format=path.suffix.lower() == ".json")


def parse_text(text: str, source_name: str, *, json_format: bool = False) -> list[CustomerData]:
    """Parse YAML (or JSON) text and validate it; ``source_name`` names it in errors."""
    if json_format:
        try:
            data = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise AccountImportError(source_name, "", f"not valid JSON: {exc.msg} (column {exc.colno})",
                                     exc.lineno) from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "syntax error"
            raise AccountImportError(source_name, "", f"not valid YAML: {problem}",
                                     mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise AccountImportError(source_name, "", f"not valid YAML: {exc}") from None
    return parse_data(data, source_name)


def parse_data(data: Any, source_name: str) -> list[CustomerData]:
    """Validate already-parsed data (a mapping with a ``customers`` list)."""
    if not isinstance(data, Mapping):
        raise AccountImportError(source_name, "", "expected a mapping with a 'customers' list at the top")
    _check_fields(_Ctx(source_name, "", _line(data)), data, required=("customers",), optional=())
    items = data["customers"]
    if not isinstance(items, list):
        raise AccountImportError(source_name, "customers", "must be a list", _line(data))
    customers: list[CustomerData] = []
    phone_owner: dict[str, str] = {}
    loan_owner: dict[str, str] = {}
    seen_ids: dict[str, int] = {}
    for index, item in enumerate(items):
        customer = _customer(_Ctx(source_name, f"customers[{index}]", _line(item) or _line(data)), index, item)
        ctx = _Ctx(source_name, f"customers[{index}] ({customer.customer_id})", customer.line)
        if customer.customer_id in seen_ids:
            raise ctx.error("id", f"duplicate customer id (also customers[{seen_ids[customer.customer_id]}])")
        seen_ids[customer.customer_id] = index
        for n, phone in enumerate(customer.phones):
            if phone in phone_owner:
                raise ctx.error(f"phones[{n}]",
                                f"phone {mask_phone(phone)} is also listed for customer {phone_owner[phone]}")
            phone_owner[phone] = customer.customer_id
        for n, loan in enumerate(customer.loans):
            if loan.loan_id in loan_owner:
                raise ctx.error(f"loans[{n}].id",
                                f"loan id {loan.loan_id} is also used by customer {loan_owner[loan.loan_id]}")
            loan_owner[loan.loan_id] = customer.customer_id
        customers.append(customer)
    return customers


# ---------------------------------------------------------------- validation
@dataclass(frozen=True)
class _Ctx:
    source: str
    where: str
    line: int | None

    def error(self, field_name: str, problem: str, line: int | None = None) -> AccountImportError:
        location = f"{self.where}.{field_name}" if self.where and field_name else (self.where or field_name)
        return AccountImportError(self.source, location, problem, line or self.line)

    def at(self, sub: str, item: object) -> _Ctx:
        return _Ctx(self.source, f"{self.where}.{sub}" if self.where else sub, _line(item) or self.line)


def _line(item: object) -> int | None:
    return getattr(item, "line", None)


def _check_fields(ctx: _Ctx, item: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]) -> None:
    unknown = [k for k in item if k not in required and k not in optional]
    if unknown:
        unknown = sorted(str(k) for k in unknown)  # first: a misspelt field would otherwise be reported as a missing one
        allowed = ", ".join((*required, *optional))
        raise ctx.error(unknown[0], f"unknown field (expected: {allowed})")
    for name in required:
        if name not in item or item[name] is None:
            raise ctx.error(name, "missing (required)")


def _mapping(ctx: _Ctx, item: object, what: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ctx.error("", f"{what} must be a mapping of fields, not {type(item).__name__}")
    return item


def _list(ctx: _Ctx, item: Mapping[str, Any], name: str) -> list[Any]:
    value = item.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.error(name, f"must be a list, not {type(value).__name__}")
    return value


def _text(ctx: _Ctx, item: Mapping[str, Any], name: str, *, max_len: int, empty_ok: bool = False) -> str:
    value = item.get(name)
    if value is None and empty_ok:
        return ""
    if not isinstance(value, str):
        raise ctx.error(name, f"must be text (in quotes), not {type(value).__name__} {value!r}")
    value = value.strip()
    if not value and not empty_ok:
        raise ctx.error(name, "must not be empty")
    if len(value) > max_len:
        raise ctx.error(name, f"longer than {max_len} characters")
    return value


def _identifier(ctx: _Ctx, item: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = item.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ctx.error(name, f"not a valid id: {value!r} (letters, digits, _ . -; at most 32)")
    return value


def _date(ctx: _Ctx, item: Mapping[str, Any], name: str, *, required: bool) -> dt.date | None:
    value = item.get(name)
    if value is None:
        if required:
            raise ctx.error(name, "missing (required)")
        return None
    if isinstance(value, dt.datetime):
        raise ctx.error(name, f"expected a date (YYYY-MM-DD), not a time: {value!r}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            if _ISO_DATE.fullmatch(value.strip()):
                return dt.date.fromisoformat(value.strip())
        except ValueError as exc:
            raise ctx.error(name, f"not a valid date: {value!r} ({exc})") from None
    raise ctx.error(name, f"not a date: {value!r} (expected YYYY-MM-DD)")


def _amount(ctx: _Ctx, item: Mapping[str, Any], name: str, currency: str | None, *, required: bool,
            non_negative: bool = False) -> Decimal | None:
    value = item.get(name)
    if value is None:
        if required:
            raise ctx.error(name, "missing (required)")
        return None
    if type(value) is str and _PLAIN_AMOUNT.fullmatch(value):  # fast path: "-1234.5" (checked as below)
        decimals = currency_exponent(currency) if currency else 2
        plain = Decimal(value)
        exact = plain.quantize(_QUANTUM[decimals])
        if plain == exact and not (non_negative and plain < 0):
            return exact
    amount: Decimal | None = None
    if isinstance(value, bool):
        amount = None
    elif isinstance(value, int | Decimal):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip().replace(",", ""))
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite():
        raise ctx.error(name, f"not a number: {value!r}")
    if abs(amount) >= MAX_AMOUNT:
        raise ctx.error(name, f"amount out of range: {value}")
    decimals = currency_exponent(currency) if currency else 2
    exact = amount.quantize(Decimal(1).scaleb(-decimals))
    if amount != exact:
        unit = f"{currency} amounts" if currency else "amounts"
        raise ctx.error(name, f"{unit} have at most {decimals} decimals: {value}")
    if non_negative and amount < 0:
        raise ctx.error(name, f"must not be negative: {value}")
    return exact  # canonical: as many places as the currency has


def _currency(ctx: _Ctx, item: Mapping[str, Any], default: str | None) -> str:
    value = item.get("currency")
    if value is None:
        if default is None:
            raise ctx.error("currency", "missing, and the customer has no account to take it from")
        return default
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value.strip()):
        raise ctx.error("currency", f"not an ISO 4217 currency code: {value!r} (e.g. CNY, USD, KRW)")
    return value.strip()


def _customer(ctx: _Ctx, index: int, raw: object) -> CustomerData:
    item = _mapping(ctx, raw, "a customer")
    ctx = _with_id(ctx, item, _CUSTOMER_ID)
    _check_fields(ctx, item, required=("id", "name", "phones", "id_last4"),
                  optional=("accounts", "loans", "transactions"))
    customer_id = _identifier(ctx, item, "id", _CUSTOMER_ID)
    name = _text(ctx, item, "name", max_len=100)

    raw_last4 = item["id_last4"]
    if not isinstance(raw_last4, str):
        raise ctx.error("id_last4", "must be 4 digits in quotes (e.g. \"0123\"), not a bare number")
    id_last4 = normalize_id_digits(raw_last4)
    if id_last4 is None:
        raise ctx.error("id_last4", "must be exactly 4 digits")  # the value itself is secret

    phones: list[str] = []
    raw_phones = _list(ctx, item, "phones")
    if not raw_phones:
        raise ctx.error("phones", "at least one phone number is needed (callers are found by phone)")
    for n, raw_phone in enumerate(raw_phones):
        if not isinstance(raw_phone, str):
            raise ctx.error(f"phones[{n}]", "must be text in quotes (a bare number loses leading zeros)")
        phone = normalize_phone(raw_phone)
        if phone is None:
            raise ctx.error(f"phones[{n}]", "not a phone number (3-20 digits; spaces, dashes, + allowed)")
        if phone in phones:
            raise ctx.error(f"phones[{n}]", f"phone {mask_phone(phone)} is listed twice")
        phones.append(phone)

    accounts: list[AccountData] = []
    for n, raw_account in enumerate(_list(ctx, item, "accounts")):
        sub = ctx.at(f"accounts[{n}]", raw_account)
        account = _mapping(sub, raw_account, "an account")
        _check_fields(sub, account, required=("number", "currency", "balance"), optional=())
        number_raw = account["number"]
        if not isinstance(number_raw, str):
            raise sub.error("number", "must be text in quotes (a bare number loses leading zeros)")
        number = _SPACES_DASHES.sub("", number_raw).upper()
        if not _ACCOUNT_NUMBER.fullmatch(number):
            raise sub.error("number", "not an account number (4-34 letters or digits)")
        if any(a.number == number for a in accounts):
            raise sub.error("number", f"account ...{number[-4:]} is listed twice")
        currency = _currency(sub, account, None)
        balance = _amount(sub, account, "balance", currency, required=True)
        assert balance is not None
        accounts.append(AccountData(number, currency, balance))
    default_currency = accounts[0].currency if accounts else None

    loans: list[LoanData] = []
    for n, raw_loan in enumerate(_list(ctx, item, "loans")):
        sub = ctx.at(f"loans[{n}]", raw_loan)
        loans.append(_loan(sub, _mapping(sub, raw_loan, "a loan"), default_currency))
        if sum(1 for loan in loans if loan.loan_id == loans[-1].loan_id) > 1:
            raise sub.error("id", f"loan id {loans[-1].loan_id} is listed twice")

    transactions: list[TransactionData] = []
    for n, raw_tx in enumerate(_list(ctx, item, "transactions")):
        sub = ctx.at(f"transactions[{n}]", raw_tx)
        tx = _mapping(sub, raw_tx, "a transaction")
        _check_fields(sub, tx, required=("date", "amount"), optional=("description", "currency", "account"))
        account_number: str | None = None
        tx_default = default_currency
        if tx.get("account") is not None:
            if not isinstance(tx["account"], str):
                raise sub.error("account", "must be text in quotes")
            account_number = _SPACES_DASHES.sub("", tx["account"]).upper()
            match = [a for a in accounts if a.number == account_number]
            if not match:
                raise sub.error("account", "not one of this customer's accounts")
            tx_default = match[0].currency
        currency = _currency(sub, tx, tx_default)
        date = _date(sub, tx, "date", required=True)
        amount = _amount(sub, tx, "amount", currency, required=True)
        assert date is not None and amount is not None
        description = _text(sub, tx, "description", max_len=200, empty_ok=True)
        transactions.append(TransactionData(date, amount, currency, description, account_number))

    return CustomerData(customer_id, name, tuple(phones), id_last4, tuple(accounts), tuple(loans),
                        tuple(transactions), index=index, line=ctx.line)


def _with_id(ctx: _Ctx, item: Mapping[str, Any], pattern: re.Pattern[str]) -> _Ctx:
    """Name the item by its id in messages about its other fields (when the id is valid)."""
    value = item.get("id")
    if isinstance(value, str) and pattern.fullmatch(value):
        return _Ctx(ctx.source, f"{ctx.where} ({value})", ctx.line)
    return ctx


def _loan(ctx: _Ctx, item: Mapping[str, Any], default_currency: str | None) -> LoanData:
    ctx = _with_id(ctx, item, _LOAN_ID)
    _check_fields(ctx, item, required=("id", "outstanding", "status"),
                  optional=("currency", "next_due_date", "next_due_amount", "schedule"))
    loan_id = _identifier(ctx, item, "id", _LOAN_ID)
    currency = _currency(ctx, item, default_currency)
    outstanding = _amount(ctx, item, "outstanding", currency, required=True, non_negative=True)
    assert outstanding is not None
    status = item["status"]
    if status not in LOAN_STATUSES:
        raise ctx.error("status", f"unknown loan status {status!r} (expected one of: {', '.join(LOAN_STATUSES)})")
    next_due_date = _date(ctx, item, "next_due_date", required=False)
    next_due_amount = _amount(ctx, item, "next_due_amount", currency, required=False, non_negative=True)

    schedule: list[InstallmentData] = []
    for n, raw in enumerate(_list(ctx, item, "schedule")):
        sub = ctx.at(f"schedule[{n}]", raw)
        inst = _mapping(sub, raw, "an installment")
        _check_fields(sub, inst, required=("due_date", "amount"), optional=("paid",))
        due = _date(sub, inst, "due_date", required=True)
        amount = _amount(sub, inst, "amount", currency, required=True, non_negative=True)
        paid = inst.get("paid", False)
        if not isinstance(paid, bool):
            raise sub.error("paid", f"must be true or false, not {paid!r}")
        assert due is not None and amount is not None
        if schedule and due <= schedule[-1].due_date:
            raise sub.error("due_date", "installments must be in order of due date, without repeats")
        schedule.append(InstallmentData(due, amount, paid))
    if next_due_date is None and next_due_amount is None and schedule:
        unpaid = [i for i in schedule if not i.paid]
        if unpaid:
            next_due_date, next_due_amount = unpaid[0].due_date, unpaid[0].amount

    if (next_due_date is None) != (next_due_amount is None):
        missing = "next_due_amount" if next_due_amount is None else "next_due_date"
        raise ctx.error(missing, "next_due_date and next_due_amount go together: give both or neither")
    if status == "closed" and next_due_date is not None:
        raise ctx.error("next_due_date", "a closed loan has no next due date")
    if status == "overdue" and next_due_date is None:
        raise ctx.error("next_due_date", "an overdue loan needs next_due_date and next_due_amount")
    return LoanData(loan_id, currency, outstanding, status, next_due_date, next_due_amount, tuple(schedule))
