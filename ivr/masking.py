"""Masking of personal data (ID digits, PINs, account and phone numbers) in logs and transcripts."""

from __future__ import annotations

import re

# Runs of 8+ digits (account, card and phone numbers, optionally with spaces or dashes inside):
# keep only the last 4. Shorter runs are amounts, dates, counts, ports; secrets that short (ID last 4,
# PINs) are masked where they are known to be secret: see mask_secret.
_LONG_NUMBER = re.compile(r"(?<!\d)\d(?:[ -]?\d){7,}(?!\d)")


def mask_number(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_text(text: str) -> str:
    """Mask long digit runs, keeping the last four digits."""
    return _LONG_NUMBER.sub(mask_number, text)


def mask_secret(text: str) -> str:
    """A caller's answer to a secret question (ID digits, phone, PIN): nothing of it is kept."""
    return "*" * min(len(text), 8) if text else ""


def mask_phone(phone: str) -> str:
    """A caller ID in logs: the last 4 digits, enough to correlate, not to identify."""
    digits = re.sub(r"\D", "", phone)
    if not digits:
        return "(withheld)" if not phone else "(invalid)"
    return "*" * max(len(digits) - 4, 0) + digits[-4:]
