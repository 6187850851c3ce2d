"""The evaluate_<arm>, evaluate and report stages end to end on a tiny random base with a
trained TRM adapter, LoRA and LLaMA Pro."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from millennial.base import load_base, prepare_base
from millennial.cost.meter import Meter
from millennial.cost.planner import forward_flops_per_token, model_shape, trm_call_flops
from millennial.data import TEXT_KIND, task_record
from millennial.data.curate import DOCUMENT_SCHEMA, PACKED_SCHEMA
from millennial.data.pack import BlockPacker, encode_records, load_tokenizer
from millennial.evaluate.arms import BaseArmMismatch, check_base_arm, load_arm
from millennial.evaluate.config import ArmPaths, EvalConfig, EvalPaths
from millennial.evaluate.metrics import (
    ANSWER_SLACK,
    encode_prompts,
    greedy_generate,
    score_examples,
    select_examples,
)
from millennial.evaluate.scoring import evaluate_arm, flops_per_token, prepare_data
from millennial.heldout import pad_batch, read_split
from millennial.hybrid import TRMConfig, trm_disabled
from millennial.hybrid.injection import Depth, recursion_depth, trm_blocks
from millennial.params import ParamsError
from millennial.train.arms import Paths, run_llama_pro, run_lora, run_phase1
from millennial.train.config import TrainConfig
from millennial.train.settings import LlamaProSettings, LoraSettings, Phase1Settings

REPO = Path(__file__).resolve().parents[1]
BASE_SPEC = {"source": "tiny-random", "tiny_random": {
    "architecture": "llama", "seed": 0, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
    "num_kv_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}}
TRM = TRMConfig(injection_layers=[-1], hidden_size=32, num_heads=2, num_layers=1,
                latent_steps=2, cycles=2, ffn_size=64)
# Ten steps learn the trivial task below on this base (deterministic: seeded init and order).
TRAIN = TrainConfig(seed=0, max_steps=10, batch_size=4, warmup_steps=2,
                    checkpoint_every=100, keep_checkpoints=1, eval_examples=2)
PHASE1 = Phase1Settings(lr=1e-2, out_lr_multiplier=1.0)
EVALUATE = {
    "seed": 0, "splits": ["test", "test_ood"], "max_examples": 8, "max_new_tokens": 6,
    "batch_size": 8,
    "perplexity": {"text_docs": 4, "max_length": 64, "batch_size": 4},
    "speed": {"prompt_tokens": 16, "new_tokens": 8, "repeats": 3, "warmup": 1},
    "sweep": {"cycles": [1, 8], "latent_steps": [1], "max_examples": 4, "splits": ["test_ood"]},
    "report": {"fleet": "8xA100-80GB", "mfu": 0.4},
}
ANSWER = "ok"  # the trivially learnable task: whatever the prompt, answer "ok"
TEXTS = ["the cat sat on the mat", "a quick brown fox jumps", "rain falls on the plain",
         "we read books at night", "an apple a day"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared CPU: a second intra-op thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _task_rows(split: str, letters: str) -> list[dict]:
    return [
        {"source": "trivial", "kind": "task", "task": "constant", "difficulty": 1,
         "text": f"{x}{i}= {ANSWER}", "prompt": f"{x}{i}=", "answer": ANSWER,
         "content_hash": f"{split}-{x}{i}", "split": split, "n_tokens": 6}
        for x in letters for i in range(2)
    ]


def _write_documents(root: Path) -> None:
    documents = root / "data/curated/documents"
    documents.mkdir(parents=True)
    text = [{"source": "prose", "kind": TEXT_KIND, "task": None, "difficulty": None, "text": t,
             "prompt": None, "answer": None, "content_hash": f"text-{i}", "split": "test",
             "n_tokens": len(t) + 1} for i, t in enumerate(TEXTS)]
    splits = {"train": _task_rows("train", "abcdefgh"), "val": _task_rows("val", "ab"),
              "test": _task_rows("test", "abcd") + text, "test_ood": _task_rows("test_ood", "xyz")}
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA),
                       documents / f"{split}.parquet")


def _write_packed(root: Path) -> None:
    """Training blocks made by the curate stage's own encoder and packer."""
    tokenizer, info = load_tokenizer(root / "models/base")
    records = [task_record("trivial", str(i), f"{x}{i}=", ANSWER, "constant")
               for i in range(8) for x in "abcdefgh"]
    packer = BlockPacker(32, info.pad_token_id)
    blocks = [b for e in encode_records(records, tokenizer, info.eos_token_id)
              for b in packer.add(e)]
    packed = root / "data/curated/packed"
    packed.mkdir(parents=True)
    rows = [{"input_ids": b.ids, "loss_mask": b.mask, "loss_weight": b.weights} for b in blocks]
    pq.write_table(pa.Table.from_pylist(rows, schema=PACKED_SCHEMA), packed / "train.parquet")


