"""The frozen-prefix cache: phase 1 computes the base below its TRM blocks once per block.

In phase 1 the base is frozen and the lowest TRM block reads the output of decoder layer L
(the lowest injection point). Layers 0..L see nothing trainable, so for a given training block
their output is the same at every step and every epoch: recomputing it is pure waste (with
blocks at layer 20 of 30, two thirds of the forward pass). The cache keeps that output, one row
per training block, in a memory-mapped file (`hidden.bin`, with a `filled.bin` flag per row)
under a directory named by the digest of everything the values depend on: the base's weights,
the training data, L, the block and micro-batch shape, dtype, device and library versions. A
run with other TRM settings but the same base, data and L (a study's next variant) reads what
an earlier run wrote; anything else gets its own directory.

A micro-batch whose rows are all stored is replayed: layers 0..L-1 pass their input through and
layer L returns the stored rows, so only the embedding lookup runs below the TRM blocks, and
layer L's forward hooks (the TRM block) see the very tensor a full forward would have given
them. Any other micro-batch runs the whole model and the rows are captured from layer L's
output on the way. Values are stored bit for bit, so losses and gradients are the same as
without the cache (tested bitwise on CPU). The cache is bounded by `max_gib` (the planner
refuses a cache larger than that) and writes from several processes (DDP ranks on one host) go
to disjoint rows or carry identical bytes. Files survive a killed process (a row's flag is set
after its values); they are scratch space, safe to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator, DistributedType
from torch import nn

from millennial.atomic import write_json
from millennial.cost.hardware import CPU, GPUS, cpu_peak_flops
from millennial.cost.meter import detect_devices
from millennial.cost.planner import (
    GIB,
    PrefixCachePlan,
    default_mfu,
    model_shape,
    prefix_cache_plan,
)
from millennial.errors import UserError
from millennial.fingerprint import tensors_sha256
from millennial.hybrid.config import TRMConfig
from millennial.hybrid.injection import find_decoder_layers
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData, global_batch_indices, micro_batches
from millennial.train.settings import PrefixCacheSettings

HIDDEN_FILE, FILLED_FILE, KEY_FILE = "hidden.bin", "filled.bin", "key.json"


class PrefixCacheError(UserError):
    """The frozen-prefix cache cannot serve this model or run (said before training starts)."""


@dataclass(frozen=True)
class PrefixKey:
    """Everything the stored hidden states depend on; its digest names the cache directory."""

    base_sha256: str
    data_sha256: str
    layer: int  # the decoder layer whose output is stored (the lowest injection point)
    block_size: int
    micro_batch: int  # rows per forward: a kernel may choose its path by the batch's shape
    width: int
    device: str  # "cpu" or the CUDA device's name
    precision: str  # the accelerator's mixed precision ("no", "bf16", ...)
    torch: str = torch.__version__
    transformers: str = transformers.__version__

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class PrefixStore:
    """Rows of stored layer-L output in a shared memory-mapped file, with a flag per row."""

    def __init__(self, root: Path, key: PrefixKey, rows: int, dtype: torch.dtype) -> None:
        self.key = key
        self.directory = root / f"{key.digest()}-{str(dtype).removeprefix('torch.')}"
        self.directory.mkdir(parents=True, exist_ok=True)
        recorded = self.directory / KEY_FILE
        expected = {**asdict(key), "rows": rows, "dtype": str(dtype)}
        if recorded.is_file():
            if json.loads(recorded.read_text(encoding="utf-8")) != expected:
                raise PrefixCacheError(f"{recorded}: written for another run than its name says; "
                                       f"delete {self.directory}")
        else:
            write_json(recorded, expected)
        shape = (rows, key.block_size, key.width)
        self.hidden = torch.from_file(str(self.directory / HIDDEN_FILE), shared=True,
                                      size=rows * key.block_size * key.width,
                                      dtype=dtype).view(shape)
        self.filled = torch.from_file(str(self.directory / FILLED_FILE), shared=True, size=rows,
                                      dtype=torch.uint8)

    def holds(self, rows: list[int]) -> bool:
        return bool(self.filled[rows].all())

    def stored_rows(self) -> set[int]:
        return {int(row) for row in self.filled.nonzero().flatten()}

    def read(self, rows: list[int]) -> torch.Tensor:
        return self.hidden[rows]  # advanced indexing copies: the file stays untouched

    def write(self, rows: list[int], hidden: torch.Tensor) -> None:
        """Store the rows' values, then flag them (a killed writer leaves no flagged garbage)."""
        self.hidden[rows] = hidden.detach().to("cpu")
        self.filled[rows] = 1

    @property
    def bytes_used(self) -> int:
        row = self.key.block_size * self.key.width * self.hidden.element_size()
        return int(self.filled.sum()) * row


