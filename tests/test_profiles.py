from pathlib import Path

import pytest
import yaml

from millennial.cli import main
from millennial.hybrid import TRMConfig
from millennial.profiles import overlay
from millennial.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_overlay_merges_mappings_and_replaces_everything_else() -> None:
    params = {"a": {"x": 1, "y": [1, 2]}, "b": 3}
    assert overlay(params, {"a": {"y": [9]}, "c": 4}) == {"a": {"x": 1, "y": [9]}, "b": 3, "c": 4}
    assert params == {"a": {"x": 1, "y": [1, 2]}, "b": 3}


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=str)
def test_profiles_only_name_keys_params_yaml_has(tmp_path: Path, profile: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    assert main(["profile", str(profile), "--params", str(params)]) == 0
    merged = yaml.safe_load(params.read_text())
    original = yaml.safe_load((REPO / "params.yaml").read_text())
    assert merged != original
    assert set(merged) == set(original)
    for section, values in merged.items():
        if isinstance(values, dict):
            assert set(values) == set(original[section]), section
    TRMConfig.from_dict(merged["trm"])
    TrainConfig.from_params(merged["train"])
