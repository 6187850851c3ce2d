"""Source specs and readers: every format, and every bad input named by file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from millennial.data import DataError, Record
from millennial.data.sources import (
    FILE_KINDS,
    ErrorPolicy,
    GeneratorSource,
    parse_source,
    read_source,
)
from millennial.params import ParamsError

LEE = {"name": "news", "kind": "package", "package": "gensim",
       "path": "gensim/test/test_data/lee_background.cor"}


def read(spec: dict[str, Any], on_error: str = "fail") -> tuple[list[Record], ErrorPolicy]:
    """Read a spec; local files here sit in tmp_path, outside data/sources/: untracked."""
    policy = ErrorPolicy(on_error)
    if spec.get("kind") in FILE_KINDS:
        spec = {"untracked": True, **spec}
    return list(read_source(parse_source(spec, "curate.sources[0]"), 0, policy)), policy


def jsonl(path: Path, lines: list[str]) -> dict[str, Any]:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"name": "j", "kind": "jsonl", "paths": str(path), "text_field": "text",
            "untracked": True}


def test_jsonl_text_and_task(tmp_path: Path) -> None:
    spec = jsonl(tmp_path / "a.jsonl", ['{"text": "one"}', "", '{"text": "two"}'])
    records, _ = read(spec)
    assert [(r.text, r.origin, r.kind) for r in records] == [
        ("one", f"{tmp_path}/a.jsonl:1", "text"), ("two", f"{tmp_path}/a.jsonl:3", "text")]
    (tmp_path / "t.jsonl").write_text('{"q": "2+2=", "a": 4}\n')
    task_spec = {"name": "qa", "kind": "jsonl", "paths": str(tmp_path / "t*.jsonl"),
                 "prompt_field": "q", "answer_field": "a", "task": "arith"}
    (record,), _ = read(task_spec)
    assert (record.kind, record.prompt, record.answer, record.task, record.text) == (
        "task", "2+2=", "4", "arith", "2+2= 4")


def test_text_units(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    by_line, _ = read({"name": "t", "kind": "text", "paths": str(tmp_path / "a.txt"),
                       "unit": "line"})
    assert [r.text.strip() for r in by_line] == ["first doc", "second doc"]
    by_file, _ = read({"name": "t", "kind": "text", "paths": str(tmp_path / "*.txt")})
    assert [r.text for r in by_file] == ["first doc\n\nsecond doc\n"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x", None, "z"], "other": [1, 2, 3]}), path)
    spec = {"name": "p", "kind": "parquet", "paths": str(path), "text_field": "body"}
    with pytest.raises(DataError, match=rf"{path} row 2: missing field 'body'"):
        read(spec)
    records, policy = read(spec, "skip")
    assert [r.text for r in records] == ["x", "z"]
    assert policy.skipped == {("p", "missing_field"): 1}
    with pytest.raises(DataError, match=rf"{path}: missing field 'text' \(columns: body, other\)"):
        read({**spec, "text_field": "text"})
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet at all")
    with pytest.raises(DataError, match=rf"{fake}: not a readable Parquet file"):
        read({**spec, "paths": str(fake)})


def test_package_source_reads_the_news_corpus_without_importing_gensim() -> None:
    records, _ = read({**LEE, "unit": "line"})
    assert len(records) == 300
    assert records[0].text.startswith("Hundreds of people have been forced")
    with pytest.raises(DataError, match="package 'no-such-dist' is not installed"):
        read({**LEE, "package": "no-such-dist"})
    with pytest.raises(DataError, match=r"package gensim [\d.]+ has no file 'gensim/nope.cor'"):
        read({**LEE, "path": "gensim/nope.cor"})


def test_hub_source_fails_fast_offline() -> None:
    spec = {"name": "hub", "kind": "hf", "id": "org/data", "revision": "abc123",
            "split": "train", "text_field": "text"}
    with pytest.raises(DataError, match=r"source 'hub': Hub dataset org/data@abc123 split train "
                                        r"needs the network but HF_\w+_OFFLINE=1 is set"):
        read(spec)
    with pytest.raises(ParamsError, match=r"missing key 'curate.sources\[0\].revision'"):
        parse_source({**spec, "revision": None}, "curate.sources[0]")


def test_generator_source_marks_ood() -> None:
    spec = {"name": "g", "kind": "generator", "task": "pointer_chase", "count": 30,
            "difficulty": [1, 2], "ood_count": 10, "ood_difficulty": [5, 6]}
    records, _ = read(spec)
    train = [r for r in records if not r.ood]
    ood = [r for r in records if r.ood]
    assert len(train) == 30 and len(ood) == 10
    assert {r.difficulty for r in train} <= {1, 2} and {r.difficulty for r in ood} <= {5, 6}
    assert records == read(spec)[0]  # seeded


@pytest.mark.parametrize(("lines", "message", "reason"), [
    (['{"text": "ok"}', '{"text": "broken"'], r"a.jsonl:2: malformed JSON: Expecting ',' "
     r"delimiter \(column 18\)", "malformed_json"),
    (['{"text": "ok"}', '{"body": "x"}'], r"a.jsonl:2: missing field 'text'", "missing_field"),
    (['{"text": "ok"}', '{"text": 5}'], r"a.jsonl:2: field 'text' must be a string, got int",
     "bad_field"),
    (['{"text": "ok"}', '[1, 2]'], r"a.jsonl:2: expected a JSON object, got list",
     "malformed_json"),
])
def test_bad_jsonl_lines_fail_or_are_skipped(tmp_path: Path, lines: list[str], message: str,
                                             reason: str) -> None:
    spec = jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(DataError, match=message):
        read(spec)
    records, policy = read(spec, "skip")
    assert [r.text for r in records] == ["ok"]
    assert policy.skipped == {("j", reason): 1}
    assert "a.jsonl:2" in policy.examples[0]


def test_reading_streams(tmp_path: Path) -> None:
    spec = jsonl(tmp_path / "a.jsonl", ['{"text": "first"}', "{broken"])
    stream = read_source(parse_source(spec, "s"), 0, ErrorPolicy("fail"))
    assert next(stream).text == "first"  # served before the bad line is even read
    with pytest.raises(DataError, match=r"a\.jsonl:2"):
        next(stream)


def test_invalid_utf8_names_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    spec = {"name": "j", "kind": "jsonl", "paths": str(path), "text_field": "text"}
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8 at byte offset 28"):
        read(spec)
    records, policy = read(spec, "skip")
    assert len(records) == 1 and policy.skipped == {("j", "invalid_utf8"): 1}
    whole = tmp_path / "b.txt"
    whole.write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=rf"{whole}:2: invalid UTF-8 at byte offset 14"):
        read({"name": "t", "kind": "text", "paths": str(whole)})


def test_binary_files_are_refused(tmp_path: Path) -> None:
    early = tmp_path / "early.jsonl"
    early.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match=rf"{early}: binary file \(NUL byte at byte offset 8\)"):
        read({"name": "j", "kind": "jsonl", "paths": str(early), "text_field": "text"})
    late = tmp_path / "late.txt"
    late.write_bytes(b"x" * 9000 + b"\nabc\x00def\n")
    with pytest.raises(DataError, match=rf"{late}:2: binary file \(NUL byte at byte offset 9004"):
        read({"name": "t", "kind": "text", "paths": str(late), "unit": "line"})
    with pytest.raises(DataError, match=rf"{late}: binary file \(NUL byte at byte offset 9004"):
        read({"name": "t", "kind": "text", "paths": str(late), "unit": "file"})


def test_missing_and_empty_files(tmp_path: Path) -> None:
    spec = {"name": "j", "kind": "jsonl", "text_field": "text"}
    with pytest.raises(DataError, match=rf"source 'j': file not found: {tmp_path}/none.jsonl"):
        read({**spec, "paths": str(tmp_path / "none.jsonl")})
    with pytest.raises(DataError, match=r"source 'j': no file matches .*/\*.jsonl"):
        read({**spec, "paths": str(tmp_path / "*.jsonl")})
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=rf"{tmp_path}/empty.jsonl: empty file"):
        read({**spec, "paths": [str(tmp_path / "empty.jsonl")]})


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "x", "kind": "csv"}, r"'curate.sources\[0\].kind' must be one of jsonl, text"),
    ({"name": "x", "kind": "text", "paths": "a", "colour": 1},
     r"'curate.sources\[0\]' has unknown key\(s\) colour"),
    ({"name": "x", "kind": "jsonl", "paths": "a"}, "needs text_field, or prompt_field and "),
    ({"name": "x", "kind": "jsonl", "paths": "a", "text_field": "t", "prompt_field": "p"},
     "excludes prompt_field"),
    ({"name": "x", "kind": "jsonl", "paths": "a", "prompt_field": "p"},
     r"missing key 'curate.sources\[0\].answer_field'"),
    ({"kind": "text", "paths": "a"}, r"missing key 'curate.sources\[0\].name'"),
    ({"name": "g", "kind": "generator", "task": "addition", "count": 5, "difficulty": [2, 5],
      "ood_count": 5, "ood_difficulty": [5, 7]}, r"ood_difficulty' must be harder than "
     r"difficulty \[2, 5\]: its low end must exceed 5"),
    ({"name": "g", "kind": "generator", "task": "sudoku4", "count": 5, "difficulty": [2, 13]},
     r"'curate.sources\[0\].difficulty' must lie within \[1, 12\]"),
    ({"name": "g", "kind": "generator", "task": "addition", "count": 0, "difficulty": [1, 2]},
     r"'curate.sources\[0\].count' must be >= 1"),
])
def test_spec_errors_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_source(spec, "curate.sources[0]")


def test_generator_spec_without_ood() -> None:
    spec = parse_source({"name": "g", "kind": "generator", "task": "addition", "count": 3,
                         "difficulty": [1, 2]}, "s")
    assert spec == GeneratorSource("g", "addition", 3, (1, 2), 0, None)
    assert json.dumps(spec.difficulty) == "[1, 2]"


@pytest.mark.parametrize("path", ["/etc/passwd", "../" * 40 + "etc/os-release",
                                  "data/sources/../../outside.txt", "data/sources/link.txt"])
def test_a_local_source_outside_data_sources_is_refused(
        path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "a" / "b" / "c" / "d"
    (workspace / "data/sources").mkdir(parents=True)
    (workspace / "outside.txt").write_text("not tracked\n")
    (workspace / "data/sources/link.txt").symlink_to(workspace / "outside.txt")
    monkeypatch.chdir(workspace)
    raw = {"name": "t", "kind": "text", "paths": path}
    if path.endswith("link.txt"):  # fine as written; the link is followed when listing files
        spec = parse_source(raw, "curate.sources[0]")
        with pytest.raises(DataError, match=r"source 't': .*link\.txt leads outside data/sources"):
            list(read_source(spec, 0, ErrorPolicy("fail")))
    else:
        with pytest.raises(ParamsError, match=r"params\.yaml: 'curate\.sources\[0\]\.paths' "
                                              r"names .*, outside data/sources/.*untracked"):
            parse_source(raw, "curate.sources[0]")


def test_a_local_source_in_data_sources_or_marked_untracked_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data/sources").mkdir(parents=True)
    (tmp_path / "data/sources/a.txt").write_text("tracked text\n")
    (tmp_path / "b.txt").write_text("untracked text\n")
    monkeypatch.chdir(tmp_path)
    tracked = parse_source({"name": "t", "kind": "text", "paths": "data/sources/*.txt"}, "s")
    assert [r.text for r in read_source(tracked, 0, ErrorPolicy("fail"))] == ["tracked text\n"]
    loose = parse_source({"name": "u", "kind": "text", "paths": "b.txt", "untracked": True}, "s")
    assert [r.text for r in read_source(loose, 0, ErrorPolicy("fail"))] == ["untracked text\n"]
    with pytest.raises(ParamsError, match=r"'s.untracked' must be true or false"):
        parse_source({"name": "u", "kind": "text", "paths": "b.txt", "untracked": "yes"}, "s")
