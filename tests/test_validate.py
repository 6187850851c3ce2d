"""The Great Expectations gate: clean curated data passes, each kind of violation fails on
its own check, and the stage records failures before exiting non-zero."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from millennial.base import byte_level_tokenizer
from millennial.data import DataError
from millennial.data.curate import curate, parse_config
from millennial.fingerprint import tree_sha256
from millennial.params import ParamsError
from millennial.receipt import RECEIPT, require_validated, write_receipt
from millennial.validate import (
    DocumentGate,
    ValidateConfig,
    gx_context,
    load_documents,
    validate,
)
from millennial.validate import parse_config as parse_validate_config

REPO = Path(__file__).resolve().parents[1]
VALIDATE_PARAMS = {
    "text_chars": [200, 100000],
    "task_chars": [3, 2000],
    "tokens": [2, 200000],
    "rows": {"train": [100, None], "val": [5, None], "test": [5, None], "test_ood": [1, None]},
    "max_examples": 3,
}


def curate_params(tokenizer_dir: Path) -> dict:
    return {
        "tokenizer_dir": str(tokenizer_dir), "block_size": 128, "seed": 7, "on_error": "fail",
        "filter": {"min_chars": 200, "max_chars": 100000, "max_junk_ratio": 0.3},
        "minhash": {"num_perm": 64, "threshold": 0.8, "shingle_size": 5,
                    "near_duplicates": "drop"},
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "sources": [
            {"name": "news", "kind": "package", "package": "gensim",
             "path": "gensim/test/test_data/lee_background.cor", "unit": "line"},
            {"name": "chase", "kind": "generator", "task": "pointer_chase", "count": 100,
             "difficulty": [1, 3], "ood_count": 20, "ood_difficulty": [5, 6]},
        ],
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory with curated data and params for both stages (curated once)."""
    root = tmp_path_factory.mktemp("project")
    byte_level_tokenizer(512).save_pretrained(root / "tokenizer")
    params = {"curate": curate_params(root / "tokenizer"), "validate": VALIDATE_PARAMS}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    curate(parse_config(params["curate"]), root / "data/curated", root / "metrics/data.json",
           root / "reports/data_card.md")
    return root


