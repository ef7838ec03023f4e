"""Find and redact personal data and secrets in dataset text: the PII scan behind statistics and curation.

Six kinds are detected, each with a typed placeholder used by ``redact``:

- ``email``        addresses (``[EMAIL]``)
- ``phone``        international numbers (``+``/``00`` prefix, 8–15 digits) and common national formats: a
                   trunk ``0`` prefix (``030 1234567``, ``(0161) 496 0066``, ``04 15 39 15 00``) or the North
                   American ``(555) 123-4567`` / ``555.123.4567`` shapes (``[PHONE]``)
- ``credit_card``  13–19 digits starting 2–6 (or 1800), optional spaces/dashes, Luhn check required (``[CREDIT_CARD]``)
- ``iban``         country code, check digits and BBAN, compact or in groups of four, mod-97 check required
                   (``[IBAN]``)
- ``ip_address``   IPv4 and IPv6 validated by ``ipaddress``; loopback and unspecified addresses are ignored
                   (``[IP_ADDRESS]``)
- ``secret``       cloud/API keys and tokens by their published prefixes (AWS ``AKIA…``, GitHub ``ghp_…``,
                   ``github_pat_…``, Slack ``xox?-…``, OpenAI-style ``sk-…``, this studio's ``atl_…``/``atk_…``),
                   private-key blocks, and ``api_key=…``/``secret: …``/``Bearer …`` with a high-entropy value
                   (``[SECRET]``)

The detector favours precision on ordinary prose: dates, years, version numbers, decimals, thousands-separated
amounts and bare digit runs that do not start with a trunk ``0`` are not phones. Where findings overlap, the
longer one wins, then the kind with the higher priority (the order of ``KINDS``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from .rows import Row

KINDS: Final = ("secret", "email", "credit_card", "iban", "ip_address", "phone")
"""Every kind the detector reports; between overlapping findings of equal length the earlier kind wins."""

PLACEHOLDERS: Final = {kind: f"[{kind.upper()}]" for kind in KINDS}
"""The typed placeholder ``redact`` writes for each kind, e.g. ``[CREDIT_CARD]``."""

_PRIORITY: Final = {kind: rank for rank, kind in enumerate(KINDS)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: its kind, its span in the scanned text (``text[start:end] == value``) and the value."""

    kind: str
    start: int
    end: int
    value: str

    @property
    def masked(self) -> str:
        """The value with most of it hidden, safe to show as an example (never the whole value)."""
        return _MASKERS[self.kind](self.value)


# --- e-mail -------------------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-])"
    r"[^\W_][\w.%+\-]*"  # local part, starting with a letter or digit
    r"@"
    r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+"  # domain labels
    r"[^\W\d_]{2,24}"  # top-level domain
    r"(?![\w\-])"
)


def _find_emails(text: str) -> Iterator[Finding]:
    for match in _EMAIL_RE.finditer(text):
        yield Finding("email", match.start(), match.end(), match.group())


def _mask_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    return f"{local[:1]}***@{domain}"


# --- phone --------------------------------------------------------------------------------------------------------

# A run of digits and parenthesised area codes joined by at most one separator each, with an optional leading
# "+" and an optional extension. Which runs are phone numbers is decided by ``_phone_span`` below.
_PHONE_RE = re.compile(
    r"(?<![\w@.,+/\-])"
    r"(?:\+\s?)?(?:\(\d{1,5}\)|\d)(?:[ .\-/]?(?:\(\d{1,5}\)|\d))*"
    r"(?P<extension>\s?(?:x|ext\.?|extension)\s?\d{1,6})?"
    r"(?![\w@])"
)
_PHONE_PART_RE = re.compile(r"\(\d+\)|\d+|[ .\-/]")
_MAX_PHONE_GROUPS: Final = 8
_NANP_RE = re.compile(r"(?:1[ .\-]?)?(?:\(\d{3}\)\s?|\d{3}[ .\-])\d{3}[ .\-]\d{4}")


def _find_phones(text: str) -> Iterator[Finding]:
    for match in _PHONE_RE.finditer(text):
        main_end = match.start("extension") if match.group("extension") else match.end()
        end = _phone_span(text[match.start() : main_end])
        if end is None:
            continue
        if end == main_end - match.start():
            end = match.end() - match.start()  # the whole number was accepted: keep its extension with it
        yield Finding("phone", match.start(), match.start() + end, text[match.start() : match.start() + end])


