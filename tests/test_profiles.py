from pathlib import Path

import yaml

from millennial.cli import main
from millennial.profiles import overlay

REPO = Path(__file__).resolve().parents[1]


def test_overlay_merges_mappings_and_replaces_everything_else() -> None:
    params = {"a": {"x": 1, "y": [1, 2]}, "b": 3}
    assert overlay(params, {"a": {"y": [9]}, "c": 4}) == {"a": {"x": 1, "y": [9]}, "b": 3, "c": 4}
    assert params == {"a": {"x": 1, "y": [1, 2]}, "b": 3}


def test_tiny_profile_only_names_keys_params_yaml_has(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    assert main(["profile", str(REPO / "profiles/tiny.yaml"), "--params", str(params)]) == 0
    merged = yaml.safe_load(params.read_text())
    original = yaml.safe_load((REPO / "params.yaml").read_text())
    assert merged["base"]["source"] == "tiny-random" and merged["train"]["max_steps"] == 6
    assert set(merged) == set(original)
    for section, values in merged.items():
        if isinstance(values, dict):
            assert set(values) == set(original[section]), section
