"""Source specs (params `curate.sources[i]`) and the readers that stream their records.

Readers never hold a whole corpus: line files are read line by line, Parquet in record batches,
Hub datasets in streaming mode. Every problem names the file and line (or row, or byte offset):
- file-level problems (missing or empty file, binary data, unreadable Parquet, missing column)
  always stop the run;
- record-level problems (malformed JSON, invalid UTF-8, missing or mistyped field) stop it under
  `on_error: fail` and are counted and reported under `on_error: skip`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from millennial.data import TEXT_KIND, DataError, Record, task_record
from millennial.data.tasks import DIFFICULTY_LIMITS, TASKS, generate
from millennial.params import Options, ParamsError

FILE_KINDS = ("jsonl", "text", "parquet")
KINDS = (*FILE_KINDS, "hf", "package", "generator")
UNITS = ("line", "file")
ON_ERROR = ("fail", "skip")
SNIFF_BYTES = 8192
NUL = b"\0"
PARQUET_BATCH_ROWS = 1024
MAX_SKIP_EXAMPLES = 10
SOURCES_DIR = Path("data/sources")  # local sources live here (relative to the workspace)
_CONFINEMENT_FIX = ("move the file there (`dvc add` it if large), or set untracked: true on the "
                    "source to read it where it is")


@dataclass(frozen=True)
class Fields:
    """Which fields hold the text, or the prompt and answer, of a structured record."""

    text: str | None = None
    prompt: str | None = None
    answer: str | None = None
    task: str | None = None  # the `task` label of prompt/answer rows

    @property
    def names(self) -> tuple[str, ...]:
        return (self.text,) if self.text else (self.prompt or "", self.answer or "")


@dataclass(frozen=True)
class FileSource:
    """Local `jsonl`, `text` or `parquet` files, given as paths or globs.

    They must lie under `data/sources/` (a DVC dep of `curate`, so changing a file reruns it),
    unless `untracked: true` says explicitly that DVC may not see their changes; either way the
    manifest records each file's sha256.
    """

    name: str
    kind: str
    paths: tuple[str, ...]
    fields: Fields
    unit: str = "file"  # text only: one document per line or per file
    untracked: bool = False  # allow files outside data/sources/ (even outside the workspace)


@dataclass(frozen=True)
class HubSource:
    """A `datasets` Hub dataset at a pinned revision."""

    name: str
    id: str
    revision: str
    split: str
    fields: Fields
    kind: str = "hf"


@dataclass(frozen=True)
class PackageSource:
    """A text file shipped inside an installed Python distribution (offline once installed)."""

    name: str
    package: str
    path: str
    unit: str
    kind: str = "package"


@dataclass(frozen=True)
class GeneratorSource:
    """Examples from `millennial.data.tasks`; `ood_count` harder ones go to the OOD split."""

    name: str
    task: str
    count: int
    difficulty: tuple[int, int]
    ood_count: int
    ood_difficulty: tuple[int, int] | None
    kind: str = "generator"


SourceSpec = FileSource | HubSource | PackageSource | GeneratorSource


def _fields(options: Options, name: str) -> Fields:
    if "text_field" in options.raw:
        if "prompt_field" in options.raw or "answer_field" in options.raw:
            raise options.error("text_field", "excludes prompt_field/answer_field: pick one")
        return Fields(text=options.text("text_field"))
    if "prompt_field" in options.raw or "answer_field" in options.raw:
        return Fields(prompt=options.text("prompt_field"), answer=options.text("answer_field"),
                      task=options.text("task", name))
    raise ParamsError(f"{options.where}: '{options.key}' needs text_field, "
                      "or prompt_field and answer_field")


def parse_source(raw: Any, key: str, where: str | Path = "params.yaml") -> SourceSpec:
    """Validate one `sources` entry; every error names the file and the full key."""
    options = Options(raw, key, where)
    name = options.text("name")
    kind = options.choice("kind", KINDS)
    field_keys = ("text_field", "prompt_field", "answer_field", "task")
    if kind in ("jsonl", "parquet"):
        options.only("name", "kind", "paths", "untracked", *field_keys)
        return _confined(options, FileSource(name, kind, options.strings("paths"),
                                             _fields(options, name),
                                             untracked=options.flag("untracked", False)))
    if kind == "text":
        options.only("name", "kind", "paths", "unit", "untracked")
        return _confined(options, FileSource(name, kind, options.strings("paths"), Fields(),
                                             options.choice("unit", UNITS, "file"),
                                             options.flag("untracked", False)))
    if kind == "hf":
        options.only("name", "kind", "id", "revision", "split", *field_keys)
        return HubSource(name, options.text("id"), options.text("revision"),
                         options.text("split"), _fields(options, name))
    if kind == "package":
        options.only("name", "kind", "package", "path", "unit")
        return PackageSource(name, options.text("package"), options.text("path"),
                             options.choice("unit", UNITS, "line"))
    options.only("name", "kind", "task", "count", "difficulty", "ood_count", "ood_difficulty")
    task = options.choice("task", tuple(sorted(TASKS)))
    difficulty = _difficulty(options, "difficulty", task)
    ood_count = options.integer("ood_count", 0, low=0)
    ood_difficulty = _difficulty(options, "ood_difficulty", task) if ood_count else None
    if ood_difficulty is not None and ood_difficulty[0] <= difficulty[1]:
        raise options.error("ood_difficulty", f"must be harder than difficulty {list(difficulty)}"
                            f": its low end must exceed {difficulty[1]}")
    return GeneratorSource(name, task, options.integer("count", low=1), difficulty, ood_count,
                           ood_difficulty)


def _confined(options: Options, spec: FileSource) -> FileSource:
    """Refuse, naming the params key, a path that points outside data/sources/ as written (a
    link inside it that leads out is caught when the files are listed, in expand_paths)."""
    if not spec.untracked:
        for pattern in spec.paths:
            if not Path(os.path.abspath(pattern)).is_relative_to(SOURCES_DIR.absolute()):
                raise options.error("paths", f"names {pattern}, outside {SOURCES_DIR}/ (the "
                                    f"folder DVC tracks as curate's dep): {_CONFINEMENT_FIX}")
    return spec


def _difficulty(options: Options, name: str, task: str) -> tuple[int, int]:
    low, high = options.int_range(name)
    floor, ceiling = DIFFICULTY_LIMITS[task]
    if low < floor or high > ceiling:
        raise options.error(name, f"must lie within [{floor}, {ceiling}] for task {task}")
    return low, high


class ErrorPolicy:
    """`on_error`: raise record-level errors, or count them per (source, reason) and go on."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.examples: list[str] = []

    def handle(self, source: str, reason: str, error: DataError) -> None:
        if self.mode == "fail":
            raise error
        self.skipped[(source, reason)] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{source}: {error}")


