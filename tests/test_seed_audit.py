"""The seed audit: every scenario of seed-cost-breakdown.md, with numbers from the planner."""

import re

import pytest

from millennial.cli import main
from millennial.cost.audit import (
    DENSE_16B,
    SEED,
    TRM_3B,
    TRM_15B,
    audit_seed,
    render_markdown,
)
from millennial.cost.hardware import GPUS
from millennial.cost.planner import (
    base_parameters,
    model_shape,
    plan,
    trm_parameters,
)
from millennial.cost.presets import PRESETS


@pytest.fixture(scope="module")
def report() -> str:
    return render_markdown(audit_seed())


def test_the_named_trm_configs_have_the_seed_sizes() -> None:
    big = trm_parameters(model_shape(PRESETS["llama-2-70b"]), TRM_15B)["total"]
    small = trm_parameters(model_shape(PRESETS["llama-2-13b"]), TRM_3B)["total"]
    dense = base_parameters(model_shape(DENSE_16B))["total"]
    assert big == pytest.approx(15e9, rel=0.01)
    assert small == pytest.approx(3e9, rel=0.03)
    assert dense == pytest.approx(16e9, rel=0.02)


def test_every_scenario_is_covered(report: str) -> None:
    for heading in ("from scratch", "MillennialAi overall", "Phase 1", "Phase 2",
                    "Scenarios 1-3", "Level 2", "99.8% cost reduction", "Hardware claims"):
        assert re.search(rf"^## .*{re.escape(heading)}", report, re.MULTILINE), heading
    for claim in ("2,160,000", "$6,480,000", "$10,800,000", "8,064", "$24,192", "$2,016",
                  "$1,200,000", "$5,000", "$25,000", "$100,000", "$240,000"):
        assert claim in report, claim
    assert report.startswith("# Audit") and "## Assumptions" in report
    assert "MFU 0.40" in report and "Chinchilla 20" in report and "$3/GPU-hour" in report


def test_numbers_come_from_the_planner(report: str) -> None:
    a100 = GPUS["A100-80GB"]
    phase1 = plan(model_shape(PRESETS["llama-2-70b"]), phase="phase1", device=a100,
                  trm=TRM_15B, gpus=16, mfu=0.40, budget_gpu_hours=8064,
                  grad_checkpointing=True)
    assert f"{phase1.trm_params:,}" in report
    assert f"{phase1.tokens / 1e9:,.3g}B" in report
    scratch = plan(model_shape(PRESETS["llama-2-70b"]), phase="scratch", device=a100,
                   gpus=1000, mfu=0.40)
    assert f"{scratch.gpu_hours:,.0f} GPU-h" in report
    # A different MFU changes the computed figures; the seed's own claims stay quoted.
    other = render_markdown(audit_seed(mfu=0.2))
    assert other != report and "MFU 0.20" in other and "2,160,000" in other


def test_the_contradictions_are_said_plainly() -> None:
    audit = audit_seed()
    text = " ".join(audit.contradictions)
    assert len(audit.contradictions) >= 6
    assert "21.8% of the 70B" in text  # 15B is not a tiny add-on
    assert "not most of the compute" in text  # freezing saves ~1/3
    assert f"= {TRM_15B.total_calls}" in text  # recursion multiplies TRM FLOPs
    assert "1.34 TB before activations" in text and "8-16 GPUs cannot" in text  # phase 2
    assert "fewer tokens" in text  # the 99.8% claim compares different token counts


def test_arithmetic_of_the_seed_is_checked(report: str) -> None:
    assert SEED["hybrid_gpus"] * 24 * SEED["hybrid_days"] == SEED["hybrid_gpu_hours"]
    assert report.count("arithmetic checks") >= 5
    assert "arithmetic wrong" not in report


def test_cli_writes_the_audit(tmp_path, capsys) -> None:
    out = tmp_path / "reports" / "seed_audit.md"
    assert main(["plan", "--audit-seed", "--out", str(out)]) == 0
    assert out.read_text().startswith("# Audit of seed-cost-breakdown.md")
    assert "contradictions" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["seed_audit.md"]


def test_the_audit_prices_serving_alternatives_and_published_runs(report: str) -> None:
    audit = audit_seed()
    titles = [section.title for section in audit.sections]
    for start in ("9. Serving", "10. What the same tokens cost", "11. The planner against",
                  "12. Deep supervision"):
        assert any(title.startswith(start) for title in titles), start
    text = " ".join(audit.contradictions)
    assert "5.58x the base's FLOPs per token to serve" in text  # 70B + 15B decoding
    assert "'4 A100s' cannot run phase 1" in text  # Level 2's memory claim
    # the planner against Meta's published Llama-2 GPU-hours: implied MFU 0.42-0.46
    assert "184,320 GPU-h (Llama-2 paper)" in report and "MFU of 0.42-0.46" in report
    assert "2,830 GPU-h (paper)" in report
    assert "8-bit AdamW" in report and "offloaded to CPU" in report
    assert "16 deep-supervision steps" in report
