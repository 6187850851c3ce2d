"""The `curate` stage: stream every source through clean -> dedup -> split -> tokenize/pack and
write `data/curated/` in one atomic step, plus `metrics/data.json` and the data card.

Memory stays bounded by a few batches of records (the one being cleaned, those being encoded),
one Parquet row group per output file, one row group of packed blocks and the dedup state
(digests and LSH band hashes, see `millennial.data.dedup`): a million documents are never held
at once. On any error nothing is written and the previous `data/curated/` stays as it was.

Encoding overlaps cleaning: a worker thread runs the Rust tokenizer on one batch (it releases the
GIL) while this thread normalises, scrubs and deduplicates the next; batches are written in
their order, so the outputs do not depend on the timing.

Packing is interleaved: the tokenized training records of each source are spooled to a
temporary file, then drawn one at a time from a seeded random source (weighted by what each has
left, so every interleaving is equally likely) into one stream cut into blocks. A task example
is therefore preceded by whatever came before it (news, other tasks), as it is preceded by
nothing at evaluation, never by a run of same-task neighbours that would act as a few-shot
prompt. Each scored token carries its source's loss weight (`millennial.data.mixture`).

Outputs (all Parquet, snappy):
- `documents/<split>.parquet` for train, val, test, test_ood: one row per kept record
  (schema `DOCUMENT_SCHEMA`; `n_tokens` counts the record's tokens plus its EOS).
- `packed/train.parquet`: `input_ids`, `loss_mask` and `loss_weight` of exactly `block_size`
  tokens.
- `manifest.json`: block size, tokenizer identity, seed, counts per split, sources, mixture.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import random
import shutil
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from millennial.atomic import atomic_dir, write_json, write_text
from millennial.data import TASK_KIND, DataError, Record
from millennial.data.clean import PII_PATTERNS, FilterConfig, clean
from millennial.data.dedup import (
    NEAR_DUPLICATE_ACTIONS,
    ExactDuplicates,
    MinHashConfig,
    NearDuplicates,
    content_hash,
)
from millennial.data.mixture import MixtureRow, mixture_rows, parse_mixture
from millennial.data.pack import (
    BlockPacker,
    Blocks,
    Encoded,
    TokenizerInfo,
    encode_records,
    load_encoder,
)
from millennial.data.sources import (
    ON_ERROR,
    ErrorPolicy,
    FileSource,
    GeneratorSource,
    HubSource,
    PackageSource,
    SourceSpec,
    file_sha256s,
    parse_source,
    read_source,
)
from millennial.data.split import (
    OOD_SPLIT,
    PACKED_SPLITS,
    SPLITS,
    SplitFractions,
    hash_split,
)
from millennial.params import Options, ParamsError, load_params, section

log = logging.getLogger(__name__)

BATCH_RECORDS = 512  # records per documents row group (and per spool read)
ENCODE_RECORDS = 64  # records per tokenizer call: small enough to overlap cleaning and encoding
ENCODE_AHEAD = 8  # batches handed to the encoding thread before the oldest is written
BLOCKS_PER_GROUP = 256  # packed blocks per row group

DOCUMENT_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("task", pa.string()),
    pa.field("difficulty", pa.int32()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("n_tokens", pa.int32(), nullable=False),
])
PACKED_SCHEMA = pa.schema([
    pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
    pa.field("loss_weight", pa.list_(pa.float32()), nullable=False),
])
SPOOL_SCHEMA = pa.schema([  # one tokenized training record, before interleaving
    pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
])
SPOOL_DIR = ".spool"  # inside the temporary output directory, removed before it is renamed


@dataclass(frozen=True)
class CurateConfig:
    """The validated `curate` params section."""

    tokenizer_dir: Path
    block_size: int
    seed: int
    on_error: str
    filter: FilterConfig
    minhash: MinHashConfig
    split: SplitFractions
    sources: tuple[SourceSpec, ...]
    mixture: dict[str, float] | None = None  # loss share per source; None = natural shares


def parse_config(raw: Any, where: str | Path = "params.yaml") -> CurateConfig:
    """Validate the `curate` section; every error names the file and the full key."""
    options = Options(raw, "curate", where)
    options.only("tokenizer_dir", "block_size", "seed", "on_error", "filter", "minhash", "split",
                 "sources", "mixture")
    filters = options.child("filter")
    filters.only("min_chars", "max_chars", "max_junk_ratio")
    filter_config = FilterConfig(
        min_chars=filters.integer("min_chars", low=0),
        max_chars=filters.integer("max_chars", low=1),
        max_junk_ratio=filters.number("max_junk_ratio"),
    )
    if filter_config.max_chars < filter_config.min_chars:
        raise filters.error("max_chars", f"must be >= min_chars ({filter_config.min_chars})")
    minhash = options.child("minhash")
    minhash.only("num_perm", "threshold", "shingle_size", "near_duplicates")
    minhash_config = MinHashConfig(
        num_perm=minhash.integer("num_perm", low=16),
        threshold=minhash.number("threshold", low=0.01, high=0.99),
        shingle_size=minhash.integer("shingle_size", low=1),
        near_duplicates=minhash.choice("near_duplicates", NEAR_DUPLICATE_ACTIONS, "drop"),
    )
    fractions = options.child("split")
    fractions.only("train", "val", "test")
    split = SplitFractions(fractions.number("train"), fractions.number("val"),
                           fractions.number("test"))
    if abs(split.train + split.val + split.test - 1.0) > 1e-6:
        raise ParamsError(f"{where}: 'curate.split' fractions must sum to 1, got "
                          f"{split.train} + {split.val} + {split.test}")
    raw_sources = options.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise options.error("sources", "must be a non-empty list of sources")
    sources = tuple(parse_source(item, f"curate.sources[{index}]", where)
                    for index, item in enumerate(raw_sources))
    names = [spec.name for spec in sources]
    for name in names:
        if names.count(name) > 1:
            raise options.error("sources", f"has two sources named '{name}'")
    return CurateConfig(
        tokenizer_dir=Path(options.text("tokenizer_dir", "models/base")),
        block_size=options.integer("block_size", low=8),
        seed=options.integer("seed"),
        on_error=options.choice("on_error", ON_ERROR, "fail"),
        filter=filter_config,
        minhash=minhash_config,
        split=split,
        sources=sources,
        mixture=parse_mixture(options, names),
    )


class _ParquetSink:
    """Rows buffered column-wise and written one row group at a time."""

    def __init__(self, path: Path, schema: pa.Schema, group_rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.group_rows = group_rows
        self._writer = pq.ParquetWriter(path, schema)
        self._columns: dict[str, list[Any]] = {name: [] for name in schema.names}

    def append(self, row: Mapping[str, Any]) -> None:
        for name, column in self._columns.items():
            column.append(row[name])
        if len(self._columns[self.schema.names[0]]) >= self.group_rows:
            self.flush()

    def flush(self) -> None:
        if self._columns[self.schema.names[0]]:
            self._writer.write_table(pa.Table.from_pydict(self._columns, schema=self.schema))
            self._columns = {name: [] for name in self.schema.names}

    def write_group(self, columns: list[pa.Array]) -> None:
        """Write ready columns as one row group, after what is buffered."""
        self.flush()
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        """Write what is buffered and close (once; a split with no rows still gets a valid,
        empty file)."""
        if self._writer.is_open:
            self.flush()
            self._writer.close()


@dataclass
class Stats:
    """Counts for metrics, manifest and data card; keys are (source, split|reason|kind)."""

    read: Counter[str]
    documents: Counter[tuple[str, str]]
    tokens: Counter[tuple[str, str]]
    drops: Counter[tuple[str, str]]
    pii: Counter[tuple[str, str]]
    scored: Counter[tuple[str, str]]  # loss-scored tokens
    blocks: Counter[str]  # packed blocks per split
    difficulty: dict[tuple[str, str], tuple[int, int]]
    skipped_examples: list[str]
    mixture: list[MixtureRow]

    @classmethod
    def empty(cls) -> Stats:
        return cls(Counter(), Counter(), Counter(), Counter(), Counter(), Counter(), Counter(),
                   {}, [], [])

    def kept(self, source: str) -> int:
        return sum(n for (name, _), n in self.documents.items() if name == source)

    def note_difficulty(self, record: Record, split: str) -> None:
        if record.difficulty is None:
            return
        key = (record.source, split)
        low, high = self.difficulty.get(key, (record.difficulty, record.difficulty))
        self.difficulty[key] = (min(low, record.difficulty), max(high, record.difficulty))


class _Curation:
    """One run's streaming state: dedup indexes, writers, spools, the pending batch."""

    def __init__(self, config: CurateConfig, tokenizer: Tokenizer, info: TokenizerInfo,
                 out_dir: Path) -> None:
        self.out_dir = out_dir
        self.config = config
        self.tokenizer = tokenizer
        self.info = info
        self.stats = Stats.empty()
        self.policy = ErrorPolicy(config.on_error)
        self.exact = ExactDuplicates()
        self.near = NearDuplicates(config.minhash, config.seed)
        self.documents = {split: _ParquetSink(out_dir / "documents" / f"{split}.parquet",
                                              DOCUMENT_SCHEMA, BATCH_RECORDS) for split in SPLITS}
        self.packed = {split: _ParquetSink(out_dir / "packed" / f"{split}.parquet",
                                           PACKED_SCHEMA, BLOCKS_PER_GROUP)
                       for split in PACKED_SPLITS}
        self.spools = {(split, spec.name): _ParquetSink(self._spool_path(split, spec.name),
                                                         SPOOL_SCHEMA, BATCH_RECORDS)
                       for split in PACKED_SPLITS for spec in config.sources}
        self.batch: list[tuple[Record, str, str]] = []
        # A thread encodes batches (the Rust tokenizer releases the GIL) while this one cleans
        # and deduplicates the next; encoded batches are written in order, once done.
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="curate-encode")
        self._encoding: deque[tuple[list[tuple[Record, str, str]], Future[list[Encoded]]]] = (
            deque())

    def consume(self, spec: SourceSpec) -> None:
        """Stream one source; fail if nothing of it survives filtering and dedup."""
        for raw in read_source(spec, self.config.seed, self.policy):
            self.stats.read[spec.name] += 1
            record, reason, pii = clean(raw, self.config.filter)
            if record is None:
                self.stats.drops[(spec.name, reason or "")] += 1
                continue
            digest = content_hash(record.prompt or "" if record.kind == TASK_KIND else record.text)
            if self.exact.seen_before(digest):
                self.stats.drops[(spec.name, "exact_duplicate")] += 1
                continue
            split = self._split(record, digest)
            if split is None:
                self.stats.drops[(spec.name, "near_duplicate")] += 1
                continue
            self.stats.pii.update({(spec.name, kind): n for kind, n in pii.items()})
            self.stats.documents[(spec.name, split)] += 1
            self.stats.note_difficulty(record, split)
            self.batch.append((record, digest, split))
            if len(self.batch) >= ENCODE_RECORDS:
                self.flush()
        for (source, reason), count in self.policy.skipped.items():
            if source == spec.name:
                self.stats.drops[(source, reason)] = count
        if not self.stats.kept(spec.name):
            reasons = ", ".join(f"{reason}={n}" for (name, reason), n in
                                sorted(self.stats.drops.items()) if name == spec.name)
            raise DataError(f"source '{spec.name}': nothing left after filtering and dedup "
                            f"(read {self.stats.read[spec.name]}; dropped: {reasons or 'none'})")
        log.info("curate: %s: read %d, kept %d", spec.name, self.stats.read[spec.name],
                 self.stats.kept(spec.name))

    def _split(self, record: Record, digest: str) -> str | None:
        """The record's split, or None for a near-duplicate under `near_duplicates: drop`."""
        if record.ood:
            return OOD_SPLIT
        if record.kind == TASK_KIND:  # generated prompts share most shingles by design
            return hash_split(digest, self.config.split, self.config.seed)
        sketch = self.near.sketch(record.text)
        twin = self.near.split_of_twin(sketch)
        if twin is not None and self.config.minhash.near_duplicates == "drop":
            return None
        split = twin or hash_split(digest, self.config.split, self.config.seed)
        self.near.add(sketch, split)
        return split

    def flush(self, wait: bool = False) -> None:
        """Start encoding the pending batch, and write the batches encoded so far in order
        (with `wait`, every batch; otherwise the oldest also when too many are in flight)."""
        if self.batch:
            records = [record for record, _, _ in self.batch]
            self._encoding.append((self.batch, self._encoder.submit(
                encode_records, records, self.tokenizer, self.info.eos_token_id)))
            self.batch = []
        while self._encoding and (wait or self._encoding[0][1].done()
                                  or len(self._encoding) > ENCODE_AHEAD):
            self._write(*self._encoding.popleft())

    def _write(self, batch: list[tuple[Record, str, str]], encoding: Future[list[Encoded]]) -> None:
        """Write an encoded batch's document rows and spool its training records."""
        for (record, digest, split), tokens in zip(batch, encoding.result(), strict=True):
            self.documents[split].append({
                "source": record.source, "kind": record.kind, "task": record.task,
                "difficulty": record.difficulty, "text": record.text, "prompt": record.prompt,
                "answer": record.answer, "content_hash": digest, "split": split,
                "n_tokens": len(tokens.ids),
            })
            self.stats.tokens[(record.source, split)] += len(tokens.ids)
            if split in self.packed:
                self.stats.scored[(record.source, split)] += sum(tokens.mask)
                self.spools[(split, record.source)].append(
                    {"input_ids": tokens.ids, "loss_mask": tokens.mask})

    def _spool_path(self, split: str, source: str) -> Path:
        return self.out_dir / SPOOL_DIR / split / f"{source}.parquet"

    def _write_blocks(self, split: str, blocks: Blocks) -> None:
        """One row group of packed blocks (the float64 weights rounded to float32, as
        Parquet conversion of Python floats does)."""
        if not len(blocks):
            return
        size = self.config.block_size
        offsets = np.arange(0, len(blocks) * size + 1, size, dtype=np.int32)
        self.packed[split].write_group([
            pa.ListArray.from_arrays(offsets, values.ravel())
            for values in (blocks.ids, blocks.mask, blocks.weights.astype(np.float32))])
        self.stats.blocks[split] += len(blocks)

    def finish(self) -> None:
        """Write the last batches, weigh the sources, and pack each split's interleaved stream."""
        self.flush(wait=True)
        for sink in self.spools.values():
            sink.close()
        names = [spec.name for spec in self.config.sources]
        self.stats.mixture = mixture_rows(
            self.config.mixture, {name: self.stats.scored[(name, "train")] for name in names})
        weights = {row.source: row.loss_weight for row in self.stats.mixture}
        for split in PACKED_SPLITS:
            packer = BlockPacker(self.config.block_size, self.info.pad_token_id)
            for source, (ids, mask) in self._interleaved(split, names):
                packer.push(ids, mask, weights[source])
                while packer.full_blocks >= BLOCKS_PER_GROUP:
                    self._write_blocks(split, packer.take(BLOCKS_PER_GROUP))
            self._write_blocks(split, packer.take_rest())
        shutil.rmtree(self.out_dir / SPOOL_DIR)
        self.stats.skipped_examples = list(self.policy.examples)

    def _interleaved(self, split: str,
                     names: list[str]) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
        """Every spooled record of `split`, sources drawn at random in proportion to what each
        has left (seeded), each source's records in their own order."""
        left = {name: self.stats.documents[(name, split)] for name in names}
        readers = {name: _spooled(self._spool_path(split, name)) for name in names}
        rng = random.Random(self.config.seed)
        while any(left.values()):
            live = [name for name in names if left[name]]
            source = rng.choices(live, weights=[left[name] for name in live])[0]
            left[source] -= 1
            yield source, next(readers[source])

    def close(self) -> None:
        """Stop the encoding thread and close every file (on error too)."""
        self._encoder.shutdown(cancel_futures=True)
        for sink in (*self.documents.values(), *self.packed.values(), *self.spools.values()):
            sink.close()


