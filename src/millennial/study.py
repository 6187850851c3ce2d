"""Design studies as DVC experiments: a grid of params overrides, queued, collected, reported.

A study file (YAML) names its variants; each is one `dvc exp run --queue -n <study>-<name>
-S key=value ...`, so every point is an ordinary DVC experiment: its params, metrics and
outputs live in the repository's experiment refs, `dvc exp show` lists them, and `dvc exp apply`
brings one back. `collect` reads the finished points from `dvc exp show --json` into
`reports/<study>.json`; `render` turns that file into the report and its figure, so a report
can be rebuilt, and checked, without the experiments themselves.

Each variant names the arm it tunes (phase1, lora or llama_pro), or `all` when it changes what
every arm trains on (the data mixture, a shared training setting). Variants of the `main` group
share one data set and one budget; the best of each arm is chosen among them on the validation
split (the training stage's held-out task loss), never on the test split the report then
quotes, and with the same rule for every arm. Other groups are side studies, reported beside.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from millennial.atomic import write_json, write_text
from millennial.params import Options, ParamsError

TUNED_ARMS = ("phase1", "lora", "llama_pro")
ALL_ARMS = "all"
MAIN_GROUP = "main"
ARM_LABELS = {"phase1": "TRM phase 1", "lora": "LoRA", "llama_pro": "LLaMA Pro"}
TRAINING_METRICS = {"phase1": "metrics/train_phase1.json", "lora": "metrics/train_lora.json",
                    "llama_pro": "metrics/train_llama_pro.json"}
EVAL_METRICS = "metrics/eval.json"


@dataclass(frozen=True)
class Variant:
    """One point of the grid: the arm it tunes and its params overrides (dotted keys)."""

    name: str
    arm: str  # one of TUNED_ARMS, or "all"
    overrides: dict[str, Any]
    note: str = ""
    group: str = MAIN_GROUP

    @property
    def arms(self) -> tuple[str, ...]:
        return TUNED_ARMS if self.arm == ALL_ARMS else (self.arm,)

    @property
    def set_args(self) -> list[str]:
        return [arg for key, value in self.overrides.items()
                for arg in ("-S", f"{key}={json.dumps(value)}")]


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    question: str
    variants: tuple[Variant, ...]
    rationale: str = ""  # why the defaults are what they are, in the author's words

    def experiment(self, variant: Variant) -> str:
        return f"{self.name}-{variant.name}"


def load_study(path: Path) -> Study:
    """Read a study file; every error names the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"{path}: cannot read the study: {err}") from err
    top = Options(raw, "study", path)
    top.only("name", "title", "question", "rationale", "variants")
    name = top.text("name")
    variants = []
    entries = top.get("variants")
    if not isinstance(entries, list) or not entries:
        raise top.error("variants", "must be a non-empty list")
    for index, entry in enumerate(entries):
        options = Options(entry, f"study.variants[{index}]", path)
        options.only("name", "arm", "set", "note", "group")
        overrides = options.get("set", {})
        if not isinstance(overrides, dict):
            raise options.error("set", "must be a mapping of dotted params keys to values")
        variants.append(Variant(options.text("name"),
                                options.choice("arm", (*TUNED_ARMS, ALL_ARMS)), dict(overrides),
                                str(options.get("note", "")), options.text("group", MAIN_GROUP)))
    names = [v.name for v in variants]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise top.error("variants", f"name variants twice: {', '.join(duplicated)}")
    return Study(name, top.text("title"), top.text("question"), tuple(variants),
                 str(top.get("rationale", "")))


def queue_commands(study: Study) -> list[list[str]]:
    """The `dvc exp run --queue` command of every variant (then `dvc queue start`)."""
    return [["dvc", "exp", "run", "--queue", "-n", study.experiment(v), *v.set_args]
            for v in study.variants]


