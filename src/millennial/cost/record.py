"""The cost record of one stage run: what `metrics/cost/<stage>.json` holds, as one dataclass.

The meter writes it, and the cost report, the lineage, the evaluation's cost-per-gain and the
Prefect `stage-costs` artifact read it; all go through `CostRecord.read`, so a record that lacks
a field is named with its path once, here, instead of surfacing as a KeyError elsewhere.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from millennial.atomic import write_json

STATUSES = ("ok", "failed", "skipped")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Planned:
    """What the planner predicted for the work of one stage run, before it ran.

    `wall_seconds` is `flops / (peak x mfu)` at the stated MFU (None where the device's peak is
    unknown); `peak_memory_bytes` is the planner's device memory for the run: weights,
    optimizer state and the activations of one micro-batch (None for stages it does not model).
    """

    tokens: int
    flops: float
    mfu: float
    mfu_source: str
    wall_seconds: float | None
    peak_memory_bytes: float | None
    memory_breakdown: dict[str, float]
    basis: str  # what was planned, in words (phase, shape, sequence length, dtype)
    precision: str | None = None  # the planner's name (bf16, fp32, bf16-autocast)
    sharding: str | None = None  # ddp or fsdp (training stages)


@dataclass(frozen=True)
class ComponentTimings:
    """What a phase-1 run measured of its own steps, from which the planner learns a rate per
    component (`ComponentRates.calibrate`) instead of one MFU. Per micro-batch of one process
    (an optimizer step's time shared by its micro-batches): the median over the steps at the
    final depth, the TRM blocks timed alone on the same shape, a matmul probe at that shape,
    and the planner's FLOPs per token of each part."""

    micro_batch_tokens: int
    micro_batch_seconds: float  # median step seconds / micro-batches per step
    steps_timed: int
    trm_seconds: float  # the TRM blocks' forward and backward on one micro-batch
    matmul_flops_per_s: float  # (micro-batch tokens x width) @ (width x width)
    layers: int  # base decoder layers
    base_flops_per_token: float  # executed by the base, recomputation included
    trm_flops_per_token: float


@dataclass(frozen=True)
class PlannedWork:
    """What a stage tells the meter before its work starts; the meter adds time at its MFU."""

    tokens: int
    flops: float
    peak_memory_bytes: float | None
    memory_breakdown: dict[str, float]
    basis: str
    precision: str | None = None
    sharding: str | None = None


class WorkLog(Protocol):
    """Where a stage reports its plan and a resumed run's earlier work (the meter)."""

    def plan(self, work: PlannedWork) -> None: ...

    def add(self, *, tokens: int = 0, flops: float = 0.0) -> None: ...

    def carry_forward(self, earlier: CarriedForward | None) -> None: ...

    def time_components(self, timings: ComponentTimings) -> None: ...


@dataclass(frozen=True)
class CarriedForward:
    """Work an earlier, interrupted invocation of the same training run did (a resumed run).

    Its cost record is the failed or killed invocation's; the model's training FLOPs are the
    sum, so a resumed run never claims its model cost only what the last invocation added.
    """

    from_step: int
    tokens: int
    flops: float
    train_seconds: float


@dataclass(frozen=True)
class CostRecord:
    """One stage run's time, device-hours, energy, dollars, CO2e, work, memory and plan."""

    stage: str
    status: str  # ok | failed | skipped
    error: str | None
    reason: str | None  # why a skipped stage did no work
    started_at: str
    finished_at: str
    host: str
    wall_seconds: float
    cpu_seconds: float
    cpu_cores: int
    cpu_core_hours: float
    device_kind: str
    device_name: str | None
    device_count: int
    device_hours: float
    gpu_hours: float
    energy_kwh: float
    energy_method: str
    energy_detail: str | None
    energy_methods_skipped: list[str]
    pue: float
    grid_kg_co2e_per_kwh: float
    co2e_kg: float
    usd_per_device_hour: float | None
    usd_billing: str | None
    price_source: str | None
    usd: float | None
    tokens: int
    flops: float
    achieved_flops_per_s: float
    peak_flops_per_s: float | None
    peak_source: str
    mfu: float | None
    peak_memory_bytes: int | None  # GPU: max allocated on this process's device; CPU: peak RSS
    start_memory_bytes: int | None  # CPU: RSS when the stage began (interpreter and libraries)
    memory_method: str
    planned: Planned | None
    carried_forward: CarriedForward | None
    components: ComponentTimings | None = None  # phase 1: what `plan --calibrate` learns from

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"cost record status must be one of {STATUSES}, got {self.status!r}")

    @property
    def stage_memory_bytes(self) -> int | None:
        """Memory the stage itself added: on CPU the peak RSS above its start, on GPU the peak."""
        if self.peak_memory_bytes is None:
            return None
        return self.peak_memory_bytes - (self.start_memory_bytes or 0)

    @property
    def run_flops(self) -> float:
        """The model FLOPs of the whole training run, earlier interrupted invocations included."""
        return self.flops + (self.carried_forward.flops if self.carried_forward else 0.0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> CostRecord:
        """Parse a record; a missing required or an unknown field is a ValueError naming
        `source` (a field with a default came later: older records lack it)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a cost record must be a JSON object")
        known = fields(cls)
        missing = [f.name for f in known if f.name not in data and f.default is MISSING]
        unknown = sorted(set(data) - {f.name for f in known})
        if missing or unknown:
            raise ValueError(f"{source}: not a cost record of this version: "
                             + "; ".join(part for part in (
                                 f"missing {', '.join(missing)}" if missing else "",
                                 f"unknown {', '.join(unknown)}" if unknown else "") if part))
        values = dict(data)
        try:
            values["planned"] = Planned(**data["planned"]) if data["planned"] else None
            values["carried_forward"] = (CarriedForward(**data["carried_forward"])
                                         if data["carried_forward"] else None)
            values["components"] = (ComponentTimings(**data["components"])
                                    if data.get("components") else None)
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def read(cls, path: str | Path) -> CostRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        return cls.from_json(data, path)

    @classmethod
    def skipped(cls, stage: str, reason: str) -> CostRecord:
        """A stage that ran but did no work (e.g. phase 2 disabled): zero cost, by design."""
        stamp = now()
        return cls(
            stage=stage, status="skipped", error=None, reason=reason, started_at=stamp,
            finished_at=stamp, host=socket.gethostname(), wall_seconds=0.0, cpu_seconds=0.0,
            cpu_cores=0, cpu_core_hours=0.0, device_kind="cpu", device_name=None, device_count=0,
            device_hours=0.0, gpu_hours=0.0, energy_kwh=0.0, energy_method="none (skipped)",
            energy_detail=None, energy_methods_skipped=[], pue=1.0, grid_kg_co2e_per_kwh=0.0,
            co2e_kg=0.0, usd_per_device_hour=None, usd_billing=None, price_source=None, usd=0.0,
            tokens=0, flops=0.0, achieved_flops_per_s=0.0, peak_flops_per_s=None,
            peak_source="skipped", mfu=None, peak_memory_bytes=None, start_memory_bytes=None,
            memory_method="none (skipped)", planned=None, carried_forward=None,
        )


def ratio(measured: float | None, planned: float | None) -> float | None:
    """measured / planned, or None where either is unknown or the plan is zero."""
    if measured is None or planned is None or planned == 0 or not math.isfinite(planned):
        return None
    return measured / planned
