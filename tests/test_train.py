"""The training loop and the phase-1 / phase-2 / LoRA arms on a tiny random base."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from millennial.base import load_base, prepare_base
from millennial.data import Record, task_record
from millennial.data.curate import DOCUMENT_SCHEMA, PACKED_SCHEMA
from millennial.data.pack import BlockPacker, encode_records, load_tokenizer
from millennial.fingerprint import tree_sha256
from millennial.heldout import as_record
from millennial.hybrid import TRMConfig, load_trm
from millennial.hybrid.adapter import BaseIdentityError, load_hybrid, load_lora
from millennial.receipt import RECEIPT, write_receipt
from millennial.train.arms import (
    Paths,
    run_lora,
    run_phase1,
    run_phase2,
)
from millennial.train.checkpoint import (
    CheckpointError,
    Progress,
    RunDirBusy,
    load_latest,
    lock_run_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from millennial.train.config import TrainConfig
from millennial.train.data import global_batch_indices, micro_batches
from millennial.train.loop import NonFiniteError
from millennial.train.settings import LoraSettings, Phase1Settings, Phase2Config

REPO = Path(__file__).resolve().parents[1]
BLOCK = 32
TRM = TRMConfig(injection_layers=[-1], hidden_size=32, num_heads=2, num_layers=1,
                latent_steps=2, cycles=2, ffn_size=64)
TRAIN = TrainConfig(seed=0, max_steps=20, batch_size=4, warmup_steps=2,
                    checkpoint_every=10, keep_checkpoints=2, eval_examples=8)
PHASE1 = Phase1Settings(lr=2e-2)
LORA = LoraSettings(target_modules="all-linear", alpha_per_rank=2.0, dropout=0.0, lr=3e-3)
BASE_SPEC = {"source": "tiny-random", "tiny_random": {
    "architecture": "llama", "seed": 0, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
    "num_kv_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def learnable_documents(rows: int, seed: int, split: str) -> list[dict]:
    """Runs of the alphabet (next byte = previous + 1): trivially learnable. Text rows are whole
    runs; task rows ask for the next four letters of a run."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 26, (rows,), generator=generator).tolist()
    documents = []
    for index, start in enumerate(starts):
        run = "".join(LETTERS[(start + i) % 26] for i in range(24))
        if index % 2:
            record = task_record("next", f"{split}:{index}", run[:12], run[12:16], "next", 1)
        else:
            record = Record("letters", f"{split}:{index}", "text", run)
        documents.append({"source": record.source, "kind": record.kind, "task": record.task,
                          "difficulty": record.difficulty, "text": record.text,
                          "prompt": record.prompt, "answer": record.answer,
                          "content_hash": f"{seed}-{index:04d}", "split": split, "n_tokens": 0})
    return documents


def write_curated(root: Path, tokenizer_dir: Path) -> None:
    """documents/val.parquet and packed/train.parquet, encoded and packed as curate does."""
    tokenizer, info = load_tokenizer(tokenizer_dir)
    curated = root / "data/curated"
    (curated / "documents").mkdir(parents=True)
    (curated / "packed").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(learnable_documents(16, 2, "val"),
                                        schema=DOCUMENT_SCHEMA), curated / "documents/val.parquet")
    train = learnable_documents(160, 1, "train")
    records = [as_record(row) for row in train]
    packer = BlockPacker(BLOCK, info.pad_token_id)
    blocks = [block for encoded in encode_records(records, tokenizer, info.eos_token_id)
              for block in packer.add(encoded)]
    pq.write_table(pa.Table.from_pylist(
        [{"input_ids": b.ids, "loss_mask": b.mask, "loss_weight": b.weights} for b in blocks],
        schema=PACKED_SCHEMA), curated / "packed/train.parquet")
    # This test data stands where validated data would: a receipt for exactly these bytes.
    write_receipt(root / RECEIPT, tree_sha256(curated / "documents"), curated / "packed", 0)


def make_workspace(root: Path) -> Path:
    """A tiny random base and curated data to train on, under `root`."""
    prepare_base(BASE_SPEC, root / "models/base")
    write_curated(root, root / "models/base")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("train"))


def paths(root: Path, name: str) -> Paths:
    return Paths(base=root / "models/base", train_data=root / "data/curated/packed/train.parquet",
                 documents=root / "data/curated/documents", out=root / "models" / name,
                 run=root / "runs" / name, live=root / "dvclive" / name)