def queue(study: Study, root: Path) -> list[str]:
    """Queue every variant that has no experiment yet (finished, running, queued or failed:
    `dvc exp remove` one to run it again); returns the experiments queued."""
    existing = set(known_experiments(show_experiments(root)))
    queued = []
    for variant, command in zip(study.variants, queue_commands(study), strict=True):
        if study.experiment(variant) in existing:
            continue
        done = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr.strip()}")
        queued.append(study.experiment(variant))
    return queued


# --------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class Point:
    """What one finished experiment measured for the arm its variant tunes."""

    variant: str
    arm: str
    group: str
    overrides: dict[str, Any]
    note: str
    experiment: str  # the experiment's name
    rev: str  # its commit
    trainable_params: int
    train_flops_per_token: float
    train_flops: float
    val_task_loss: float  # the selection criterion: held-out val split, from training
    task_loss: dict[str, float]  # test split and test_ood, mean over tasks
    exact: dict[str, dict[str, Any]]  # "all", split -> proportion
    exact_by_cell: dict[str, dict[str, dict[str, Any]]]  # task -> split -> proportion
    sweep: list[dict[str, Any]] = field(default_factory=list)  # test-time depth, TRM arms


Reader = Callable[[str, str], dict[str, Any]]  # (commit, path) -> the JSON file at that commit


def point_from(read: Reader, rev: str, variant: Variant, arm_name: str,
               experiment: str) -> Point:
    """What one experiment's metric files (at its commit) say of one arm."""
    evaluation = read(rev, EVAL_METRICS)
    training = read(rev, TRAINING_METRICS[arm_name])
    arm = evaluation["arms"][arm_name]
    sweep = read(rev, "metrics/eval/phase1.json").get("sweep", []) if arm_name == "phase1" else []
    return Point(
        variant=variant.name, arm=arm_name, group=variant.group, overrides=variant.overrides,
        note=variant.note, experiment=experiment, rev=rev,
        trainable_params=int(training["trainable_params"]),
        train_flops_per_token=float(training["flops_per_token"]),
        train_flops=float(training["flops_per_token"]) * float(training["tokens"]),
        val_task_loss=float(training["val_task_loss_after"]),
        task_loss=dict(arm["task_loss"]),
        exact=arm["overall"],
        exact_by_cell={task: {split: cell["exact"] for split, cell in splits.items()}
                       for task, splits in arm["tasks"].items()},
        sweep=sweep,
    )


