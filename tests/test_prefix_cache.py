"""The frozen-prefix cache: phase 1 with it trains exactly what phase 1 without it trains.

Bitwise on CPU: the same losses, the same gradients, the same saved adapter; across epochs (a
row stored in one micro-batch is replayed in another) and across runs (a study's next variant
reads the store the previous one wrote). The planner's saving is the FLOPs a replay really
skips, and the cache is refused where it cannot pay off.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from test_train import write_curated

from millennial.base import prepare_base
from millennial.cost.planner import GIB, frozen_prefix_flops_per_token, model_shape
from millennial.hybrid import TRMConfig, freeze_base, inject
from millennial.train.arms import Paths, run_phase1
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData
from millennial.train.loop import weighted_loss
from millennial.train.prefix import (
    PrefixCache,
    PrefixCacheError,
    PrefixKey,
    decide,
    replayed_rows,
)
from millennial.train.settings import Phase1Settings, PrefixCacheSettings

ROWS, BATCH, STEPS = 12, 4, 9  # three epochs of three steps
TRM = TRMConfig(injection_layers=[2, -1], hidden_size=16, num_heads=2, num_layers=1,
                latent_steps=2, cycles=2, ffn_size=32)
TRAIN = TrainConfig(seed=0, max_steps=STEPS, batch_size=BATCH, warmup_steps=1,
                    checkpoint_every=100, eval_examples=4)
BASE_SPEC = {"source": "tiny-random", "tiny_random": {
    "architecture": "llama", "seed": 0, "hidden_size": 32, "num_layers": 4, "num_heads": 4,
    "num_kv_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-layer base and ROWS packed blocks (three epochs in STEPS steps)."""
    root = tmp_path_factory.mktemp("prefix")
    prepare_base(BASE_SPEC, root / "models/base")
    write_curated(root, root / "models/base")
    packed = root / "data/curated/packed/train.parquet"
    pq.write_table(pq.read_table(packed).slice(0, ROWS), packed)
    return root


def phase1(root: Path, name: str, cache: PrefixCacheSettings, lr: float = 2e-2
           ) -> tuple[dict, dict[str, torch.Tensor], list[float]]:
    """Train phase 1 into models/<name>: (metrics, saved adapter tensors, per-step losses)."""
    paths = Paths(base=root / "models/base", train_data=root / "data/curated/packed/train.parquet",
                  documents=root / "data/curated/documents", out=root / "models" / name,
                  run=root / "runs" / name, live=root / "dvclive" / name)
    metrics = run_phase1(paths, TRM, Phase1Settings(lr=lr, prefix_cache=cache), TRAIN)
    rows = (paths.live / "plots/metrics/loss.tsv").read_text().splitlines()[1:]  # dvclive's log
    losses = [float(row.split("\t")[-1]) for row in rows]
    return metrics, load_file(paths.out / "trm.safetensors"), losses


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phase1_with_the_cache_is_bitwise_phase1_without_it(workspace: Path) -> None:
    store = workspace / "store"
    plain, plain_weights, plain_losses = phase1(workspace, "plain",
                                                PrefixCacheSettings(mode="off"))
    cached, cached_weights, cached_losses = phase1(
        workspace, "cached", PrefixCacheSettings(mode="auto", dir=str(store)))
    assert plain["prefix_cache"]["used"] is False
    report = cached["prefix_cache"]
    assert report["used"] is True and report["layer"] == 2
    tokens = (STEPS - STEPS // 3) * BATCH * 32  # epochs 2 and 3 replay every micro-batch
    assert report["replayed_tokens"] == report["expected_replayed_tokens"] == tokens
    assert cached_losses == plain_losses and len(plain_losses) == STEPS
    assert same_tensors(cached_weights, plain_weights)
    assert cached["val_task_loss_after"] == plain["val_task_loss_after"]
    assert cached["flops"] == pytest.approx(plain["flops"] - tokens
                                            * report["flops_saved_per_token"])

    # A study's next variant (another lr) reads the store the first run filled, from step 0.
    again, again_weights, again_losses = phase1(
        workspace, "again", PrefixCacheSettings(mode="auto", dir=str(store)), lr=5e-3)
    assert again["prefix_cache"]["replayed_tokens"] == STEPS * BATCH * 32
    _, reference_weights, reference_losses = phase1(
        workspace, "reference", PrefixCacheSettings(mode="off"), lr=5e-3)
    assert again_losses == reference_losses
    assert same_tensors(again_weights, reference_weights)


def test_a_replayed_micro_batch_gives_the_same_loss_and_gradients(workspace: Path) -> None:
    from millennial.base import load_base

    model, _ = load_base(workspace / "models/base")
    torch.manual_seed(0)
    inject(model, TRM)
    freeze_base(model)
    for parameter in model.parameters():  # up starts at zero: give the blocks a real gradient
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.2)
    model.train()
    data = PackedData.from_parquet(workspace / "data/curated/packed/train.parquet")
    key = PrefixKey("base", "data", 2, data.block_size, BATCH, 32, "cpu", "no")
    cache = PrefixCache(model, workspace / "grad-store", key, len(data))

    def loss_and_grads(rows: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        batch = data.rows(rows)
        with cache.serving(rows):
            loss = weighted_loss(model, batch["input_ids"], batch["loss_weight"])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    first, second = [0, 1, 2, 3], [4, 5, 6, 7]
    computed = [loss_and_grads(first), loss_and_grads(second)]  # both stored on the way
    assert cache.replayed_rows == 0 and cache.captured_rows == 8
    mixed = [2, 5, 0, 7]  # stored from two micro-batches, replayed as one
    replayed_loss, replayed_grads = loss_and_grads(mixed)
    assert cache.replayed_rows == 4
    model_rows = data.rows(mixed)
    model.zero_grad()
    plain_loss = weighted_loss(model, model_rows["input_ids"], model_rows["loss_weight"])
    plain_loss.backward()
    assert torch.equal(replayed_loss, plain_loss.detach())
    plain_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(replayed_grads, plain_grads, strict=True))
    assert any(g.abs().sum() > 0 for g in plain_grads)
    assert computed[0][0] != computed[1][0]