def test_phase1_lowers_held_out_loss_and_leaves_the_base_untouched(workspace: Path) -> None:
    metrics = run_phase1(paths(workspace, "phase1"), TRM, PHASE1, TRAIN)
    # The tiny random base's 0.02-scale tied embeddings cap how sharp its logits can get, so
    # a real drop here is tenths of a nat; evaluation is deterministic, so any drop is signal.
    assert metrics["val_task_loss_after"] < metrics["val_task_loss_before"] - 0.2
    assert metrics["val_text_loss_after"] < metrics["val_text_loss_before"]
    by_source = metrics["val_loss_by_source"]
    assert set(by_source["before"]) == set(by_source["after"]) == {"letters", "next"}
    assert metrics["val_task_loss_after"] == by_source["after"]["next"]
    assert metrics["tokens"] == 20 * 4 * BLOCK
    assert metrics["lr_groups"] == {"trm": 2e-2, "trm_out": 2e-2}
    base, _ = load_base(workspace / "models/base")
    load_trm(base, workspace / "models/phase1")  # strict: the base hash still matches
    assert (workspace / "dvclive/phase1/metrics.json").is_file()


def test_order_is_a_pure_function_of_seed_and_step_and_shards_cover_the_batch() -> None:
    first = global_batch_indices(10, 4, step=3, seed=5)
    assert first == global_batch_indices(10, 4, step=3, seed=5)
    assert first != global_batch_indices(10, 4, step=3, seed=6)
    epoch = [i for step in range(5) for i in global_batch_indices(10, 2, step, 0)]
    assert sorted(epoch) == list(range(10))
    shards = [micro_batches(list(range(8)), 2, world=2, rank=r) for r in range(2)]
    assert shards == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


