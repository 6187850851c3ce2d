"""What each arm trains and how: learning-rate groups, weight average, depth curriculum, the
pretrained core, LLaMA Pro, the mixture-weighted loss, and each arm's settings."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_causal_lm
from safetensors.torch import load_file
from test_train import LORA, PHASE1, TRAIN, TRM, make_workspace, paths

from millennial.base import load_base
from millennial.hybrid import TRMConfig
from millennial.hybrid.expansion import load_expansion
from millennial.params import ParamsError
from millennial.train.arms import run_llama_pro, run_phase1
from millennial.train.loop import weighted_loss
from millennial.train.settings import (
    LlamaProSettings,
    LoraSettings,
    Phase1Settings,
    Phase2Config,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("arms"))


def test_weighted_loss_scores_only_weighted_tokens_by_their_weight() -> None:
    model = tiny_causal_lm("llama")
    ids = torch.randint(1, 97, (2, 10))
    ones = torch.ones(2, 10)
    plain = model(input_ids=ids, labels=ids).loss * 2 * 9  # HF's mean over the 18 targets
    torch.testing.assert_close(weighted_loss(model, ids, ones), plain)
    half = ones.clone()
    half[:, 5:] = 0.0
    labels = ids.masked_fill(half == 0, -100)
    kept = model(input_ids=ids, labels=labels).loss * 2 * 4
    torch.testing.assert_close(weighted_loss(model, ids, half), kept)
    torch.testing.assert_close(weighted_loss(model, ids, 3 * half), 3 * kept)


def test_the_output_projection_gets_its_own_learning_rate(workspace: Path) -> None:
    settings = Phase1Settings(lr=1e-2, out_lr_multiplier=10.0)
    metrics = run_phase1(paths(workspace, "groups"), TRM, settings, replace(TRAIN, max_steps=2))
    assert metrics["lr_groups"] == {"trm": 1e-2, "trm_out": 1e-1}


def test_the_weight_average_is_what_is_saved_and_resumes_exactly(tmp_path: Path,
                                                                 workspace: Path) -> None:
    config = replace(TRAIN, max_steps=4, checkpoint_every=2, ema_decay=0.5)
    averaged = replace(paths(workspace, "ema"), out=tmp_path / "ema", run=tmp_path / "ema.run")
    plain = replace(averaged, out=tmp_path / "plain", run=tmp_path / "plain.run")
    run_phase1(averaged, TRM, PHASE1, config)
    run_phase1(plain, TRM, PHASE1, replace(config, ema_decay=0.0))
    ema, last = (load_file(p.out / "trm.safetensors") for p in (averaged, plain))
    assert any(not torch.equal(ema[n], last[n]) for n in ema)  # not the last weights
    assert (averaged.run / "checkpoints/step-000004/average.safetensors").is_file()
    first = {n: t.clone() for n, t in ema.items()}
    shutil.rmtree(averaged.run / "checkpoints/step-000004")
    assert run_phase1(averaged, TRM, PHASE1, config)["resumed_from_step"] == 2
    again = load_file(averaged.out / "trm.safetensors")
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_depth_curriculum_ramps_cycles_and_costs_less(workspace: Path) -> None:
    settings = Phase1Settings(lr=2e-2, depth_warmup_steps=4)
    assert [settings.cycles_at(step, 3) for step in range(6)] == [1, 1, 2, 2, 3, 3]
    deep = replace(TRM, cycles=3)
    config = replace(TRAIN, max_steps=6)
    ramped = run_phase1(paths(workspace, "ramp"), deep, settings, config)
    straight = run_phase1(paths(workspace, "straight"), deep, PHASE1, config)
    assert ramped["flops_per_token"] < straight["flops_per_token"]
    assert ramped["val_task_loss_after"] != straight["val_task_loss_after"]


def test_a_pretrained_core_trains_its_zeroed_projections_faster(workspace: Path) -> None:
    pretrained = TRMConfig(injection_layers=[-1], hidden_size=None, num_heads=None,
                           ffn_size=None, num_layers=1, latent_steps=1, cycles=1,
                           core_init="pretrained")
    settings = Phase1Settings(lr=1e-3, out_lr_multiplier=5.0)
    metrics = run_phase1(paths(workspace, "pretrained"), pretrained, settings,
                         replace(TRAIN, max_steps=6))
    assert metrics["lr_groups"] == {"trm": 1e-3, "trm_out": 5e-3}
    assert metrics["val_task_loss_after"] < metrics["val_task_loss_before"]
    base, _ = load_base(workspace / "models/base")
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    assert metrics["trainable_params"] == per_layer  # one copied layer at the base's width


def test_llama_pro_trains_interleaved_copies_only(workspace: Path) -> None:
    settings = LlamaProSettings(blocks=None, lr=3e-3, out_lr_multiplier=2.0)
    target = paths(workspace, "llama_pro")
    metrics = run_llama_pro(target, TRM, settings, replace(TRAIN, max_steps=4))
    base, _ = load_base(workspace / "models/base")
    per_block = sum(p.numel() for p in base.model.layers[0].parameters())
    assert metrics["blocks"] == 1 and metrics["hosts"] == [1]  # the top of 2 layers
    assert metrics["trainable_params"] == per_block
    assert metrics["lr_groups"] == {"blocks": 3e-3, "blocks_out": 6e-3}
    assert metrics["val_task_loss_after"] < metrics["val_task_loss_before"]
    model = load_expansion(base, target.out)
    assert model.config.num_hidden_layers == 3
    with pytest.raises(ParamsError, match=r"'llama_pro\.blocks'.*must divide"):
        run_llama_pro(target, TRM, replace(settings, blocks=3), replace(TRAIN, max_steps=1))


@pytest.mark.parametrize("make,raw,message", [
    (Phase1Settings.from_params, {"lr": float("nan")}, r"'phase1\.lr' must be a finite number"),
    (Phase1Settings.from_params, {"lr": 1e-3, "warmup": 2}, r"'phase1' has unknown key\(s\)"),
    (Phase1Settings.from_params, {"lr": 1e-3, "depth_warmup_steps": -1},
     r"'phase1\.depth_warmup_steps' must be >= 0"),
    (Phase1Settings.from_params, {"lr": 1e-3, "out_lr_multiplier": 0},
     r"'phase1\.out_lr_multiplier' must be a finite number > 0"),
    (Phase1Settings.from_params, None, r"'phase1' must be a mapping"),
    (LoraSettings.from_params, {**LORA.__dict__, "lr": -1.0}, r"'lora\.lr' must be a finite"),
    (LoraSettings.from_params, {**LORA.__dict__, "dropout": 1.0}, r"'lora\.dropout' must be"),
    (LoraSettings.from_params, {**LORA.__dict__, "b_lr_multiplier": "x"},
     r"'lora\.b_lr_multiplier' must be a finite"),
    (LlamaProSettings.from_params, {"blocks": 0, "lr": 1e-3}, r"'llama_pro\.blocks' must be"),
    (LlamaProSettings.from_params, {"blocks": "many", "lr": 1e-3},
     r"'llama_pro\.blocks' must be an integer"),
    (LlamaProSettings.from_params, {"lr": 1e-3, "block": 1}, r"'llama_pro' has unknown key"),
    (Phase2Config.from_params, {"enabled": "yes", "max_steps": 1, "lr_base": 1e-5,
                                "lr_trm": 1e-4}, r"'phase2\.enabled' must be true or false"),
])
def test_bad_arm_settings_name_the_key(make: Any, raw: Any, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        make(raw)


def test_arm_settings_defaults() -> None:
    assert LlamaProSettings.from_params({"blocks": "auto", "lr": 2e-4}).blocks is None
    assert LlamaProSettings.from_params({"blocks": 2, "lr": 2e-4}).blocks == 2
    assert Phase1Settings.from_params({"lr": 1e-3}) == Phase1Settings(1e-3, 1.0, 0)
    lora = LoraSettings.from_params({**LORA.__dict__, "target_modules": ["q_proj", "v_proj"]})
    assert lora.target_modules == ("q_proj", "v_proj") and lora.b_lr_multiplier == 1.0
