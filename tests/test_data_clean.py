"""Normalisation, filters and personal-data scrubbing, one record at a time."""

from __future__ import annotations

import importlib
import random
import re
import unicodedata
from collections import Counter

import pytest

from millennial.data import Record, task_record
from millennial.data.clean import (
    PII_PATTERNS,
    PLACEHOLDERS,
    UNREAD_BEYOND,
    FilterConfig,
    clean,
    drop_reason,
    junk_ratio,
    normalise,
    scrub,
)

FILTER = FilterConfig(min_chars=20, max_chars=200, max_junk_ratio=0.3)


def text(body: str) -> Record:
    return Record("src", "f:1", "text", body)


def test_normalise_nfc_controls_and_whitespace() -> None:
    raw = "\ufeff  Cafe\u0301\t\tau\u00a0lait\x07 \r\n\r\n\r\n\r\nnext\u200b line  "
    assert normalise(raw) == "Caf\u00e9 au lait\n\nnext line"
    assert normalise(normalise(raw)) == normalise(raw)


def test_junk_ratio_ignores_whitespace() -> None:
    assert junk_ratio("ab cd") == 0.0
    assert junk_ratio("a, b.") == pytest.approx(2 / 4)
    assert junk_ratio("   ") == 1.0


@pytest.mark.parametrize(("raw", "scrubbed", "kind"), [
    ("mail jane.doe+x@mail.example.co.uk now", "mail <EMAIL> now", "email"),
    ("call +61 2 9374 4000.", "call <PHONE>.", "phone"),
    ("call (02) 9374 4000", "call <PHONE>", "phone"),
    ("call 555-123-4567", "call <PHONE>", "phone"),
    ("host 10.0.0.1.", "host <IP>.", "ipv4"),
    ("host 2001:db8::8a2e:370:7334 up", "host <IP> up", "ipv6"),
    ("host fe80::1", "host <IP>", "ipv6"),
])
def test_scrub_replaces_and_counts(raw: str, scrubbed: str, kind: str) -> None:
    out, counts = scrub(raw)
    assert out == scrubbed and counts == {kind: 1}


@pytest.mark.parametrize("keep", [
    "4721 + 8856 = 13577", "1234 3412 2143 4321", "in 2004 2005 2006", "at 4:00pm",
    "1234567890", "scores 3.5-4.0", "std::vector", "12:30:45", "version 1.2.3",
    "sudoku 3..4 .41. ..42 .... ->", "b=a; a=7. b?",
])
def test_scrub_leaves_numbers_and_tasks_alone(keep: str) -> None:
    assert scrub(keep) == (keep, {})


@pytest.mark.parametrize(("record", "reason"), [
    (text("short"), "too_short"),
    (text("word " * 50), "too_long"),
    (text("|--|--|--|--| ab |--|--|--|"), "junk"),
    (text("a fine sentence of words"), None),
    (task_record("t", "g", "", "3", "x"), "empty_prompt"),
    (task_record("t", "g", "2+1=", "", "x"), "empty_answer"),
    (task_record("t", "g", "2+1=", "3", "x"), None),  # tasks skip length floor and junk
    (task_record("t", "g", "=" * 300, "3", "x"), "too_long"),
])
def test_drop_reason(record: Record, reason: str | None) -> None:
    assert drop_reason(record, FILTER) == reason


def test_clean_task_normalises_parts_and_rebuilds_text() -> None:
    record, reason, counts = clean(task_record("t", "g", " mail a@b.io \t=", " 7 ", "x", 2),
                                   FILTER)
    assert reason is None and counts == {"email": 1}
    assert record is not None
    assert (record.prompt, record.answer, record.text) == ("mail <EMAIL> =", "7",
                                                           "mail <EMAIL> = 7")
    assert record.difficulty == 2


def test_clean_drops_with_reason_and_no_counts() -> None:
    assert clean(text("tiny"), FILTER) == (None, "too_short", {})


# What e-mail scrubbing replaced before it was made linear: the unanchored pattern.
UNANCHORED_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def test_email_scrubbing_replaces_what_the_unanchored_pattern_replaced() -> None:
    rng = random.Random(0)
    for _ in range(20_000):
        body = "".join(rng.choice("ab.@-_%+ x") for _ in range(rng.randint(0, 24)))  # no IP
        expected, found = UNANCHORED_EMAIL.subn("<EMAIL>", body)
        assert scrub(body) == (expected, Counter({"email": found} if found else {})), body
        assert bool(PII_PATTERNS["email"].search(body)) == (found > 0), body
    assert scrub("a@b.cc9x@d.com")[0] == "<EMAIL><EMAIL>"  # back to back, as before


