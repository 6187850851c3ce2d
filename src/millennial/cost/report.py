"""`millennial cost`: sum the per-stage cost records and project the run onto a GPU fleet.

Reads every `metrics/cost/<stage>.json` the meter wrote, writes the totals to
`metrics/cost.json` (a DVC metric) and a readable `reports/cost.md`: per stage, measured beside
planned where the stage recorded a plan; totals; and what the same model FLOPs would take on a
named fleet at an assumed MFU, priced by params.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millennial.atomic import write_json, write_text
from millennial.cost.hardware import GPUS, get_device, with_price
from millennial.cost.meter import load_cost_params, price_for
from millennial.cost.planner import GIB, project
from millennial.cost.record import CostRecord, ratio

SUMMED = ("wall_seconds", "cpu_seconds", "cpu_core_hours", "gpu_hours", "energy_kwh",
          "co2e_kg", "flops")


def load_stage_records(metrics_dir: str | Path) -> list[CostRecord]:
    """Every stage record, sorted by stage; a broken or incomplete file is named."""
    directory = Path(metrics_dir)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory (no stage has been metered yet)")
    return sorted((CostRecord.read(path) for path in sorted(directory.glob("*.json"))),
                  key=lambda r: r.stage)


def aggregate(records: Sequence[CostRecord]) -> dict[str, Any]:
    """Totals over stages: each summed field is the sum of the stages' fields."""
    totals: dict[str, Any] = {key: sum(float(getattr(r, key)) for r in records)
                              for key in SUMMED}
    by_kind: dict[str, float] = {}
    for record in records:
        by_kind[record.device_kind] = by_kind.get(record.device_kind, 0.0) + record.device_hours
    totals.update(
        tokens=sum(r.tokens for r in records),
        stages=len(records),
        stage_names=[r.stage for r in records],
        failed=[r.stage for r in records if r.status == "failed"],
        device_hours_by_kind=by_kind,
        usd=sum(r.usd for r in records if r.usd is not None),
        unpriced=[r.stage for r in records if r.usd is None],
        energy_methods=sorted({r.energy_method for r in records}),
    )
    return totals