@pytest.fixture
def validate_main(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    monkeypatch.syspath_prepend(str(REPO))  # `stages` is run from the repo root, not installed
    return importlib.import_module("stages.validate").main


@pytest.fixture(scope="module")
def clean(project: Path) -> pd.DataFrame:
    return load_documents(project / "data/curated/documents")


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> DocumentGate:
    """One GX project and suite for the module: GX setup costs seconds, a run does not."""
    context = gx_context(tmp_path_factory.mktemp("gx"))
    return DocumentGate(context, parse_validate_config(VALIDATE_PARAMS))


def failed(gate: DocumentGate, frame: pd.DataFrame) -> set[str]:
    return {check.name for check in gate.run(frame) if not check.success}


def test_clean_curated_data_passes(gate: DocumentGate, clean: pd.DataFrame) -> None:
    checks = gate.run(clean)
    assert [c.name for c in checks if not c.success] == []
    names = {c.name for c in checks}
    assert {"columns", "type:n_tokens", "not_null:text", "text_chars", "task_chars",
            "n_tokens", "unique_hash_within_split", "hash_in_one_split", "split_values",
            "no_pii:email", "no_pii:phone", "no_pii:ipv4", "no_pii:ipv6", "rows:train",
            "rows:test_ood", "task_answer_present", "task_answer_not_empty"} <= names


def _set(frame: pd.DataFrame, mask: pd.Series, column: str, value: object) -> pd.DataFrame:
    frame.loc[mask[mask].index[:1], column] = value
    return frame


def _first_text(frame: pd.DataFrame) -> pd.Series:
    return frame["kind"] == "text"


def _first_task(frame: pd.DataFrame) -> pd.Series:
    return frame["kind"] == "task"


def _leak(frame: pd.DataFrame) -> pd.DataFrame:
    row = frame[frame["split"] == "train"].head(1).assign(split="test")
    return pd.concat([frame, row], ignore_index=True)


def _pii(frame: pd.DataFrame) -> pd.DataFrame:
    texts = frame.index[frame["kind"] == "text"][:4]
    found = ["jane.doe@example.org", "+61 2 9374 4000", "192.168.10.4", "2001:db8::8a2e:370:7334"]
    for row, text in zip(texts, found, strict=True):
        frame.loc[row, "text"] = f"Contact {text} for details. " * 10
    return frame


def _bad_answers(frame: pd.DataFrame) -> pd.DataFrame:
    tasks = frame.index[frame["kind"] == "task"]
    frame.loc[tasks[0], "answer"] = None
    frame.loc[tasks[1], "answer"] = ""
    return frame


PII_CHECKS = {"no_pii:email", "no_pii:phone", "no_pii:ipv4", "no_pii:ipv6"}
VIOLATIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], set[str]]] = {
    "columns": (lambda f: f.assign(extra=1), {"columns"}),
    "type": (lambda f: f.assign(n_tokens=f["n_tokens"].astype("float64")), {"type:n_tokens"}),
    "null": (lambda f: _set(f, _first_text(f), "source", None), {"not_null:source"}),
    "text_chars": (lambda f: _set(f, _first_text(f), "text", "too short"), {"text_chars"}),
    "task_chars": (lambda f: _set(f, _first_task(f), "text", "x" * 2001), {"task_chars"}),
    "n_tokens": (lambda f: _set(f, _first_text(f), "n_tokens", 0), {"n_tokens"}),
    "duplicate": (lambda f: pd.concat([f, f.head(1)], ignore_index=True),
                  {"unique_hash_within_split"}),
    "leak": (_leak, {"hash_in_one_split"}),
    "split": (lambda f: _set(f, f["split"] == "train", "split", "dev"), {"split_values"}),
    "kind": (lambda f: _set(f, f["kind"] == "text", "kind", "image"), {"kind_values"}),
    "pii": (_pii, PII_CHECKS),
    "rows": (lambda f: f[f["split"] != "val"].reset_index(drop=True), {"rows:val"}),
    "answers": (_bad_answers, {"task_answer_present", "task_answer_not_empty"}),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_each_violation_fails_its_own_check(gate: DocumentGate, clean: pd.DataFrame,
                                             case: str) -> None:
    corrupt, expected = VIOLATIONS[case]
    assert failed(gate, corrupt(clean.copy())) == expected


def test_failure_report_names_check_rows_and_examples(gate: DocumentGate,
                                                      clean: pd.DataFrame) -> None:
    checks = gate.run(_pii(clean.copy()))
    bad = next(c for c in checks if c.name == "no_pii:email")
    assert not bad.success and bad.column == "text" and bad.unexpected_count == 1
    assert "jane.doe@example.org" in bad.examples[0] and len(bad.examples[0]) <= 123


def test_params_errors_name_the_key() -> None:
    with pytest.raises(ParamsError, match=r"'validate.rows.val' must be \[min, max\]"):
        parse_validate_config({**VALIDATE_PARAMS, "rows": {**VALIDATE_PARAMS["rows"],
                                                           "val": [5, 1]}})
    with pytest.raises(ParamsError, match=r"missing key 'validate\.rows\.test_ood'"):
        parse_validate_config({**VALIDATE_PARAMS, "rows": {"train": [1, None], "val": [1, None],
                                                           "test": [1, None]}})
    config = parse_validate_config(VALIDATE_PARAMS)
    assert isinstance(config, ValidateConfig) and config.rows["train"] == (100, None)


def test_stage_passes_then_fails_and_records_the_failure(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    validate_main: Callable[..., int],
) -> None:
    monkeypatch.chdir(project)
    assert validate_main([]) == 0
    metrics = json.loads(Path("metrics/validation.json").read_text())
    receipt = json.loads(Path("data/validated/receipt.json").read_text())
    assert metrics["success"] is True and receipt["success"] is True
    assert receipt["data_sha256"] == metrics["data_sha256"]
    require_validated(RECEIPT, "data/curated/documents", "data/curated/packed")  # passes
    assert (Path("reports/data_docs") / "index.html").is_file()
    assert json.loads(Path("metrics/cost/validate.json").read_text())["status"] == "ok"

    # Corrupt the curated data: a test row that is also in train.
    documents = Path("data/curated/documents")
    test = pd.read_parquet(documents / "test.parquet")
    train = pd.read_parquet(documents / "train.parquet")
    pd.concat([test, train.head(1).assign(split="test")]).to_parquet(documents / "test.parquet")
    assert validate_main([]) == 1
    metrics = json.loads(Path("metrics/validation.json").read_text())
    assert metrics["success"] is False
    assert metrics["results"]["hash_in_one_split"]["unexpected_count"] == 2
    assert metrics["data_sha256"] != receipt["data_sha256"]
    assert not Path("data/validated/receipt.json").exists()  # the stale receipt is gone
    with pytest.raises(DataError, match="no validation receipt"):
        require_validated(RECEIPT, documents, "data/curated/packed")
    err = capsys.readouterr().err
    assert "hash_in_one_split" in err and "2 rows" in err


def test_missing_documents_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.parquet: missing \(run the curate stage first"):
        load_documents(tmp_path)


def test_validate_with_a_given_gate_writes_metrics(gate: DocumentGate, project: Path,
                                                   tmp_path: Path) -> None:
    report = validate(project / "data/curated/documents", project / "data/curated/packed", gate,
                      tmp_path / "m.json", tmp_path / "r.json")
    assert json.loads((tmp_path / "m.json").read_text())["checks_total"] == len(report.checks)
    assert report.rows["test_ood"] == 20


def test_training_refuses_data_that_changed_after_it_passed(tmp_path: Path) -> None:
    documents, packed = tmp_path / "documents", tmp_path / "packed"
    for directory in (documents, packed):
        directory.mkdir()
        (directory / "train.parquet").write_bytes(b"validated bytes")
    receipt = tmp_path / "receipt.json"
    write_receipt(receipt, tree_sha256(documents), packed, checks=3)
    require_validated(receipt, documents, packed)
    (packed / "train.parquet").write_bytes(b"swapped after the gate")
    with pytest.raises(DataError, match=r"'packed_sha256' does not match .*packed"):
        require_validated(receipt, documents, packed)
    receipt.write_text('{"success": false}')
    with pytest.raises(DataError, match="does not record a passing validation"):
        require_validated(receipt, documents, packed)