class PrefixCache:
    """Serves stored layer-L output to a phase-1 model, one micro-batch at a time."""

    def __init__(self, model: nn.Module, root: Path, key: PrefixKey, rows: int) -> None:
        _, self.layers = find_decoder_layers(model)
        self.root, self.key, self.rows = root, key, rows
        self.store: PrefixStore | None = None  # made at the first capture, in the output's dtype
        self.replayed_rows = 0
        self.captured_rows = 0
        existing = sorted(root.glob(f"{key.digest()}-*/{KEY_FILE}")) if root.is_dir() else []
        if existing:  # a store an earlier run (or process) made: open it now to read from it
            dtype = getattr(torch, existing[0].parent.name.rsplit("-", 1)[1])
            self.store = PrefixStore(root, key, rows, dtype)

    def stored_rows(self) -> set[int]:
        """Rows already stored before this run computes anything (what it will not recompute)."""
        return self.store.stored_rows() if self.store is not None else set()

    @contextmanager
    def serving(self, rows: list[int]) -> Iterator[bool]:
        """Within this block the model's forward on `rows` replays the stored prefix (yields
        True) or computes it and stores it (yields False)."""
        if self.store is not None and self.store.holds(rows):
            with self._replaying(self.store.read(rows)):
                yield True
            self.replayed_rows += len(rows)
            return
        handle = self.layers[self.key.layer].register_forward_hook(
            lambda _module, _args, output: self._capture(rows, output), prepend=True)
        try:
            yield False
        finally:
            handle.remove()
        self.captured_rows += len(rows)

    def _capture(self, rows: list[int], output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise PrefixCacheError(
                f"decoder layer {self.key.layer} returned {type(output).__name__}, not its "
                "hidden states as a tensor: the frozen-prefix cache cannot replay this family "
                "(set phase1.prefix_cache.mode: off)")
        if self.store is None:
            self.store = PrefixStore(self.root, self.key, self.rows, output.dtype)
        self.store.write(rows, output)

    @contextmanager
    def _replaying(self, stored: torch.Tensor) -> Iterator[None]:
        """Layers below L hand their input on; layer L answers with the stored rows (its hooks,
        the TRM block among them, still run on that answer)."""
        patched = list(self.layers[: self.key.layer + 1])

        def passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return hidden_states

        def answer(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return stored.to(device=hidden_states.device)

        for layer in patched[:-1]:
            layer.forward = passthrough
        patched[-1].forward = answer
        try:
            yield
        finally:
            for layer in patched:
                del layer.forward


def is_deterministic_prefix(model: nn.Module, layer: int, input_ids: torch.Tensor) -> bool:
    """Does the prefix give the same bits twice in training mode (no dropout or other noise
    below layer `layer`)? Checked on one short row before a run trusts the cache."""
    _, layers = find_decoder_layers(model)
    outputs: list[Any] = []
    handle = layers[layer].register_forward_hook(
        lambda _m, _a, output: outputs.append(output), prepend=True)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for _ in range(2):
                model(input_ids=input_ids, use_cache=False)
    finally:
        handle.remove()
        model.train(was_training)
    first, second = outputs
    return isinstance(first, torch.Tensor) and torch.equal(first, second)


def cache_root(configured: str | None, runs: Path) -> Path:
    """Where stores live: `phase1.prefix_cache.dir` (relative paths from the workspace, as
    every path in params.yaml), else `prefix_cache/` beside the stage's checkpoints (scratch
    the stage owns)."""
    return runs / "prefix_cache" if configured is None else Path(os.path.expanduser(configured))


def replayed_rows(micro_batches_in_order: Iterable[list[int]], stored: set[int],
                  forwards_per_batch: int) -> int:
    """Rows a cache that starts out holding `stored` would replay over these micro-batches, each
    run `forwards_per_batch` times (TRM deep supervision): the planner's expected saving."""
    seen, replayed = set(stored), 0
    for rows in micro_batches_in_order:
        held = seen.issuperset(rows)
        replayed += len(rows) * (forwards_per_batch if held else forwards_per_batch - 1)
        seen.update(rows)
    return replayed


@dataclass(frozen=True)
class PrefixDecision:
    """Whether the frozen-prefix cache serves a phase-1 run, why, and what it should save."""

    cache: PrefixCache | None
    plan: PrefixCachePlan | None
    reason: str
    expected_replayed_tokens: int = 0

    @classmethod
    def unused(cls, reason: str, plan: PrefixCachePlan | None = None) -> PrefixDecision:
        return cls(None, plan, reason)

    def report(self, replayed_tokens: int) -> dict[str, Any]:
        """`prefix_cache` in metrics/train_phase1.json."""
        out: dict[str, Any] = {"used": self.cache is not None, "reason": self.reason,
                               "expected_replayed_tokens": self.expected_replayed_tokens,
                               "replayed_tokens": replayed_tokens}
        if self.plan is not None:
            out |= {"layer": self.plan.layer,
                    "flops_saved_per_token": self.plan.flops_saved_per_token,
                    "saved_flops": replayed_tokens * self.plan.flops_saved_per_token,
                    "saved_flops_per_epoch": self.plan.saved_flops_per_epoch,
                    "storage_gib": self.plan.storage_bytes / GIB}
        if self.cache is not None and self.cache.store is not None:
            out |= {"store": str(self.cache.store.directory),
                    "stored_gib": self.cache.store.bytes_used / GIB}
        return out


def _peak_flops(accelerator: Accelerator) -> float:
    """This device's peak; an unknown GPU counts as the fastest in the table (the cautious
    choice: recomputing looks cheap, so the cache must earn its place)."""
    if accelerator.device.type != "cuda":
        return cpu_peak_flops()
    kind = detect_devices().kind
    return GPUS[kind].peak_flops if kind in GPUS else max(g.peak_flops for g in GPUS.values())


def decide(model: nn.Module, trm: TRMConfig, settings: PrefixCacheSettings, data: PackedData,
           config: TrainConfig, accelerator: Accelerator, base_sha256: str,
           runs: Path, where: str | Path = "params.yaml") -> PrefixDecision:
    """Whether phase 1 uses the frozen-prefix cache: `off`; `auto` when this run reads some
    block's prefix again and the planner says reading beats recomputing; `on` whenever the
    planner says so (filling a store for later runs), refused with the reason otherwise."""
    key_name = f"{where}: 'phase1.prefix_cache.mode'"
    if settings.mode == "off":
        return PrefixDecision.unused("phase1.prefix_cache.mode: off")

    def refuse(reason: str, plan: PrefixCachePlan | None = None) -> PrefixDecision:
        if settings.mode == "on":
            raise PrefixCacheError(f"{key_name} is on, but {reason}")
        return PrefixDecision.unused(reason, plan)

    if accelerator.distributed_type == DistributedType.FSDP:
        return refuse("FSDP shards the frozen layers, so every process must run them together "
                      "(not supported yet)")
    shape = model_shape(model.config)
    value_bytes = next(model.parameters()).element_size()
    plan = prefix_cache_plan(
        shape, trm, data.block_size, dataset_tokens=len(data) * data.block_size,
        value_bytes=value_bytes, peak_flops=_peak_flops(accelerator),
        mfu=default_mfu(accelerator.num_processes), read_bytes_per_s=settings.read_gib_per_s * GIB,
        max_bytes=settings.max_gib * GIB, grad_checkpointing=config.gradient_checkpointing)
    if not plan.pays_off:
        return refuse(plan.reason, plan)
    if not is_deterministic_prefix(model, plan.layer, data.input_ids[:1, :8]):
        return refuse(f"the base below layer {plan.layer} is not deterministic in training mode "
                      "(dropout?): stored states would not be what a forward computes", plan)
    device = (CPU if accelerator.device.type != "cuda"
              else torch.cuda.get_device_name(accelerator.device))
    key = PrefixKey(base_sha256, tensors_sha256({"input_ids": data.input_ids}), plan.layer,
                    data.block_size, config.batch_size, shape.hidden_size, device,
                    accelerator.mixed_precision)
    cache = PrefixCache(model, cache_root(settings.dir, runs), key, len(data))
    expected = replayed_rows(_micro_batches(len(data), config, accelerator.num_processes),
                             cache.stored_rows(), config.deep_supervision_steps)
    if expected == 0 and settings.mode == "auto":
        return PrefixDecision.unused(
            "auto: this run reads every block once and no store holds them yet (mode: on fills "
            "one for later runs with the same base, data and injection layer)", plan)
    return PrefixDecision(cache, plan, plan.reason, expected * data.block_size)


def _micro_batches(rows: int, config: TrainConfig, world: int) -> Iterator[list[int]]:
    """Every process's micro-batches of the run, step by step, as the training loop draws them."""
    global_batch = config.batch_size * world * config.grad_accum
    for step in range(config.max_steps):
        indices = global_batch_indices(rows, global_batch, step, config.seed)
        for rank in range(world):
            yield from micro_batches(indices, config.batch_size, world, rank)