def planned_vs_measured(record: CostRecord) -> list[tuple[str, float | None, float | None]]:
    """(quantity, planned, measured) for a stage that recorded a plan; memory is the stage's
    own (on CPU, peak RSS above the interpreter's start)."""
    plan = record.planned
    if plan is None:
        return []
    return [("tokens", float(plan.tokens), float(record.tokens)),
            ("model FLOPs", plan.flops, record.flops),
            ("wall seconds", plan.wall_seconds, record.wall_seconds),
            ("peak memory GiB", _gib(plan.peak_memory_bytes), _gib(record.stage_memory_bytes))]


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def parse_fleet(text: str) -> tuple[int, str]:
    """'8xA100-80GB' -> (8, 'A100-80GB')."""
    match = re.fullmatch(r"(\d+)\s*[xX]\s*(\S+)", text.strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"--fleet {text!r}: expected COUNTxGPU, e.g. 8xA100-80GB")
    count, name = int(match.group(1)), match.group(2)
    if name not in GPUS:
        raise ValueError(f"--fleet {text!r}: unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return count, name


def project_to_fleet(
    flops: float, fleet: str, mfu: float, params_path: str | Path | None = None
) -> dict[str, Any]:
    """What the run's model FLOPs would take on the fleet at `mfu`, priced by params.yaml."""
    count, name = parse_fleet(fleet)
    params = load_cost_params(params_path)
    price, price_source = price_for(name, params)
    device = with_price(get_device(name), price if price is not None else 0.0)
    result = project(flops, device, count, mfu, grid_kg_co2e_per_kwh=params.grid_kg_co2e_per_kwh,
                     pue=params.pue)
    return {"fleet": fleet, "gpus": count, "gpu": name, "mfu": mfu, "flops": flops,
            "price_source": price_source, **result}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(
    records: Sequence[CostRecord], totals: dict[str, Any], projection: dict[str, Any]
) -> str:
    lines = [
        "# Cost of the pipeline run",
        "",
        "Measured by `millennial.cost.meter` in every stage; summed by `millennial cost`. "
        "Energy figures carry the method that produced them (nvml and rapl are measurements; "
        "codecarbon without RAPL/NVML and tdp-estimate are estimates).",
        "",
        "## Stages",
        "",
        "| stage | status | wall s | CPU s | device | device-h | energy kWh | method | USD "
        "| kg CO2e | tokens | FLOPs | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        lines.append(
            f"| {r.stage} | {r.status} | {_fmt(r.wall_seconds)} | {_fmt(r.cpu_seconds)} | "
            f"{r.device_count} x {r.device_kind} | {_fmt(r.device_hours)} | "
            f"{_fmt(r.energy_kwh)} | {r.energy_method} | {_fmt(r.usd)} | {_fmt(r.co2e_kg)} | "
            f"{r.tokens} | {_fmt(r.flops)} | {_fmt(r.mfu)} |"
        )
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["", "Failed stages (cost recorded up to the failure):", ""]
        lines += [f"- {r.stage}: {r.error}" for r in failed]
    resumed = [r for r in records if r.carried_forward is not None]
    if resumed:
        lines += ["", "Resumed training runs (earlier invocations' work carried forward):", ""]
        lines += [f"- {r.stage}: from step {r.carried_forward.from_step}, "
                  f"{r.carried_forward.flops:.4g} FLOPs before; {r.run_flops:.4g} in all"
                  for r in resumed if r.carried_forward is not None]
    planned = [r for r in records if r.planned is not None]
    unplanned = [r.stage for r in records if r.planned is None and r.status != "skipped"]
    lines += ["", "## Measured vs planned", "",
              "The planner's prediction, made before each stage ran (`millennial.cost.planner`), "
              "beside what the meter measured. Time is predicted at the stated MFU; memory is "
              "the planner's device memory against the stage's own (GPU: allocator peak; CPU: "
              "peak RSS above the process's start, so it also holds data and tokenizer).", ""]
    if planned:
        lines += ["| stage | quantity | planned | measured | measured / planned | basis |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in planned:
            assert r.planned is not None
            if not r.planned.flops and r.planned.peak_memory_bytes is None:
                lines.append(f"| {r.stage} | model FLOPs | 0 | {_fmt(r.flops)} | - | "
                             f"{r.planned.basis} |")
                continue
            for quantity, plan_value, measured in planned_vs_measured(r):
                lines.append(f"| {r.stage} | {quantity} | {_fmt(plan_value)} | "
                             f"{_fmt(measured)} | {_fmt(ratio(measured, plan_value))} | "
                             f"{r.planned.basis}; MFU {r.planned.mfu:.3g} "
                             f"({r.planned.mfu_source}) |")
    else:
        lines.append("No stage recorded a plan.")
    if unplanned:
        lines += ["", f"Stages the planner does not model (no prediction): "
                      f"{', '.join(unplanned)}."]
    kinds = ", ".join(f"{kind}: {hours:.4g} h" for kind, hours in
                      totals["device_hours_by_kind"].items())
    lines += [
        "",
        "## Totals",
        "",
        f"- stages: {totals['stages']} ({len(totals['failed'])} failed)",
        f"- wall: {totals['wall_seconds']:.4g} s; CPU: {totals['cpu_seconds']:.4g} s; "
        f"CPU core-hours: {totals['cpu_core_hours']:.4g}",
        f"- device-hours by kind: {kinds or '-'}; GPU-hours: {totals['gpu_hours']:.4g}",
        f"- energy: {totals['energy_kwh']:.4g} kWh ({', '.join(totals['energy_methods'])}); "
        f"{totals['co2e_kg']:.4g} kg CO2e",
        f"- cost: ${totals['usd']:.4g}"
        + (f" (unpriced: {', '.join(totals['unpriced'])})" if totals["unpriced"] else ""),
        f"- work: {totals['tokens']:,} tokens, {totals['flops']:.4g} model FLOPs",
        "",
        "## The same run on a GPU fleet",
        "",
        f"--fleet {projection['fleet']} --mfu {projection['mfu']:g}: "
        f"{projection['wall_hours']:.4g} hours wall ({projection['gpu_hours']:.4g} GPU-hours), "
        f"${projection['usd']:.4g} at ${projection['usd_per_gpu_hour']:g}/GPU-hour "
        f"({projection['price_source']}), {projection['energy_kwh']:.4g} kWh, "
        f"{projection['co2e_kg']:.4g} kg CO2e. Projected from the {projection['flops']:.4g} "
        "model FLOPs the stages reported; stages that reported none are not in it.",
        "",
    ]
    return "\n".join(lines)


def write_cost_report(
    metrics_dir: str | Path,
    json_out: str | Path,
    md_out: str | Path,
    *,
    fleet: str = "8xA100-80GB",
    mfu: float = 0.40,
    params_path: str | Path | None = "params.yaml",
) -> dict[str, Any]:
    """Write metrics/cost.json and reports/cost.md; return the totals."""
    records = load_stage_records(metrics_dir)
    totals = aggregate(records)
    projection = project_to_fleet(totals["flops"], fleet, mfu, params_path)
    stages = {
        r.stage: {"status": r.status, "wall_seconds": r.wall_seconds, "gpu_hours": r.gpu_hours,
                  "energy_kwh": r.energy_kwh, "usd": r.usd, "co2e_kg": r.co2e_kg, "mfu": r.mfu,
                  "planned_wall_ratio": ratio(r.wall_seconds,
                                              r.planned.wall_seconds if r.planned else None),
                  "planned_memory_ratio": ratio(r.stage_memory_bytes,
                                                r.planned.peak_memory_bytes if r.planned
                                                else None)}
        for r in records
    }
    write_json(json_out, {"totals": totals, "projection": projection, "stages": stages})
    write_text(md_out, render_markdown(records, totals, projection))
    return totals
