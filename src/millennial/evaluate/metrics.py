"""What one model scores: exact match under greedy decoding, perplexity, decoding speed.

Inputs are tokenized exactly as training packed them (`millennial.data.pack`): prompt ids
without special tokens, the answer with its leading separator, then EOS. Every sequence starts
with EOS because in packed training almost every document follows the previous one's EOS.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from millennial.data import ANSWER_SEPARATOR, TASK_KIND, TEXT_KIND, Record, task_record
from millennial.data.pack import Encoded, encode_batch, encode_records
from millennial.evaluate.stats import Proportion

Cell = tuple[str, str]  # (task, split)


@dataclass(frozen=True)
class TaskExample:
    """One held-out task row: the model sees `prompt` and must generate `answer` then EOS."""

    task: str
    split: str
    difficulty: int | None  # generated tasks have one; tasks from structured sources may not
    prompt: str
    answer: str
    content_hash: str

    def record(self) -> Record:
        return task_record("eval", self.content_hash, self.prompt, self.answer, self.task,
                           self.difficulty)


def read_split(documents_dir: Path, split: str) -> list[dict[str, Any]]:
    """Rows of `documents/<split>.parquet` as dicts."""
    path = documents_dir / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the curate stage first")
    return pq.read_table(path).to_pylist()


def select_examples(rows: Iterable[Mapping[str, Any]], max_examples: int) -> list[TaskExample]:
    """The first `max_examples` task rows of each (task, split) by content hash.

    A pure function of the data: every arm and every rerun sees the same examples, and a new
    row displaces an old one only if its hash sorts before it.
    """
    cells: dict[Cell, list[TaskExample]] = {}
    for row in rows:
        if row["kind"] != TASK_KIND:
            continue
        example = TaskExample(row["task"], row["split"], row["difficulty"], row["prompt"],
                              row["answer"], row["content_hash"])
        cells.setdefault((example.task, example.split), []).append(example)
    return [
        example
        for cell in sorted(cells)
        for example in sorted(cells[cell], key=lambda e: e.content_hash)[:max_examples]
    ]


def select_texts(rows: Iterable[Mapping[str, Any]], max_docs: int) -> list[Record]:
    """The first `max_docs` general-text rows by content hash, as records to encode."""
    texts = sorted((row for row in rows if row["kind"] == TEXT_KIND),
                   key=lambda row: row["content_hash"])[:max_docs]
    return [Record(row["source"], row["content_hash"], TEXT_KIND, row["text"]) for row in texts]


def encode_prompts(prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                   eos_id: int) -> list[list[int]]:
    return [[eos_id, *ids] for ids in encode_batch(prompts, tokenizer)]


def encode_scored(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, eos_id: int,
                  max_length: int) -> list[Encoded]:
    """Records as training scores them (text: every token; task: answer and EOS), EOS first,
    cut to `max_length` tokens."""
    return [
        Encoded([eos_id, *e.ids][:max_length], [0, *e.mask][:max_length])
        for e in encode_records(records, tokenizer, eos_id)
    ]


def answer_tokens(examples: Sequence[TaskExample], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens each answer takes to generate: separator and answer as training encodes them, EOS."""
    answers = [f"{ANSWER_SEPARATOR}{e.answer}" for e in examples]
    return [len(ids) + 1 for ids in encode_batch(answers, tokenizer)]


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


def until_eos(tokens: Sequence[int], eos_id: int) -> list[int]:
    """The continuation up to (not including) the first EOS."""
    tokens = list(tokens)
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@dataclass(frozen=True)
class Generated:
    """Greedy continuations (EOS and what follows removed) and the work they took."""

    continuations: list[list[int]]
    prompt_tokens: int
    generated_tokens: int  # tokens decoded, EOS included, finished rows' padding excluded
    seconds: float


