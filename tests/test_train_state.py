"""Trainable state under FSDP2 (two gloo processes on CPU) and checkpoint ownership of run dirs.

accelerate enables FSDP only on GPUs, so the sharding here is torch's own `fully_shard`, the API
accelerate's FSDP2 plugin calls; what is tested is our gathering, saving and loading of state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from millennial.base import load_base, prepare_base
from millennial.hybrid import TRMConfig, freeze_base, inject, load_trm
from millennial.train.checkpoint import claim_run_dir

REPO = Path(__file__).resolve().parents[1]
TRM = TRMConfig(injection_layers=[-1], hidden_size=32, num_heads=2, num_layers=1,
                latent_steps=2, cycles=2, ffn_size=64)
BASE_SPEC = {"source": "tiny-random", "tiny_random": {
    "architecture": "llama", "seed": 0, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
    "num_kv_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}}

SHARDED = f"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from millennial.hybrid import TRMConfig, freeze_base, inject, save_trm
from millennial.base import load_base
from millennial.train.state import gather_trainable, gather_training_state, load_training_state

dist.init_process_group("gloo")
rank = dist.get_rank()
base_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
model, provenance = load_base(base_dir)
torch.manual_seed(0)
inject(model, TRMConfig.from_json({TRM.to_json()!r}))
freeze_base(model)
initial = {{n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
gathered = gather_trainable(model)
if rank == 0:
    assert gathered.keys() == initial.keys()
    assert all(torch.equal(gathered[n], initial[n]) for n in initial)
else:
    assert gathered == {{}}  # only the main process receives whole tensors
ids = torch.arange(64).reshape(4, 16)[2 * rank: 2 * rank + 2]  # this process's half
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
weights, state = gather_training_state(model, optimizer)
if rank == 0:
    torch.save((weights, state), out / "state.pt")
    save_trm(model, out / "adapter", tensors=weights,
             base_sha256s=provenance["state_sha256_by_dtype"])
dist.barrier()
weights, state = torch.load(out / "state.pt", weights_only=False)
with torch.no_grad():
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.zero_()
load_training_state(model, optimizer, weights, state)
again, state_again = gather_training_state(model, optimizer)
weights, state = torch.load(out / "state.pt", weights_only=False)  # loading consumed `state`
if rank == 0:
    assert all(torch.equal(again[n], weights[n]) for n in weights)
    for name, moments in state["state"].items():
        assert torch.equal(state_again["state"][name]["exp_avg"], moments["exp_avg"])
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("state")
    prepare_base(BASE_SPEC, root / "base")
    return root / "base"


def test_fsdp_sharded_state_gathers_saves_and_reloads(tmp_path: Path, base_dir: Path) -> None:
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(base_dir), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    # One unsharded process on both halves of the batch takes the same step.
    model, _ = load_base(base_dir)
    torch.manual_seed(0)
    inject(model, TRM)
    freeze_base(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.arange(64).reshape(4, 16)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    saved = load_file(tmp_path / "adapter/trm.safetensors")
    expected = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=1e-5, atol=1e-6)
    plain, _ = load_base(base_dir)
    load_trm(plain, tmp_path / "adapter")  # strict: the recorded base hash is this base's
    weights, state = torch.load(tmp_path / "state.pt", weights_only=False)
    assert set(state["state"]) == set(weights) == set(expected)  # keyed by parameter name


def test_a_run_dir_keeps_checkpoints_only_for_the_run_that_wrote_them(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step-000010").mkdir(parents=True)
    assert claim_run_dir(tmp_path, {"trm": {"cycles": 2}, "data": "a"}) == []
    assert not checkpoints.exists()  # checkpoints of unknown origin are never resumed
    (checkpoints / "step-000010").mkdir(parents=True)
    assert claim_run_dir(tmp_path, {"trm": {"cycles": 2}, "data": "a"}) == []
    assert (checkpoints / "step-000010").is_dir()  # same run: resume
    assert claim_run_dir(tmp_path, {"trm": {"cycles": 4}, "data": "a"}) == ["trm"]
    assert not checkpoints.exists()
    assert json.loads((tmp_path / "identity.json").read_text()) == {
        "trm": {"cycles": 4}, "data": "a"}
