"""The `validate` stage: a Great Expectations gate between curation and training.

Two batches are checked with built-in expectations:
- `documents`: all curated document splits concatenated (columns, types, nulls, lengths, token
  counts, allowed values, per-split row counts, unique content hash within a split, no
  personal-data pattern left, task rows with a prompt and an answer);
- `hash_splits`: one row per distinct (content_hash, split) pair, where a repeated hash means
  the same content sits in two splits (a train/test leak).
Every outcome goes to `metrics/validation.json`, also on failure (so the failure is recorded);
`data/validated/receipt.json`, which training depends on, is written only on success, so
`dvc repro` cannot reach training with data that failed. Data Docs are built by GX in a
temporary file-mode project and copied to `reports/data_docs/`; their pages load Bootstrap and
jQuery from CDNs, so offline they show unstyled (the content is all there).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column

from millennial.atomic import atomic_dir, write_json
from millennial.data import TASK_KIND, TEXT_KIND, DataError
from millennial.data.clean import PII_PATTERNS
from millennial.data.curate import DOCUMENT_SCHEMA
from millennial.data.split import SPLITS
from millennial.fingerprint import tree_sha256
from millennial.params import Options, load_params, section
from millennial.receipt import write_receipt

REQUIRED_COLUMNS = ("source", "kind", "text", "content_hash", "split", "n_tokens")
COLUMN_TYPES = {field.name: "int32" if pa.types.is_int32(field.type) else "str"
                for field in DOCUMENT_SCHEMA}
"""pandas dtype names as GX reports them for frames read by `load_documents`."""
EXAMPLE_CHARS = 120


@dataclass(frozen=True)
class ValidateConfig:
    """params `validate`: inclusive bounds; a row-count maximum of None means unbounded."""

    text_chars: tuple[int, int]
    task_chars: tuple[int, int]
    tokens: tuple[int, int]
    rows: dict[str, tuple[int, int | None]]
    max_examples: int


def parse_config(raw: Any, where: str | Path = "params.yaml") -> ValidateConfig:
    options = Options(raw, "validate", where)
    options.only("text_chars", "task_chars", "tokens", "rows", "max_examples")
    rows_options = options.child("rows")
    rows_options.only(*SPLITS)
    rows: dict[str, tuple[int, int | None]] = {}
    for split in SPLITS:
        value = rows_options.get(split)
        valid = (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                 and value[0] >= 0 and (value[1] is None or (isinstance(value[1], int)
                                                              and value[1] >= value[0])))
        if not valid:
            raise rows_options.error(split, f"must be [min, max] with max >= min or null, got "
                                     f"{value!r}")
        rows[split] = (value[0], value[1])
    return ValidateConfig(
        text_chars=options.int_range("text_chars"),
        task_chars=options.int_range("task_chars"),
        tokens=options.int_range("tokens"),
        rows=rows,
        max_examples=options.integer("max_examples", 5, low=1),
    )


def load_documents(documents_dir: str | Path) -> pd.DataFrame:
    """All document splits in one frame, nullable dtypes (int32 columns stay integers)."""
    directory = Path(documents_dir)
    frames = []
    for split in SPLITS:
        path = directory / f"{split}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: missing (run the curate stage first)")
        frames.append(pd.read_parquet(path, dtype_backend="numpy_nullable"))
    return pd.concat(frames, ignore_index=True)


def _named(expectation: gxe.Expectation, name: str) -> gxe.Expectation:
    expectation.meta = {"check": name}
    return expectation


def document_expectations(config: ValidateConfig) -> list[gxe.Expectation]:
    """The `documents` suite: one expectation per check, each tagged with its check name."""
    is_text, is_task = Column("kind") == TEXT_KIND, Column("kind") == TASK_KIND
    checks = [
        _named(gxe.ExpectTableColumnsToMatchSet(column_set=list(COLUMN_TYPES), exact_match=True),
               "columns"),
        *(_named(gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_), f"type:{column}")
          for column, type_ in COLUMN_TYPES.items()),
        *(_named(gxe.ExpectColumnValuesToNotBeNull(column=column), f"not_null:{column}")
          for column in REQUIRED_COLUMNS),
        _named(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
               "split_values"),
        _named(gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=[TEXT_KIND, TASK_KIND]),
               "kind_values"),
        _named(gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=config.text_chars[0], max_value=config.text_chars[1],
            row_condition=is_text), "text_chars"),
        _named(gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=config.task_chars[0], max_value=config.task_chars[1],
            row_condition=is_task), "task_chars"),
        _named(gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=config.tokens[0], max_value=config.tokens[1]),
            "n_tokens"),
        _named(gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "content_hash"]),
               "unique_hash_within_split"),
        *(_named(gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=pattern.pattern),
                 f"no_pii:{kind}") for kind, pattern in PII_PATTERNS.items()),
        *(_named(gxe.ExpectTableRowCountToBeBetween(
            min_value=low, max_value=high, row_condition=Column("split") == split),
            f"rows:{split}") for split, (low, high) in config.rows.items()),
    ]
    for column in ("prompt", "answer"):  # length >= 1 skips nulls, so both checks are needed
        checks.append(_named(gxe.ExpectColumnValuesToNotBeNull(
            column=column, row_condition=is_task), f"task_{column}_present"))
        checks.append(_named(gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value=1, row_condition=is_task), f"task_{column}_not_empty"))
    return checks


def hash_split_expectations() -> list[gxe.Expectation]:
    """The `hash_splits` suite: a content hash may occur in one split only."""
    return [_named(gxe.ExpectColumnValuesToBeUnique(column="content_hash"), "hash_in_one_split")]


def hash_split_pairs(documents: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (content_hash, split): a repeated hash spans two splits."""
    return documents[["content_hash", "split"]].drop_duplicates(ignore_index=True)