def _phone_span(candidate: str) -> int | None:
    """Length of the longest phone-number prefix of ``candidate`` made of whole digit groups, or None."""
    international = candidate.startswith("+")
    body = candidate.lstrip("+ ")
    groups: list[str] = []
    separators: list[str] = []  # separators[i] joins groups[i] and groups[i + 1]; "" where they touch
    for part in _PHONE_PART_RE.findall(body):
        if part[0] in " .-/":
            separators.append(part)
        else:
            if groups and len(separators) < len(groups):
                separators.append("")
            groups.append(part)
    # Dropping groups after a space recovers a number followed by an unrelated one ("030 1234567 2024");
    # a number that goes on with "-" or "." ("0-306-40615-2", an ISBN) is one token and is not cut. No phone
    # number has more than eight groups, so longer runs of numbers are only tried up to that.
    for count in range(min(len(groups), _MAX_PHONE_GROUPS), 0, -1):
        if count < len(groups) and separators[count - 1] != " ":
            continue
        if _is_phone(international, groups[:count], separators[: count - 1]):
            return len(candidate) - len(body) + len(_join(groups[:count], separators[: count - 1]))
    return None


def _join(groups: list[str], separators: list[str]) -> str:
    return "".join(group + separator for group, separator in zip(groups, [*separators, ""], strict=True))


def _is_phone(international: bool, groups: list[str], separators: list[str]) -> bool:
    """Whether digit groups joined by separators read as a phone number rather than a date, version or amount."""
    digits = "".join(group.strip("()") for group in groups)
    if sum(len(group) == 1 for group in groups) > 1:
        return False  # "0 0 0 0 0 0 0 0 0" is a matrix, not a number
    if international or groups[0].startswith("00"):
        national = [group for group in groups if group != "(0)"]  # "+49 (0) 30 …": the trunk 0 is not dialled
        count = len("".join(group.strip("()") for group in national)) - (0 if international else 2)
        return 8 <= count <= 15
    if not digits.startswith("0"):
        return _NANP_RE.fullmatch(_join(groups, separators)) is not None
    if not 9 <= len(digits) <= 12:
        return False
    if separators.count("/") > 1 or ("/" in separators and separators[0] != "/"):
        return False  # one slash after the area code ("030/1234567"); more is a date or a path
    if "." in separators and len(groups) < 3:
        return False  # "0.123456789" is a decimal
    return not _starts_with_date(groups, separators)


def _starts_with_date(groups: list[str], separators: list[str]) -> bool:
    """Whether the first three groups form a date ("01/02/2024 …", "2024-01-02 …")."""
    if len(groups) < 3 or separators[0] != separators[1] or separators[0] not in ("-", "/", "."):
        return False
    if len(groups) > 3 and separators[2] == separators[0]:
        return False  # "04.15.39.15.00" keeps its separator: a French number, not a date
    first, second, third = groups[:3]
    if not all(group.isdigit() for group in (first, second, third)):
        return False
    if len(first) == 4:
        return 1 <= int(second) <= 12 and 1 <= int(third) <= 31
    return len(first) <= 2 and len(second) <= 2 and len(third) in (2, 4) and min(int(first), int(second)) <= 12


def _mask_phone(value: str) -> str:
    keep_prefix = 0
    if value.startswith("+"):
        code = re.match(r"\+\s?\d+", value)
        keep_prefix = code.end() if code and len(re.sub(r"\D", "", code.group())) <= 3 else 1
    total_digits = sum(char.isdigit() for char in value[keep_prefix:])
    masked: list[str] = []
    seen = 0
    for char in value[keep_prefix:]:
        if char.isdigit():
            seen += 1
            masked.append(char if seen > total_digits - 4 else "*")
        else:
            masked.append(char)
    return value[:keep_prefix] + "".join(masked)


# --- credit card --------------------------------------------------------------------------------------------------

_CARD_RE = re.compile(r"(?<![\w\-])(?<!\d )[1-6](?:[ \-]?\d){12,18}(?![ \-]?\d)(?!\w)")