def stable_seed(*parts: object) -> int:
    """A seed fixed by its parts (Python's own hash() differs between processes)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def expand_paths(spec: FileSource) -> list[Path]:
    """Paths or globs in order, each file once; a pattern matching nothing is an error, and so
    is a file outside `data/sources/` (after resolving links and `..`) unless `untracked`."""
    found: dict[Path, None] = {}
    for pattern in spec.paths:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            what = "no file matches" if glob.has_magic(pattern) else "file not found:"
            raise DataError(f"source '{spec.name}': {what} {pattern}")
        found.update((Path(match), None) for match in matches)
    if not spec.untracked:
        for path in found:
            if not path.resolve().is_relative_to(SOURCES_DIR.resolve()):
                raise DataError(f"source '{spec.name}': {path} leads outside {SOURCES_DIR}/ "
                                f"(the folder DVC tracks as curate's dep): {_CONFINEMENT_FIX}")
    return list(found)


def file_sha256s(spec: FileSource) -> dict[str, str]:
    """Each file a local source reads, with its sha256: the manifest's lock of its inputs."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in expand_paths(spec)}


def binary_error(where: str, offset: int) -> DataError:
    return DataError(f"{where}: binary file (NUL byte at byte offset {offset}), "
                     "expected UTF-8 text")


def check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")


def read_lines(path: Path, source: str, policy: ErrorPolicy) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) pairs; invalid UTF-8 names the line and byte offset.

    NUL bytes never occur in text: the file's head is sniffed first, so a binary file fails at
    once instead of being read as one enormous line.
    """
    check_file(path)
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if NUL in head:
        raise binary_error(str(path), head.index(NUL))
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if NUL in raw:
                raise binary_error(f"{path}:{number}", start + raw.index(NUL))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                policy.handle(source, "invalid_utf8", DataError(
                    f"{path}:{number}: invalid UTF-8 at byte offset {start + err.start}"))
                continue
            yield number, line.lstrip("\ufeff") if number == 1 else line


def _read_whole(path: Path, source: str, policy: ErrorPolicy) -> str | None:
    check_file(path)
    data = path.read_bytes()
    if NUL in data:
        raise binary_error(str(path), data.index(NUL))
    try:
        return data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        policy.handle(source, "invalid_utf8", DataError(
            f"{path}:{line}: invalid UTF-8 at byte offset {err.start}"))
        return None


def _text_units(path: Path, unit: str, source: str, policy: ErrorPolicy) -> Iterator[Record]:
    if unit == "file":
        text = _read_whole(path, source, policy)
        if text is not None:
            yield Record(source, str(path), TEXT_KIND, text)
        return
    for number, line in read_lines(path, source, policy):
        if line.strip():
            yield Record(source, f"{path}:{number}", TEXT_KIND, line)


class _FieldError(DataError):
    """A row lacks a field or holds the wrong type there; `reason` is the metrics key."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _field(row: Mapping[str, Any], name: str, origin: str, numbers: bool) -> str:
    if name not in row or row[name] is None:
        raise _FieldError(f"{origin}: missing field '{name}'", "missing_field")
    value = row[name]
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # exact answers are often stored as numbers
    if not isinstance(value, str):
        raise _FieldError(f"{origin}: field '{name}' must be a string, got "
                          f"{type(value).__name__}", "bad_field")
    return value


