"""Normalise, scrub and filter one record at a time (no state, so it streams).

- normalise: Unicode NFC, CRLF -> LF, control and zero-width characters removed, runs of spaces
  and tabs collapsed, at most one blank line in a row, ends stripped.
- scrub: e-mail addresses, phone numbers and IPv4/IPv6 addresses become `<EMAIL>`, `<PHONE>`,
  `<IP>`. The patterns are regexes, so this is best effort; `millennial.validate` checks the
  output with the same patterns. The phone pattern asks for separators, a `+` country code or
  an area code in parentheses, so digit runs such as sums or years are left alone.
- filter, last, so its bounds hold for the text actually written: for text records, length
  bounds in characters and a junk ratio = the fraction of non-whitespace characters that are
  not letters or digits (markup, tables, symbol soup). Task records are generated or curated
  upstream: they only need a non-empty prompt and answer and the upper length bound.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from millennial.data import TASK_KIND, Record, task_record

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")
_ALNUM = re.compile(r"[^\W_]+")
# The ASCII characters `\s` and `[^\W_]` match (both are str.isspace / str.isalnum in `re`):
# bytes.translate deletes them in one C pass, where the regexes build a match object per run.
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_SPACE_OR_ALNUM = _ASCII_SPACE + bytes(c for c in range(128) if chr(c).isalnum())
# Every IPv4 match holds a digit, a dot and a digit; every phone match holds a `+`, a `(`, or a
# digit, a dot or hyphen and a digit. Text without them skips those patterns' full scans.
_DIGIT_SEPARATOR_DIGIT = re.compile(r"\d[.-]\d")

_HEX = "[0-9A-Fa-f]{1,4}"
_EMAIL_LOCAL = "A-Za-z0-9._%+-"
_EMAIL_LOCAL_SET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # A match starts where a run of local-part characters starts, so a search tries each run
    # once: without the lookbehind, a long run with no `@` is rescanned from every position.
    "email": re.compile(rf"(?<![{_EMAIL_LOCAL}])[{_EMAIL_LOCAL}]+@{_EMAIL_DOMAIN.pattern}"),
    "ipv6": re.compile(
        rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}"
        rf"|(?:{_HEX}:){{1,7}}:"
        rf"|(?:{_HEX}:){{1,6}}:{_HEX}"
        + "".join(rf"|(?:{_HEX}:){{1,{k}}}(?::{_HEX}){{1,{7 - k}}}" for k in range(5, 0, -1))
        + rf"|:(?::{_HEX}){{1,7}})(?![\w:])"
    ),
    "ipv4": re.compile(
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)"
    ),
    "phone": re.compile(
        r"(?<![\w+])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]\d{2,4}){2,3}"  # +61 2 9374 4000
        r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (02) 9374 4000
        r"|\d{3}[.-]\d{3,4}[.-]\d{4}"  # 555-123-4567
        r")(?!\w)"
    ),
}
"""Checked in this order: an e-mail can hold digits, an IPv6 address can end in an IPv4 one.
Every pattern tries each position in bounded time (no pattern can backtrack quadratically), so
scrubbing and validation are linear in the text's length."""

UNREAD_BEYOND = 64  # times max_chars: longer records are dropped before normalising/scrubbing
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>", "ipv6": "<IP>", "ipv4": "<IP>", "phone": "<PHONE>",
}


@dataclass(frozen=True)
class FilterConfig:
    """Bounds from params `curate.filter`."""

    min_chars: int
    max_chars: int
    max_junk_ratio: float


def normalise(text: str) -> str:
    """Canonical text: the same content always gives the same string (and content hash).

    Each substitution runs only where it can change something (cheap `in` checks first): most
    text has no CR, no tab or double space, no newline, so most records skip most passes.
    """
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    # Left over from ASCII after that: tab, newline, space. A lone space is replaced by itself.
    if not text.isascii() or "\t" in text or "  " in text:
        text = _HORIZONTAL_SPACE.sub(" ", text)
    if " \n" in text or "\n " in text:  # a bare newline is replaced by itself
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def junk_ratio(text: str) -> float:
    """Fraction of non-whitespace characters that are neither letters nor digits."""
    if text.isascii():
        data = text.encode("ascii")
        visible = len(data.translate(None, _ASCII_SPACE))
        junk = len(data.translate(None, _ASCII_SPACE_OR_ALNUM))
        return junk / visible if visible else 1.0
    visible_text = _WHITESPACE.sub("", text)
    if not visible_text:
        return 1.0
    return len(_ALNUM.sub("", visible_text)) / len(visible_text)