def _find_cards(text: str) -> Iterator[Finding]:
    for match in _CARD_RE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        # Issuer numbers start 2 to 6, and 1800 for old JCB cards; other 1… runs are millisecond timestamps.
        if (digits[0] != "1" or digits.startswith("1800")) and _luhn_valid(digits):
            yield Finding("credit_card", match.start(), match.end(), match.group())


def _luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number satisfies."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _mask_keep_last(value: str, keep: int) -> str:
    total = sum(char.isalnum() for char in value)
    masked: list[str] = []
    seen = 0
    for char in value:
        if char.isalnum():
            seen += 1
            masked.append(char if seen > total - keep else "*")
        else:
            masked.append(char)
    return "".join(masked)


# --- IBAN ---------------------------------------------------------------------------------------------------------

_IBAN_START_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}")
_IBAN_GROUP_RE = re.compile(r" ?[A-Z0-9]{1,4}")


def _find_ibans(text: str) -> Iterator[Finding]:
    position = 0
    while match := _IBAN_START_RE.search(text, position):
        position = match.end()
        # Collect the following groups (compact, or spaced in fours), then keep the longest valid prefix.
        ends: list[int] = []
        cursor, length = match.end(), 0
        while length < 30 and (group := _IBAN_GROUP_RE.match(text, cursor)):
            cursor = group.end()
            length += len(group.group().strip())
            ends.append(cursor)
            if len(group.group().strip()) < 4:
                break
        for end in reversed(ends):
            if end < len(text) and text[end].isalnum():
                continue
            value = text[match.start() : end]
            if _iban_valid(value.replace(" ", "")):
                yield Finding("iban", match.start(), end, value)
                position = end
                break


