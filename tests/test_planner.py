"""The planner against ground truth: real models' parameter tensors, published counts, and
`torch.utils.flop_counter.FlopCounterMode` on tiny random models of every supported family."""

import json
import math
import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from millennial.cli import main
from millennial.cost.cli import parse_layers, parse_quantity
from millennial.cost.hardware import GPUS, get_device
from millennial.cost.planner import (
    Calibration,
    Trainable,
    base_parameters,
    default_mfu,
    forward_flops_per_token,
    lora_parameters,
    memory_per_gpu,
    mfu_from_calibration,
    min_gpus,
    model_shape,
    plan,
    project,
    tokens_for_gpu_hours,
    training_flops_per_token,
    trm_parameters,
)
from millennial.cost.presets import PRESETS, PUBLISHED_PARAMETERS, preset_config
from millennial.hybrid import TRMConfig, freeze_base, inject, trm_parameter_count
from millennial.hybrid.expansion import expand, freeze_all_but_expansion

TINY = {
    "llama": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "llama-biased-tied": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=1, sliding_window=None),
    "qwen2": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "granite": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2),
    "olmo2": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "phi3": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=0),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=64, n_inner=96),
}
SEQ = 16
TRM = TRMConfig(injection_layers=[1, 3], hidden_size=16, num_heads=2, num_layers=2,
                latent_steps=2, cycles=3, grad_cycles=1, ffn_size=24)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops under a dispatch mode run ~5x faster without intra-op thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str):
    family = name.split("-")[0]
    config = AutoConfig.for_model(family, vocab_size=101, bos_token_id=0, eos_token_id=0,
                                  **TINY[name])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return config, model.train()


