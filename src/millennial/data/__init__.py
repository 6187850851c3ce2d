"""Data curation: sources -> clean -> dedup -> split -> tokenize/pack -> `data/curated/`.

This module holds what every step shares: the `Record` that flows through the stream,
and `DataError`, the error for bad input data (each message names the file, line or source).
Params sections are read with `millennial.params.Options`.
"""

from __future__ import annotations

from dataclasses import dataclass

from millennial.errors import UserError

ANSWER_SEPARATOR = " "
"""Joins a task's prompt and answer in `text`; it is tokenized with the answer (GPT-style
leading space), so the model sees the same tokens at training and at generation time."""

TEXT_KIND = "text"
TASK_KIND = "task"


class DataError(UserError):
    """Input data is unusable: malformed, missing, binary, or nothing is left after filtering."""


@dataclass(frozen=True)
class Record:
    """One document (`kind` text) or prompt/answer example (`kind` task) on its way through.

    `origin` ("file:line", "row N", "generator#i") only serves error and skip messages.
    """

    source: str
    origin: str
    kind: str
    text: str
    prompt: str | None = None
    answer: str | None = None
    task: str | None = None
    difficulty: int | None = None
    ood: bool = False


def task_record(
    source: str,
    origin: str,
    prompt: str,
    answer: str,
    task: str | None,
    difficulty: int | None = None,
    ood: bool = False,
) -> Record:
    """A task example whose `text` is exactly what the model is trained on."""
    return Record(
        source=source, origin=origin, kind=TASK_KIND, text=f"{prompt}{ANSWER_SEPARATOR}{answer}",
        prompt=prompt, answer=answer, task=task, difficulty=difficulty, ood=ood,
    )