def _iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97 check: move the first four characters to the end, letters to numbers, remainder 1."""
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _mask_iban(value: str) -> str:
    total = sum(char.isalnum() for char in value)
    masked: list[str] = []
    seen = 0
    for char in value:
        if char.isalnum():
            seen += 1
            masked.append(char if seen <= 4 or seen > total - 4 else "*")
        else:
            masked.append(char)
    return "".join(masked)


# --- IP address ---------------------------------------------------------------------------------------------------

_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?!\w)")
_IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")


def _find_ip_addresses(text: str) -> Iterator[Finding]:
    for pattern in (_IPV4_RE, _IPV6_RE):
        for match in pattern.finditer(text):
            try:
                address = ipaddress.ip_address(match.group())
            except ValueError:
                continue
            if not (address.is_loopback or address.is_unspecified):
                yield Finding("ip_address", match.start(), match.end(), match.group())


def _mask_ip_address(value: str) -> str:
    separator = "." if "." in value and ":" not in value else ":"
    head, _, rest = value.partition(separator)
    return head + separator + re.sub(r"[0-9A-Za-z]", "*", rest)


# --- secrets ------------------------------------------------------------------------------------------------------

_KEY_END = r"(?![A-Za-z0-9_\-])"
_SECRET_RES: Final = (
    re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),  # GitHub classic tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),  # GitHub fine-grained tokens
    re.compile(r"\bxox[baprs]-[A-Za-z0-9\-]{10,250}" + _KEY_END),  # Slack
    re.compile(r"\bsk-(?:proj-|ant-|svcacct-|admin-)?(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,250}" + _KEY_END),
    re.compile(r"\bat[lk]_[0-9a-f]{12}_[A-Za-z0-9_\-]{32,}" + _KEY_END),  # this studio's tokens and keys
    re.compile(  # a private key block; without its END line, the base64 lines that follow the header
        r"-----BEGIN (?P<label>(?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,20000}?-----END (?P=label)PRIVATE KEY(?: BLOCK)?-----|(?:(?:\s|\\n)+[A-Za-z0-9+/=]{16,})*)"
    ),
)
_ASSIGNMENT_RE = re.compile(
    r"(?i)\b(?:api[_\-]?key|secret[_\-]?key|client[_\-]?secret|secret|access[_\-]?token|auth[_\-]?token"
    r"|private[_\-]?key|password|passwd)\b[\"']?\s*[:=]\s*[\"']?"
    r"(?P<value>[A-Za-z0-9+/_\-.=~]{16,256})"
    r"|\bBearer\s+(?P<bearer>[A-Za-z0-9+/_\-.=~]{16,256})"
)
_KNOWN_PREFIX_RE = re.compile(
    r"(?:AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|xox[baprs]-|sk-(?:proj-|ant-|svcacct-|admin-)?|at[lk]_"
    r"|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"
)


def _find_secrets(text: str) -> Iterator[Finding]:
    for pattern in _SECRET_RES:
        for match in pattern.finditer(text):
            yield Finding("secret", match.start(), match.end(), match.group())
    for match in _ASSIGNMENT_RE.finditer(text):
        group = "value" if match.group("value") else "bearer"
        value = match.group(group).rstrip(".")
        if _looks_random(value):
            yield Finding("secret", match.start(group), match.start(group) + len(value), value)


def _looks_random(value: str) -> bool:
    """A high-entropy value mixing letters and digits, as generated keys are (and words and settings are not)."""
    if len(value) < 16 or not re.search(r"\d", value) or not re.search(r"[A-Za-z]", value):
        return False
    counts = Counter(value)
    entropy = -sum(count / len(value) * math.log2(count / len(value)) for count in counts.values())
    return entropy >= 3.5


def _mask_secret(value: str) -> str:
    prefix = _KNOWN_PREFIX_RE.match(value)
    return (prefix.group() if prefix else value[:2]) + "****"


# --- public API ---------------------------------------------------------------------------------------------------

_MASKERS: Final = {
    "email": _mask_email,
    "phone": _mask_phone,
    "credit_card": lambda value: _mask_keep_last(value, 4),
    "iban": _mask_iban,
    "ip_address": _mask_ip_address,
    "secret": _mask_secret,
}
_FINDERS: Final = (_find_secrets, _find_emails, _find_cards, _find_ibans, _find_ip_addresses, _find_phones)


def find_pii(text: str) -> list[Finding]:
    """Every personal value and secret in ``text``, in text order, without overlaps.

    Where two detections overlap, the longer span wins, then the higher-priority kind (order of ``KINDS``), so
    the digits inside an IBAN are never also reported as a card or a phone number.
    """
    candidates = [finding for finder in _FINDERS for finding in finder(text)]
    candidates.sort(key=lambda finding: (finding.start - finding.end, _PRIORITY[finding.kind], finding.start))
    accepted: list[Finding] = []
    for finding in candidates:
        if all(finding.end <= other.start or finding.start >= other.end for other in accepted):
            accepted.append(finding)
    return sorted(accepted, key=lambda finding: finding.start)


def redact_findings(text: str) -> tuple[str, list[Finding]]:
    """``text`` with every finding replaced by its typed placeholder, and the findings that were replaced."""
    findings = find_pii(text)
    pieces: list[str] = []
    cursor = 0
    for finding in findings:
        pieces.append(text[cursor : finding.start])
        pieces.append(PLACEHOLDERS[finding.kind])
        cursor = finding.end
    pieces.append(text[cursor:])
    return "".join(pieces), findings


def redact(text: str) -> str:
    """``text`` with every finding replaced by its typed placeholder (``[EMAIL]``, ``[PHONE]``, …)."""
    return redact_findings(text)[0]


def redact_row(row: Row, counts: Counter[str] | None = None) -> Row:
    """A copy of a normalized row with every text field redacted; keys, roles and message order are kept.

    Text fields are those ``rows.row_texts`` reads: ``text``, ``prompt``, ``completion`` and the ``content`` of
    every message in ``messages``, ``prompt``, ``chosen`` and ``rejected``. Other keys are copied unchanged.
    When ``counts`` is given, the number of redacted values per kind is added to it.
    """
    redacted: Row = dict(row)
    for key in ("text", "prompt", "completion", "messages", "chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, str):
            redacted[key] = _redact_counting(value, counts)
        elif isinstance(value, list):
            redacted[key] = [_redact_message(message, counts) for message in value]
    return redacted


def _redact_message(message: Any, counts: Counter[str] | None) -> Any:
    if not isinstance(message, dict) or "content" not in message:
        return message
    return {**message, "content": _redact_counting(str(message["content"]), counts)}


def _redact_counting(text: str, counts: Counter[str] | None) -> str:
    redacted, findings = redact_findings(text)
    if counts is not None:
        counts.update(finding.kind for finding in findings)
    return redacted