@dataclass(frozen=True)
class CheckResult:
    """One expectation's outcome, as written to `metrics/validation.json`."""

    name: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: Any
    examples: list[Any]


def gx_context(project_dir: str | Path) -> AbstractDataContext:
    """A file-mode GX project in `project_dir` (file mode: it can build Data Docs), quiet."""
    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.save()
    return context


def _example(value: Any) -> Any:
    """A JSON-ready, shortened copy of an observed or unexpected value."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return value[:EXAMPLE_CHARS] + "..."
    if isinstance(value, list | tuple):
        return [_example(item) for item in value]
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


class DocumentGate:
    """The GX objects (data source, suites, validation definitions) built once per context;
    `run` checks one dataset. Build one gate per context: a second one replaces the first's
    suites, which GX then refuses to run as changed-since-saved."""

    def __init__(self, context: AbstractDataContext, config: ValidateConfig) -> None:
        self.context = context
        self.config = config
        source = context.data_sources.add_or_update_pandas(name="curated")
        self._definitions = []
        for name, expectations in (("documents", document_expectations(config)),
                                   ("hash_splits", hash_split_expectations())):
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            suite = context.suites.add_or_update(
                gx.ExpectationSuite(name=name, expectations=expectations))
            self._definitions.append(context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)))

    def run(self, documents: pd.DataFrame) -> list[CheckResult]:
        """Run both suites (GX stores the results, for Data Docs); outcomes sorted by name."""
        result_format = {"result_format": "SUMMARY",
                         "partial_unexpected_count": self.config.max_examples}
        results = []
        for definition, frame in zip(self._definitions,
                                     (documents, hash_split_pairs(documents)), strict=True):
            outcome = definition.run(batch_parameters={"dataframe": frame},
                                     result_format=result_format)
            for result in outcome.results:
                expectation = result.expectation_config
                details = result.result or {}
                results.append(CheckResult(
                    name=(expectation.meta or {}).get("check", expectation.type),
                    expectation=expectation.type,
                    column=expectation.kwargs.get("column"),
                    success=bool(result.success),
                    unexpected_count=details.get("unexpected_count"),
                    observed=_example(details.get("observed_value")),
                    examples=[_example(v) for v in details.get("partial_unexpected_list")
                              or []][: self.config.max_examples],
                ))
        return sorted(results, key=lambda check: check.name)

    def build_data_docs(self, target: str | Path) -> None:
        """Render GX Data Docs for the results so far and copy the site to `target`."""
        self.context.build_data_docs()
        site = Path(str(self.context.root_directory)) / "uncommitted" / "data_docs" / "local_site"
        with atomic_dir(target) as tmp:
            shutil.copytree(site, tmp, dirs_exist_ok=True)


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    data_sha256: str
    rows: dict[str, int]
    checks: list[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.success]

    def metrics(self) -> dict[str, Any]:
        """`metrics/validation.json`: keyed by check name, so `dvc metrics diff` lines up."""
        return {
            "success": self.success,
            "data_sha256": self.data_sha256,
            "rows": self.rows,
            "checks_total": len(self.checks),
            "checks_failed": len(self.failed),
            "results": {check.name: {key: value for key, value in asdict(check).items()
                                     if key != "name"} for check in self.checks},
        }

    def summary(self) -> str:
        """Readable lines: which check failed, how many rows, a few examples."""
        if self.success:
            return f"validate: all {len(self.checks)} checks passed"
        lines = [f"validate: {len(self.failed)} of {len(self.checks)} checks FAILED"]
        for check in self.failed:
            where = f" on column '{check.column}'" if check.column else ""
            count = (f": {check.unexpected_count} rows" if check.unexpected_count is not None
                     else f": observed {check.observed!r}")
            lines.append(f"  - {check.name} ({check.expectation}{where}){count}")
            lines.extend(f"      e.g. {example!r}" for example in check.examples)
        return "\n".join(lines)


def validate(documents_dir: str | Path, packed_dir: str | Path, gate: DocumentGate,
             metrics_path: str | Path, receipt_path: str | Path,
             docs_dir: str | Path | None = None) -> ValidationReport:
    """Check the curated documents; write metrics always, the receipt only on success (with the
    hashes of the documents and of the packed blocks made from them, which training checks)."""
    receipt = Path(receipt_path)
    receipt.unlink(missing_ok=True)  # a stale receipt must not vouch for new data
    documents = load_documents(documents_dir)
    checks = gate.run(documents)
    if docs_dir is not None:
        gate.build_data_docs(docs_dir)
    report = ValidationReport(
        success=all(check.success for check in checks),
        data_sha256=tree_sha256(documents_dir),
        rows={split: int((documents["split"] == split).sum()) for split in SPLITS},
        checks=checks,
    )
    write_json(metrics_path, report.metrics())
    if report.success:
        write_receipt(receipt, report.data_sha256, packed_dir, len(checks))
    return report


def validate_from_params(params_path: str | Path, documents_dir: str | Path,
                         packed_dir: str | Path, metrics_path: str | Path,
                         receipt_path: str | Path, docs_dir: str | Path | None) -> ValidationReport:
    """The stage: params `validate`, a throw-away GX project, Data Docs copied out of it."""
    config = parse_config(section(load_params(params_path), "validate", params_path), params_path)
    with tempfile.TemporaryDirectory(prefix="gx-") as project:
        gate = DocumentGate(gx_context(project), config)
        return validate(documents_dir, packed_dir, gate, metrics_path, receipt_path, docs_dir)