def _entries(shown: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(name, state, newest rev record) of every experiment in `dvc exp show --json` output."""
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            if revs:
                yield (experiment.get("name") or revs[0].get("name"),
                       (experiment.get("executor") or {}).get("state", "success"), revs[0])


def known_experiments(shown: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Experiment name -> state (success, running, queued, failed) in `dvc exp show --json`."""
    return {name: state for name, state, _ in _entries(shown)}


def finished_experiments(shown: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Experiment name -> commit of every finished experiment in `dvc exp show --json` output
    (queued, running and failed ones are left out)."""
    return {name: record["rev"] for name, state, record in _entries(shown)
            if name and state == "success" and not record.get("error")}


def collect_records(study: Study, shown: Sequence[Mapping[str, Any]],
                    read: Reader) -> tuple[list[Point], list[str]]:
    """Points of every finished variant, and the variants still missing (queued, running or
    failed). The metric files are read from each experiment's own commit: `dvc exp show`
    keeps only their numbers, not the recursion sweep's rows."""
    finished = finished_experiments(shown)
    points, missing = [], []
    for variant in study.variants:
        name = study.experiment(variant)
        if name not in finished:
            missing.append(variant.name)
            continue
        try:
            points += [point_from(read, finished[name], variant, arm, name)
                       for arm in variant.arms]
        except KeyError:  # an experiment that stopped before writing its metrics
            missing.append(variant.name)
    return points, missing


def git_reader(root: Path) -> Reader:
    @functools.cache  # an `all` variant reads the same eval.json once per arm
    def read(rev: str, path: str) -> dict[str, Any]:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True,
                               text=True)
        if shown.returncode != 0:
            raise KeyError(path)
        return json.loads(shown.stdout)
    return read


def show_experiments(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json` over all commits of the repository at `root`."""
    shown = subprocess.run(["dvc", "exp", "show", "--json", "-A"], cwd=root,
                           capture_output=True, text=True)
    if shown.returncode != 0:
        raise RuntimeError(f"dvc exp show failed:\n{shown.stderr.strip()}")
    return json.loads(shown.stdout)


def collect(study: Study, root: Path) -> tuple[list[Point], list[str]]:
    """`collect_records` over the experiments of the repository at `root`."""
    return collect_records(study, show_experiments(root), git_reader(root))


def save_points(points: Sequence[Point], path: Path) -> None:
    write_json(path, [asdict(p) for p in points])


def load_points(path: Path) -> list[Point]:
    return [Point(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))]


# --------------------------------------------------------------------------- choosing


def best_per_arm(points: Sequence[Point]) -> dict[str, Point]:
    """Each arm's main-group variant with the lowest validation task loss (the same rule for
    every arm, on the same data)."""
    best: dict[str, Point] = {}
    for point in (p for p in points if p.group == MAIN_GROUP):
        if point.arm not in best or point.val_task_loss < best[point.arm].val_task_loss:
            best[point.arm] = point
    return best


# --------------------------------------------------------------------------- rendering


def _pct(cell: Mapping[str, Any]) -> str:
    return (f"{100 * cell['accuracy']:.1f}% [{100 * cell['low']:.0f}, {100 * cell['high']:.0f}]"
            if cell.get("accuracy") is not None else "-")


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _settings(overrides: Mapping[str, Any]) -> str:
    shown = ", ".join(f"`{key}={json.dumps(value)}`" for key, value in overrides.items())
    return shown or "defaults"


def verdict(best: Mapping[str, Point]) -> list[str]:
    """The report's first lines: the best TRM variant against the best of each baseline."""
    if "phase1" not in best:
        return ["**No TRM variant finished: the study has no verdict yet.**"]
    trm = best["phase1"]
    lines = []
    for rival in ("lora", "llama_pro"):
        if rival not in best:
            continue
        other = best[rival]
        ours, theirs = trm.exact["all"], other.exact["all"]
        loss_gap = trm.task_loss["test"] - other.task_loss["test"]
        if _overlap(ours, theirs):
            exact_word = "no difference in exact match"
        elif ours["accuracy"] > theirs["accuracy"]:
            exact_word = "more exact answers"
        else:
            exact_word = "fewer exact answers"
        ood_wins = [task for task, splits in trm.exact_by_cell.items()
                    if "test_ood" in splits and task in other.exact_by_cell
                    and splits["test_ood"]["low"] > other.exact_by_cell[task]["test_ood"]["high"]]
        lines.append(
            f"- **Best TRM variant (`{trm.variant}`) vs best {ARM_LABELS[rival]} "
            f"(`{other.variant}`): {exact_word}** ({_pct(ours)} vs {_pct(theirs)}, "
            f"n = {ours['n']}); mean test task loss {trm.task_loss['test']:.3f} vs "
            f"{other.task_loss['test']:.3f} ({loss_gap:+.3f}); out of distribution it beats "
            f"{ARM_LABELS[rival]} outright on "
            f"{', '.join(ood_wins) if ood_wins else 'no task'}. Trainable parameters "
            f"{trm.trainable_params:,} vs {other.trainable_params:,}; training FLOPs per token "
            f"{trm.train_flops_per_token:.3g} vs {other.train_flops_per_token:.3g}.")
    return lines


def goal(best: Mapping[str, Point], params: Mapping[str, Any],
         comparisons: Mapping[str, Any] | None) -> list[str]:
    """The issue's bar, tested on the paired comparison of the reference run: the best TRM at
    least matches the best LoRA on mean test task loss and exact match, and beats it out of
    distribution on one task. Paired figures exist only once params.yaml holds both best
    variants (the reference run then compared exactly them)."""
    if "phase1" not in best or "lora" not in best:
        return []
    trm, lora = best["phase1"], best["lora"]
    paired = (comparisons or {}).get("phase1_vs_lora")
    if _differing(trm, params) or _differing(lora, params) or paired is None:
        return [f"**The goal is not decided yet:** params.yaml does not hold both best variants "
                f"(`{trm.variant}`, `{lora.variant}`) with a reference run comparing them, so "
                "there is no paired comparison; the unpaired figures follow."]
    exact, loss = paired["exact"], paired["task_loss"]["test"]
    exact_worse = exact["established"] and exact["difference"] < 0
    loss_worse = loss["established"] and loss["difference"] > 0
    ood_wins = [task for task, splits in sorted(paired["exact_by_cell"].items())
                if "test_ood" in splits and splits["test_ood"]["established"]
                and splits["test_ood"]["difference"] > 0]
    met = not exact_worse and not loss_worse and bool(ood_wins)

    def word(worse: bool, cell: Mapping[str, Any], better: bool) -> str:
        return "loses" if worse else "wins" if cell["established"] and better else "ties"

    return [
        f"**The goal is {'met' if met else 'not met'}.** At its best setting found "
        f"(`{trm.variant}`) the TRM phase-1 arm {word(loss_worse, loss, loss['difference'] < 0)}"
        f" against the best LoRA (`{lora.variant}`) on mean test task loss "
        f"({loss['difference']:+.3f} nats [{loss['low']:+.3f}, {loss['high']:+.3f}], "
        f"n = {loss['n']}), {word(exact_worse, exact, exact['difference'] > 0)} on exact match "
        f"({100 * exact['difference']:+.1f} pts [{100 * exact['low']:+.1f}, "
        f"{100 * exact['high']:+.1f}], n = {exact['n']}) and beats it out of distribution on "
        f"{', '.join(ood_wins) if ood_wins else 'no task'} (paired 95% intervals from the "
        "reference run, `reports/eval.md`; ties are differences inside the intervals).", ""]


def _table(points: Sequence[Point], best: Mapping[str, Point]) -> list[str]:
    tasks = sorted({task for p in points for task in p.exact_by_cell})
    header = ["arm", "variant", "settings", "trainable", "train FLOPs/token", "val task loss",
              "test task loss", "OOD task loss", "exact (all)", "exact OOD",
              *(f"{task} OOD" for task in tasks)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for point in sorted(points, key=lambda p: (TUNED_ARMS.index(p.arm), p.val_task_loss)):
        chosen = " **(best)**" if best.get(point.arm) is point else ""
        lines.append("| " + " | ".join([
            ARM_LABELS[point.arm], f"`{point.variant}`{chosen}", _settings(point.overrides),
            f"{point.trainable_params:,}", f"{point.train_flops_per_token:.3g}",
            f"{point.val_task_loss:.3f}", f"{point.task_loss.get('test', math.nan):.3f}",
            f"{point.task_loss.get('test_ood', math.nan):.3f}", _pct(point.exact["all"]),
            _pct(point.exact.get("test_ood", {})),
            *(_pct(point.exact_by_cell.get(task, {}).get("test_ood", {})) for task in tasks),
        ]) + " |")
    return lines


def _sweep_lines(point: Point) -> list[str]:
    if not point.sweep:
        return ["The chosen TRM variant recorded no recursion sweep."]
    lines = ["| cycles T | latent steps n | f calls / token | exact OOD [95% CI] | answer loss |",
             "| --- | --- | --- | --- | --- |"]
    for row in sorted(point.sweep, key=lambda r: (r["latent_steps"], r["cycles"])):
        marker = " (trained)" if row["trained_depth"] else ""
        lines.append(f"| {row['cycles']}{marker} | {row['latent_steps']} | "
                     f"{row['f_calls_per_token']} | {_pct(row)} | {row['answer_loss']:.3f} |")
    by_cycles = sorted((r for r in point.sweep
                        if r["latent_steps"] == next(s for s in point.sweep
                                                     if s["trained_depth"])["latent_steps"]),
                       key=lambda r: r["cycles"])
    rising = all(b["accuracy"] >= a["accuracy"] for a, b in itertools.pairwise(by_cycles))
    distinct = not all(_overlap(by_cycles[0], r) for r in by_cycles[1:])
    if rising and distinct:
        summary = "OOD accuracy rises with test-time cycles, beyond the intervals."
    elif distinct:
        summary = "OOD accuracy changes with test-time cycles, but does not rise steadily."
    else:
        summary = ("OOD accuracy does not change with test-time cycles beyond the intervals: "
                   "more recursion at test time buys nothing measurable here.")
    return [*lines, "", summary]


def plot(points: Sequence[Point], path: Path) -> None:
    """Test task loss and exact match against trainable parameters and training FLOPs."""
    from matplotlib.figure import Figure  # only the report needs it, not every CLI start

    figure = Figure(figsize=(11.0, 8.0))
    axes = figure.subplots(2, 2)
    for arm in TUNED_ARMS:
        mine = [p for p in points if p.arm == arm]
        if not mine:
            continue
        for row, (label, value) in enumerate((
                ("mean test task loss (nats)", lambda p: p.task_loss["test"]),
                ("exact match (all)", lambda p: p.exact["all"]["accuracy"]))):
            for column, (xlabel, x) in enumerate((
                    ("trainable parameters", lambda p: p.trainable_params),
                    ("training FLOPs (total)", lambda p: p.train_flops))):
                ax = axes[row][column]
                ax.scatter([x(p) for p in mine], [value(p) for p in mine], label=ARM_LABELS[arm])
                ax.set_xscale("log")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
    for ax in axes.flat:
        ax.legend(fontsize="small")
    figure.suptitle("Study points by arm: lower loss, higher exact match are better")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})


def _lookup(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _differing(point: Point, params: Mapping[str, Any]) -> list[str]:
    return [f"`{key}` is {json.dumps(_lookup(params, key))}, best {json.dumps(value)}"
            for key, value in point.overrides.items() if _lookup(params, key) != value]


def defaults_check(best: Mapping[str, Point], params: Mapping[str, Any]) -> list[str]:
    """Does params.yaml hold each arm's best variant? One line per arm, differences named."""
    lines = []
    for arm, point in best.items():
        differing = _differing(point, params)
        if differing:
            lines.append(f"- {ARM_LABELS[arm]}: params.yaml differs from the best variant "
                         f"`{point.variant}`: {'; '.join(differing)}.")
        else:
            lines.append(f"- {ARM_LABELS[arm]}: params.yaml holds the best variant "
                         f"`{point.variant}` ({_settings(point.overrides)}).")
    return lines


def render(study: Study, points: Sequence[Point], missing: Sequence[str], figure: str,
           commands: Sequence[str], params: Mapping[str, Any],
           comparisons: Mapping[str, Any] | None = None) -> str:
    """The study report: verdict, table, recursion sweep, chosen defaults, how to reproduce.

    `comparisons` are the reference run's paired comparisons (`metrics/eval.json`)."""
    best = best_per_arm(points)
    lines = [*goal(best, params, comparisons), *verdict(best), "", f"# {study.title}", "",
             study.question, "",
             f"{len({p.variant for p in points})} of {len(study.variants)} variants finished"
             + (f"; missing: {', '.join(missing)}." if missing else "."),
             "Each arm's best variant is the one with the lowest held-out **validation** task loss "
             "(selection never looks at the test split). Exact match carries 95% Wilson "
             "intervals; the paired comparison of the chosen defaults is in `reports/eval.md`.",
             "", "## Results", "",
             *_table([p for p in points if p.group == MAIN_GROUP], best), "",
             f"![study points]({figure})", ""]
    for group in sorted({p.group for p in points} - {MAIN_GROUP}):
        lines += [f"## Side study: {group}", "",
                  "Not part of the selection above: these variants change what every arm "
                  "trains on or with.", "",
                  *_table([p for p in points if p.group == group], {}), ""]
    if "phase1" in best:
        lines += ["## Recursion at test time (best TRM variant)", "",
                  *_sweep_lines(best["phase1"]), ""]
    lines += ["## Chosen defaults", "", *defaults_check(best, params), ""]
    if study.rationale:
        lines += [study.rationale.strip(), ""]
    lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    notes = list(dict.fromkeys(f"- `{p.variant}`: {p.note}" for p in points if p.note))
    if notes:
        lines += ["## Notes on variants", "", *notes, ""]
    return "\n".join(lines)


def reproduce_commands(study_path: Path) -> list[str]:
    return [
        "make install   # then the offline environment of the Makefile",
        f"millennial study queue {study_path}",
        "dvc queue start --jobs 1   # one experiment at a time on a 2-core machine",
        "dvc queue status           # until every experiment is done",
        f"millennial study report {study_path} --collect",
    ]


def outputs(study_path: Path) -> tuple[Path, Path, Path]:
    """Where a study's points, report and figure go: beside the study file."""
    folder = study_path.parent
    return (folder / f"{study_path.stem}.json", folder / f"{study_path.stem}.md",
            folder / "figures" / f"{study_path.stem}.png")


def write_report(study_path: Path, params_path: Path, collect_from: Path | None) -> Path:
    """Collect the points from DVC (or reuse the saved ones) and write report and figure."""
    study = load_study(study_path)
    points_path, report_path, figure_path = outputs(study_path)
    if collect_from is not None:
        points, missing = collect(study, collect_from)
        save_points(points, points_path)
    else:
        if not points_path.is_file():
            raise FileNotFoundError(f"{points_path}: no collected points; pass --collect")
        points = load_points(points_path)
        found = {p.variant for p in points}
        missing = [v.name for v in study.variants if v.name not in found]
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    reference = params_path.parent / EVAL_METRICS
    comparisons = (json.loads(reference.read_text(encoding="utf-8")).get("comparisons")
                   if reference.is_file() else None)
    plot(points, figure_path)
    relative = figure_path.relative_to(report_path.parent).as_posix()
    write_text(report_path, render(study, points, missing, relative,
                                   reproduce_commands(study_path), params, comparisons))
    return report_path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("study", help="design studies as queued DVC experiments")
    actions = parser.add_subparsers(dest="action", required=True)
    queue_parser = actions.add_parser("queue", help="queue every variant (dvc exp run --queue)")
    queue_parser.add_argument("study", type=Path)
    queue_parser.set_defaults(func=_queue)
    report_parser = actions.add_parser("report", help="write the study's report and figure")
    report_parser.add_argument("study", type=Path)
    report_parser.add_argument("--collect", action="store_true",
                               help="read finished experiments from `dvc exp show` first")
    report_parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    report_parser.set_defaults(func=_report)


def _queue(args: argparse.Namespace) -> int:
    try:
        queued = queue(load_study(args.study), Path("."))
    except (ParamsError, RuntimeError) as err:
        print(f"millennial study: error: {err}", file=sys.stderr)
        return 2
    print(f"queued {len(queued)} experiment(s): {', '.join(queued) or 'none new'}; run "
          "`dvc queue start --jobs 1`")
    return 0


def _report(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.study, args.params, Path(".") if args.collect else None)
    except (ParamsError, FileNotFoundError, RuntimeError) as err:
        print(f"millennial study: error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: written")
    return 0