def _stage_workspace(root: Path, workspace: Path, train: dict) -> Path:
    (root / "models").mkdir(parents=True)
    os.symlink(workspace / "models/base", root / "models/base")
    os.symlink(workspace / "data", root / "data")
    params = {"trm": TRM.to_dict(), "train": {**TRAIN.__dict__, **train},
              "phase1": {"lr": PHASE1.lr}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _stage(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "stages.train_phase1"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_stage_refuses_data_changed_after_validation(tmp_path: Path, workspace: Path) -> None:
    root = _stage_workspace(tmp_path / "tampered", workspace, {"max_steps": 1})
    os.unlink(root / "data")
    shutil.copytree(workspace / "data", root / "data")
    packed = root / "data/curated/packed/train.parquet"
    table = pq.read_table(packed)
    pq.write_table(table.slice(0, table.num_rows // 2), packed)
    process = _stage(root)
    output = process.communicate()[0]
    assert process.returncode == 2
    assert "receipt.json: 'packed_sha256' does not match data/curated/packed" in output
    assert "Traceback" not in output and not (root / "runs").exists()


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path, workspace: Path) -> None:
    settings = {"max_steps": 12, "checkpoint_every": 3, "keep_checkpoints": 2}
    straight = _stage_workspace(tmp_path / "straight", workspace, settings)
    killed = _stage_workspace(tmp_path / "killed", workspace, settings)
    process = _stage(killed)
    checkpoint = killed / "runs/train_phase1/checkpoints/step-000006"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "models/phase1").exists()
    resumed = _stage(killed)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    done = _stage(straight)
    assert done.wait() == 0, done.communicate()[0]
    weights = [load_file(root / "models/phase1/trm.safetensors") for root in (straight, killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    losses = [(root / "dvclive/train_phase1/plots/metrics/loss.tsv").read_text()
              for root in (straight, killed)]
    assert losses[0] == losses[1]  # one row per step: none lost, none repeated


def test_resumed_logs_are_the_checkpoints_even_if_the_kill_corrupted_them(
        tmp_path: Path, workspace: Path) -> None:
    target = replace(paths(workspace, "logs"), run=tmp_path / "run", live=tmp_path / "live")
    config = replace(TRAIN, max_steps=4, checkpoint_every=2)
    run_phase1(target, TRM, PHASE1, config)
    straight = (target.live / "plots/metrics/loss.tsv").read_text()
    assert len(straight.splitlines()) == 1 + 4
    # A kill after step 3 and while dvclive rewrote its summary: the step-4 checkpoint is
    # missing (never written), step 3 is logged, and metrics.json is half a file.
    shutil.rmtree(tmp_path / "run/checkpoints/step-000004")
    half_written = tmp_path / "run/checkpoints/.step-000004.tmp-x1y2"
    half_written.mkdir()
    (target.live / "metrics.json").write_text('{"loss": ')
    assert run_phase1(target, TRM, PHASE1, config)["resumed_from_step"] == 2
    assert not half_written.exists()
    assert (target.live / "plots/metrics/loss.tsv").read_text() == straight
    assert json.loads((target.live / "metrics.json").read_text())["step"] == 3


def test_changed_params_train_afresh_instead_of_resuming(workspace: Path) -> None:
    config = replace(TRAIN, max_steps=2, checkpoint_every=1)
    target = paths(workspace, "identity")
    assert run_phase1(target, TRM, PHASE1, config)["resumed_from_step"] == 0
    assert run_phase1(target, TRM, PHASE1, config)["resumed_from_step"] == 2  # nothing to do
    deeper = run_phase1(target, replace(TRM, cycles=3), PHASE1, config)  # same shapes, other run
    assert deeper["resumed_from_step"] == 0 and deeper["steps"] == 2


def test_non_finite_loss_stops_with_a_clear_error(tmp_path: Path, workspace: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = replace(paths(workspace, "nonfinite"), run=tmp_path / "run", out=tmp_path / "out")
    run_phase1(target, TRM, PHASE1, replace(TRAIN, max_steps=2, checkpoint_every=1))
    saved = (target.out / "trm.safetensors").read_bytes()
    # Warmup gives step 0 a zero learning rate; step 1's absurd one makes the TRM weights huge,
    # so step 2's forward pass is no longer finite, as a diverging run's would be.
    diverging = replace(TRAIN, max_steps=4, warmup_steps=2, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match="step 2: loss is nan; last good checkpoint kept"):
        run_phase1(target, TRM, Phase1Settings(lr=1e38), diverging)
    assert [p.name for p in sorted(target.run.glob("checkpoints/step-*"))] == [
        "step-000001", "step-000002"]
    # An update that leaves a weight non-finite (injected: the optimizer's step at step 1
    # writes an inf) is caught right after it, so no checkpoint ever holds it.
    step = torch.optim.AdamW.step

    def overflowing(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        if self.state and next(iter(self.state.values()))["step"] == 2:  # the second update
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    with pytest.raises(NonFiniteError, match="step 1: weights are not finite after the update"):
        run_phase1(target, TRM, Phase1Settings(lr=1e-3), diverging)
    kept = sorted(target.run.glob("checkpoints/step-*"))
    assert [p.name for p in kept] == ["step-000001"]
    assert all(torch.isfinite(t).all()
               for t in load_file(kept[0] / "trainable.safetensors").values())
    assert (target.out / "trm.safetensors").read_bytes() == saved


def test_a_non_finite_state_is_never_saved(tmp_path: Path) -> None:
    weights = {"up": torch.tensor([1.0, float("inf")])}
    with pytest.raises(CheckpointError, match="not saved: the weights are not finite"):
        save_checkpoint(tmp_path, Progress(step=3), weights, {}, {}, [rng_state()], keep=2)
    assert list(tmp_path.iterdir()) == []


class _Payload:
    def __reduce__(self):  # what a planted pickle does on load: run a command
        return (os.system, ("touch pwned",))


def test_a_full_disk_names_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"step-000002: could not write the checkpoint "
                                              r"\(\[enforce fail.*full or read-only"):
        save_checkpoint(tmp_path, Progress(step=2), {"up": torch.ones(1)}, {}, {},
                        [rng_state()], keep=2)
    assert list(tmp_path.iterdir()) == []  # no half checkpoint


def test_a_checkpoint_file_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    weights = {"up": torch.ones(2)}
    path = save_checkpoint(tmp_path / "ck", Progress(step=1), weights, {"state": {}},
                           {"last_epoch": 1}, [rng_state()], keep=2)
    torch.save({"last_epoch": _Payload()}, path / "scheduler.pt")
    with pytest.raises(CheckpointError, match=r"scheduler\.pt: not a plain state file, refused"):
        load_latest(tmp_path / "ck", rank=0)
    assert not (tmp_path / "pwned").exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    np.random.seed(7)
    path = save_checkpoint(tmp_path, Progress(step=1), {"up": torch.ones(1)}, {}, {},
                           [rng_state()], keep=1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_latest(tmp_path, rank=0).rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert path.name == "step-000001"


def test_two_process_ddp_matches_one_process(tmp_path: Path, workspace: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from millennial.hybrid import TRMConfig\n"
        "from millennial.train.arms import Paths, run_phase1\n"
        "from millennial.train.config import TrainConfig\n"
        "from millennial.train.settings import Phase1Settings\n"
        "root, out, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])\n"
        f"trm = TRMConfig.from_json({TRM.to_json()!r})\n"
        "train = TrainConfig(seed=0, max_steps=4, batch_size=batch, warmup_steps=1,\n"
        "                    checkpoint_every=10, eval_examples=2)\n"
        "curated = root / 'data/curated'\n"
        "run_phase1(Paths(root / 'models/base', curated / 'packed/train.parquet',\n"
        "                 curated / 'documents', out, out.with_suffix('.run')), trm,\n"
        "           Phase1Settings(lr=3e-3), train)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    for command in (
        [*torchrun, str(script), str(workspace), str(tmp_path / "ddp"), "2"],
        [sys.executable, str(script), str(workspace), str(tmp_path / "single"), "4"],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    ddp = load_file(tmp_path / "ddp/trm.safetensors")
    single = load_file(tmp_path / "single/trm.safetensors")
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5)


def test_phase2_changes_the_base_with_its_own_learning_rates(workspace: Path) -> None:
    first = paths(workspace, "phase1-for-2")
    run_phase1(first, TRM, PHASE1, replace(TRAIN, max_steps=3))
    phase2 = Phase2Config(enabled=True, max_steps=3, lr_base=1e-3, lr_trm=2e-3,
                          trainable=("layers.1",))
    metrics = run_phase2(paths(workspace, "phase2"), first.out, phase2, TRAIN)
    assert metrics["lr_groups"] == {"base": 1e-3, "trm": 2e-3}
    assert metrics["steps"] == 3
    hybrid = load_hybrid(workspace / "models/phase2")
    base, _ = load_base(workspace / "models/base")
    changed = {n for n, p in base.named_parameters()
               if not torch.equal(p, hybrid.get_parameter(n))}
    assert changed and all("layers.1." in name for name in changed)


def test_phase2_params_are_checked() -> None:
    from millennial.params import ParamsError

    good = {"enabled": True, "max_steps": 2, "lr_base": 1e-5, "lr_trm": 1e-4, "trainable": "all"}
    assert Phase2Config.from_params(good).trainable == ("all",)
    with pytest.raises(ParamsError, match="trainable"):
        Phase2Config.from_params({**good, "trainable": 3})
    with pytest.raises(ParamsError, match=r"'phase2' has unknown key\(s\) typo"):
        Phase2Config.from_params({**good, "typo": 1})
    with pytest.raises(ParamsError, match=r"'phase2\.max_steps' must be an integer, got 2\.7"):
        Phase2Config.from_params({**good, "max_steps": 2.7})
    with pytest.raises(ParamsError, match=r"'phase2\.lr_trm' must be a finite number > 0"):
        Phase2Config.from_params({**good, "lr_trm": True})


def test_lora_baseline_matches_the_trm_size(workspace: Path) -> None:
    settings = replace(LORA, b_lr_multiplier=4.0)
    metrics = run_lora(paths(workspace, "lora"), TRM, settings, replace(TRAIN, max_steps=3))
    assert metrics["lr_groups"] == {"lora": 3e-3, "lora_out": 1.2e-2}  # LoRA+: B at 4x
    target = metrics["trm_trainable_params"]
    assert abs(metrics["trainable_params"] - target) <= 0.1 * target
    assert (workspace / "models/lora/adapter_config.json").is_file()
    base, _ = load_base(workspace / "models/base")
    load_lora(base, workspace / "models/lora")  # its own base: loads
    other, _ = load_base(workspace / "models/base")
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(BaseIdentityError, match=r"base\.json: trained on base .* hash to"):
        load_lora(other, workspace / "models/lora")


def test_lora_baseline_is_reproducible(tmp_path: Path, workspace: Path) -> None:
    settings = LORA
    runs = [replace(paths(workspace, "lora-seeded"), out=tmp_path / name,
                    run=tmp_path / f"{name}.run") for name in ("first", "second")]
    torch.manual_seed(123)  # whatever ran before must not matter
    run_lora(runs[0], TRM, settings, replace(TRAIN, max_steps=2))
    run_lora(runs[1], TRM, settings, replace(TRAIN, max_steps=2))
    first, second = (load_file(r.out / "adapter_model.safetensors") for r in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    # "all-linear" resolves to a set: in hash order, adapter_config.json (a DVC output) would
    # differ from process to process although the adapter is the same.
    targets = json.loads((runs[0].out / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) > 1 and targets == sorted(targets)


def test_train_config_errors_name_the_key() -> None:
    from millennial.params import ParamsError

    with pytest.raises(ParamsError, match=r"train\.max_grad_norm"):
        TrainConfig.from_params({"max_grad_norm": "fast"})
    with pytest.raises(ParamsError, match=r"train\.max_grad_norm must be a finite number"):
        TrainConfig.from_params({"max_grad_norm": float("nan")})
    with pytest.raises(ParamsError, match=r"train\.ema_decay must be in \[0, 1\)"):
        TrainConfig.from_params({"ema_decay": 1.0})
    with pytest.raises(ParamsError, match="unknown key"):
        TrainConfig.from_params({"lr": 3e-3})  # each arm has its own learning rate
    with pytest.raises(ParamsError, match="max_steps"):
        TrainConfig.from_params({"max_steps": 0})
    with pytest.raises(ParamsError, match="unknown key"):
        TrainConfig.from_params({"epochs": 3})
    with pytest.raises(ParamsError, match="grad_accum"):
        TrainConfig.from_params({"deep_supervision_steps": 2, "grad_accum": 2})


def test_disabled_phase2_stage_writes_a_marker_and_zero_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.syspath_prepend(str(REPO))
    from stages import train_phase2

    phase2 = {"enabled": False, "max_steps": 2, "lr_base": 1e-5, "lr_trm": 1e-4,
              "trainable": "all"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"phase2": phase2, "train": {}}))
    monkeypatch.chdir(tmp_path)
    assert train_phase2.main([]) == 0
    assert [p.name for p in (tmp_path / "models/phase2").iterdir()] == ["skipped.json"]
    cost = json.loads((tmp_path / "metrics/cost/train_phase2.json").read_text())
    assert (cost["status"], cost["usd"], cost["wall_seconds"], cost["flops"]) == (
        "skipped", 0.0, 0.0, 0.0)


def test_one_trainer_per_run_directory(tmp_path: Path) -> None:
    busy = rf"run: another trainer is running here \(pid {os.getpid()}\)"
    with lock_run_dir(tmp_path / "run"), pytest.raises(RunDirBusy, match=busy), \
            lock_run_dir(tmp_path / "run"):
        pass
    with lock_run_dir(tmp_path / "run"):  # released when the first trainer ends
        pass


def test_a_stage_dies_with_its_parent(tmp_path: Path) -> None:
    """As when `dvc` is killed: the stage must not train on as an orphan."""
    ready = tmp_path / "watching"
    stage = f"import pathlib, time, stages; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"child = subprocess.Popen([sys.executable, '-c', {stage!r}])\n"
         "print(child.pid, flush=True)\ntime.sleep(120)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not ready.exists():  # the child has imported `stages`: it watches its parent
        assert time.monotonic() < deadline, "the stage did not start within 60 s"
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child):
        assert time.monotonic() < deadline, "the stage outlived its parent by 30 s"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not yet reaped) is gone too
        return stat.read().split()[2] != "Z"


KILL_DVC_YAML = """\
stages:
  train_phase1:
    cmd: python -m stages.train_phase1
    deps: [data/curated/packed, params.yaml]
    outs: [models/phase1/trm.safetensors, models/phase1/trm_config.json]
    metrics:
      - metrics/train_phase1.json:
          cache: false
          persist: true
"""


def test_killing_dvc_stops_its_stage_and_a_rerun_completes_alone(
        tmp_path: Path, workspace: Path) -> None:
    """The orphan a killed `dvc repro` used to leave trained on beside the rerun (both writing
    one run directory; DVC then committed a truncated loss.tsv): now it dies with dvc."""
    steps = 300  # a tiny model trains ~30 steps a second: time for the watcher to act
    root = _stage_workspace(tmp_path / "dvc", workspace,
                            {"max_steps": steps, "checkpoint_every": 3, "keep_checkpoints": 2})
    os.unlink(root / "data")
    shutil.copytree(workspace / "data", root / "data")
    (root / "dvc.yaml").write_text(KILL_DVC_YAML)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    parent = subprocess.Popen([*dvc, "repro"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoint = root / "runs/train_phase1/checkpoints/step-000006"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert parent.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)
    parent.kill()  # dvc alone, as a lost terminal or an OOM kill would
    parent.wait()
    deadline = time.monotonic() + 20
    while _processes_in(root):  # the stage, orphaned
        assert time.monotonic() < deadline, "the stage outlived dvc by 20 s"
        time.sleep(0.1)
    with (root / "runs/train_phase1/trainer.lock").open("a") as lock:  # and its lock is free
        while True:  # (a dying process's files close a moment after its /proc entry goes)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the stage's lock outlived dvc by 20 s"
                time.sleep(0.1)
    assert not (root / "models/phase1/trm.safetensors").exists()  # it did not finish alone
    rerun = subprocess.run([*dvc, "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from" in rerun.stdout + rerun.stderr
    rows = (root / "dvclive/train_phase1/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + steps  # header + one row per step: nothing lost, nothing twice
    assert json.loads((root / "metrics/train_phase1.json").read_text())["steps"] == steps


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found
