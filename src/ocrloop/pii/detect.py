"""Personal data in OCR output: find it, then allow, redact or reject it.

Kinds: ``ssn``, ``credit_card`` (Luhn-checked, known issuer prefixes), ``iban`` (country format and
mod-97 checked by python-stdnum), ``email``, ``phone`` (parsed and validated by phonenumbers, with the
digit grouping of the number's own country) and ``secret`` (passwords, API keys, tokens, private keys).
Checks beyond the pattern are what keep order numbers, dates and invoice ids from being flagged.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import get_args

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from ocrloop.config import PiiPolicy

PII_KINDS = ("ssn", "credit_card", "iban", "email", "phone", "secret")

# OCR output writes the same number many ways: unicode dashes, no-break spaces, a line break inside it.
# Detectors read a copy with those folded to "-" and " " (one character for one, so spans stay valid).
_FOLD = str.maketrans({**dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
                       **dict.fromkeys("\u00a0\u2007\u202f\t\r\n", " ")})
# An identifier prefix such as "INV-", "ORD#" or "ref/" in front of digits makes them an id, not PII...
_ID_PREFIX = re.compile(r"[A-Za-z0-9][-#/_.]?$")
# ...unless the word in front names the personal data itself ("SSN#", "Card#", "Tel.").
_PII_LABEL = re.compile(
    r"(?i)\b(?:ssn|ss|sin|soc(?:ial)?\.? ?sec(?:urity)?\.?(?: ?(?:no|num|number))?|card|cc|credit|debit|visa|mastercard|"
    r"amex|tel|phone|ph|fax|mob|mobile|cell|iban)\s?[#:.]?[#:.]?\s?$")
_SEP = r"(?: {0,2}[-.] {0,2}| {1,2})"  # "-", ".", " ", a dash with spaces, or one of them before a line break
_SSN = re.compile(rf"(?<![\w-])(?!000|666|9\d\d)\d{{3}}{_SEP}(?!00)\d{{2}}{_SEP}(?!0000)\d{{4}}(?![\w-])")
_SSN_LABELLED = re.compile(
    r"(?i)\b(?:ssn|ss#|soc(?:ial)?\.? ?sec(?:urity)?\.?(?: ?(?:no|num|number))?)\s?[#:.]?[#:.]?\s?"
    r"(?P<value>(?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})(?![\w-])")
_CARD = re.compile(rf"(?<![\w-])\d(?:{_SEP}?\d){{12,18}}(?![\w-])")
# Issuer prefix -> card lengths: Visa, Mastercard, American Express, Discover, JCB, Diners.
_CARD_ISSUERS = ((re.compile(r"4"), (13, 16, 19)), (re.compile(r"5[1-5]|2[2-7]"), (16,)), (re.compile(r"3[47]"), (15,)),
                 (re.compile(r"6011|65|64[4-9]|35"), (16, 17, 18, 19)), (re.compile(r"30[0-5]|36|38"), (14, 15, 16, 17, 18, 19)))
_IBAN = re.compile(r"(?i)(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_PHONE_WORD = re.compile(r"(?i)\b(tel|phone|mobile|cell|fax|call|ph)\b\.?\s*[:#.]?\**\s*(\w+\s*[:.]?\**\s*)?$")
_SECRET_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|passcode|pin|api[ _-]?key|secret(?:[ _-]?key)?|access[ _-]?(?:key|token)|"
    r"auth[ _-]?token|token|private[ _-]?key)\b\s*[:=]\**\s*(?P<value>\S{6,})"
)
_SECRET_TOKEN = re.compile(
    r"\b(?:AKIA[0-9A-Z]{16}|sk-(?:live-|test-|proj-)?[A-Za-z0-9]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|"
    r"gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})\b"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
)


@dataclass(frozen=True)
class PiiFinding:
    """One piece of personal data: its kind and where it is in the text (``text[start:end]``)."""

    kind: str
    start: int
    end: int


class PiiRejected(Exception):
    """Raised by ``apply_pii_policy`` under ``reject``; carries the kinds found (never the values)."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        super().__init__("personal data found: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items())))


