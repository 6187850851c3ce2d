"""Held-out loss per source and per task, as training and evaluation both report it.

A held-out record is scored the way a user meets the model: alone, after EOS, cut to
`max_length` tokens, every token of a text scored, only the answer and its EOS of a task. The
records of each group (a source, or a task and split) are the first by content hash, so every
arm and every rerun scores the same ones, and no group crowds out another (the first blocks of a
file in order measured one task). Headline figures average over groups, each weighing the same:
a task with short answers counts as much as one with long ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from millennial.data import TASK_KIND, TEXT_KIND, Record, task_record
from millennial.data.pack import Encoded, encode_records

Row = Mapping[str, Any]


def read_split(documents_dir: Path, split: str) -> list[dict[str, Any]]:
    """Rows of `documents/<split>.parquet` as dicts."""
    path = documents_dir / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the curate stage first")
    return pq.read_table(path).to_pylist()


def first_by_hash(rows: Iterable[Row], group: Callable[[Row], str | None],
                  per_group: int) -> dict[str, list[Row]]:
    """The first `per_group` rows of each group by content hash (rows whose group is None are
    left out): a pure function of the data, the same for every arm and rerun."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        name = group(row)
        if name is not None:
            groups.setdefault(name, []).append(row)
    return {name: sorted(members, key=lambda r: r["content_hash"])[:per_group]
            for name, members in sorted(groups.items())}


def as_record(row: Row) -> Record:
    """A documents row as the record training encoded (text whole; task prompt + answer)."""
    if row["kind"] == TASK_KIND:
        return task_record(row["source"], row["content_hash"], row["prompt"], row["answer"],
                           row["task"], row["difficulty"])
    return Record(row["source"], row["content_hash"], TEXT_KIND, row["text"])


def encode_scored(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, eos_id: int,
                  max_length: int | None = None) -> list[Encoded]:
    """Records as training scores them (text: every token; task: answer and EOS), EOS first,
    cut to `max_length` tokens (None: whole)."""
    return [
        Encoded([eos_id, *e.ids][:max_length], [0, *e.mask][:max_length])
        for e in encode_records(records, tokenizer, eos_id)
    ]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int,
              side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) padded on `side` ("left" for generation, "right" for scoring)."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@torch.no_grad()
def mean_nll(model: nn.Module, sequences: Sequence[Encoded], *, batch_size: int,
             pad_id: int) -> float:
    """Mean negative log-likelihood per scored token of `sequences` (each token weighs the same).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, attention = pad_batch([s.ids for s in batch], pad_id, "right")
        scored, _ = pad_batch([s.mask for s in batch], 0, "right")
        labels = ids.masked_fill(scored == 0, -100).to(device)
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                       use_cache=False).logits
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                       labels[:, 1:].flatten(), ignore_index=-100,
                                       reduction="sum"))
        count += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("held-out loss: no scored tokens")
    return total / count


@dataclass(frozen=True)
class HeldOutSet:
    """The encoded records of one group, and whether the group is text or a task."""

    name: str
    kind: str
    sequences: list[Encoded]


def held_out_sets(rows: Iterable[Row], group: Callable[[Row], str | None], per_group: int,
                  tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[HeldOutSet]:
    """Select and encode the records of each group (see `first_by_hash`)."""
    eos = int(tokenizer.eos_token_id)
    return [
        HeldOutSet(name, members[0]["kind"],
                   encode_scored([as_record(r) for r in members], tokenizer, eos, max_length))
        for name, members in first_by_hash(rows, group, per_group).items()
    ]


@dataclass(frozen=True)
class HeldOutLosses:
    """Mean loss per group, and the unweighted means over text groups and over task groups."""

    by_group: dict[str, float]
    kinds: dict[str, str]

    def mean(self, kind: str) -> float | None:
        values = [v for name, v in self.by_group.items() if self.kinds[name] == kind]
        return sum(values) / len(values) if values else None

    @property
    def task(self) -> float | None:
        return self.mean(TASK_KIND)

    @property
    def text(self) -> float | None:
        return self.mean(TEXT_KIND)


def held_out_losses(model: nn.Module, sets: Sequence[HeldOutSet], *, batch_size: int,
                    pad_id: int) -> HeldOutLosses:
    return HeldOutLosses(
        {s.name: mean_nll(model, s.sequences, batch_size=batch_size, pad_id=pad_id)
         for s in sets},
        {s.name: s.kind for s in sets},
    )
