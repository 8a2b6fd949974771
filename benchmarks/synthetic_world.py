"""The paper end to end on the synthetic world: accuracy vs. tokens for every strategy.

Builds (or loads) the embedded default model, generates a held-out benchmark of large
synthetic scenes (8k-32k px) with template questions in the LRS-VQA format, and runs
every strategy through the same resumable evaluation harness side by side:
thumbnail only, fixed anyres grids, full resolution (every finest tile, where it fits),
coarse-to-fine with the distilled RFM and coarse-to-fine training-free.

Prints one table: accuracy by category, overall (OA) and average (AA) accuracy,
vision tokens encoded, tokens into the LLM, seconds per question, and localisation
recall (share of questions whose target box is covered by a selected finest tile).
Answers (and ``results.json``) are kept in the cache folder, one sub-folder per trained
model and one file per row's options, so an interrupted run resumes and a new recipe
starts afresh.

    python benchmarks/synthetic_world.py [--questions 400] [--scenes 24] [--only fullres]
        [--min-side 8192] [--max-side 32768] [--max-aspect 8] [--objects 8,16] [--seed 7]
        [--alpha 0.1] [--max-tiles 80] [--grid-tiles 144]
        [--ablations] [--fullres] [--model DIR [--rfm DIR]] [--markdown docs/results/FILE.md]

Rows: thumbnail; anyres-p4/p9/p25; the paper's Tab. 3/4 peers (VisionZip, PruMerge++,
FastV, PDrop) on an anyres-p144 grid; full resolution (``--fullres``, where it fits);
for a Qwen-VL ``--model``, ``native`` (its own dynamic resolution under Qwen2-VL's
recommended 1280 x 28 x 28 px budget, the paper's Fig. 5 setting); c2f-nodip; c2f with
the distilled RFM and training-free; with ``--ablations`` the paper's Tab. 5 (RFM
pruning without DIP at retain ratios 25-90%) and Tab. 6 (DIP of a fixed depth 2-5
against the dynamic one).

``--only`` runs some strategies (by name, comma-separated), e.g. full resolution in one
process and the rest in another, and prints the table of what it ran; a last run
without it finds every answer and prints them all.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lrsvqa.app.shipped import resolve_default_model
from lrsvqa.bench.runner import EvalConfig, evaluate
from lrsvqa.bench.scoring import RULES
from lrsvqa.bench.templates import QUESTION_KINDS, generate_questions, question_kind
from lrsvqa.labels import LabeledObject
from lrsvqa.models.auto import checkpoint_model_type
from lrsvqa.models.qwen_adapter import is_qwen_vl
from lrsvqa.synthetic.world import generate_world
from lrsvqa.types import write_lrsvqa_jsonl

CACHE = Path(__file__).resolve().parent / ".cache" / "synthetic_world"
CATEGORIES = (
    "object color",
    "object category",
    "object shape",
    "object background",
    "rural or urban",
    "object position",
    "count",
)


def _round_robin(queues: list[list[dict]], limit: int) -> list[dict]:
    """Up to ``limit`` records, the next of each queue in turn, so no queue crowds the rest."""
    taken: list[dict] = []
    while len(taken) < limit and any(queues):
        for queue in queues:
            if queue and len(taken) < limit:
                taken.append(queue.pop(0))
    return taken


def sample_by_kind(per_scene: list[list[dict]], limit: int) -> list[dict]:
    """``limit`` questions, each kind an equal share, round-robin over the scenes.

    Every reference kind and count gets ``limit // len(QUESTION_KINDS)`` (the first kinds one
    more for the remainder), so each is a quarter of the benchmark and can be scored on
    its own; a kind that the scenes cannot fill leaves its shortfall to the others.
    Within a scene, questions keep their template order, which alternates categories.
    """
    queues = {
        kind: [[q for q in qs if question_kind(q) == kind] for qs in per_scene]
        for kind in QUESTION_KINDS
    }
    share, remainder = divmod(limit, len(QUESTION_KINDS))
    records = [
        record
        for index, kind in enumerate(QUESTION_KINDS)
        for record in _round_robin(queues[kind], share + (index < remainder))
    ]
    # The shortfall: scene by scene, the kinds in turn.
    leftovers = [queue for scene in zip(*queues.values(), strict=True) for queue in scene]
    return records + _round_robin(leftovers, limit - len(records))


def benchmark_questions(world: Path, manifest: dict, limit: int, seed: int) -> Path:
    """Template questions over the held-out scenes, an equal share per kind, in one file."""
    per_scene = []
    for index, entry in enumerate(manifest["scenes"]):
        labels = json.loads((world / entry["labels"]).read_text())
        objects = [LabeledObject.from_dict(o) for o in labels]
        per_scene.append(
            generate_questions(
                objects,
                entry["image"],
                (entry["height"], entry["width"]),
                seed=seed + index,
                categories=CATEGORIES,
                max_per_image=None,
            )
        )
    records = sample_by_kind(per_scene, limit)
    records.sort(key=lambda r: r["image"])  # questions on one image share its prepared pyramid
    for number, record in enumerate(records):
        record["question_id"] = f"SYN_{number}"  # one subset, "SYN"
    path = world / "questions.jsonl"
    write_lrsvqa_jsonl(records, path)
    return path


def _object_range(text: str) -> tuple[int, int]:
    """``MIN,MAX`` objects per scene, for ``--objects``."""
    low, high = (int(part) for part in text.split(","))
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--min-side", type=int, default=8192, help="shortest long side")
    parser.add_argument("--max-side", type=int, default=32768, help="longest long side")
    parser.add_argument("--seed", type=int, default=7, help="benchmark world seed")
    parser.add_argument("--max-aspect", type=float, default=8.0, help="long over short side, up to")
    # 8-16 objects: enough categories per scene for a quarter of count questions
    parser.add_argument("--objects", type=_object_range, default=(8, 16), help="MIN,MAX per scene")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--max-tiles", type=int, default=80, help="c2f N_max")
    parser.add_argument("--out", type=Path, default=CACHE)
    parser.add_argument("--home", type=Path, default=None, help="default-model cache root")
    parser.add_argument("--only", default="", help="comma-separated strategies to run")
    parser.add_argument("--grid-tiles", type=int, default=144, help="grid of the Tab. 3/4 peers")
    parser.add_argument("--ablations", action="store_true", help="add the paper's Tab. 5 and 6")
    parser.add_argument("--fullres", action="store_true", help="add full resolution (8k only)")
    parser.add_argument("--model", type=Path, default=None, help="another model folder")
    parser.add_argument("--rfm", type=Path, default=None, help="its distilled RFM folder")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    console = Console(width=200)
    tables = Console(width=260, record=True, file=io.StringIO())  # the tables, for --markdown

    trained = resolve_default_model(args.home, log=console.print)
    manifest = generate_world(
        args.out / "world",
        num_scenes=args.scenes,
        min_side=args.min_side,
        max_side=args.max_side,
        seed=args.seed,
        split="bench",
        objects=args.objects,
        max_aspect=args.max_aspect,
        log=console.print,
    )
    world = args.out / "world" / "bench"
    questions = benchmark_questions(world, manifest, args.questions, args.seed)
    asked = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    console.print(f"{len(asked)} questions by kind: {dict(Counter(map(question_kind, asked)))}")
    console.print(f"by category: {dict(Counter(r['category'] for r in asked))}")
    model_dir = args.model or trained.model_dir
    rfm_dir = args.rfm or (trained.rfm_dir if args.model is None else None)
    model = {"model_path": str(model_dir), "max_new_tokens": 8}
    c2f = {"alpha": args.alpha, "max_tiles": args.max_tiles}
    rfm = {"rfm_path": str(rfm_dir)} if rfm_dir else {}
    native = is_qwen_vl(checkpoint_model_type(model_dir) or "")
    runs = benchmark_runs(c2f, rfm, args.grid_tiles, args.ablations, args.fullres, native)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    known = {strategy for strategy, _ in runs.values()}
    if only - known:
        parser.error(f"unknown strategies {sorted(only - known)}; choose from {sorted(known)}")
    # Answers are per model: a new recipe must not resume from another model's answers.
    answers = (
        args.out
        / "answers"
        / (
            f"{trained.root.name}-{trained.distill_key}"
            if args.model is None
            else f"{args.model.resolve().parent.name}-{args.model.name}"
        )
    )
    reports, outputs = {}, {}
    for label, (strategy, options) in runs.items():
        if only and strategy not in only:
            continue
        console.rule(label)
        slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
        # Other options (alpha, N_max, ...) go to another file: the run record refuses them.
        digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
        output = answers / f"{slug}-{digest}.jsonl"
        outcome = evaluate(
            EvalConfig(
                bench="lrs-vqa",
                questions=questions,
                data_root=world,
                output=output,
                strategy=strategy,
                strategy_options={**model, **options},
            )
        )
        reports[label] = outcome.report.to_dict()
        outputs[label] = output
    title = (
        f"synthetic world: {len(manifest['scenes'])} held-out scenes, {args.questions} questions"
    )
    print_table((console, tables), reports, title)
    kinds = by_reference_kind(questions, outputs)
    print_kind_table((console, tables), kinds, "accuracy and localisation recall by reference kind")
    fits = {}
    if "full resolution" in outputs:
        fits = fitting_subset(questions, outputs, "full resolution")
        fitted = fits["full resolution"]["groups"]["SYN"]["items"]
        print_table((console, tables), fits, f"the {fitted} questions where full resolution fits")
    if args.markdown is not None:
        write_markdown(args.markdown, tables, args, model_dir, rfm_dir)
    (answers / "results.json").write_text(
        json.dumps(
            {"all": reports, "by_reference_kind": kinds, "full_resolution_fits": fits}, indent=2
        )
        + "\n"
    )


def benchmark_runs(
    c2f: dict, rfm: dict, grid_tiles: int, ablations: bool, fullres: bool, native: bool = False
) -> dict[str, tuple[str, dict]]:
    """Every row: label -> (strategy, options). The paper's peers run on a ``grid_tiles`` grid.

    ``native`` (a Qwen-VL model's own dynamic resolution) only where the model has one.
    """
    grid = {"grid_tiles": grid_tiles}
    runs: dict[str, tuple[str, dict]] = {
        "thumbnail": ("thumbnail", {}),
        "anyres-p4": ("anyres-p4", {}),
        "anyres-p9": ("anyres-p9", {}),
        "anyres-p25": ("anyres-p25", {}),
        f"anyres-p{grid_tiles} + VisionZip": ("visionzip", grid),
        f"anyres-p{grid_tiles} + PruMerge++": ("prumerge++", grid),
        f"anyres-p{grid_tiles} + FastV": ("fastv", grid),
        f"anyres-p{grid_tiles} + PDrop": ("pdrop", grid),
    }
    if fullres:
        runs["full resolution"] = ("fullres", {"max_tiles": 700})
    if native:
        runs["native"] = ("native", {})
    runs[f"c2f-nodip (p{grid_tiles})"] = ("c2f-nodip", {**rfm, **grid, "alpha": c2f["alpha"]})
    if rfm:
        runs["c2f (distilled RFM)"] = ("c2f", {**rfm, **c2f})
    runs["c2f (training-free)"] = ("c2f", c2f)
    if ablations:  # Tab. 5: RFM pruning without DIP; Tab. 6: fixed DIP depth
        for ratio in (0.25, 0.5, 0.75, 0.9):
            options = {**rfm, **grid, "alpha": ratio}
            runs[f"Tab.5 no DIP, retain {ratio:.0%}"] = ("c2f-nodip", options)
        for depth in (2, 3, 4, 5):
            runs[f"Tab.6 DIP fixed {depth} layers"] = ("c2f", {**rfm, **c2f, "fixed_layers": depth})
    return runs


def write_markdown(path: Path, console: Console, args: argparse.Namespace, model, rfm) -> None:
    """The printed tables, with the command and the model that made them."""
    command = " ".join(["python benchmarks/synthetic_world.py", *sys.argv[1:]])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Synthetic world benchmark, seed {args.seed}\n\n"
        f"Command: `{command}`\n\nModel: `{model}`; RFM: `{rfm}`\n\n"
        f"```\n{console.export_text()}```\n"
    )


def fitting_subset(questions: Path, outputs: dict[str, Path], reference: str) -> dict:
    """Every strategy re-scored on the questions the reference answered without error."""
    from lrsvqa.bench.datasets import load_lrs_vqa
    from lrsvqa.bench.reports import score_answers

    def records(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    answered = {r["question_id"] for r in records(outputs[reference]) if not r.get("error")}
    items = [item for item in load_lrs_vqa(questions) if item.question_id in answered]
    return {label: score_answers(records(path), items).to_dict() for label, path in outputs.items()}


def by_reference_kind(questions: Path, outputs: dict[str, Path]) -> dict[str, dict]:
    """Every strategy scored separately on the questions of each reference kind."""
    from lrsvqa.bench.datasets import load_lrs_vqa
    from lrsvqa.bench.reports import score_answers

    kind_of = {
        json.loads(line)["question_id"]: question_kind(json.loads(line))
        for line in questions.read_text().splitlines()
        if line.strip()
    }
    items = load_lrs_vqa(questions)
    out: dict[str, dict] = {}
    for kind in sorted(set(kind_of.values())):
        subset = [item for item in items if kind_of[item.question_id] == kind]
        out[kind] = {
            label: score_answers(
                [json.loads(x) for x in path.read_text().splitlines() if x.strip()], subset
            ).to_dict()
            for label, path in outputs.items()
        }
    return out


def print_kind_table(consoles: tuple[Console, ...], kinds: dict[str, dict], title: str) -> None:
    """One row per strategy: OA and localisation recall on each reference kind."""
    table = Table(title=title)
    table.add_column("strategy")
    for kind, reports in kinds.items():
        items = next(iter(reports.values()))["groups"]["SYN"]["items"]
        table.add_column(f"{kind} OA (n={items})", justify="right")
        table.add_column(f"{kind} loc.", justify="right")
    for label in next(iter(kinds.values())):
        row = [label]
        for reports in kinds.values():
            report = reports[label]
            loc = report["localisation_recall"]
            row.append(f"{100 * report['groups']['SYN']['overall_accuracy']:.1f}")
            row.append(f"{100 * loc['recall']:.1f}" if loc else "-")
        table.add_row(*row)
    for console in consoles:
        console.print(table)


def print_table(consoles: tuple[Console, ...], reports: dict, title: str) -> None:
    """One row per strategy: accuracy by category, OA/AA (paper rule, then normalised), costs."""
    table = Table(title=title)
    categories = sorted({c for r in reports.values() for c in r["groups"]["SYN"]["categories"]})
    for column in (
        "strategy",
        *categories,
        "OA paper",
        "AA paper",
        "OA norm.",
        "AA norm.",
        "errors",
        "vision tok.",
        "LLM tok.",
        "s/q",
        "loc. recall",
    ):
        table.add_column(column, justify="right")
    for label, report in reports.items():
        group = report["groups"]["SYN"]
        cats = group["categories"]
        cost = report["cost"]
        loc = report["localisation_recall"]
        table.add_row(
            label,
            *(f"{100 * cats[c]['accuracy']:.1f}" if c in cats else "-" for c in categories),
            *(
                f"{100 * group['by_rule'][rule][key]:.1f}"
                for rule in RULES
                for key in ("overall_accuracy", "average_accuracy")
            ),
            str(group["errors"]),
            f"{cost.get('vision_tokens_encoded', 0):.0f}",
            f"{cost.get('tokens_to_llm', 0):.0f}",
            f"{cost.get('seconds', 0):.2f}",
            f"{100 * loc['recall']:.1f}" if loc else "-",
        )
    for console in consoles:
        console.print(table)


if __name__ == "__main__":
    main()
