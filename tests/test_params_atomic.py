import os
import subprocess
import sys

import pytest

from millennial.atomic import atomic_dir, write_json, write_text
from millennial.params import ParamsError, load_params, section


def test_missing_file_and_broken_yaml_name_the_file_and_line(tmp_path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("base:\n  source: [unclosed\n  dtype: float32\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+ invalid YAML"):
        load_params(broken)
    broken.write_text("- a list\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(broken)


def test_section_names_the_missing_or_wrong_key() -> None:
    params = {"base": {"tiny_random": {"seed": 0}, "dtype": "float32"}}
    assert section(params, "base.tiny_random") == {"seed": 0}
    with pytest.raises(ParamsError, match=r"missing key 'base\.hub'"):
        section(params, "base.hub")
    with pytest.raises(ParamsError, match=r"'base\.dtype' must be a mapping"):
        section(params, "base.dtype")


def test_atomic_dir_replaces_whole_or_leaves_the_old_output(tmp_path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("stage failed midway")
    assert (target / "a.txt").read_text() == "first"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_writes_leave_no_temp_files(tmp_path) -> None:
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    write_text(tmp_path / "m.json", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_outputs_are_readable_like_ordinary_files(tmp_path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        write_text(tmp / "f.txt", "x")
    assert (tmp_path / "out").stat().st_mode & 0o055 == 0o055
    assert (tmp_path / "out" / "f.txt").stat().st_mode & 0o044 == 0o044


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_writer_are_swept(tmp_path) -> None:
    dead = _dead_pid()
    left = [tmp_path / f".curated.tmp-{dead}-x1", tmp_path / f".curated.old-{dead}"]
    for path in left:
        path.mkdir()
        (path / "half.parquet").write_text("half")
    (tmp_path / f".m.json.tmp-{dead}-x2").write_text("{")
    live = tmp_path / f".curated.tmp-{os.getpid()}-x3"  # a writer still at work: not touched
    live.mkdir()
    with atomic_dir(tmp_path / "curated") as tmp:
        (tmp / "a").write_text("a")
    write_json(tmp_path / "m.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["curated", "m.json", live.name])


def test_atomic_dir_can_keep_what_other_tools_put_beside_an_artifact(tmp_path) -> None:
    target = tmp_path / "phase1"
    with atomic_dir(target) as tmp:
        (tmp / "trm.safetensors").write_text("old weights")
    (target / "README.md").write_text("model card")
    (target / ".gitignore").write_text("/trm.safetensors\n")
    with atomic_dir(target, keep_others=True) as tmp:
        (tmp / "trm.safetensors").write_text("new weights")
    assert (target / "trm.safetensors").read_text() == "new weights"
    assert (target / "README.md").read_text() == "model card"
    assert (target / ".gitignore").read_text() == "/trm.safetensors\n"
    with atomic_dir(target) as tmp:  # the default: the new output only
        (tmp / "trm.safetensors").write_text("newer")
    assert sorted(p.name for p in target.iterdir()) == ["trm.safetensors"]