def measured_flops_per_token(model, backward: bool = True) -> float:
    """FLOPs of one step on a (2, SEQ) batch; attention via countable matmuls (eager / math)."""
    ids = torch.randint(1, 101, (2, SEQ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            loss = model(input_ids=ids, labels=ids).loss
            if backward:
                loss.backward()
    return counter.get_total_flops() / ids.numel()


def decoder_layers(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_published_counts(name: str) -> None:
    from_fields = model_shape(PRESETS[name])
    from_transformers = model_shape(preset_config(name))
    assert from_fields == from_transformers
    assert base_parameters(from_fields)["total"] == PUBLISHED_PARAMETERS[name]


def test_preset_is_a_transformers_config() -> None:
    config = preset_config("llama-2-70b")
    assert type(config).__name__ == "LlamaConfig"
    assert config.num_key_value_heads == 8 and config.intermediate_size == 28672


@pytest.mark.parametrize("name", sorted(TINY))
def test_parameter_count_equals_the_model(name: str) -> None:
    config, model = tiny(name)
    assert base_parameters(model_shape(config))["total"] == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.parametrize("share", [False, True])
def test_trm_count_matches_the_hybrid_contract(share: bool) -> None:
    trm = TRMConfig(injection_layers=[0, 2, -1], hidden_size=16, num_heads=2, num_layers=3,
                    ffn_size=40, share_across_layers=share)
    for name in ("llama", "gpt2"):
        config, _ = tiny(name)
        assert trm_parameters(model_shape(config), trm)["total"] == trm_parameter_count(
            config, trm
        )
    big = TRMConfig(injection_layers=list(range(4, 80, 5)), hidden_size=4096, num_heads=32,
                    num_layers=4, ffn_size=12288, share_across_layers=share)
    assert trm_parameters(model_shape(PRESETS["llama-2-70b"]), big)["total"] == (
        trm_parameter_count(preset_config("llama-2-70b"), big)
    )


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("name", sorted(TINY))
def test_flops_forward_and_full_fine_tune(name: str) -> None:
    config, model = tiny(name)
    shape = model_shape(config)
    forward = forward_flops_per_token(shape, SEQ).model
    assert forward == pytest.approx(measured_flops_per_token(model, backward=False), rel=0.02)
    full = training_flops_per_token(shape, SEQ, Trainable.for_phase("scratch", None)).model
    assert full == pytest.approx(measured_flops_per_token(model), rel=0.02)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_flops_llama_pro_blocks(name: str) -> None:
    """Copied blocks train inside a frozen stack: forward of every layer, activation gradient
    from the lowest new block up, weight gradient of the new blocks only."""
    config, model = tiny(name)
    expansion = expand(model, 2)
    freeze_all_but_expansion(model)
    planned = training_flops_per_token(model_shape(model.config), SEQ,
                                       Trainable(new_layers=expansion.positions))
    assert planned.model == pytest.approx(measured_flops_per_token(model), rel=0.02)
    assert planned.base_weight_grad == pytest.approx(
        2 * 2 * model_shape(config).layer_macs, rel=1e-9)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_flops_frozen_base_with_top_half_trainable(name: str) -> None:
    """No backward below the lowest trainable layer; activation gradient only above it."""
    config, model = tiny(name)
    model.requires_grad_(False)
    for layer in decoder_layers(model)[2:]:
        layer.requires_grad_(True)
    shape = model_shape(config)
    planned = training_flops_per_token(shape, SEQ, Trainable(base_layers_from=2))
    assert planned.model == pytest.approx(measured_flops_per_token(model), rel=0.02)
    full = training_flops_per_token(shape, SEQ, Trainable.for_phase("scratch", None))
    assert planned.base_activation_grad < full.base_activation_grad
    assert planned.base_weight_grad == pytest.approx(full.base_weight_grad / 2, rel=0.1)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_flops_phase1_hybrid(name: str, checkpointing: bool) -> None:
    config, model = tiny(name)
    inject(model, TRM)
    freeze_base(model)
    if checkpointing:
        model.activation_checkpointing_enable()
    planned = training_flops_per_token(
        model_shape(config), SEQ, Trainable.for_phase("phase1", TRM),
        grad_checkpointing=checkpointing,
    )
    assert planned.executed == pytest.approx(measured_flops_per_token(model), rel=0.02)
    assert (planned.recompute > 0) == checkpointing


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_lora_parameters_and_flops(name: str) -> None:
    peft = pytest.importorskip("peft")
    targets = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"], "gpt2": ["c_attn", "c_proj", "c_fc"]}[name]
    config, model = tiny(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    shape = model_shape(config)
    assert lora_parameters(shape, 4) == sum(p.numel() for p in lora.parameters()
                                            if p.requires_grad)
    planned = training_flops_per_token(shape, SEQ, Trainable.for_phase("lora", None, 4))
    assert planned.model == pytest.approx(measured_flops_per_token(lora), rel=0.02)


def test_freezing_saves_a_third_not_most_of_the_compute() -> None:
    """Reference s3: frozen base with gradient to the bottom ~4N vs 6N for full training."""
    shape = model_shape(PRESETS["llama-2-7b"])
    n = base_parameters(shape)["total"]
    at_bottom = TRMConfig(injection_layers=[0], hidden_size=8, num_heads=2, num_layers=1,
                          ffn_size=8, latent_steps=1, cycles=1)
    frozen = training_flops_per_token(shape, 1, Trainable.for_phase("phase1", at_bottom))
    full = training_flops_per_token(shape, 1, Trainable.for_phase("scratch", None))
    # Below 4N and 6N by the embedding table (a lookup, not a matmul) and, for the frozen
    # base, by layer 0, which hosts the block and so needs no backward.
    assert full.model / n == pytest.approx(6.0, abs=0.15)
    assert frozen.model / n == pytest.approx(4.0, abs=0.15)
    assert frozen.model / full.model == pytest.approx(2 / 3, abs=0.02)


def test_trm_recursion_multiplies_its_flops() -> None:
    shape = model_shape(PRESETS["llama-2-7b"])
    once = TRMConfig(hidden_size=256, num_heads=4, ffn_size=768, cycles=1, latent_steps=1)
    deep = TRMConfig(hidden_size=256, num_heads=4, ffn_size=768, cycles=3, latent_steps=6)
    a = training_flops_per_token(shape, 1, Trainable.for_phase("phase1", once))
    b = training_flops_per_token(shape, 1, Trainable.for_phase("phase1", deep))
    projections = 2 * 2 * 4096 * 256
    assert (b.trm_forward - projections) == pytest.approx(
        (a.trm_forward - projections) * deep.total_calls / once.total_calls
    )


# --------------------------------------------------------------------------- memory, time, money


def test_memory_of_an_85b_full_fine_tune() -> None:
    memory = memory_per_gpu(frozen_params=0, trainable_params=85_000_000_000,
                            activation_bytes_per_token=0, micro_batch_tokens=1, gpus=1,
                            sharding="fsdp")
    # GiB: 16 bytes per trainable parameter, 4 of AdamW's temporary, 1 GiB of CUDA context
    assert memory["trainable_weights_grads_adamw"] == pytest.approx(85e9 * 16 / 2**30)
    assert memory["adamw_temporaries"] == pytest.approx(85e9 * 4 / 2**30)
    assert memory["cuda_context"] == 1.0 and memory["communication_buffers"] == 0
    assert memory["total"] == pytest.approx(85e9 * 20 / 2**30 + 1)
    sizes = dict(frozen_params=0, trainable_params=85_000_000_000, activation_bytes_per_token=0,
                 micro_batch_tokens=1, memory_gib=80)
    # 85e9 x 20 B / g + 1 GiB <= 80 GiB  ->  g >= 20.04
    assert min_gpus(sharding="fsdp", **sizes) == 21
    assert min_gpus(sharding="ddp", **sizes) is None


def test_memory_frozen_weights_and_sharding() -> None:
    sizes = dict(frozen_params=70_000_000_000, trainable_params=1_000_000_000,
                 activation_bytes_per_token=1e6, micro_batch_tokens=4096, gpus=8,
                 layer_params=800_000_000)
    ddp = memory_per_gpu(sharding="ddp", **sizes)
    fsdp = memory_per_gpu(sharding="fsdp", **sizes)
    assert ddp["frozen_weights"] == pytest.approx(140e9 / 2**30)
    assert ddp["trainable_weights_grads_adamw"] == pytest.approx(16e9 / 2**30)
    assert ddp["communication_buffers"] == pytest.approx(2e9 / 2**30)  # bf16 gradient buckets
    assert fsdp["frozen_weights"] == pytest.approx(17.5e9 / 2**30)
    # two unsharded layers (bf16) and one layer's gradient
    assert fsdp["communication_buffers"] == pytest.approx((2 * 0.8e9 * 2 + 0.8e9 * 2) / 2**30)
    assert fsdp["activations"] == ddp["activations"] == pytest.approx(4.096e9 / 2**30)
    del sizes["gpus"]
    fewest = min_gpus(memory_gib=80, sharding="fsdp", **sizes)
    assert fewest is not None
    assert memory_per_gpu(gpus=fewest, sharding="fsdp", **sizes)["total"] <= 80
    assert memory_per_gpu(gpus=fewest - 1, sharding="fsdp", **sizes)["total"] > 80


def test_cpu_plans_have_no_cuda_context() -> None:
    cpu = memory_per_gpu(frozen_params=10, trainable_params=10, activation_bytes_per_token=0,
                         micro_batch_tokens=1, gpus=1, sharding="ddp", device_is_gpu=False)
    assert cpu["cuda_context"] == 0


def test_time_money_energy_by_hand() -> None:
    a100 = GPUS["A100-80GB"]
    one_gpu_hour = a100.peak_flops * 0.4 * 3600
    result = project(10 * one_gpu_hour, a100, 4, 0.4, usd_per_gpu_hour=2.0,
                     grid_kg_co2e_per_kwh=0.5, pue=1.5)
    assert result["gpu_hours"] == pytest.approx(10)
    assert result["wall_hours"] == pytest.approx(2.5)
    assert result["usd"] == pytest.approx(20)
    assert result["energy_kwh"] == pytest.approx(10 * 400 * 0.8 / 1000 * 1.5)
    assert result["co2e_kg"] == pytest.approx(result["energy_kwh"] * 0.5)
    assert tokens_for_gpu_hours(10, 1e9, a100, 0.4) * 1e9 == pytest.approx(10 * one_gpu_hour)
    assert (default_mfu(1), default_mfu(8)) == (0.30, 0.40)


def test_plan_scratch_defaults_to_chinchilla_and_budget_inverts() -> None:
    shape = model_shape(PRESETS["llama-2-7b"])
    scratch = plan(shape, phase="scratch", device=GPUS["H100"], gpus=64)
    assert scratch.tokens == 20 * scratch.trainable_params
    assert scratch.mfu == 0.40
    again = plan(shape, phase="scratch", device=GPUS["H100"], gpus=64,
                 budget_gpu_hours=scratch.gpu_hours)
    assert again.tokens == pytest.approx(scratch.tokens)
    with pytest.raises(ValueError, match="token count"):
        plan(shape, phase="lora", lora_rank=8, device=GPUS["H100"])


def _calibration_record(path, **changes) -> None:
    from dataclasses import replace as swap

    from millennial.cost.record import CostRecord, Planned

    plan_fields = dict(tokens=1, flops=1.0, mfu=0.3, mfu_source="x", wall_seconds=1.0,
                       peak_memory_bytes=None, memory_breakdown={}, basis="x",
                       precision="bf16", sharding="fsdp")
    plan_fields.update(changes.pop("planned", {}))
    record = swap(CostRecord.skipped("train_phase1", ""), status="ok", reason=None, mfu=0.12,
                  device_kind="A100-80GB", device_count=8, planned=Planned(**plan_fields))
    swap(record, **changes).write(path)


def test_calibration_knows_what_it_transfers(tmp_path) -> None:
    good = tmp_path / "train.json"
    _calibration_record(good)
    same = dict(device="A100-80GB", gpus=8, precision="bf16", sharding="fsdp")
    assert mfu_from_calibration(good, **same) == Calibration(0.12, [])
    cpu = tmp_path / "cpu.json"
    _calibration_record(cpu, device_kind="cpu", device_count=1, planned={"precision": "fp32",
                                                                           "sharding": "ddp"})
    mismatches = mfu_from_calibration(cpu, **same).mismatches
    assert mismatches == ["device cpu vs the plan's A100-80GB", "1 device(s) vs the plan's 8",
                          "precision fp32 vs the plan's bf16", "sharding ddp vs the plan's fsdp"]
    failed = tmp_path / "failed.json"
    _calibration_record(failed, status="failed", error="RuntimeError: x")
    with pytest.raises(ValueError, match=r"failed\.json: a failed run cannot calibrate"):
        mfu_from_calibration(failed, **same)
    bad = tmp_path / "bad.json"
    _calibration_record(bad, mfu=None)
    with pytest.raises(ValueError, match=r"bad\.json: key 'mfu'"):
        mfu_from_calibration(bad, **same)


def test_cli_refuses_a_calibration_from_elsewhere_unless_told(tmp_path, capsys) -> None:
    cpu = tmp_path / "cpu.json"
    _calibration_record(cpu, device_kind="cpu", device_count=1, planned={"precision": "fp32"})
    base = ["plan", "--base", "llama-2-7b", "--tokens", "1e9", "--calibrate", str(cpu), "--json"]
    assert main(base) == 2
    assert "device cpu vs the plan's A100-80GB" in capsys.readouterr().err
    assert main([*base, "--allow-calibration-mismatch"]) == 0
    out = capsys.readouterr()
    assert "warning:" in out.err and json.loads(out.out)["mfu"] == 0.12


def test_a_phase1_record_calibrates_a_phase1_plan_per_component(tmp_path, capsys) -> None:
    from millennial.cost.hardware import GPUS as DEVICES
    from millennial.cost.planner import Trainable, component_timings, training_flops_per_token
    from millennial.hybrid.config import TRMConfig

    shape, seq, batch = model_shape(PRESETS["llama-2-7b"]), 2048, 2
    flops = training_flops_per_token(shape, seq, Trainable.for_phase("phase1", TRMConfig()))
    base_flops = flops.executed - flops.trm_forward - flops.trm_backward
    tokens = batch * seq
    # the base's matmuls take 2 s at the probed rate, its layers 0.5 s more, the TRM 1 s
    timings = component_timings(flops, micro_batch_tokens=tokens, layers=shape.num_layers,
                                micro_batch_seconds=3.5, steps_timed=4, trm_seconds=1.0,
                                matmul_flops_per_s=base_flops * tokens / 2.0)
    record = tmp_path / "train_phase1.json"
    _calibration_record(record, components=timings)
    same = ["--base", "llama-2-7b", "--gpu", "A100-80GB", "--gpus", "8", "--tokens", "1e9",
            "--calibrate", str(record), "--json", "--seq-len", str(seq)]
    assert main(["plan", *same, "--micro-batch-size", str(batch)]) == 0
    planned = json.loads(capsys.readouterr().out)
    # its own shape and micro-batch come back at the measured 3.5 s per micro-batch
    peak = DEVICES["A100-80GB"].peak_flops
    assert planned["mfu"] == pytest.approx(flops.executed * tokens / 3.5 / peak)
    assert planned["mfu_source"].startswith(f"per-component rates calibrated from {record}")
    # a micro-batch twice the size pays the layers' fixed cost once: a higher MFU
    assert main(["plan", *same, "--micro-batch-size", str(2 * batch)]) == 0
    bigger = json.loads(capsys.readouterr().out)["mfu"]
    assert bigger == pytest.approx(flops.executed * 2 * tokens / (2 * 3.0 + 0.5) / peak)
    # other phases keep the record's one MFU
    assert main(["plan", *same, "--phase", "lora", "--lora-rank", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["mfu"] == 0.12


def test_a_record_from_before_components_still_reads(tmp_path) -> None:
    from millennial.cost.record import CostRecord

    path = tmp_path / "old.json"
    _calibration_record(path)
    data = json.loads(path.read_text())
    del data["components"]
    assert CostRecord.from_json(data, path).components is None
    data["carried"] = None
    with pytest.raises(ValueError, match=r"old\.json: not a cost record of this version: "
                                         r"unknown carried"):
        CostRecord.from_json(data, path)
    del data["planned"], data["carried"]
    with pytest.raises(ValueError, match="missing planned"):
        CostRecord.from_json(data, path)


@pytest.mark.parametrize(("args", "message"), [
    (["--usd-per-gpu-hour", "-1"], "--usd-per-gpu-hour"),
    (["--pue", "0.5"], "--pue"),
    (["--grid-kg-per-kwh", "-0.1"], "--grid-kg-per-kwh"),
    (["--mfu", "0"], "--mfu"),
    (["--mfu", "nan"], "--mfu"),
    (["--gpus", "0"], "--gpus"),
    (["--tokens", "1e400"], "--tokens"),
])
def test_cli_refuses_bad_numbers(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--base", "llama-2-7b", "--tokens", "1e9", *args]
             if "--tokens" not in args else ["plan", "--base", "llama-2-7b", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_partial_and_unknown_configs(tmp_path, capsys) -> None:
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    assert main(["plan", "--base", str(partial), "--tokens", "1e9"]) == 2
    err = capsys.readouterr().err
    assert "partial.json: missing num_hidden_layers" in err and "defaults" in err
    unknown = tmp_path / "config.json"
    unknown.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 4096}))
    assert main(["plan", "--base", str(tmp_path), "--tokens", "1e9"]) == 2
    assert "'mixtral' is not supported" in capsys.readouterr().err


# --------------------------------------------------------------------------- CLI


def run_json(capsys, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_phase1_json_has_every_field(capsys) -> None:
    out = run_json(capsys, "--base", "llama-2-70b", "--phase", "phase1", "--trm-hidden-size",
                   "4096", "--trm-layers", "4", "--trm-ffn-size", "12288", "--trm-heads", "32",
                   "--injection-layers", "4:80:5", "--tokens", "2.5B", "--gpus", "16",
                   "--grad-checkpointing")
    for key in ("base_params", "trm_params", "trainable_params", "flops_per_token",
                "flops_per_token_breakdown", "tokens", "total_flops", "gpu", "gpus", "mfu",
                "gpu_hours", "wall_hours", "usd", "energy_kwh", "co2e_kg", "memory_per_gpu_gib",
                "memory_breakdown_gib", "activation_bytes_per_token", "precision",
                "fits", "min_gpus", "assumptions"):
        assert key in out, key
    assert out["trm_params"] == 15_033_106_432
    assert out["base_params"] == PUBLISHED_PARAMETERS["llama-2-70b"]
    assert out["tokens"] == 2.5e9 and out["mfu"] == 0.40
    assert out["gpu_hours"] == pytest.approx(
        out["total_flops"] / (312e12 * 0.40) / 3600
    )


def test_cli_other_phases(capsys) -> None:
    lora = run_json(capsys, "--base", "llama-2-7b", "--phase", "lora", "--lora-rank", "16",
                    "--tokens", "1e9")
    assert lora["lora_params"] == lora["trainable_params"] == 32 * 16 * (
        4 * (4096 + 4096) + 3 * (4096 + 11008)
    )
    scratch = run_json(capsys, "--base", "smollm2-135m", "--phase", "scratch", "--gpu", "H200",
                       "--gpus", "8", "--sharding", "ddp")
    assert scratch["trainable_params"] == PUBLISHED_PARAMETERS["smollm2-135m"]
    assert scratch["fits"] and scratch["min_gpus"] == 1
    phase2 = run_json(capsys, "--base", "llama-2-13b", "--phase", "phase2", "--tokens", "1e8",
                      "--usd-per-gpu-hour", "3")
    assert phase2["trainable_params"] == phase2["base_params"] + phase2["trm_params"]
    assert phase2["usd"] == pytest.approx(phase2["gpu_hours"] * 3)


def test_cli_reads_a_config_json_and_params_yaml(tmp_path, capsys) -> None:
    config, model = tiny("qwen2")
    config.save_pretrained(tmp_path / "model")
    (tmp_path / "params.yaml").write_text(
        "trm:\n  injection_layers: [1, -1]\n  hidden_size: 16\n  num_heads: 2\n"
        "  num_layers: 1\n  ffn_size: 32\n"
    )
    out = run_json(capsys, "--base", str(tmp_path / "model"), "--params",
                   str(tmp_path / "params.yaml"), "--tokens", "1e6", "--seq-len", "16",
                   "--gpu", "L40S")
    assert out["base_params"] == sum(p.numel() for p in model.parameters())
    assert out["trm"]["hidden_size"] == 16 and out["trm"]["num_layers"] == 1
    assert out["trm_params"] == trm_parameter_count(config, TRMConfig(
        injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=1, ffn_size=32))


def test_cli_errors_name_the_problem(capsys, tmp_path) -> None:
    assert main(["plan", "--base", "nope-7b", "--tokens", "1e9"]) == 2
    assert "nope-7b" in capsys.readouterr().err
    assert main(["plan", "--base", "llama-2-7b", "--trm-hidden-size", "30", "--trm-heads", "4",
                 "--tokens", "1e9"]) == 2
    assert "hidden_size" in capsys.readouterr().err
    assert main(["plan", "--base", "llama-2-7b", "--calibrate", str(tmp_path / "x.json"),
                 "--tokens", "1e9"]) == 2
    assert "x.json" in capsys.readouterr().err


def test_cli_table_is_readable(capsys) -> None:
    assert main(["plan", "--base", "llama-2-7b", "--phase", "phase1", "--tokens", "1e9"]) == 0
    text = capsys.readouterr().out
    for word in ("parameters", "FLOPs per token", "GPU-hours", "memory per GPU", "fits"):
        assert word in text


def test_quantities_and_layers_parse() -> None:
    assert parse_quantity("300B") == 3e11 and parse_quantity("1.5e9") == 1.5e9
    assert parse_quantity("2T") == 2e12 and parse_quantity("8,064") == 8064
    assert parse_layers("4:80:5") == tuple(range(4, 80, 5))
    assert parse_layers("1,-1") == (1, -1)
    assert math.isclose(get_device("A100-40GB").peak_flops, 312e12)


@pytest.mark.parametrize("family", ["mixtral", "gpt_neox", "falcon", "gemma2"])
def test_families_the_planner_does_not_model_are_refused_by_name(family: str) -> None:
    config = AutoConfig.for_model(family, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4)
    with pytest.raises(ValueError, match=f"model_type '{family}' is not supported; supported: "
                                         "llama, mistral, qwen2, qwen3, granite, olmo2, phi3"):
        model_shape(config)


def test_hardware_table_has_variants_at_their_own_peaks() -> None:
    from millennial.cost.hardware import gpu_kind_from_nvml_name

    assert GPUS["H100-PCIe"].peak_flops < GPUS["H100-NVL"].peak_flops < GPUS["H100"].peak_flops
    assert GPUS["A100-80GB-PCIe"].tdp_w < GPUS["A100-80GB"].tdp_w
    for name in ("H800", "B200", "MI300X", "H200-NVL", "A100-40GB-PCIe"):
        assert name in GPUS
    assert GPUS["MI300X"].memory_gib == 192.0 and GPUS["B200"].peak_flops == 2.25e15
    names = {"NVIDIA A100-SXM4-80GB": "A100-80GB", "NVIDIA A100 80GB PCIe": "A100-80GB-PCIe",
             "NVIDIA A100-PCIE-40GB": "A100-40GB-PCIe", "NVIDIA H100 PCIe": "H100-PCIe",
             "NVIDIA H100 NVL": "H100-NVL", "NVIDIA H100 80GB HBM3": "H100",
             "NVIDIA H800": "H800", "NVIDIA H200": "H200", "NVIDIA H200 NVL": "H200-NVL",
             "NVIDIA B200": "B200", "NVIDIA L40S": "L40S", "Tesla V100": None}
    for nvml, key in names.items():
        assert gpu_kind_from_nvml_name(nvml) == key, nvml
