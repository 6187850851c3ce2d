"""The curate stage end to end: outputs, leak-free splits, masks, atomicity on bad input."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from millennial.base import byte_level_tokenizer
from millennial.data import DataError
from millennial.data.curate import (
    DOCUMENT_SCHEMA,
    PACKED_SCHEMA,
    CurationResult,
    curate,
    parse_config,
)
from millennial.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
BLOCK = 64
PROSE = ("The council met on Tuesday to discuss the new library, which will open next spring "
         "after two years of building work and a long argument about parking near the river. ")
REPORT = ("Heavy rain closed three roads in the hills overnight, and crews expect to clear the "
          "last of the fallen trees by Friday if the weather holds as forecast. ")
LEE = {"name": "news", "kind": "package", "package": "gensim",
       "path": "gensim/test/test_data/lee_background.cor", "unit": "line"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    byte_level_tokenizer(512).save_pretrained(directory)
    return directory


def params(tokenizer_dir: Path, sources: list[dict[str, Any]], **overrides: Any) -> dict:
    base = {
        "tokenizer_dir": str(tokenizer_dir), "block_size": BLOCK, "seed": 11,
        "on_error": "fail",
        "filter": {"min_chars": 100, "max_chars": 20000, "max_junk_ratio": 0.3},
        "minhash": {"num_perm": 64, "threshold": 0.7, "shingle_size": 3,
                    "near_duplicates": "drop"},
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "sources": sources,
    }
    return {**base, **overrides}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(root: Path, raw: dict[str, Any]) -> CurationResult:
    return curate(parse_config(raw), root / "data/curated", root / "metrics/data.json",
                  root / "reports/data_card.md")


def near_variant(i: int) -> str:
    return REPORT * 2 + f"Reported by desk {i}."


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("curated")
    extra = write_jsonl(root / "extra.jsonl", [
        {"text": PROSE + "Write to jane.doe@example.org, call +61 2 9374 4000, or 10.1.2.3."},
        {"text": PROSE.upper() + "  Write to jane.doe@example.org, call +61 2 9374 4000, "
                                 "or 10.1.2.3."},  # same content up to case and spaces
        {"text": near_variant(1)},
        {"text": near_variant(2)},  # differs in one word from the one above
        {"text": "too short"},
        {"text": "|| -- || ** ## " * 20 + "a"},
    ])
    sources = [
        LEE,
        {"name": "extra", "kind": "jsonl", "untracked": True,
         "paths": str(extra), "text_field": "text"},
        {"name": "chase", "kind": "generator", "task": "pointer_chase", "count": 200,
         "difficulty": [1, 3], "ood_count": 30, "ood_difficulty": [5, 6]},
        {"name": "sum", "kind": "generator", "task": "addition", "count": 100,
         "difficulty": [2, 3], "ood_count": 20, "ood_difficulty": [6, 7]},
    ]
    raw = params(tokenizer_dir, sources)
    (root / "raw.json").write_text(json.dumps(raw))
    run(root, raw)
    return root


def table(root: Path, kind: str, split: str) -> list[dict[str, Any]]:
    return pq.read_table(root / "data/curated" / kind / f"{split}.parquet").to_pylist()


def test_outputs_and_schemas(curated: Path) -> None:
    for split in ("train", "val", "test", "test_ood"):
        assert pq.read_schema(curated / f"data/curated/documents/{split}.parquet").equals(
            DOCUMENT_SCHEMA)
    assert pq.read_schema(curated / "data/curated/packed/train.parquet").equals(PACKED_SCHEMA)
    assert sorted(p.name for p in (curated / "data/curated/packed").iterdir()) == [
        "train.parquet"]  # held-out splits are scored from documents, never packed
    assert not (curated / "data/curated/.spool").exists()
    assert (curated / "metrics/data.json").is_file()
    assert (curated / "reports/data_card.md").is_file()


def test_drops_and_personal_data_are_counted(curated: Path) -> None:
    metrics = json.loads((curated / "metrics/data.json").read_text())
    assert metrics["drops"]["by_source"]["extra"] == {
        "exact_duplicate": 1, "near_duplicate": 1, "too_short": 1, "junk": 1}
    assert metrics["pii"]["by_source"]["extra"] == {"email": 1, "phone": 1, "ipv4": 1}
    assert metrics["read"] == {"chase": 230, "extra": 6, "news": 300, "sum": 120}
    documents = [row for split in ("train", "val", "test")
                 for row in table(curated, "documents", split)]
    scrubbed = [row["text"] for row in documents if row["source"] == "extra"]
    assert any("<EMAIL>" in text and "<PHONE>" in text and "<IP>" in text for text in scrubbed)
    assert metrics["documents"]["total"] == sum(
        metrics["documents"][split] for split in ("train", "val", "test", "test_ood"))


def test_splits_do_not_leak_and_ood_is_harder(curated: Path) -> None:
    rows = {split: table(curated, "documents", split)
            for split in ("train", "val", "test", "test_ood")}
    owner: dict[str, str] = {}
    for split, split_rows in rows.items():
        assert {row["split"] for row in split_rows} == {split}
        for row in split_rows:
            assert owner.setdefault(row["content_hash"], split) == split
    assert len(rows["val"]) > 0 and len(rows["test"]) > 0
    ood = rows["test_ood"]
    assert len(ood) == 50 and all(row["kind"] == "task" for row in ood)
    for task, train_max in (("pointer_chase", 3), ("addition", 3)):
        assert max(r["difficulty"] for r in rows["train"] if r["task"] == task) == train_max
        assert min(r["difficulty"] for r in ood if r["task"] == task) > train_max
    text_row = next(row for row in rows["train"] if row["kind"] == "text")
    assert text_row["task"] is None and text_row["answer"] is None
    assert text_row["difficulty"] is None


def test_packed_blocks_carry_every_token_and_the_right_mask(curated: Path) -> None:
    manifest = json.loads((curated / "data/curated/manifest.json").read_text())
    pad = manifest["tokenizer"]["pad_token_id"]
    documents = table(curated, "documents", "train")
    blocks = table(curated, "packed", "train")
    assert all(len(b["input_ids"]) == len(b["loss_mask"]) == len(b["loss_weight"]) == BLOCK
               for b in blocks)
    ids = [i for b in blocks for i in b["input_ids"]]
    mask = [m for b in blocks for m in b["loss_mask"]]
    tokens = sum(d["n_tokens"] for d in documents)
    assert len(ids) - tokens < BLOCK and all(i == pad for i in ids[tokens:])
    # every token of a text, the answer bytes, their separator and one EOS per task example
    assert sum(mask) == sum(d["n_tokens"] if d["kind"] == "text" else len(d["answer"]) + 2
                            for d in documents)
    weights = [w for b in blocks for w in b["loss_weight"]]
    assert all((w > 0) == bool(m) for w, m in zip(weights, mask, strict=True))
    assert sum(weights) == pytest.approx(sum(mask), rel=1e-5)  # natural mixture: all weigh 1
    assert manifest["splits"]["train"]["blocks"] == len(blocks)


def test_sources_are_interleaved_not_packed_in_runs(curated: Path) -> None:
    """A task example follows whatever came before it, not a run of same-task examples."""
    documents = table(curated, "documents", "train")
    sources = [d["source"] for d in documents]
    assert sources[:3] == ["news"] * 3  # documents keep the order sources were read in
    blocks = table(curated, "packed", "train")
    stream = bytes(i for b in blocks for i in b["input_ids"] if i < 256).decode("latin-1")
    chase_first = stream.index("?")  # pointer-chase prompts end in "?"
    news_last = max(stream.rfind(d["text"][:40]) for d in documents if d["source"] == "news")
    assert chase_first < news_last  # some tasks come before the last news article


def test_manifest_and_card(curated: Path, tokenizer_dir: Path) -> None:
    manifest = json.loads((curated / "data/curated/manifest.json").read_text())
    assert manifest["block_size"] == BLOCK
    tokenizer = manifest["tokenizer"]
    assert tokenizer["vocab_size"] == 258 and tokenizer["name_or_path"] == str(tokenizer_dir)
    assert len(tokenizer["tokenizer_json_sha256"]) == 64
    news = next(s for s in manifest["sources"] if s["name"] == "news")
    assert news["package"] == "gensim" and news["version"]
    card = (curated / "reports/data_card.md").read_text()
    for fragment in ("| news | package |", "| chase | test_ood | 30 | 5-6 |", "near_duplicate",
                     "<EMAIL>", "## Training mixture", "natural (`curate.mixture: null`"):
        assert fragment in card
    mixture = {row["source"]: row for row in manifest["mixture"]["sources"]}
    assert set(mixture) == {"news", "extra", "chase", "sum"}
    assert sum(row["natural_share"] for row in mixture.values()) == pytest.approx(1.0)
    assert all(row["loss_weight"] == pytest.approx(1.0) for row in mixture.values())


def test_a_mixture_sets_each_sources_share_of_the_loss(curated: Path, tmp_path: Path) -> None:
    raw = json.loads((curated / "raw.json").read_text())
    raw["mixture"] = {"news": 0.4, "extra": 0.0, "chase": 0.3, "sum": 0.3}
    result = run(tmp_path, raw)
    rows = {row["source"]: row for row in result.manifest["mixture"]["sources"]}
    documents = table(tmp_path, "documents", "train")
    blocks = table(tmp_path, "packed", "train")
    # Re-derive each token's source from the weights: the loss each source carries is its share.
    by_weight: dict[float, float] = {}
    for block in blocks:
        for weight in block["loss_weight"]:
            if weight:
                by_weight[round(weight, 4)] = by_weight.get(round(weight, 4), 0.0) + weight
    total = sum(by_weight.values())
    for name in ("news", "chase", "sum"):
        share = by_weight[round(rows[name]["loss_weight"], 4)] / total
        assert share == pytest.approx(rows[name]["share"], rel=1e-3)
    assert rows["extra"]["loss_weight"] == 0.0 and rows["chase"]["loss_weight"] > 1.0
    assert len(documents) == len(table(curated, "documents", "train"))  # same data, new weights
    card = (tmp_path / "reports/data_card.md").read_text()
    assert "set by `curate.mixture`" in card and "| chase |" in card
    assert result.metrics["mixture"]["chase"]["share"] == 0.3


@pytest.mark.parametrize("mixture,message", [
    ({"news": 0.5, "extra": 0.5, "chase": 0.0}, r"'curate\.mixture\.sum' is missing"),
    ({"news": 0.5, "extra": 0.5, "chase": 0.0, "sum": 0.0, "typo": 0.0},
     r"'curate\.mixture' has unknown key\(s\) typo"),
    ({"news": 0.5, "extra": 0.5, "chase": 0.5, "sum": 0.0}, "shares must sum to 1, got 1.5"),
    ({"news": 1.5, "extra": -0.5, "chase": 0.0, "sum": 0.0},
     r"'curate\.mixture\.news' must be a finite number in \[0\.0, 1\.0\]"),
    ([0.5, 0.5], "'curate.mixture' must be a mapping"),
])
def test_bad_mixtures_name_the_key(curated: Path, mixture: Any, message: str) -> None:
    raw = json.loads((curated / "raw.json").read_text())
    raw["mixture"] = mixture
    with pytest.raises(ParamsError, match=message):
        parse_config(raw)


def test_rerun_is_byte_identical(curated: Path, tmp_path: Path) -> None:
    run(tmp_path, json.loads((curated / "raw.json").read_text()))
    for relative in ("documents/train.parquet", "documents/test_ood.parquet",
                     "packed/train.parquet", "manifest.json"):
        assert (tmp_path / "data/curated" / relative).read_bytes() == (
            curated / "data/curated" / relative).read_bytes()


def test_near_duplicates_share_a_split(tmp_path: Path, tokenizer_dir: Path) -> None:
    variants = write_jsonl(tmp_path / "v.jsonl", [{"text": near_variant(i)} for i in range(30)])
    raw = params(tokenizer_dir, [{"name": "v", "kind": "jsonl", "untracked": True,
                                  "paths": str(variants),
                                  "text_field": "text"}],
                 split={"train": 0.34, "val": 0.33, "test": 0.33})
    raw["minhash"]["near_duplicates"] = "same_split"
    result = run(tmp_path, raw)
    kept = {split: info["documents"] for split, info in result.manifest["splits"].items()}
    assert sorted(kept.values()) == [0, 0, 0, 30]  # all 30 variants in one split


def test_skip_mode_counts_and_reports_bad_lines(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": PROSE}) + "\n{oops\n")
    raw = params(tokenizer_dir, [{"name": "a", "kind": "jsonl", "untracked": True,
                                  "paths": str(path),
                                  "text_field": "text"}], on_error="skip")
    result = run(tmp_path, raw)
    assert result.metrics["drops"]["by_source"]["a"] == {"malformed_json": 1}
    card = (tmp_path / "reports/data_card.md").read_text()
    assert f"a: {path}:2: malformed JSON" in card


def _jsonl_bytes(data: bytes) -> Callable[[Path], dict[str, Any]]:
    def setup(tmp_path: Path) -> dict[str, Any]:
        (tmp_path / "in.jsonl").write_bytes(data)
        return {"name": "bad", "kind": "jsonl", "untracked": True,
                "paths": str(tmp_path / "in.jsonl"),
                "text_field": "text"}
    return setup


GOOD_LINE = json.dumps({"text": PROSE}).encode() + b"\n"
BAD_INPUTS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "malformed_json": (_jsonl_bytes(GOOD_LINE + b'{"text": \n'),
                       r"in\.jsonl:2: malformed JSON: Expecting value"),
    "missing_field": (_jsonl_bytes(GOOD_LINE + b'{"body": "x"}\n'),
                      r"in\.jsonl:2: missing field 'text'"),
    "invalid_utf8": (_jsonl_bytes(GOOD_LINE * 2 + b'{"text": "\xc3\x28"}\n'),
                     rf"in\.jsonl:3: invalid UTF-8 at byte offset {2 * len(GOOD_LINE) + 10}"),
    "empty_file": (_jsonl_bytes(b""), r"in\.jsonl: empty file"),
    "binary_file": (_jsonl_bytes(b"PK\x03\x04\x14\x00\x00\x00"),
                    r"in\.jsonl: binary file \(NUL byte at byte offset 5\)"),
    "missing_file": (lambda tmp: {"name": "bad", "kind": "jsonl", "text_field": "text",
                                  "untracked": True,
"paths": str(tmp / "gone.jsonl")},
                     r"source 'bad': file not found: .*gone\.jsonl"),
    "nothing_left": (_jsonl_bytes(b'{"text": "tiny"}\n{"text": "also tiny"}\n'),
                     r"source 'bad': nothing left after filtering and dedup \(read 2; "
                     r"dropped: too_short=2\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_and_leaves_previous_data_untouched(
    tmp_path: Path, tokenizer_dir: Path, case: str
) -> None:
    setup, message = BAD_INPUTS[case]
    previous = tmp_path / "data/curated/documents/train.parquet"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"previous curated data")
    sources = [{"name": "gen", "kind": "generator", "task": "addition", "count": 5,
                "difficulty": [1, 2]}, setup(tmp_path)]
    with pytest.raises(DataError, match=message):
        run(tmp_path, params(tokenizer_dir, sources))
    assert previous.read_bytes() == b"previous curated data"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["curated"]  # no temp left
    assert not (tmp_path / "metrics/data.json").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"split": {"train": 0.8, "val": 0.1, "test": 0.2}}, "'curate.split' fractions must sum"),
    ({"filter": {"min_chars": 10, "max_chars": 5, "max_junk_ratio": 0.3}},
     r"'curate\.filter\.max_chars' must be >= min_chars \(10\)"),
    ({"minhash": {"num_perm": 64, "threshold": 1.5, "shingle_size": 3}},
     r"'curate\.minhash\.threshold' must be a finite number in \[0\.01, 0\.99\]"),
    ({"on_error": "ignore"}, r"'curate\.on_error' must be one of fail, skip"),
    ({"block_size": 4}, r"'curate\.block_size' must be >= 8"),
    ({"colour": "red"}, r"'curate' has unknown key\(s\) colour"),
    ({"sources": [LEE, LEE]}, "has two sources named 'news'"),
    ({"sources": []}, r"'curate\.sources' must be a non-empty list"),
])
def test_config_errors_name_the_key(tokenizer_dir: Path, change: dict[str, Any],
                                    message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_config({**params(tokenizer_dir, [LEE]), **change})


def test_stage_entry(tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # `stages` is run from the repo root, not installed
    main = importlib.import_module("stages.curate").main
    monkeypatch.chdir(tmp_path)
    sources = [{"name": "gen", "kind": "generator", "task": "addition", "count": 40,
                "difficulty": [1, 2], "ood_count": 5, "ood_difficulty": [3, 3]}]
    Path("params.yaml").write_text(yaml.safe_dump({"curate": params(tokenizer_dir, sources)}))
    assert main([]) == 0
    assert Path("data/curated/manifest.json").is_file()
    assert "test_ood 5 documents" in capsys.readouterr().err
    cost = json.loads(Path("metrics/cost/curate.json").read_text())
    assert cost["status"] == "ok" and cost["tokens"] > 0
    Path("params.yaml").write_text(yaml.safe_dump({"curate": {"block_size": 64}}))
    assert main([]) == 2
    assert "curate: error: params.yaml: missing key 'curate.filter'" in capsys.readouterr().err
    assert json.loads(Path("metrics/cost/curate.json").read_text()) == cost  # the last good one
    assert json.loads(Path("metrics/cost/failed/curate.json").read_text())["status"] == "failed"
    Path("params.yaml").write_text(yaml.safe_dump({"curate": params(tokenizer_dir, sources)}))
    assert main([]) == 0 and not Path("metrics/cost/failed/curate.json").exists()


def test_an_encoding_error_fails_the_run_and_writes_nothing(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are encoded on worker threads: an error there still stops the run, and the
    atomic output directory is left as it was."""
    curate_module = importlib.import_module("millennial.data.curate")
    encode = curate_module.encode_records
    calls = []

    def failing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise DataError("tokenizer exploded")
        return encode(*args)

    monkeypatch.setattr(curate_module, "encode_records", failing)
    sources = [{"name": "sum", "kind": "generator", "task": "addition", "count": 400,
                "difficulty": [2, 3]}]
    with pytest.raises(DataError, match="tokenizer exploded"):
        run(tmp_path, params(tokenizer_dir, sources))
    assert len(calls) >= 3
    assert not (tmp_path / "data/curated").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []
    assert not (tmp_path / "metrics/data.json").exists()