def greedy_generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_id: int,
    pad_id: int,
) -> Generated:
    """Batched greedy decoding with left padding and the KV cache; stops each row at EOS.

    Prompts are batched in length order (less padding), results returned in input order.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    continuations: list[list[int]] = [[] for _ in prompts]
    generated = 0
    start_time = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = pad_batch([prompts[i] for i in batch], pad_id, "left")
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row, index in enumerate(batch):
            new = out[row, ids.shape[1] :].tolist()
            continuations[index] = until_eos(new, eos_id)
            generated += min(len(continuations[index]) + 1, len(new))
    return Generated(continuations, sum(map(len, prompts)), generated,
                     time.perf_counter() - start_time)


def exact_match(prediction: str, answer: str) -> bool:
    """The decoded continuation, stripped, must be the answer exactly."""
    return prediction.strip() == answer.strip()


def score(examples: Sequence[TaskExample], predictions: Sequence[str]) -> dict[Cell, Proportion]:
    """Exact-match counts per (task, split)."""
    counts: dict[Cell, list[int]] = {}
    for example, prediction in zip(examples, predictions, strict=True):
        cell = counts.setdefault((example.task, example.split), [0, 0])
        cell[0] += exact_match(prediction, example.answer)
        cell[1] += 1
    return {cell: Proportion(correct, n) for cell, (correct, n) in sorted(counts.items())}


@dataclass(frozen=True)
class Accuracy:
    cells: dict[Cell, Proportion]
    predictions: list[str]
    generated: Generated


def task_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TaskExample],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
) -> Accuracy:
    """Greedy exact match of `model` on `examples` (`prompts` are their encoded prompts)."""
    eos_id = int(tokenizer.eos_token_id)
    generated = greedy_generate(model, prompts, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, eos_id=eos_id, pad_id=pad_id)
    predictions = [tokenizer.decode(c, skip_special_tokens=True) for c in generated.continuations]
    return Accuracy(score(examples, predictions), predictions, generated)


def perplexity(model: PreTrainedModel, sequences: Sequence[Encoded], *, batch_size: int,
               pad_id: int) -> float:
    """exp(mean NLL) over the scored tokens of `sequences` (each token weighs the same)."""
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, attention = pad_batch([s.ids for s in batch], pad_id, "right")
        scored, _ = pad_batch([s.mask for s in batch], 0, "right")
        labels = ids.masked_fill(scored == 0, -100)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=attention).logits
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                       labels[:, 1:].flatten(), ignore_index=-100,
                                       reduction="sum"))
        count += int((labels[:, 1:] != -100).sum())
    if count == 0:
        raise ValueError("perplexity: no scored tokens")
    return math.exp(total / count)


@dataclass(frozen=True)
class Speed:
    """Batch-1 greedy decoding with the KV cache, medians over repeats."""

    tokens_per_s: float  # new tokens / wall time of the whole generate call (prefill included)
    latency_ms: float  # per decoded token after the first: (t(n) - t(1)) / (n - 1)
    tokens: int  # tokens processed while measuring (for the cost meter)


def measure_speed(model: PreTrainedModel, prompt: Sequence[int], *, new_tokens: int,
                  repeats: int, eos_id: int, pad_id: int) -> Speed:
    """Time `new_tokens` forced decoding steps (EOS suppressed) against a single step."""
    if new_tokens < 2:
        raise ValueError(f"measure_speed: new_tokens must be >= 2, got {new_tokens}")
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    mask = torch.ones_like(ids)

    def timed(steps: int) -> float:
        config = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                  num_beams=1, eos_token_id=eos_id, pad_token_id=pad_id,
                                  use_cache=True)
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        return time.perf_counter() - began

    timed(2)  # warm-up: first-call allocations would otherwise land in the first sample
    full = statistics.median(timed(new_tokens) for _ in range(repeats))
    single = statistics.median(timed(1) for _ in range(repeats))
    runs = [2] + [new_tokens] * repeats + [1] * repeats
    tokens = sum(len(prompt) + steps for steps in runs)
    return Speed(new_tokens / full, 1000 * (full - single) / (new_tokens - 1), tokens)