def row_record(row: Any, fields: Fields, source: str, origin: str,
               policy: ErrorPolicy) -> Record | None:
    """A record from a structured row, or None when the row was skipped under the policy."""
    if not isinstance(row, Mapping):
        policy.handle(source, "malformed_json", DataError(
            f"{origin}: expected a JSON object, got {type(row).__name__}"))
        return None
    try:
        if fields.text:
            return Record(source, origin, TEXT_KIND, _field(row, fields.text, origin, False))
        prompt = _field(row, fields.prompt or "", origin, False)
        answer = _field(row, fields.answer or "", origin, True)
    except _FieldError as err:
        policy.handle(source, err.reason, err)
        return None
    return task_record(source, origin, prompt, answer, fields.task)


def _read_jsonl(path: Path, spec: FileSource, policy: ErrorPolicy) -> Iterator[Record]:
    for number, line in read_lines(path, spec.name, policy):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            row = json.loads(line.rstrip("\r\n"))  # so error columns are the line's own
        except json.JSONDecodeError as err:
            policy.handle(spec.name, "malformed_json", DataError(
                f"{origin}: malformed JSON: {err.msg} (column {err.colno})"))
            continue
        record = row_record(row, spec.fields, spec.name, origin, policy)
        if record is not None:
            yield record


def _read_parquet(path: Path, spec: FileSource, policy: ErrorPolicy) -> Iterator[Record]:
    check_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file: {err}") from err
    columns = parquet.schema_arrow.names
    for name in spec.fields.names:
        if name not in columns:
            raise DataError(f"{path}: missing field '{name}' (columns: {', '.join(columns)})")
    row_number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                      columns=list(spec.fields.names)):
        for row in batch.to_pylist():
            row_number += 1
            record = row_record(row, spec.fields, spec.name, f"{path} row {row_number}", policy)
            if record is not None:
                yield record


def _offline_flag() -> str | None:
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return variable
    return None


def _read_hub(spec: HubSource, policy: ErrorPolicy) -> Iterator[Record]:
    where = f"{spec.id}@{spec.revision} split {spec.split}"
    flag = _offline_flag()
    if flag:
        raise DataError(f"source '{spec.name}': Hub dataset {where} needs the network but "
                        f"{flag}={os.environ[flag]} is set; unset it to download, or export the "
                        "data to a local jsonl/parquet source")
    import datasets  # heavy: only Hub sources pay for it
    from huggingface_hub.errors import HTTPError

    try:
        rows = iter(datasets.load_dataset(spec.id, revision=spec.revision, split=spec.split,
                                          streaming=True))
    except (OSError, ValueError, HTTPError) as err:  # not found, gated, bad revision or split
        raise DataError(f"source '{spec.name}': cannot read Hub dataset {where}: {err}") from err
    for index, row in enumerate(rows):
        record = row_record(row, spec.fields, spec.name, f"{where} row {index}", policy)
        if record is not None:
            yield record


def package_file(spec: PackageSource) -> tuple[Path, str]:
    """Locate a file of an installed distribution from its metadata, without importing it
    (importing gensim would cost seconds and pull scipy); returns (path, version)."""
    try:
        distribution = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError(f"source '{spec.name}': package '{spec.package}' is not installed") from err
    if spec.path not in {str(file) for file in distribution.files or ()}:
        raise DataError(f"source '{spec.name}': package {spec.package} "
                        f"{distribution.version} has no file '{spec.path}'")
    return Path(str(distribution.locate_file(spec.path))), distribution.version


def _read_generator(spec: GeneratorSource, seed: int) -> Iterator[Record]:
    parts = [("train", spec.count, spec.difficulty, False)]
    if spec.ood_difficulty is not None:
        parts.append(("ood", spec.ood_count, spec.ood_difficulty, True))
    for part, count, difficulty, ood in parts:
        examples = generate(spec.task, count, difficulty, stable_seed(seed, spec.name, part))
        for index, example in enumerate(examples):
            yield task_record(spec.name, f"{spec.name} {part} #{index}", example.prompt,
                              example.answer, example.task, example.difficulty, ood)


def read_source(spec: SourceSpec, seed: int, policy: ErrorPolicy) -> Iterator[Record]:
    """Stream the raw (not yet normalised) records of one source."""
    if isinstance(spec, GeneratorSource):
        yield from _read_generator(spec, seed)
    elif isinstance(spec, HubSource):
        yield from _read_hub(spec, policy)
    elif isinstance(spec, PackageSource):
        path, _ = package_file(spec)
        yield from _text_units(path, spec.unit, spec.name, policy)
    else:
        for path in expand_paths(spec):
            if spec.kind == "jsonl":
                yield from _read_jsonl(path, spec, policy)
            elif spec.kind == "parquet":
                yield from _read_parquet(path, spec, policy)
            else:
                yield from _text_units(path, spec.unit, spec.name, policy)