def _is_id(text: str, start: int) -> bool:
    if _PII_LABEL.search(text[max(0, start - 24):start]):
        return False
    return bool(_ID_PREFIX.search(text[max(0, start - 2):start]))


def _secrets(text: str):
    for match in _SECRET_VALUE.finditer(text):
        yield match.start("value"), match.end("value")
    for match in _SECRET_TOKEN.finditer(text):
        yield match.start(), match.end()


def _emails(text: str):
    for match in _EMAIL.finditer(text):
        yield match.start(), match.end()


def _ibans(text: str):
    for match in _IBAN.finditer(text):
        value = match.group()
        # Case-blind matching can run on into the next word ("... 0130 00 and"): take the longest valid prefix.
        for end in range(len(value), 14, -1):
            if (end == len(value) or value[end] == " ") and stdnum_iban.is_valid(value[:end].upper()):
                yield match.start(), match.start() + end
                break


def _cards(text: str):
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        issued = any(prefix.match(digits) and len(digits) in lengths for prefix, lengths in _CARD_ISSUERS)
        if issued and luhn.is_valid(digits) and not _is_id(text, match.start()):
            yield match.start(), match.end()


def _ssns(text: str):
    for match in _SSN.finditer(text):
        if not _is_id(text, match.start()):
            yield match.start(), match.end()
    for match in _SSN_LABELLED.finditer(text):  # nine bare digits are an SSN only when labelled as one
        yield match.start("value"), match.end("value")


def _phones(text: str):
    for match in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.EXACT_GROUPING):
        raw = match.raw_string
        # "1731-815-7193" is a part number: a trunk prefix glued to the area code is not how phones are written.
        if _is_id(text, match.start) or re.match(r"1\d{3}\D", raw):
            continue
        # A bare run of digits is an id unless it is written as a phone number or labelled as one.
        if raw.isdigit() and not _PHONE_WORD.search(text[max(0, match.start - 24):match.start]):
            continue
        yield match.start, match.end
    # Grouped otherwise than the country's habit ("+49 89 2190 0"): still a phone when it is written with
    # its country code or labelled as one.
    for match in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID):
        if match.raw_string.startswith("+") or _PHONE_WORD.search(text[max(0, match.start - 24):match.start]):
            yield match.start, match.end


# Order matters: an earlier kind claims its span first (an email's digits are not a phone number).
_DETECTORS = (("secret", _secrets), ("email", _emails), ("iban", _ibans), ("credit_card", _cards),
              ("ssn", _ssns), ("phone", _phones))


def find_pii(text: str, kinds: tuple[str, ...] = PII_KINDS) -> list[PiiFinding]:
    """Every piece of personal data in ``text``, in order, without overlaps."""
    findings: list[PiiFinding] = []
    folded = text.translate(_FOLD)
    for kind, detector in _DETECTORS:
        if kind not in kinds:
            continue
        for start, end in detector(folded):
            if all(end <= f.start or start >= f.end for f in findings):
                findings.append(PiiFinding(kind, start, end))
    return sorted(findings, key=lambda f: f.start)


def redact(text: str, findings: list[PiiFinding]) -> str:
    """``text`` with each finding replaced by a typed placeholder such as ``[SSN]``."""
    pieces, position = [], 0
    for finding in sorted(findings, key=lambda f: f.start):
        pieces += [text[position:finding.start], f"[{finding.kind.upper()}]"]
        position = finding.end
    return "".join(pieces) + text[position:]


def apply_pii_policy(text: str, policy: PiiPolicy) -> tuple[str, dict[str, int]]:
    """Return the text to hand out under ``policy`` and the count of findings per kind.

    ``allow`` returns the text unchanged, ``redact`` with placeholders, ``reject`` raises ``PiiRejected``
    if anything was found.
    """
    if policy not in get_args(PiiPolicy):
        raise ValueError(f"unknown PII policy {policy!r}: choose {', '.join(get_args(PiiPolicy))}")
    findings = find_pii(text)
    counts = dict(Counter(f.kind for f in findings))
    if policy == "reject" and findings:
        raise PiiRejected(counts)
    return (redact(text, findings) if policy == "redact" else text), counts