def test_the_planners_saving_is_what_a_replay_skips(workspace: Path) -> None:
    """FlopCounterMode on a training step, without and with a replay: the difference is the
    planner's frozen-prefix FLOPs (attention as countable matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from millennial.base import load_base

    model, _ = load_base(workspace / "models/base")
    inject(model, TRM)
    freeze_base(model)
    model.train()
    data = PackedData.from_parquet(workspace / "data/curated/packed/train.parquet")
    key = PrefixKey("base", "data", 2, data.block_size, BATCH, 32, "cpu", "no")
    cache = PrefixCache(model, workspace / "flop-store", key, len(data))
    rows = [0, 1, 2, 3]
    batch = data.rows(rows)
    counted = []
    for _ in range(2):  # the first stores, the second replays
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter,
                  cache.serving(rows)):
                weighted_loss(model, batch["input_ids"], batch["loss_weight"]).backward()
        counted.append(counter.get_total_flops())
    tokens = len(rows) * data.block_size
    saved = frozen_prefix_flops_per_token(model_shape(model.config), data.block_size, 2)
    assert counted[0] - counted[1] == pytest.approx(saved * tokens, rel=1e-9)


def test_replayed_rows_counts_what_a_store_would_serve() -> None:
    order = [[0, 1], [2, 3], [1, 0], [3, 4]]
    assert replayed_rows(order, set(), 1) == 2  # [1, 0] only: 4 is new in the last one
    assert replayed_rows(order, {4}, 1) == 4
    assert replayed_rows(order, set(), 3) == 2 * 2 + 2 * 2 + 2 * 3 + 2 * 2  # deep supervision


def test_the_cache_is_refused_where_it_cannot_pay_off(workspace: Path) -> None:
    from millennial.base import load_base

    model, _ = load_base(workspace / "models/base")
    inject(model, TRM)
    freeze_base(model)
    data = PackedData.from_parquet(workspace / "data/curated/packed/train.parquet")
    accelerator = Accelerator(cpu=True)
    tiny = PrefixCacheSettings(mode="on", max_gib=1e-9, dir=str(workspace / "refused"))
    with pytest.raises(PrefixCacheError, match=r"params.yaml: 'phase1.prefix_cache.mode' is on, "
                                               r"but the store would take .* GiB, over the"):
        decide(model, model.trm_config, tiny, data, TRAIN, accelerator, "b", workspace)
    auto = decide(model, model.trm_config, replace(tiny, mode="auto"), data, TRAIN, accelerator,
                  "b", workspace)
    assert auto.cache is None and "over the" in auto.reason
    slow_disk = PrefixCacheSettings(mode="on", read_gib_per_s=1e-9, dir=str(workspace / "x"))
    with pytest.raises(PrefixCacheError, match=r"is not faster than recomputing layers 0\.\.2"):
        decide(model, model.trm_config, slow_disk, data, TRAIN, accelerator, "b", workspace)
    one_pass = replace(TRAIN, max_steps=ROWS // BATCH)  # every block read once: nothing to reuse
    auto = decide(model, model.trm_config, PrefixCacheSettings(dir=str(workspace / "once")),
                  data, one_pass, accelerator, "b", workspace)
    assert auto.cache is None and "reads every block once" in auto.reason
    assert auto.plan is not None and auto.plan.storage_bytes == ROWS * 32 * 32 * 4
    assert auto.plan.saved_flops_per_epoch == auto.plan.flops_saved_per_token * ROWS * 32
    on = decide(model, model.trm_config, PrefixCacheSettings(mode="on", dir=str(workspace / "on")),
                data, one_pass, accelerator, "b", workspace)
    assert on.cache is not None and on.expected_replayed_tokens == 0  # fills it for later runs
    assert auto.plan.storage_bytes / GIB < PrefixCacheSettings().max_gib


def test_a_base_with_dropout_below_the_blocks_is_not_cached(workspace: Path) -> None:
    from millennial.base import load_base

    model, _ = load_base(workspace / "models/base")
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    inject(model, TRM)
    freeze_base(model)
    data = PackedData.from_parquet(workspace / "data/curated/packed/train.parquet")
    settings = PrefixCacheSettings(mode="on", dir=str(workspace / "dropout"))
    with pytest.raises(PrefixCacheError, match="not deterministic in training mode"):
        decide(model, model.trm_config, settings, data, TRAIN, Accelerator(cpu=True), "b",
               workspace)


def test_prefix_cache_params_are_validated() -> None:
    from millennial.params import ParamsError

    settings = Phase1Settings.from_params(
        {"lr": 1e-3, "prefix_cache": {"mode": "on", "max_gib": 2, "dir": "/tmp/x",
                                      "read_gib_per_s": 4}})
    assert settings.prefix_cache == PrefixCacheSettings("on", 2.0, "/tmp/x", 4.0)
    assert "prefix_cache" not in settings.trajectory()  # the cache never changes the weights
    assert Phase1Settings.from_params({"lr": 1e-3}).prefix_cache == PrefixCacheSettings()
    for bad, message in (({"mode": "sometimes"}, "phase1.prefix_cache.mode' must be one of"),
                         ({"max_gib": -1}, "phase1.prefix_cache.max_gib' must be a finite"),
                         ({"dir": ""}, "phase1.prefix_cache.dir' must be a non-empty string"),
                         ({"size": 3}, "'phase1.prefix_cache' has unknown key")):
        with pytest.raises(ParamsError, match=message):
            Phase1Settings.from_params({"lr": 1e-3, "prefix_cache": bad}, "p.yaml")


def test_the_plan_prices_the_cache_per_epoch_and_refuses_it_where_reading_is_slower() -> None:
    from millennial.cost.hardware import get_device
    from millennial.cost.planner import plan
    from millennial.cost.presets import PRESETS

    shape = model_shape(PRESETS["smollm2-135m"])
    trm = TRMConfig(injection_layers=[10, 15], hidden_size=128, num_heads=4, num_layers=2,
                    latent_steps=4, cycles=2, ffn_size=384)
    common = dict(phase="phase1", trm=trm, tokens=4e6, seq_len=128, precision="fp32", mfu=0.3)
    cpu = plan(shape, device=get_device("A100-80GB"), dataset_tokens=1e6, **common)
    cache = cpu.prefix_cache
    assert cache is not None and cache["layer"] == 10
    assert cache["storage_bytes"] == 1e6 * 576 * 4
    assert cache["saved_flops_per_epoch"] == cache["flops_saved_per_token"] * 1e6
    assert cache["flops_saved_per_token"] == frozen_prefix_flops_per_token(shape, 128, 10)
    # a 135M base on an A100 recomputes 11 layers faster than 2 GiB/s reads 2.3 kB back
    assert not cache["pays_off"] and "is not faster than recomputing" in cache["reason"]
    fast_disk = plan(shape, device=get_device("A100-80GB"), dataset_tokens=1e6,
                     prefix_read_bytes_per_s=1e12, **common).prefix_cache
    assert fast_disk is not None and fast_disk["pays_off"]
    assert plan(shape, device=get_device("A100-80GB"), **{**common, "phase": "lora",
                                                          "lora_rank": 4}).prefix_cache is None


def test_plan_cli_prints_the_cache_and_refuses_bad_numbers(capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    from millennial.cli import main

    args = ["plan", "--base", "llama-2-7b", "--phase", "phase1", "--trm-hidden-size", "512",
            "--trm-layers", "2", "--trm-ffn-size", "1536", "--trm-heads", "8",
            "--injection-layers", "8,16", "--tokens", "1B", "--dataset-tokens", "250M"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(phase 1: layers 0..8 computed once per training token, 4 epochs of 250 M" in out
    assert "per epoch after the first" in out and "verdict" in out
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--prefix-max-gib", "0"])
    assert exit_info.value.code == 2
