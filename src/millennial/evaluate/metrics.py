"""What one model scores, example by example: answers under greedy decoding, answer loss,
perplexity on general text (decode speed: `millennial.evaluate.speed`).

Inputs are tokenized exactly as training packed them (`millennial.data.pack`): prompt ids
without special tokens, the answer with its leading separator, then EOS. Every sequence starts
with EOS, as a training record does (packing puts the previous record's EOS before it).

Three scores per answer tell formatting from reasoning: `exact` (the continuation up to EOS is
the answer), `prefix` (it starts with the answer: right, but did not stop) and `first_token`
(the first token that is not whitespace is the answer's: a split-off leading space is free).
Each (task, split) group decodes only as many tokens as its longest answer and EOS need, plus a
little slack: a continuation that has not matched by then cannot match at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from millennial.data import ANSWER_SEPARATOR, TASK_KIND, Record, task_record
from millennial.data.pack import Encoded, encode_batch
from millennial.heldout import encode_scored, first_by_hash, mean_nll, pad_batch

Cell = tuple[str, str]  # (task, split)
ANSWER_SLACK = 2  # decoded tokens beyond the longest answer + EOS (stray spaces strip away)


@dataclass(frozen=True)
class TaskExample:
    """One held-out task row: the model sees `prompt` and must generate `answer` then EOS."""

    task: str
    split: str
    difficulty: int | None  # generated tasks have one; tasks from structured sources may not
    prompt: str
    answer: str
    content_hash: str

    @property
    def cell(self) -> Cell:
        return self.task, self.split

    def record(self) -> Record:
        return task_record("eval", self.content_hash, self.prompt, self.answer, self.task,
                           self.difficulty)


def select_examples(rows: Iterable[Mapping[str, object]], max_examples: int) -> list[TaskExample]:
    """The first `max_examples` task rows of each (task, split) by content hash, cells sorted.

    A pure function of the data: every arm and every rerun sees the same examples, and a new
    row displaces an old one only if its hash sorts before it.
    """
    cells = first_by_hash(rows, lambda r: f"{r['task']}\t{r['split']}"
                          if r["kind"] == TASK_KIND else None, max_examples)
    return [TaskExample(str(r["task"]), str(r["split"]), r["difficulty"], str(r["prompt"]),
                        str(r["answer"]), str(r["content_hash"]))
            for members in cells.values() for r in members]


def encode_prompts(prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                   eos_id: int) -> list[list[int]]:
    return [[eos_id, *ids] for ids in encode_batch(prompts, tokenizer)]


def answer_ids(examples: Sequence[TaskExample],
               tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each answer's tokens as training encodes them: separator and answer (EOS not included)."""
    return encode_batch([f"{ANSWER_SEPARATOR}{e.answer}" for e in examples], tokenizer)


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


def prefix_match(prediction: str, answer: str) -> bool:
    """The continuation starts with the answer (it may go on instead of stopping)."""
    return prediction.strip().startswith(answer.strip())


def first_content_token(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The first token that decodes to more than whitespace (tokenizers that split off the
    leading space would otherwise make every answer's first token right)."""
    return next((i for i in ids if tokenizer.decode([i]).strip()), None)


@torch.no_grad()
def sequence_nll(model: PreTrainedModel, sequences: Sequence[Encoded], *, batch_size: int,
                 pad_id: int) -> list[float]:
    """Mean NLL per scored token of each sequence on its own (an answer's loss given its prompt).
    """
    losses: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, attention = pad_batch([s.ids for s in batch], pad_id, "right")
        scored, _ = pad_batch([s.mask for s in batch], 0, "right")
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:],
                              reduction="none")
        weight = scored[:, 1:].float()
        losses += (nll * weight).sum(1).div(weight.sum(1)).tolist()
    return losses


def perplexity(model: PreTrainedModel, sequences: Sequence[Encoded], *, batch_size: int,
               pad_id: int) -> float:
    """exp(mean NLL) over the scored tokens of `sequences` (each token weighs the same)."""
    return math.exp(mean_nll(model, sequences, batch_size=batch_size, pad_id=pad_id))


@dataclass(frozen=True)
class ExampleScore:
    """How one model did on one example."""

    prediction: str
    exact: bool
    prefix: bool
    first_token: bool
    answer_loss: float  # mean NLL of the answer's tokens and EOS given the prompt


@dataclass(frozen=True)
class Scored:
    scores: list[ExampleScore]  # in the order of the examples
    prompt_tokens: int  # processed, for the cost meter: generation and answer scoring
    generated_tokens: int
    scored_tokens: int
    seconds: float


def decode_budget(answers: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """New tokens a (task, split) group decodes: its longest answer, EOS and some slack."""
    return min(max_new_tokens, max(len(a) + 1 for a in answers) + ANSWER_SLACK)


def scoring_tokens_bound(examples: Sequence[TaskExample], tokenizer: PreTrainedTokenizerBase,
                         max_new_tokens: int) -> int:
    """At most the tokens `score_examples` processes: every prompt, each decoding its group's
    full budget (rows stop early at EOS), and the teacher-forced prompt + answer + EOS."""
    answers = answer_ids(examples, tokenizer)
    prompts = encode_prompts([e.prompt for e in examples], tokenizer, int(tokenizer.eos_token_id))
    groups: dict[Cell, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.cell, []).append(index)
    decoded = sum(len(members) * decode_budget([answers[i] for i in members], max_new_tokens)
                  for members in groups.values())
    return 2 * sum(map(len, prompts)) + decoded + sum(len(a) + 1 for a in answers)


def score_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TaskExample],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
) -> Scored:
    """Decode and score every example; each (task, split) group decodes only what its longest
    answer needs (capped at `max_new_tokens`, which must suffice)."""
    eos = int(tokenizer.eos_token_id)
    began = time.perf_counter()
    answers = answer_ids(examples, tokenizer)
    prompts = encode_prompts([e.prompt for e in examples], tokenizer, eos)
    groups: dict[Cell, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.cell, []).append(index)
    predictions: list[str] = ["" for _ in examples]
    firsts: list[int | None] = [None for _ in examples]  # first content token generated
    prompt_tokens = generated_tokens = 0
    for members in groups.values():
        budget = decode_budget([answers[i] for i in members], max_new_tokens)
        out = greedy_generate(model, [prompts[i] for i in members], max_new_tokens=budget,
                              batch_size=batch_size, eos_id=eos, pad_id=pad_id)
        for index, continuation in zip(members, out.continuations, strict=True):
            predictions[index] = tokenizer.decode(continuation, skip_special_tokens=True)
            firsts[index] = first_content_token(continuation, tokenizer)
        prompt_tokens += out.prompt_tokens
        generated_tokens += out.generated_tokens
    teacher_forced = encode_scored([e.record() for e in examples], tokenizer, eos)
    losses = sequence_nll(model, teacher_forced, batch_size=batch_size, pad_id=pad_id)
    scores = [
        ExampleScore(prediction, exact_match(prediction, e.answer),
                     prefix_match(prediction, e.answer),
                     first is not None and first == first_content_token(ids, tokenizer), loss)
        for e, prediction, first, ids, loss in zip(examples, predictions, firsts, answers,
                                                    losses, strict=True)
    ]
    return Scored(scores, prompt_tokens, generated_tokens,
                  sum(len(s.ids) for s in teacher_forced), time.perf_counter() - began)