@pytest.mark.parametrize("unit", ["a", "1", "1:", "a.", "1.2", "555-", " a", "x@a.a"])
def test_a_multi_megabyte_line_is_cleaned_in_seconds(unit: str) -> None:
    """Each pattern on its worst input, scrubbed in full (the bound lets it through): a
    quadratic pattern would take hours here and stall the suite, a linear one seconds."""
    roomy = FilterConfig(min_chars=20, max_chars=4_000_000, max_junk_ratio=1.0)
    kept, _, _ = clean(text(unit * (2_000_000 // len(unit))), roomy)
    assert kept is not None and len(kept.text) > 1_000_000


def test_a_record_far_over_the_bound_is_dropped_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    def unread(_: str) -> str:
        raise AssertionError("normalised a record it should have dropped unread")

    monkeypatch.setattr(importlib.import_module("millennial.data.clean"), "normalise", unread)
    _, reason, _ = clean(text("x" * (UNREAD_BEYOND * FILTER.max_chars + 1)), FILTER)
    assert reason == "too_long"
    task = task_record("src", "f:1", "p" * (UNREAD_BEYOND * FILTER.max_chars), "a", "t")
    assert clean(task, FILTER)[1] == "too_long"


# The plain definitions (every pass always runs, regexes only) that the fast paths must equal.
def plain_normalise(body: str) -> str:
    body = unicodedata.normalize("NFC", body).replace("\r\n", "\n").replace("\r", "\n")
    body = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff]", "", body)
    body = re.sub(r"[^\S\n]+", " ", body)
    body = re.sub(r" ?\n ?", "\n", body)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def plain_junk_ratio(body: str) -> float:
    visible = re.sub(r"\s+", "", body)
    return len(re.sub(r"[^\W_]+", "", visible)) / len(visible) if visible else 1.0


def plain_scrub(body: str) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    for kind, pattern in PII_PATTERNS.items():
        body, found = pattern.subn(PLACEHOLDERS[kind], body)
        if found:
            counts[kind] += found
    return body, counts


SPACES_AND_CONTROLS = " \t\n\r\x0b\x0c\x1c\x1f\x85\u00a0\u2003\u200b\u2060\ufeff\x07"
PII_PIECES = (".", ":", "::", "8a2e", "fe80", " ", "-", "+", "(", ")", "1", "a", "@", "x.io", "_",
              "e\u0301", "\n")


def near_pii(rng: random.Random) -> str:
    """Pieces, numbers and IP-, phone- and e-mail-like runs glued at random: matches, near
    misses and neighbours that a pattern's look-arounds must reject."""
    def number() -> str:
        return str(rng.choice((rng.randint(0, 9), rng.randint(10, 299), rng.randint(0, 99999))))

    shapes = (
        lambda: ".".join(number() for _ in range(rng.randint(2, 5))),
        lambda: rng.choice(("+", "(", "")) + number() + rng.choice((") ", " ", "-", ".", ""))
        + "-".join(number() for _ in range(rng.randint(1, 3))),
        lambda: ":".join(rng.choice(("", "db8", "1", "ffff")) for _ in range(rng.randint(2, 9))),
        lambda: rng.choice(PII_PIECES),
    )
    return "".join(rng.choice(shapes)() for _ in range(rng.randint(0, 6)))


def test_fast_paths_equal_the_plain_definitions() -> None:
    """Every pass that is skipped on a cheap check would have left the text unchanged."""
    rng = random.Random(3)
    alphabet = SPACES_AND_CONTROLS + "aZ09._-+():@\u00e9e\u0301\u03a9"
    for _ in range(30_000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert normalise(body) == plain_normalise(body), repr(body)
        assert junk_ratio(body) == plain_junk_ratio(body), repr(body)
        pieces = near_pii(rng)
        assert scrub(pieces) == plain_scrub(pieces), repr(pieces)
    every_ascii = "".join(map(chr, range(128)))
    assert junk_ratio(every_ascii) == plain_junk_ratio(every_ascii)