def _train(root: Path, stage: str, arm: str) -> None:
    paths = Paths(base=root / "models/base", train_data=root / "data/curated/packed/train.parquet",
                  documents=root / "data/curated/documents", out=root / "models" / arm,
                  run=root / "runs" / arm)
    short = replace(TRAIN, max_steps=2)
    with Meter(stage, params_path=root / "params.yaml", out_dir=root / "metrics/cost",
               device="cpu", energy_methods=("tdp",)):
        if arm == "phase1":
            metrics = run_phase1(paths, TRM, PHASE1, TRAIN)
        elif arm == "lora":
            lora = LoraSettings(target_modules="all-linear", alpha_per_rank=2.0, dropout=0.0,
                                lr=3e-3)
            metrics = run_lora(paths, TRM, lora, short)
        else:
            metrics = run_llama_pro(paths, TRM, LlamaProSettings(blocks=None, lr=3e-3), short)
    (root / "metrics" / f"{stage}.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    prepare_base(BASE_SPEC, root / "models/base")
    params = {"trm": TRM.to_dict(), "train": TRAIN.__dict__, "evaluate": EVALUATE}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _write_documents(root)
    _write_packed(root)
    (root / "metrics").mkdir()
    _train(root, "train_phase1", "phase1")
    _train(root, "train_lora", "lora")
    _train(root, "train_llama_pro", "llama_pro")
    (root / "models/phase2").mkdir()
    (root / "models/phase2/skipped.json").write_text('{"skipped": true}\n')
    (root / "data/validated").mkdir(parents=True)
    (root / "data/validated/receipt.json").write_text(
        json.dumps({"success": True, "data_sha256": "d" * 64, "checks": 3}))
    (root / "metrics/validation.json").write_text(json.dumps(
        {"success": True, "data_sha256": "d" * 64, "checks_total": 3, "checks_failed": 0}))
    return root


def _stage_main(name: str, patch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    patch.syspath_prepend(str(REPO))  # `stages` is run from the repo root, not installed
    return importlib.import_module(f"stages.{name}").main


@pytest.fixture(scope="module")
def evaluated(workspace: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace)
        for arm in ("base", "phase1", "phase2", "lora", "llama_pro"):
            assert _stage_main("evaluate_arm", patch)([arm]) == 0
        assert _stage_main("evaluate", patch)([]) == 0
    yield workspace


def _arm_paths(root: Path) -> ArmPaths:
    models = root / "models"
    return ArmPaths(models / "base", models / "phase1", models / "phase2", models / "lora",
                    models / "llama_pro")


def _arm(root: Path, name: str):
    return load_arm(name, _arm_paths(root), *pad_batch(_prompts(root), 0, "left"))


def _prompts(root: Path) -> list[list[int]]:
    tokenizer, info = load_tokenizer(root / "models/base")
    return encode_prompts(["a0=", "xyz1=", "c1=", "b0="], tokenizer, info.eos_token_id)


def test_the_base_arm_computes_exactly_the_base(workspace: Path) -> None:
    ids, mask = pad_batch(_prompts(workspace), 0, "left")
    base, phase1 = _arm(workspace, "base"), _arm(workspace, "phase1")
    plain, _ = load_base(workspace / "models/base")
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, expected)
        trained = phase1(input_ids=ids, attention_mask=mask).logits
        plain.get_input_embeddings().weight[5] += 1e-3  # a base that is not this adapter's
    assert not torch.equal(trained, expected)
    with pytest.raises(BaseArmMismatch, match="would not be the base"):
        check_base_arm(phase1, plain, ids, mask)


def test_batched_left_padded_decoding_matches_one_at_a_time(workspace: Path) -> None:
    prompts = _prompts(workspace)
    phase1 = _arm(workspace, "phase1")
    _, info = load_tokenizer(workspace / "models/base")
    options = dict(max_new_tokens=5, eos_id=info.eos_token_id, pad_id=info.pad_token_id)
    batched = greedy_generate(phase1, prompts, batch_size=4, **options)
    single = greedy_generate(phase1, prompts, batch_size=1, **options)
    assert batched.continuations == single.continuations


def test_each_group_decodes_only_what_its_answers_need(workspace: Path) -> None:
    tokenizer, info = load_tokenizer(workspace / "models/base")
    examples = select_examples(read_split(workspace / "data/curated/documents", "test"), 8)
    scored = score_examples(_arm(workspace, "phase1"), tokenizer, examples, max_new_tokens=40,
                            batch_size=8, pad_id=info.pad_token_id)
    per_example = len(f" {ANSWER}") + 1 + ANSWER_SLACK  # byte tokens: " ok", EOS, slack
    assert scored.generated_tokens <= len(examples) * per_example
    assert len(scored.scores) == len(examples) == 8
    for score in scored.scores:  # exact implies prefix implies the first token was right
        assert score.prefix >= score.exact and score.first_token >= score.prefix
        assert score.answer_loss > 0


def test_a_trained_trm_beats_the_base_and_every_output_is_written(evaluated: Path) -> None:
    result = json.loads((evaluated / "metrics/eval.json").read_text())
    arms = result["arms"]
    assert set(arms) == {"base", "phase1", "lora", "llama_pro"}  # phase 2 was skipped
    phase1, base = arms["phase1"]["overall"]["all"], arms["base"]["overall"]["all"]
    assert phase1["accuracy"] > base["accuracy"]
    assert arms["phase1"]["task_loss"]["test"] < arms["base"]["task_loss"]["test"]
    cell = arms["phase1"]["tasks"]["constant"]
    assert cell["test"]["n"] == 8 and cell["test_ood"]["n"] == 6
    assert {"exact", "prefix", "first_token", "answer_loss"} <= set(cell["test"])
    assert arms["base"]["ppl_text_vs_base"] == 1.0
    assert arms["phase1"]["training"]["trainable_params"] > 0
    assert arms["llama_pro"]["training"]["trainable_params"] > 0
    assert arms["phase1"]["accuracy_gain_per_usd"] is not None
    assert set(result["comparisons"]) == {"phase1_vs_lora", "phase1_vs_llama_pro",
                                          "phase1_vs_base"}
    assert result["comparisons"]["phase1_vs_base"]["exact"]["n"] == 14
    for arm in ("base", "phase1", "lora", "llama_pro"):
        rows = pq.read_table(evaluated / f"data/eval/{arm}.parquet").to_pylist()
        assert len(rows) == 14 and {r["split"] for r in rows} == {"test", "test_ood"}
    assert json.loads((evaluated / "metrics/eval/phase2.json").read_text())["skipped"]
    for name in ("reports/figures/eval_accuracy.png", "reports/figures/eval_sweep.png"):
        assert (evaluated / name).read_bytes().startswith(b"\x89PNG")
    eval_md = (evaluated / "reports/eval.md").read_text()
    assert eval_md.startswith("- **TRM phase 1 vs LoRA: ")
    assert "- **TRM phase 1 vs base: WON.**" in eval_md
    card = (evaluated / "models/phase1/README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["datasets"] == ["trivial"]
    provenance = json.loads((evaluated / "models/base/provenance.json").read_text())
    assert provenance["state_sha256"] in card and "validated, 3/3 checks passed" in card
    for stage in ("evaluate_base", "evaluate_phase1", "evaluate_lora", "evaluate_llama_pro"):
        cost = json.loads((evaluated / f"metrics/cost/{stage}.json").read_text())
        assert cost["status"] == "ok" and cost["tokens"] > 0 and cost["flops"] > 0, stage
        planned = cost["planned"]  # made before scoring: an upper bound on what ran
        assert planned["tokens"] >= cost["tokens"] and planned["flops"] >= cost["flops"], stage
        assert planned["tokens"] < 2 * cost["tokens"], stage  # and not a loose one
        assert planned["wall_seconds"] > 0 and planned["peak_memory_bytes"] > 0, stage
    skipped = json.loads((evaluated / "metrics/cost/evaluate_phase2.json").read_text())
    assert skipped["status"] == "skipped"


def test_the_sweep_runs_the_depths_it_claims(evaluated: Path) -> None:
    rows = json.loads((evaluated / "metrics/eval_sweep.json").read_text())
    assert [(r["arm"], r["cycles"], r["latent_steps"]) for r in rows] == [
        ("phase1", 1, 2), ("phase1", 2, 1), ("phase1", 2, 2), ("phase1", 8, 2)]
    assert [r["trained_depth"] for r in rows] == [False, False, True, False]
    assert all(r["n"] == 4 for r in rows)
    phase1 = json.loads((evaluated / "metrics/eval/phase1.json").read_text())
    trained = next(r for r in rows if r["trained_depth"])
    for key in ("latency_ms_per_token_spread", "latency_vs_base_spread"):
        assert trained[key] == phase1[key]  # the trained depth is the arm, timed once
        assert all(r[key]["n"] == 3 and r[key]["warmup"] == 1 for r in rows)


def test_each_arm_is_timed_against_the_base_in_its_own_stage(evaluated: Path) -> None:
    arms = json.loads((evaluated / "metrics/eval.json").read_text())["arms"]
    assert arms["base"]["latency_vs_base"] == 1.0 and arms["base"]["speed_reference"] is None
    assert arms["base"]["latency_vs_base_spread"] is None
    assert arms["phase1"]["speed_reference"] == "the same hybrid with its TRM blocks off"
    for name in ("phase1", "lora", "llama_pro"):
        spread = arms[name]["latency_vs_base_spread"]
        assert (spread["n"], spread["warmup"]) == (3, 1), name
        assert spread["q1"] <= arms[name]["latency_vs_base"] == spread["median"] <= spread["q3"]
        assert arms[name]["latency_ms_per_token_spread"]["n"] == 3
    assert arms["lora"]["speed_reference"] == "models/base, loaded beside it"
    eval_md = (evaluated / "reports/eval.md").read_text()
    assert "| ms/token | ms/token x base |" in eval_md and "x1 (is the base)" in eval_md
    card = (evaluated / "models/phase1/README.md").read_text()
    assert "decode latency vs base (timed interleaved with the same hybrid, its blocks off): x" \
        in card


def test_each_arm_is_charged_the_flops_of_the_depth_it_runs(workspace: Path) -> None:
    base, phase1 = _arm(workspace, "base"), _arm(workspace, "phase1")
    shape = model_shape(base.config)
    plain = forward_flops_per_token(shape, 40).model
    assert flops_per_token(base, 40) == plain
    assert flops_per_token(_arm(workspace, "lora"), 40) == plain  # merged into the base
    expanded = _arm(workspace, "llama_pro")
    assert flops_per_token(expanded, 40) == forward_flops_per_token(
        model_shape(expanded.config), 40).model > plain  # its added layer runs too
    trained = flops_per_token(phase1, 40)
    with trm_disabled(phase1):
        assert flops_per_token(phase1, 40) == plain  # the speed reference runs no block
    with recursion_depth(phase1, Depth(cycles=8, latent_steps=2)):
        deeper = flops_per_token(phase1, 40)
    one_call = sum(trm_call_flops(TRM, 40))  # 2 x 3 calls trained, 8 x 3 in the sweep
    assert trained - plain == pytest.approx(forward_flops_per_token(shape, 40, TRM).trm_forward)
    assert deeper - trained == pytest.approx((8 - 2) * 3 * one_call)


LOCK = """\
schema: '2.0'
stages:
  train_phase1:
    cmd: python -m stages.train_phase1
    deps:
    - path: models/base
      md5: 0123456789abcdef0123456789abcdef.dir
    params:
      params.yaml:
        phase1.lr: 0.01
    outs:
    - path: models/phase1/trm.safetensors
      md5: fedcba9876543210fedcba9876543210
"""


def test_the_report_stage_summarises_cost_evaluation_and_lineage(evaluated: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(evaluated)
        (evaluated / "dvc.lock").write_text(LOCK)
        try:
            assert _stage_main("report", patch)([]) == 0
        finally:
            (evaluated / "dvc.lock").unlink()
    summary = (evaluated / "reports/summary.md").read_text()
    assert summary.startswith("- **TRM phase 1 vs LoRA: ")
    assert "## Lineage of `models/phase1`" in summary and "### 1. `train_phase1`" in summary
    assert "d" * 64 in summary  # the validated data's hash
    assert "| train_phase1 | ok |" in summary and "| evaluate | ok |" in summary
    assert (evaluated / "reports/cost.md").is_file()
    assert set(json.loads((evaluated / "metrics/cost.json").read_text())["stages"]) == {
        "evaluate", "evaluate_base", "evaluate_lora", "evaluate_llama_pro", "evaluate_phase1",
        "evaluate_phase2", "train_lora", "train_llama_pro", "train_phase1"}


def test_the_report_stage_needs_the_lineage_in_dvc_lock(
    evaluated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(evaluated)
        assert _stage_main("report", patch)([]) == 2
    assert "dvc.lock: not found" in capsys.readouterr().err


def test_an_answer_longer_than_max_new_tokens_names_the_params_file_read(
        workspace: Path) -> None:
    tokenizer, _ = load_tokenizer(workspace / "models/base")
    config = EvalConfig.from_params({**EVALUATE, "max_new_tokens": 1}, "custom.yaml")
    with pytest.raises(ParamsError, match=r"^custom\.yaml: 'evaluate\.max_new_tokens' is 1"):
        prepare_data(workspace / "data/curated/documents", tokenizer, config, "custom.yaml")


def test_the_model_card_is_hub_ready_and_its_loading_snippet_works(evaluated: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(evaluated / "models/phase1/README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "millennial" and data["license"] == "apache-2.0"
    assert data["datasets"] == ["trivial"] and "trm" in data["tags"] and data["base_model"]
    results = card.data.eval_results
    assert results and {r.metric_type for r in results} == {"exact_match"}
    eval_json = json.loads((evaluated / "metrics/eval.json").read_text())
    first = results[0]
    task, split = first.dataset_name, first.dataset_split
    assert first.metric_value == eval_json["arms"]["phase1"]["tasks"][task][split]["exact"][
        "accuracy"]
    snippet = card.content.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) == 3
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(evaluated)
        scope: dict[str, object] = {}
        exec(snippet, scope)  # the three lines, as a user would paste them
    assert trm_blocks(scope["model"])


def test_the_harness_scores_every_arm_and_agrees_with_our_exact_match(evaluated: Path) -> None:
    compared = json.loads((evaluated / "metrics/eval.json").read_text())
    learned = 0.0
    for arm in ("base", "phase1", "lora", "llama_pro"):
        harness = json.loads((evaluated / f"metrics/eval/{arm}.json").read_text())["harness"]
        assert compared["arms"][arm]["harness"] == harness
        rows = pq.read_table(evaluated / f"data/eval/{arm}.parquet").to_pylist()
        for split in ("test", "test_ood"):
            task = f"millennial_{split}"
            ours = [r["exact"] for r in rows if r["split"] == split]  # 8 per cell < 16: all
            assert harness["agreement"][task] == {"n": len(ours), "same": len(ours)}, arm
            assert harness["tasks"][task]["n"] == len(ours)
            assert harness["tasks"][task]["exact_match"] == pytest.approx(sum(ours) / len(ours))
            if arm == "phase1":
                learned += harness["tasks"][task]["exact_match"]
        assert harness["tokens"] > 0 and harness["lm_eval_version"]
    assert learned > 0  # the trained arm answers some: agreement is not all-wrong vs all-wrong


def test_a_hub_task_asked_for_offline_fails_at_once(workspace: Path) -> None:
    config = EvalConfig.from_params({**EVALUATE, "harness": {"hub_tasks": ["hellaswag"]}},
                                    "custom.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        with pytest.raises(ParamsError, match=r"^custom\.yaml: 'evaluate\.harness\.hub_tasks' "
                                              r"lists \['hellaswag'\].*offline"):
            evaluate_arm("base", EvalPaths(_arm_paths(workspace),
                                           workspace / "data/curated/documents"),
                         config, where="custom.yaml")
    for bad, message in (({"enabled": "yes"}, "enabled"), ({"max_examples": 0}, "max_examples"),
                         ({"hub_taks": []}, "hub_taks"), ({"hub_limit": -1}, "hub_limit")):
        with pytest.raises(ParamsError, match=message):
            EvalConfig.from_params({**EVALUATE, "harness": bad})


def test_the_harness_section_reads_as_params_yaml_spells_it() -> None:
    config = EvalConfig.from_params(
        {**EVALUATE, "harness": {"enabled": True, "max_examples": 4, "hub_tasks": [],
                                 "hub_limit": None}}).harness
    assert (config.enabled, config.max_examples, config.hub_tasks, config.hub_limit) == (
        True, 4, (), None)
    config = EvalConfig.from_params(
        {**EVALUATE, "harness": {"hub_tasks": ["hellaswag", "gsm8k"], "hub_limit": 50}}).harness
    assert (config.hub_tasks, config.hub_limit) == (("hellaswag", "gsm8k"), 50)
