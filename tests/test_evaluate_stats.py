"""Wilson intervals, pooling and example selection: the pure parts of the evaluation."""

from __future__ import annotations

import pytest

from millennial.evaluate.metrics import exact_match, select_examples, until_eos
from millennial.evaluate.stats import Proportion, gain_per_usd, pooled, wilson_interval


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        (0, 10, (0.0, 0.2775328)),
        (5, 10, (0.2365931, 0.7634069)),
        (10, 10, (0.7224672, 1.0)),
        (1, 1, (0.2065493, 1.0)),
        (0, 0, (0.0, 1.0)),  # no examples: no information
    ],
)
def test_wilson_interval_known_values(correct: int, n: int, expected: tuple[float, float]) -> None:
    assert wilson_interval(correct, n) == pytest.approx(expected, abs=1e-6)


def test_wilson_interval_rejects_impossible_counts() -> None:
    for correct, n in ((11, 10), (-1, 10), (0, -1)):
        with pytest.raises(ValueError, match="correct"):
            wilson_interval(correct, n)


def test_proportion_pooling_and_gain_per_dollar() -> None:
    assert Proportion(0, 0).rate is None
    assert Proportion(0, 0).to_dict()["low"] == 0.0
    total = pooled([Proportion(3, 10), Proportion(7, 10)])
    assert (total.correct, total.n, total.rate) == (10, 20, 0.5)
    assert Proportion.from_dict(total.to_dict()) == total
    assert gain_per_usd(0.6, 0.1, 2.0) == pytest.approx(0.25)
    assert gain_per_usd(0.6, 0.1, 0.0) is None  # free training: a ratio would be meaningless
    assert gain_per_usd(0.6, 0.1, None) is None


def _row(task: str, split: str, digest: str, kind: str = "task") -> dict:
    return {"kind": kind, "task": task, "split": split, "difficulty": 1, "prompt": f"p{digest}",
            "answer": "a", "content_hash": digest, "source": "s", "text": "t"}


def test_examples_are_the_first_n_by_content_hash_per_task_and_split() -> None:
    rows = [_row("add", "test", h) for h in ("d", "b", "a", "c")]
    rows += [_row("add", "test_ood", h) for h in ("z", "y")]
    rows += [_row("chase", "test", "m"), _row("", "test", "0", kind="text")]
    chosen = select_examples(rows, max_examples=2)
    assert [(e.task, e.split, e.content_hash) for e in chosen] == [
        ("add", "test", "a"), ("add", "test", "b"), ("add", "test_ood", "y"),
        ("add", "test_ood", "z"), ("chase", "test", "m")]
    assert select_examples(reversed(rows), max_examples=2) == chosen


def test_exact_match_compares_the_stripped_continuation() -> None:
    assert exact_match(" 42", "42")
    assert not exact_match(" 42 and more", "42")
    assert until_eos([5, 6, 2, 7], eos_id=2) == [5, 6]
    assert until_eos([5, 6], eos_id=2) == [5, 6]


def test_the_first_token_score_skips_a_split_off_leading_space() -> None:
    from millennial.base import byte_level_tokenizer
    from millennial.evaluate.metrics import first_content_token, prefix_match

    tokenizer = byte_level_tokenizer(512)
    answer = tokenizer(" 42", add_special_tokens=False)["input_ids"]
    assert len(answer) == 3  # space, 4, 2: the space alone would make every answer "right"
    assert first_content_token(answer, tokenizer) == answer[1]
    assert first_content_token(tokenizer(" ", add_special_tokens=False)["input_ids"],
                               tokenizer) is None
    assert prefix_match(" 42; b=3", "42") and not prefix_match(" 4", "42")
