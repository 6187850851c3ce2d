"""What a training stage tells its meter: the plan before the first step, the earlier work of a
resumed run, and a run identity that includes the code (a code change trains afresh)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from test_train import BLOCK, LORA, PHASE1, TRAIN, TRM, make_workspace, paths
from transformers import AutoConfig

from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.cost.record import CarriedForward, ComponentTimings, PlannedWork
from millennial.params import ParamsError
from millennial.train import arms
from millennial.train.arms import run_llama_pro, run_lora, run_phase1
from millennial.train.settings import LlamaProSettings


@dataclass
class Log:
    """A stand-in for the meter that remembers what it heard, in order."""

    events: list[str] = field(default_factory=list)
    planned: PlannedWork | None = None
    earlier: CarriedForward | None = None
    timings: ComponentTimings | None = None

    def plan(self, work: PlannedWork) -> None:
        self.events.append("plan")
        self.planned = work

    def add(self, *, tokens: int = 0, flops: float = 0.0) -> None:
        self.events.append("add")

    def carry_forward(self, earlier: CarriedForward | None) -> None:
        self.events.append("carry")
        self.earlier = earlier

    def time_components(self, timings: ComponentTimings) -> None:
        self.events.append("components")
        self.timings = timings


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("cost"))


def test_the_plan_comes_first_and_matches_what_ran(workspace: Path) -> None:
    log = Log()
    config = replace(TRAIN, max_steps=3)
    metrics = run_phase1(paths(workspace, "plan"), TRM, PHASE1, config, work=log)
    assert log.events == ["plan", "components"]  # a fresh run carries nothing forward
    planned = log.planned
    assert planned is not None
    assert planned.tokens == metrics["tokens"] == metrics["tokens_this_run"]
    assert planned.flops == pytest.approx(metrics["flops"]) and planned.flops > 0
    assert planned.peak_memory_bytes is not None and planned.peak_memory_bytes > 0
    memory = planned.memory_breakdown
    assert memory["total"] == pytest.approx(sum(v for k, v in memory.items() if k != "total"))
    assert memory["cuda_context"] == 0  # a CPU run
    assert "fp32" in planned.basis


def test_phase1_times_its_parts_for_the_planner(workspace: Path, capsys) -> None:
    log = Log()
    where = paths(workspace, "parts")
    run_phase1(where, TRM, PHASE1, replace(TRAIN, max_steps=3, grad_accum=2), work=log)
    timings = log.timings
    assert timings is not None and timings.steps_timed == 2  # steps 1 and 2: the first allocates
    assert timings.micro_batch_tokens == TRAIN.batch_size * BLOCK
    assert timings.layers == 2
    base = AutoConfig.from_pretrained(where.base)
    flops = training_flops_per_token(model_shape(base), BLOCK, Trainable.for_phase("phase1", TRM))
    trm = flops.trm_forward + flops.trm_backward
    assert timings.trm_flops_per_token == pytest.approx(trm) and trm > 0
    assert timings.base_flops_per_token == pytest.approx(flops.executed - trm)
    assert timings.micro_batch_seconds > 0 and timings.trm_seconds > 0
    assert timings.matmul_flops_per_s > 0
    short = Log()  # one step: nothing left once the first is set aside
    run_phase1(paths(workspace, "short"), TRM, PHASE1, replace(TRAIN, max_steps=1), work=short)
    assert short.events == ["plan"] and short.timings is None
    assert "components not timed (0 step(s) at the final depth" in capsys.readouterr().out


def test_a_finished_run_rerun_carries_its_work_forward(workspace: Path) -> None:
    config = replace(TRAIN, max_steps=2)
    where = paths(workspace, "again")
    first = run_phase1(where, TRM, PHASE1, config)
    log = Log()
    again = run_phase1(where, TRM, PHASE1, config, work=log)
    assert again["resumed_from_step"] == 2 and again["flops"] == 0
    assert log.events == ["plan", "carry"]
    assert log.earlier is not None and log.earlier.from_step == 2
    assert log.earlier.flops == pytest.approx(first["flops"]) and first["flops"] > 0
    assert log.earlier.tokens == first["tokens"] and log.earlier.train_seconds > 0
    assert again["run_flops"] == pytest.approx(first["flops"])  # never "cost 0 FLOPs"


def test_a_code_change_trains_afresh(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(TRAIN, max_steps=2)
    where = paths(workspace, "code")
    run_phase1(where, TRM, PHASE1, config)
    assert run_phase1(where, TRM, PHASE1, config)["resumed_from_step"] == 2  # same code
    monkeypatch.setattr(arms, "code_sha256", lambda: "edited")
    fresh = run_phase1(where, TRM, PHASE1, config)
    assert fresh["resumed_from_step"] == 0 and fresh["flops"] > 0


def test_lora_plans_its_adapters(workspace: Path) -> None:
    log = Log()
    run_lora(paths(workspace, "lora"), TRM, LORA, replace(TRAIN, max_steps=1), work=log)
    assert log.planned is not None and log.planned.flops > 0


def test_a_bad_llama_pro_block_count_names_the_file_read(workspace: Path) -> None:
    with pytest.raises(ParamsError, match=r"^custom\.yaml: 'llama_pro\.blocks'"):
        run_llama_pro(paths(workspace, "pro"), TRM, LlamaProSettings(blocks=99, lr=1e-3),
                      replace(TRAIN, max_steps=1), where="custom.yaml")
