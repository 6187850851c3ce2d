"""`millennial plan` and `millennial cost`: argument parsing and printing only.

The work is in `planner`, `audit` and `report`; heavy imports happen inside the handlers so
registering these commands costs the rest of the CLI nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from millennial.cost.planner import Plan
    from millennial.hybrid.config import TRMConfig

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_quantity(text: str) -> float:
    """'3e9', '300B', '1.4T', '15M' -> a float; underscores and commas are ignored."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)([kKmMbBgGtT]?)", cleaned)
    if not match:
        raise argparse.ArgumentTypeError(f"not a quantity: {text!r} (e.g. 3e9, 300B, 1.4T)")
    value = float(match.group(1)) * _SUFFIXES.get(match.group(2).lower(), 1.0)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite quantity: {text!r}")
    return value


def _number(low: float, high: float = math.inf, *, open_low: bool = False) -> Any:
    """An argparse type: a finite float in [low, high] ((low, high] with `open_low`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
        below = value <= low if open_low else value < low
        if not math.isfinite(value) or below or value > high:
            bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {bounds}: {text!r}")
        return value
    return parse


def parse_layers(text: str) -> tuple[int, ...]:
    """'1,-1' or Python-slice ranges such as '4:80:5' (4, 9, ..., 79), mixed with commas."""
    layers: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            if ":" in item:
                bounds = [int(b) for b in item.split(":")]
                if len(bounds) not in (2, 3):
                    raise ValueError(item)
                layers.extend(range(*bounds))
            else:
                layers.append(int(item))
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"injection layers: cannot read {item!r} (use '1,-1' or 'start:stop:step')"
            ) from err
    if not layers:
        raise argparse.ArgumentTypeError(f"injection layers: none in {text!r}")
    return tuple(layers)


def load_base(spec: str) -> tuple[str, Any]:
    """A preset name, a model directory or a config.json path -> (name, config)."""
    from millennial.cost.presets import PRESETS, preset_fields

    if spec in PRESETS:
        return spec, preset_fields(spec)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"--base {spec!r}: neither a preset ({', '.join(PRESETS)}) nor an existing path"
        )
    from transformers import AutoConfig

    from millennial.cost.planner import REQUIRED_CONFIG_KEYS

    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"--base {path}: directory has no config.json")
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--base {file}: not valid JSON: {err}") from err
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise ValueError(f"--base {file}: a config.json needs a 'model_type' key")
    model_type = fields["model_type"]
    text = fields.get("text_config") if isinstance(fields.get("text_config"), dict) else fields
    required = REQUIRED_CONFIG_KEYS.get(text.get("model_type", model_type))
    if required is None:
        raise ValueError(f"--base {file}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(REQUIRED_CONFIG_KEYS)}")
    missing = [key for key in required if key not in text]
    if missing:
        raise ValueError(f"--base {file}: missing {', '.join(missing)} (a partial config would "
                         "be filled with transformers' defaults and planned as another model)")
    if path.is_dir():
        return str(path), AutoConfig.from_pretrained(str(path))
    fields.pop("model_type")
    return str(path), AutoConfig.for_model(model_type, **fields)


_TRM_FLAGS = {
    "trm_hidden_size": "hidden_size",
    "trm_layers": "num_layers",
    "trm_ffn_size": "ffn_size",
    "trm_heads": "num_heads",
    "injection_layers": "injection_layers",
    "cycles": "cycles",
    "latent_steps": "latent_steps",
    "grad_cycles": "grad_cycles",
    "share": "share_across_layers",
}


def trm_from_args(args: argparse.Namespace) -> TRMConfig:
    """`trm:` of --params (if given), then each TRM flag that was set overrides it."""
    from millennial.hybrid.config import TRMConfig
    from millennial.params import load_params, section

    fields: dict[str, Any] = {}
    if args.params:
        fields = dict(section(load_params(args.params), "trm", args.params))
    for flag, name in _TRM_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            fields[name] = value
    where = f" from {args.params}" if args.params else ""
    try:
        return TRMConfig.from_dict(fields)
    except ValueError as err:
        raise ValueError(f"TRM config{where}: {err}") from err


MEMORY_LABELS = {
    "frozen_weights": "frozen weights",
    "trainable_weights_grads_adamw": "trainable weights+grads+AdamW",
    "activations": "activations (one micro-batch)",
    "adamw_temporaries": "AdamW foreach temporaries",
    "communication_buffers": "FSDP/DDP communication buffers",
    "cuda_context": "CUDA/NCCL context",
}


def _si(value: float, unit: str = "") -> str:
    prefixes = ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                (1e3, "k"))
    for factor, prefix in prefixes:
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def format_plan(p: Plan) -> str:
    """The human-readable table `millennial plan` prints."""
    b = p.flops_per_token_breakdown
    mem = p.memory_breakdown_gib
    lines = [
        f"base {p.base} | phase {p.phase} | seq {p.seq_len} | {p.gpus} x {p.gpu} ({p.sharding}"
        f"{', grad checkpointing' if p.grad_checkpointing else ''})",
        "",
        "parameters",
        f"  base          {p.base_params:>18,}",
        f"  trm           {p.trm_params:>18,}",
        f"  lora          {p.lora_params:>18,}",
        f"  trainable     {p.trainable_params:>18,}",
        f"  frozen        {p.frozen_params:>18,}",
        "",
        f"FLOPs per token (model {_si(p.flops_per_token)}, "
        f"{p.flops_per_token / (2 * p.base_params):.2f} x 2N_base; "
        f"executed {_si(p.executed_flops_per_token)})",
    ]
    for key in ("base_forward_matmul", "base_forward_attention", "base_activation_grad",
                "base_weight_grad", "trm_forward", "trm_backward", "lora_forward",
                "lora_backward", "recompute"):
        if b[key]:
            lines.append(f"  {key:<24}{_si(b[key]):>12}")
    lines += [
        "",
        f"tokens          {_si(p.tokens)}  ({p.tokens_source})",
        f"total FLOPs     {_si(p.total_flops)}",
        f"MFU             {p.mfu:.2f}  ({p.mfu_source})",
        f"GPU-hours       {p.gpu_hours:,.1f}",
        f"wall-clock      {p.wall_hours:,.1f} h ({p.wall_hours / 24:,.1f} days)",
        f"cost            ${p.usd:,.0f} at ${p.usd_per_gpu_hour:g}/GPU-hour",
        f"energy          {p.energy_kwh:,.0f} kWh, {p.co2e_kg:,.0f} kg CO2e",
        "",
        f"memory per GPU  {p.memory_per_gpu_gib:,.1f} GiB of {p.device_memory_gib:g} GiB: "
        f"{'fits' if p.fits else 'does NOT fit'}",
        *(f"  {MEMORY_LABELS[name]:<30}{value:>10,.2f} GiB" for name, value in mem.items()
          if name != "total"),
        f"  fewest GPUs that fit: {p.min_gpus if p.min_gpus is not None else 'none'}",
    ]
    cache = p.prefix_cache
    if cache is not None:
        epochs = p.tokens / cache["dataset_tokens"]
        lines += [
            "",
            f"frozen-prefix cache (phase 1: layers 0..{cache['layer']} computed once per "
            f"training token, {epochs:.3g} epochs of {_si(cache['dataset_tokens'])} tokens)",
            f"  saves          {_si(cache['flops_saved_per_token'])} FLOPs per reread token, "
            f"{_si(cache['saved_flops_per_epoch'])} per epoch after the first "
            f"({_si(cache['saved_flops_per_epoch'] * max(epochs - 1, 0))} in this run)",
            f"  stores         {_si(cache['storage_bytes'], 'B')} "
            f"({cache['bytes_per_token']} B per token)",
            f"  verdict        {'pays off' if cache['pays_off'] else 'refused'}: "
            f"{cache['reason']}",
        ]
    serve = p.serving
    if serve["trm_attention"] is not None:
        lines += [
            "",
            f"serving, per generated token at context {serve['context']} "
            f"(TRM attention: {serve['trm_attention']})",
            f"  decode FLOPs  base {_si(serve['base_flops_per_token'])}, hybrid "
            f"{_si(serve['hybrid_flops_per_token'])} ({serve['flops_ratio']:.2f}x)",
            f"  KV cache      base {_si(serve['base_kv_bytes_per_token'], 'B')}, hybrid "
            f"{_si(serve['hybrid_kv_bytes_per_token'], 'B')} ({serve['kv_ratio']:.2f}x)",
        ]
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    if args.audit_seed:
        from millennial.cost.audit import write_seed_audit

        audit = write_seed_audit(args.out)
        print(f"wrote {args.out}: {len(audit.sections)} scenarios, "
              f"{len(audit.contradictions)} contradictions")
        for line in audit.contradictions:
            print(f"- {line}")
        return 0
    from millennial.cost.hardware import get_device
    from millennial.cost.planner import (
        GIB,
        mfu_from_calibration,
        mfu_from_components,
        model_shape,
        plan,
    )

    name, config = load_base(args.base)
    shape = model_shape(config)
    device = get_device(args.gpu)
    trm = trm_from_args(args) if args.phase in ("phase1", "phase2") else None
    mfu, mfu_source = args.mfu, None
    if args.calibrate:
        calibration = mfu_from_calibration(args.calibrate, device=args.gpu, gpus=args.gpus,
                                           precision=args.precision, sharding=args.sharding)
        mfu, mfu_source = calibration.mfu, f"calibrated from {args.calibrate}"
        if (calibration.components is not None and args.phase == "phase1"
                and not calibration.mismatches):
            mfu = mfu_from_components(calibration.components, shape, trm, seq_len=args.seq_len,
                                      micro_batch_size=args.micro_batch_size,
                                      grad_checkpointing=args.grad_checkpointing,
                                      peak_flops=device.peak_flops)
            mfu_source = (f"per-component rates calibrated from {args.calibrate} (its own "
                          f"MFU {calibration.mfu:.3g})")
        if calibration.mismatches:
            differences = "; ".join(calibration.mismatches)
            if not args.allow_calibration_mismatch:
                raise ValueError(f"--calibrate {args.calibrate}: measured under other "
                                 f"conditions than this plan ({differences}); its MFU does "
                                 "not transfer. Pass --allow-calibration-mismatch to use it "
                                 "anyway")
            print(f"warning: --calibrate {args.calibrate}: {differences}; its MFU is applied "
                  "anyway (--allow-calibration-mismatch)", file=sys.stderr)
            mfu_source += f" despite: {differences}"
    result = plan(
        shape,
        phase=args.phase,
        device=device,
        trm=trm,
        lora_rank=args.lora_rank,
        tokens=args.tokens,
        budget_gpu_hours=args.budget_gpu_hours,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
        gpus=args.gpus,
        usd_per_gpu_hour=args.usd_per_gpu_hour,
        mfu=mfu,
        mfu_source=mfu_source,
        sharding=args.sharding,
        grad_checkpointing=args.grad_checkpointing,
        grid_kg_co2e_per_kwh=args.grid_kg_per_kwh,
        pue=args.pue,
        base_name=name,
        precision=args.precision,
        dataset_tokens=args.dataset_tokens,
        prefix_read_bytes_per_s=args.prefix_read_gib_per_s * GIB,
        prefix_max_bytes=args.prefix_max_gib * GIB,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_plan(result))
    return 0


def run_cost(args: argparse.Namespace) -> int:
    from millennial.cost.report import write_cost_report

    totals = write_cost_report(
        args.metrics_dir, args.json_out, args.md_out, fleet=args.fleet, mfu=args.mfu,
        params_path=args.params,
    )
    print(f"wrote {args.json_out} and {args.md_out}: {totals['stages']} stages, "
          f"{totals['wall_seconds']:.1f} s wall, ${totals['usd']:.4f}, "
          f"{totals['energy_kwh']:.6f} kWh")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    """Add `plan` and `cost` to the `millennial` command."""
    from millennial.cost.hardware import device_names
    from millennial.cost.planner import PRECISIONS

    p = commands.add_parser(
        "plan", help="what a training run will cost (parameters, FLOPs, memory, hours, $)",
        description="Cost a training run from the architecture alone; or audit the seed's "
                    "cost claims with --audit-seed.",
    )
    p.add_argument("--base", default="llama-2-7b",
                   help="preset (llama-2-7b/13b/70b, smollm2-135m), model dir or config.json")
    p.add_argument("--phase", choices=("phase1", "phase2", "lora", "scratch"), default="phase1")
    p.add_argument("--params", help="read the TRM config from this params.yaml's trm: section")
    p.add_argument("--trm-hidden-size", type=_positive_int)
    p.add_argument("--trm-layers", type=_positive_int)
    p.add_argument("--trm-ffn-size", type=_positive_int)
    p.add_argument("--trm-heads", type=_positive_int)
    p.add_argument("--injection-layers", type=parse_layers, help="'1,-1' or '4:80:5'")
    p.add_argument("--cycles", type=_positive_int)
    p.add_argument("--latent-steps", type=_positive_int)
    p.add_argument("--grad-cycles", type=_positive_int)
    p.add_argument("--share", action="store_true", default=None,
                   help="one core f shared by all injection points")
    p.add_argument("--lora-rank", type=_positive_int, default=16)
    tokens = p.add_mutually_exclusive_group()
    tokens.add_argument("--tokens", type=parse_quantity, help="training tokens, e.g. 3e9 or 3B")
    tokens.add_argument("--budget-gpu-hours", type=parse_quantity,
                        help="instead of tokens: how many tokens this many GPU-hours buy")
    p.add_argument("--dataset-tokens", type=parse_quantity,
                   help="distinct training tokens (phase 1's frozen-prefix cache reuses them "
                        "every epoch after the first); default: --tokens, one epoch")
    p.add_argument("--prefix-max-gib", type=_number(0.0, open_low=True), default=8.0,
                   help="largest frozen-prefix store to accept (phase1.prefix_cache.max_gib)")
    p.add_argument("--prefix-read-gib-per-s", type=_number(0.0, open_low=True), default=2.0,
                   help="read bandwidth of the store (phase1.prefix_cache.read_gib_per_s)")
    p.add_argument("--seq-len", type=_positive_int, default=4096)
    p.add_argument("--micro-batch-size", type=_positive_int, default=1,
                   help="sequences per GPU per step (sets activation memory)")
    p.add_argument("--gpu", choices=device_names(), default="A100-80GB")
    p.add_argument("--gpus", type=_positive_int, default=1)
    p.add_argument("--usd-per-gpu-hour", type=_number(0.0),
                   help="default: the device table's price (stated in the output)")
    mfu = p.add_mutually_exclusive_group()
    mfu.add_argument("--mfu", type=_number(0.0, 1.0, open_low=True),
                     help="default 0.40 multi-GPU, 0.30 single-GPU")
    mfu.add_argument("--calibrate",
                     help="use the MFU of a metered run (metrics/cost/<stage>.json); a phase-1 "
                          "record calibrates a phase-1 plan per component (base matmuls, "
                          "per-layer cost, TRM)")
    p.add_argument("--sharding", choices=("ddp", "fsdp"), default="fsdp")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--grid-kg-per-kwh", type=_number(0.0), default=0.4)
    p.add_argument("--pue", type=_number(1.0), default=1.0,
                   help="datacenter overhead factor on energy (>= 1)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16",
                   help="bytes of weights, optimizer state and activations")
    p.add_argument("--allow-calibration-mismatch", action="store_true",
                   help="use a --calibrate record from another device, dtype or sharding "
                        "(with a warning)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--audit-seed", action="store_true",
                   help="audit every cost claim of seed-cost-breakdown.md")
    p.add_argument("--out", default="reports/seed_audit.md", help="where --audit-seed writes")
    p.set_defaults(func=_guarded(run_plan))

    c = commands.add_parser(
        "cost", help="aggregate metrics/cost/*.json into metrics/cost.json and reports/cost.md",
    )
    c.add_argument("--metrics-dir", default="metrics/cost")
    c.add_argument("--json-out", default="metrics/cost.json")
    c.add_argument("--md-out", default="reports/cost.md")
    c.add_argument("--fleet", default="8xA100-80GB",
                   help="project the measured FLOPs onto COUNTxGPU, e.g. 8xA100-80GB")
    c.add_argument("--mfu", type=_number(0.0, 1.0, open_low=True), default=0.40,
                   help="MFU assumed for the fleet")
    c.add_argument("--params", default="params.yaml", help="prices (cost: section), if present")
    c.set_defaults(func=_guarded(run_cost))


def _guarded(handler: Any) -> Any:
    """Turn input errors into one message naming the bad key or file, and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ValueError as err:  # includes ParamsError
            print(f"millennial {args.command}: error: {err}", file=sys.stderr)
            return 2

    return run
