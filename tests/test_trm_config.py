import pytest

from millennial.hybrid import TRMConfig


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"injection_layers": []}, "injection_layers"),
        ({"injection_layers": 3}, "injection_layers"),
        ({"injection_layers": [1.5]}, "injection_layers"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_heads": -1}, "num_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"latent_steps": 0}, "latent_steps"),
        ({"cycles": 0}, "cycles"),
        ({"grad_cycles": 0}, "grad_cycles"),
        ({"cycles": 2, "grad_cycles": 3}, "grad_cycles"),
        ({"ffn_size": 0}, "ffn_size"),
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size"),
        ({"hidden_size": 12, "num_heads": 4}, "hidden_size / num_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"share_across_layers": "yes"}, "share_across_layers"),
    ],
)
def test_invalid_values_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TRMConfig(**changes)


def test_json_round_trip(tmp_path) -> None:
    config = TRMConfig(injection_layers=[2, -1], hidden_size=64, num_heads=2, cycles=4,
                       grad_cycles=2, dropout=0.1, share_across_layers=True)
    assert TRMConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "trm.json")
    assert TRMConfig.load(tmp_path / "trm.json") == config


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="hidden"):
        TRMConfig.from_dict({"hidden": 64})


def test_resolve_layers_handles_negative_range_and_duplicates() -> None:
    assert TRMConfig(injection_layers=[-1, 0, 5]).resolve_layers(8) == (0, 5, 7)
    with pytest.raises(ValueError, match="out of range"):
        TRMConfig(injection_layers=[8]).resolve_layers(8)
    with pytest.raises(ValueError, match="out of range"):
        TRMConfig(injection_layers=[-9]).resolve_layers(8)
    with pytest.raises(ValueError, match="twice"):
        TRMConfig(injection_layers=[7, -1]).resolve_layers(8)


def test_call_counts_follow_the_recursion() -> None:
    config = TRMConfig(latent_steps=6, cycles=3, grad_cycles=1)
    assert (config.total_calls, config.grad_calls) == (21, 7)