def scrub(text: str) -> tuple[str, Counter[str]]:
    """Replace personal data by placeholders; return the text and the count per kind."""
    counts: Counter[str] = Counter()
    for kind, pattern in PII_PATTERNS.items():
        if kind == "email":
            text, found = _scrub_emails(text)
        elif _may_hold(kind, text):
            text, found = pattern.subn(PLACEHOLDERS[kind], text)
        else:
            continue
        if found:
            counts[kind] += found
    return text, counts


def _may_hold(kind: str, text: str) -> bool:
    """False when `text` provably holds no match of PII pattern `kind` (a cheap necessary
    condition, checked on the text as the kinds before it left it)."""
    if kind == "ipv6":
        return ":" in text
    if kind == "ipv4":
        return _DIGIT_SEPARATOR_DIGIT.search(text) is not None
    if kind == "phone":
        return "+" in text or "(" in text or _DIGIT_SEPARATOR_DIGIT.search(text) is not None
    return True


def _scrub_emails(text: str) -> tuple[str, int]:
    """Leftmost-first replacement of e-mail addresses, found from their `@`s in linear time.

    The same matches as replacing the unanchored pattern: a match's local part is the run of
    local-part characters before its `@` (it cannot hold one), back to the previous match's end.
    """
    pieces: list[str] = []
    done = 0  # text[:done] is settled
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and text[start - 1] in _EMAIL_LOCAL_SET:
            start -= 1
        domain = _EMAIL_DOMAIN.match(text, at + 1) if start < at else None
        if domain is None:
            at = text.find("@", at + 1)
            continue
        pieces += (text[done:start], PLACEHOLDERS["email"])
        done = domain.end()
        at = text.find("@", done)
    if not pieces:
        return text, 0
    pieces.append(text[done:])
    return "".join(pieces), len(pieces) // 2


def drop_reason(record: Record, config: FilterConfig) -> str | None:
    """Why a normalised record is dropped (a metrics key), or None to keep it."""
    if record.kind == TASK_KIND:
        if not record.prompt:
            return "empty_prompt"
        if not record.answer:
            return "empty_answer"
    elif len(record.text) < config.min_chars:
        return "too_short"
    elif junk_ratio(record.text) > config.max_junk_ratio:
        return "junk"
    if len(record.text) > config.max_chars:
        return "too_long"
    return None


def clean(record: Record, config: FilterConfig) -> tuple[Record | None, str | None, Counter[str]]:
    """Normalise, scrub, filter: (kept record or None, drop reason or None, PII counts).

    A record more than `UNREAD_BEYOND` times `max_chars` long is dropped as too long before
    any of that work: normalising (whitespace runs) and placeholders could only bring it back
    under the bound by shrinking it that much. Otherwise filtering comes last, so the length
    bounds hold for the text that is actually written; PII is only counted in kept records.
    """
    raw = len(record.prompt or "") + len(record.answer or "") + len(record.text)
    if raw > UNREAD_BEYOND * config.max_chars:
        return None, "too_long", Counter()
    if record.kind == TASK_KIND:
        prompt, in_prompt = scrub(normalise(record.prompt or ""))
        answer, in_answer = scrub(normalise(record.answer or ""))
        record = task_record(record.source, record.origin, prompt, answer, record.task,
                             record.difficulty, record.ood)
        counts = in_prompt + in_answer
    else:
        text, counts = scrub(normalise(record.text))
        record = dataclasses.replace(record, text=text)
    reason = drop_reason(record, config)
    if reason is not None:
        return None, reason, Counter()
    return record, None, counts