def _spooled(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The token ids and loss mask of each record of one spool file, as numpy views of one row
    group at a time (no Python int per token). A record's mask is as long as its ids."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_RECORDS):
        ids, mask = batch.column("input_ids"), batch.column("loss_mask")
        offsets = ids.offsets.to_numpy()
        ids_values, mask_values = ids.flatten().to_numpy(), mask.flatten().to_numpy()
        for start, end in itertools.pairwise((offsets - offsets[0]).tolist()):
            yield ids_values[start:end], mask_values[start:end]


def _by_split(counter: Counter[tuple[str, str]]) -> dict[str, int]:
    return {split: sum(n for (_, s), n in counter.items() if s == split) for split in SPLITS}


def _nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (outer, inner), count in sorted(counter.items()):
        out.setdefault(outer, {})[inner] = count
    return out


def source_provenance(spec: SourceSpec) -> dict[str, Any]:
    """What a source is, for the manifest and data card (no timestamps: reruns are identical)."""
    entry: dict[str, Any] = {"name": spec.name, "kind": spec.kind}
    if isinstance(spec, FileSource):
        entry["paths"] = list(spec.paths)
        entry["files_sha256"] = file_sha256s(spec)
        entry["untracked"] = spec.untracked
    elif isinstance(spec, HubSource):
        entry.update(id=spec.id, revision=spec.revision, split=spec.split)
    elif isinstance(spec, PackageSource):
        # Reading checked that the file is the package's; its version alone is cheap to read.
        entry.update(package=spec.package, version=importlib.metadata.version(spec.package),
                     path=spec.path)
    elif isinstance(spec, GeneratorSource):
        entry.update(task=spec.task, count=spec.count, difficulty=list(spec.difficulty),
                     ood_count=spec.ood_count,
                     ood_difficulty=list(spec.ood_difficulty) if spec.ood_difficulty else None)
    return entry


def build_metrics(stats: Stats) -> dict[str, Any]:
    """`metrics/data.json`: numbers only, stable keys (every split, every PII kind)."""
    documents, tokens = _by_split(stats.documents), _by_split(stats.tokens)
    drops_by_reason: Counter[str] = Counter()
    for (_, reason), count in stats.drops.items():
        drops_by_reason[reason] += count
    pii: Counter[str] = Counter({kind: 0 for kind in PII_PATTERNS})
    for (_, kind), count in stats.pii.items():
        pii[kind] += count
    return {
        "read": dict(sorted(stats.read.items())),
        "documents": {**documents, "total": sum(documents.values()),
                      "by_source": _nested(stats.documents)},
        "tokens": {**tokens, "total": sum(tokens.values()), "by_source": _nested(stats.tokens)},
        "blocks": {split: stats.blocks[split] for split in PACKED_SPLITS},
        "mixture": {row.source: {"share": row.share, "natural_share": row.natural_share,
                                 "loss_weight": row.loss_weight} for row in stats.mixture},
        "drops": {**dict(sorted(drops_by_reason.items())), "total": sum(drops_by_reason.values()),
                  "by_source": _nested(stats.drops)},
        "pii": {**dict(sorted(pii.items())), "total": sum(pii.values()),
                "by_source": _nested(stats.pii)},
    }


def build_manifest(config: CurateConfig, info: TokenizerInfo, stats: Stats) -> dict[str, Any]:
    documents, tokens = _by_split(stats.documents), _by_split(stats.tokens)
    return {
        "block_size": config.block_size,
        "seed": config.seed,
        "tokenizer": asdict(info),
        "loss_mask": "1 = scored target token: all tokens of text documents, the answer and "
                     "its EOS of task examples; 0 = task prompt or padding",
        "loss_weight": "each scored token's weight in the training loss: its source's "
                       "mixture share x all scored tokens / the source's scored tokens",
        "splits": {split: {"documents": documents[split], "tokens": tokens[split],
                           **({"blocks": stats.blocks[split]} if split in PACKED_SPLITS else {})}
                   for split in SPLITS},
        "sources": [source_provenance(spec) for spec in config.sources],
        "mixture": {"set": config.mixture is not None,
                    "sources": [asdict(row) for row in stats.mixture]},
    }


REASONS = {
    "too_short": "text shorter than curate.filter.min_chars",
    "too_long": "longer than curate.filter.max_chars",
    "junk": "non-alphanumeric fraction above curate.filter.max_junk_ratio",
    "empty_prompt": "task example with an empty prompt",
    "empty_answer": "task example with an empty answer",
    "exact_duplicate": "same normalised content (tasks: same prompt) as an earlier record",
    "near_duplicate": "MinHash LSH near-duplicate of an earlier text (near_duplicates: drop)",
    "malformed_json": "line is not a JSON object (on_error: skip)",
    "invalid_utf8": "line or file is not valid UTF-8 (on_error: skip)",
    "missing_field": "row lacks a configured field (on_error: skip)",
    "bad_field": "field is not a string (on_error: skip)",
}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    lines += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return lines


def _provenance_text(entry: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in entry.items()
                     if key not in ("name", "kind") and value is not None)


def render_card(config: CurateConfig, manifest: Mapping[str, Any], metrics: Mapping[str, Any],
                stats: Stats) -> str:
    """`reports/data_card.md`: what is in the data, where it came from, what was removed."""
    tokenizer = manifest["tokenizer"]
    splits = manifest["splits"]
    lines = [
        "# Data card: curated data",
        "",
        "Written by the `curate` stage from params.yaml `curate`; the same figures are in "
        "`metrics/data.json` and `data/curated/manifest.json`.",
        "",
        "## Summary",
        "",
        f"- {metrics['documents']['total']} documents and examples, "
        f"{metrics['tokens']['total']} tokens (each record's tokens plus its EOS).",
        f"- Training records interleaved across sources (seeded) and packed into "
        f"{metrics['blocks']['train']} blocks of {config.block_size} tokens.",
        f"- Tokenizer `{tokenizer['name_or_path']}`: {tokenizer['vocab_size']} tokens, "
        f"tokenizer.json sha256 `{tokenizer['tokenizer_json_sha256'][:16]}...`.",
        f"- Seed {config.seed}; split fractions train {config.split.train}, val "
        f"{config.split.val}, test {config.split.test} (by content hash); harder generated "
        f"examples in `{OOD_SPLIT}`.",
        "",
        "## Sources",
        "",
    ]
    lines += _table(["source", "kind", "provenance", "read", "kept", "dropped"], [
        [entry["name"], entry["kind"], _provenance_text(entry), stats.read[entry["name"]],
         stats.kept(entry["name"]),
         sum(n for (name, _), n in stats.drops.items() if name == entry["name"])]
        for entry in manifest["sources"]
    ])
    lines += ["", "## Splits", ""]
    lines += _table(["split", "documents", "tokens", "blocks"], [
        [split, info["documents"], info["tokens"], info.get("blocks", "-")]
        for split, info in splits.items()
    ])
    how = ("set by `curate.mixture`" if config.mixture is not None else
           "natural (`curate.mixture: null`: every scored token weighs the same)")
    lines += ["", "## Training mixture", "",
              f"Each source's share of the training loss, {how}. Natural share: its share of "
              "the loss-scored training tokens; loss weight: what each of its scored tokens "
              "weighs so that the shares hold.", ""]
    lines += _table(["source", "scored train tokens", "natural share", "share", "loss weight"], [
        [row.source, row.scored_tokens, f"{row.natural_share:.3f}", f"{row.share:.3f}",
         f"{row.loss_weight:.3f}"] for row in stats.mixture
    ])
    if stats.difficulty:
        lines += ["", "## Reasoning tasks", "",
                  "Difficulty: hops (pointer_chase), digits (addition), blank cells (sudoku4).",
                  ""]
        lines += _table(["source", "split", "examples", "difficulty"], [
            [source, split, stats.documents[(source, split)], f"{low}-{high}"]
            for (source, split), (low, high) in sorted(stats.difficulty.items())
        ])
    lines += ["", "## Removed records", ""]
    if stats.drops:
        lines += _table(["source", "reason", "records", "meaning"], [
            [source, reason, count, REASONS.get(reason, "")]
            for (source, reason), count in sorted(stats.drops.items())
        ])
    else:
        lines.append("None.")
    if stats.skipped_examples:
        lines += ["", "First skipped input lines:", ""]
        lines += [f"- {example}" for example in stats.skipped_examples]
    pii = metrics["pii"]
    lines += [
        "", "## Personal data", "",
        f"Replaced by placeholders: {pii['email']} e-mail addresses (`<EMAIL>`), "
        f"{pii['phone']} phone numbers (`<PHONE>`), {pii['ipv4']} IPv4 and {pii['ipv6']} IPv6 "
        "addresses (`<IP>`). The patterns are regular expressions: names, street addresses and "
        "unusual number formats are not detected. The `validate` stage re-checks the output.",
        "", "## Limitations", "",
        "- Near-duplicates are found by MinHash LSH (threshold "
        f"{config.minhash.threshold}, {config.minhash.num_perm} permutations, "
        f"{config.minhash.shingle_size}-word shingles): approximate, and text only; task "
        "examples are deduplicated by exact prompt.",
        "- The junk filter (non-alphanumeric fraction) assumes prose; code or tables are dropped.",
        "- Generated tasks are synthetic: they measure multi-step reasoning depth, not language.",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class CurationResult:
    manifest: dict[str, Any]
    metrics: dict[str, Any]


def curate(config: CurateConfig, out_dir: str | Path, metrics_path: str | Path,
           card_path: str | Path) -> CurationResult:
    """Run the whole curation; on any error the previous `out_dir` is left untouched."""
    tokenizer, info = load_encoder(config.tokenizer_dir)
    with atomic_dir(out_dir) as tmp:
        run = _Curation(config, tokenizer, info, tmp)
        try:
            for spec in config.sources:
                run.consume(spec)
            run.finish()
        finally:  # on error too: no writer left open on the doomed temporary directory
            run.close()
        manifest = build_manifest(config, info, run.stats)
        write_json(tmp / "manifest.json", manifest)
    metrics = build_metrics(run.stats)
    write_json(metrics_path, metrics)
    write_text(card_path, render_card(config, manifest, metrics, run.stats))
    return CurationResult(manifest, metrics)


def curate_from_params(params_path: str | Path, out_dir: str | Path, metrics_path: str | Path,
                       card_path: str | Path) -> CurationResult:
    config = parse_config(section(load_params(params_path), "curate", params_path), params_path)
    return curate(config, out_dir, metrics_path, card_path)
