"""Bad input, the table: each kind is an exit-2 message naming the file actually read and the
key or line, never a traceback, and every artifact already on disk is left byte-identical.

Each row edits a copy of the project's params.yaml (saved under another name, so a message
that says `params.yaml` regardless of the file read fails), then runs the stage entry in a
scratch workspace holding sentinel artifacts.
"""

from __future__ import annotations

import copy
import errno
import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import LlamaConfig

from millennial.base import byte_level_tokenizer
from millennial.errors import run_reporting

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
NAME = "edited-params.yaml"
# What a previous good run left: none of it may change when a stage refuses its input.
ARTIFACTS = ("metrics/cost/train_phase1.json", "metrics/cost/curate.json",
             "metrics/train_phase1.json", "models/phase1/trm.safetensors", "models/base/x.bin",
             "data/curated/manifest.json", "reports/seed_audit.md", "runs/train_phase1/a.txt")

Edit = Callable[[dict[str, Any]], None]


def put(dotted: str, value: Any) -> Edit:
    """Set (or with value DELETE remove) the key at a dotted path; `[i]` indexes a list."""
    def edit(params: dict[str, Any]) -> None:
        keys: list[str | int] = []
        for part in dotted.split("."):
            name, _, index = part.partition("[")
            keys += [name, int(index[:-1])] if index else [name]
        node: Any = params
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return edit


DELETE = object()
NAN, INF = float("nan"), float("inf")

# (stage, edit, what the message must say besides the file name)
CASES: dict[str, tuple[str, Edit, str]] = {
    "train.max_steps float": ("train_phase1", put("train.max_steps", 2.7), r"train\.max_steps"),
    "train.max_steps 0": ("train_phase1", put("train.max_steps", 0), r"train\.max_steps"),
    "train.max_grad_norm nan": ("train_phase1", put("train.max_grad_norm", NAN),
                                r"train\.max_grad_norm"),
    "train.max_grad_norm inf": ("train_phase1", put("train.max_grad_norm", INF),
                                r"train\.max_grad_norm"),
    "train unknown key": ("train_phase1", put("train.lr", 0.1), r"train: unknown key\(s\) lr"),
    "train.mixed_precision": ("train_phase1", put("train.mixed_precision", "fp8"),
                              r"train\.mixed_precision"),
    "train.ema_decay 1": ("train_phase1", put("train.ema_decay", 1.0), r"train\.ema_decay"),
    "train.batch_size bool": ("train_phase1", put("train.batch_size", True),
                              r"train\.batch_size"),
    "train.weight_decay nan": ("train_phase1", put("train.weight_decay", NAN), r"weight_decay"),
    "phase1.lr negative": ("train_phase1", put("phase1.lr", -1.0), r"'phase1\.lr'"),
    "phase1.lr nan": ("train_phase1", put("phase1.lr", NAN), r"'phase1\.lr'"),
    "phase1.lr string": ("train_phase1", put("phase1.lr", "3e-4"), r"'phase1\.lr'"),
    "phase1 unknown key": ("train_phase1", put("phase1.learning_rate", 1e-3),
                           r"'phase1' has unknown key\(s\) learning_rate"),
    "phase1 missing lr": ("train_phase1", put("phase1.lr", DELETE), r"'phase1\.lr'"),
    "phase1.depth_warmup negative": ("train_phase1", put("phase1.depth_warmup_steps", -1),
                                     r"'phase1\.depth_warmup_steps'"),
    "phase1.prefix_cache.mode": ("train_phase1", put("phase1.prefix_cache", {"mode": "always"}),
                                 r"'phase1\.prefix_cache\.mode' must be one of auto, on, off"),
    "phase1.prefix_cache.max_gib 0": ("train_phase1",
                                      put("phase1.prefix_cache", {"max_gib": 0}),
                                      r"'phase1\.prefix_cache\.max_gib'"),
    "trm.cycles 0": ("train_phase1", put("trm.cycles", 0), r"trm: .*cycles"),
    "trm unknown key": ("train_phase1", put("trm.cylces", 2), r"trm: .*cylces"),
    "trm.attention": ("train_phase1", put("trm.attention", "sideways"), r"trm: .*attention"),
    "trm.halt_threshold": ("train_phase1", put("trm.halt_threshold", 2), r"trm: halt_threshold"),
    "trm missing": ("train_phase1", put("trm", DELETE), r"missing key 'trm'"),
    "trm layer out of range": ("train_lora", put("trm.injection_layers", [2, 99]),
                               r"trm: injection_layers: index 99 is out of range for a base "
                               r"with 30 layers"),
    "trm pretrained core mismatch": ("train_phase1", put("trm.core_init", "pretrained"),
                                     r"trm: .*pretrained"),
    "lora.lr negative": ("train_lora", put("lora.lr", -1.0), r"'lora\.lr'"),
    "lora.dropout": ("train_lora", put("lora.dropout", 1.5), r"'lora\.dropout'"),
    "lora.target_modules": ("train_lora", put("lora.target_modules", 5),
                            r"'lora\.target_modules'"),
    "lora.alpha_per_rank 0": ("train_lora", put("lora.alpha_per_rank", 0),
                              r"'lora\.alpha_per_rank'"),
    "lora unknown key": ("train_lora", put("lora.rank", 8), r"'lora' has unknown key\(s\) rank"),
    "llama_pro.blocks 0": ("train_llama_pro", put("llama_pro.blocks", 0),
                           r"'llama_pro\.blocks'"),
    "llama_pro.lr bool": ("train_llama_pro", put("llama_pro.lr", True), r"'llama_pro\.lr'"),
    "phase2.enabled string": ("train_phase2", put("phase2.enabled", "yes"),
                              r"'phase2\.enabled'"),
    "phase2.max_steps float": ("train_phase2", put("phase2.max_steps", 2.7),
                               r"'phase2\.max_steps'"),
    "phase2.lr_trm bool": ("train_phase2", put("phase2.lr_trm", True), r"'phase2\.lr_trm'"),
    "phase2.trainable empty": ("train_phase2", put("phase2.trainable", []),
                               r"'phase2\.trainable'"),
    "cost unknown key": ("seed_audit", put("cost.usd_per_devce_hour", {"cpu": 1}),
                         r"'cost' has unknown key\(s\) usd_per_devce_hour"),
    "cost.pue below 1": ("train_phase1", put("cost.pue", 0.5), r"'cost\.pue'"),
    "cost.grid negative": ("seed_audit", put("cost.grid_kg_co2e_per_kwh", -1),
                           r"'cost\.grid_kg_co2e_per_kwh'"),
    "cost.price negative": ("curate", put("cost.usd_per_device_hour.cpu", -1),
                            r"'cost\.usd_per_device_hour\.cpu'"),
    "cost.country": ("seed_audit", put("cost.country_iso_code", "FR"),
                     r"'cost\.country_iso_code'"),
    "curate.block_size 0": ("curate", put("curate.block_size", 0), r"curate\.block_size"),
    "curate.junk ratio": ("curate", put("curate.filter.max_junk_ratio", 2),
                          r"curate\.filter\.max_junk_ratio"),
    "curate source kind": ("curate", put("curate.sources[0].kind", "ftp"),
                           r"curate\.sources\[0\]\.kind"),
    "curate sources empty": ("curate", put("curate.sources", []), r"curate\.sources"),
    "curate.on_error": ("curate", put("curate.on_error", "ignore"), r"curate\.on_error"),
    "curate unknown key": ("curate", put("curate.shuffle", True), r"shuffle"),
    "curate source outside": ("curate", put("curate.sources[0]", {  # tokenizer: see workspace
        "name": "lee_news", "kind": "text", "paths": "/etc/passwd"}),
        r"sources\[0\]\.paths' names /etc/passwd, outside"),
    "validate unknown key": ("validate", put("validate.strict", True), r"strict"),
    "validate.rows reversed": ("validate", put("validate.rows.train", [10, 1]),
                               r"validate\.rows"),
    "base.source": ("prepare_base", put("base.source", "ftp"), r"base\.source"),
    "evaluate unknown key": ("evaluate_arm", put("evaluate.temperature", 0.7),
                             r"temperature"),
    "evaluate.max_examples 0": ("evaluate_arm", put("evaluate.max_examples", 0),
                                r"evaluate\.max_examples"),
    "evaluate.harness typo": ("evaluate_arm", put("evaluate.harness.hub_taks", ["hellaswag"]),
                              r"hub_taks"),
    "evaluate.harness Hub task offline": ("evaluate_arm",
                                          put("evaluate.harness.hub_tasks", ["hellaswag"]),
                                          r"evaluate\.harness\.hub_tasks.*offline"),
}
# Not a params edit: the file itself is unusable.
RAW = {
    "yaml syntax": ("train_phase1", "train:\n  max_steps: [1,\n", r"line \d+ invalid YAML"),
    "top-level list": ("curate", "- 1\n- 2\n", r"top level must be a mapping"),
    "tab indentation": ("validate", "validate:\n\tmax_examples: 5\n", r"invalid YAML"),
}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for index, artifact in enumerate(ARTIFACTS):
        path = tmp_path / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"sentinel {index}\n".encode())
    byte_level_tokenizer(512).save_pretrained(tmp_path / "models/base")  # curate gets to reading
    LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,  # SmolLM2's shape,
                num_key_value_heads=3, intermediate_size=1536,  # for the trm: checks
                ).save_pretrained(tmp_path / "models/base")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))  # `stages` runs from the repo root, not installed
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file but the failure records (they are the new, expected trace of the refusal)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "cost/failed" not in p.as_posix() and p.name != NAME}


def run(stage: str, params: Path) -> int:
    if stage == "evaluate_arm":
        return importlib.import_module("stages.evaluate_arm").main(["base", "--params",
                                                                    str(params)])
    return importlib.import_module(f"stages.{stage}").main(["--params", str(params)])


def check(stage: str, text: str, expected: str, root: Path,
          capsys: pytest.CaptureFixture[str]) -> None:
    params = root / NAME
    params.write_text(text)
    before = snapshot(root)
    assert run(stage, params) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert NAME in err, err
    assert re.search(expected, err), err
    assert snapshot(root) == before


def test_the_table_is_wide() -> None:
    assert len(CASES) + len(RAW) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_param_is_an_exit_2_message_and_changes_nothing(
        case: str, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage, edit, expected = CASES[case]
    params = copy.deepcopy(PARAMS)
    edit(params)
    check(stage, yaml.safe_dump(params), expected, workspace, capsys)


@pytest.mark.parametrize("case", sorted(RAW))
def test_an_unusable_params_file_is_an_exit_2_message(
        case: str, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage, text, expected = RAW[case]
    check(stage, text, expected, workspace, capsys)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_disk_is_a_message_naming_the_path(
        code: int, capsys: pytest.CaptureFixture[str]) -> None:
    def work() -> int:
        raise OSError(code, os.strerror(code), "metrics/cost/curate.json")

    assert run_reporting("curate", work) == 2
    assert capsys.readouterr().err == (f"curate: error: metrics/cost/curate.json: "
                                       f"{os.strerror(code)}\n")


def test_any_other_failure_keeps_its_traceback() -> None:
    def work() -> int:
        raise OSError(errno.EIO, "I/O error", "x")

    with pytest.raises(OSError, match="I/O error"):
        run_reporting("curate", work)
