r"""LRS-VQA and MME-RealWorld-RS as lmms-eval tasks on local files, scored with the paper's rule.

:func:`write_tasks` turns a question file into a task folder for
``lmms-eval --include_path``: one task per part, ``NAME_<subset>``, each a JSON Lines
file of its docs (image paths made absolute against the data root) and a YAML config,
and a group ``NAME`` of all parts.

* LRS-VQA (``--bench lrs-vqa``, the official ``LRS_VQA_merged.jsonl`` or the synthetic
  benchmark's file): the group ``lrs_vqa`` of ``lrs_vqa_fair``,
  ``lrs_vqa_glh_bridge``, ``lrs_vqa_star``.
* MME-RealWorld-RS (``--bench mme-rs``, ``MME_RealWorld_RS.json``): the group
  ``mme_realworld_rs`` of ``mme_realworld_rs_remote_sensing`` (one part per
  ``Subtask``), asked with the paper's prompt (:data:`MME_PROMPT`; ``--prompt``
  chooses another of :data:`lrsvqa.bench.datasets.MME_PROMPTS` or a template).

::

    python -m lrsvqa.integrations.lmms_eval.task --questions DIR/LRS_VQA_merged.jsonl \
        --data-root DIR -o tasks/
    lmms-eval --model lrsvqa --model_args pretrained=./llava,strategy=c2f \
        --tasks lrs_vqa --include_path tasks/ --log_samples --output_path logs/

Metrics, under the paper's rule (:mod:`lrsvqa.bench.scoring`, ``rule="paper"``: the
official LRS-VQA script's rule for open-ended answers, MME-RealWorld's letter reading
for multiple choice) as in the paper's tables, in percent: ``oa`` (overall accuracy:
right answers over items) and ``aa`` (average accuracy: the mean of the per-category
accuracies), per part; the group's ``oa`` is the pooled one (the parts' ``oa`` weighted
by their sizes). Each part's per-category table is printed when lmms-eval aggregates,
and ``lrsvqa score`` reads the ``--log_samples`` file for the full report.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrsvqa.bench.datasets import BENCHMARKS, load_benchmark, resolve_image
from lrsvqa.bench.reports import ALL, Report, report_to_markdown, score_answers

#: The scoring rule of the tasks: the paper's.
RULE = "paper"
#: The prompt of the MME-RealWorld-RS tasks: the paper's (no "The best answer is:").
MME_PROMPT = "paper"
#: The benchmark of a question file when none is named.
DEFAULT_BENCH = "lrs-vqa"
#: Each benchmark's group name.
GROUP_NAMES = {"lrs-vqa": "lrs_vqa", "mme-rs": "mme_realworld_rs"}
_MODULE = "lrsvqa.integrations.lmms_eval.task"


def doc_to_visual(doc: Mapping[str, Any]) -> list[str]:
    """The doc's image file (absolute path); the ``lrsvqa`` model reads it itself."""
    return [doc["image_path"]]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    """The question as ``lrsvqa eval`` asks it (a multiple-choice one with its options)."""
    return doc["question"]


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """One answer, kept for the aggregations (they score it, needing every item for AA)."""
    answer = {
        "question_id": doc["question_id"],
        "prediction": results[0] if results else "",
        "ground_truth": doc["ground_truth"],
        "category": doc["category"],
        "subset": doc["subset"],
    }
    if doc.get("choices"):
        answer["choices"] = doc["choices"]
    return {"oa": answer, "aa": answer}


def _report(answers: Sequence[Mapping[str, Any]]) -> Report:
    """The lrsvqa report of the aggregated answers, under the paper's rule."""
    return score_answers(answers, rule=RULE)


def _pooled(report: Report) -> tuple[float, float]:
    """(OA, AA) of all the report's answers, in percent."""
    group = report.groups.get(ALL) or next(iter(report.groups.values()))
    overall, average = group.accuracies(RULE)
    return 100 * overall, 100 * average


def overall_accuracy(answers: Sequence[Mapping[str, Any]]) -> float:
    """OA in percent; prints the per-category report of these answers."""
    report = _report(answers)
    print(report_to_markdown(report), flush=True)
    return _pooled(report)[0]


def average_accuracy(answers: Sequence[Mapping[str, Any]]) -> float:
    """AA in percent: the mean of the per-category accuracies."""
    return _pooled(_report(answers))[1]


def task_name(name: str, subset: str) -> str:
    """``lrs_vqa`` + ``GLH-Bridge`` -> ``lrs_vqa_glh_bridge``."""
    return f"{name}_{re.sub(r'[^0-9a-z]+', '_', subset.lower()).strip('_')}"


def _task_yaml(task: str, docs: Path) -> str:
    """The YAML config of one part."""
    function = f"!function {_MODULE}"
    return "\n".join(
        [
            f"task: {task}",
            "dataset_path: json",
            "dataset_kwargs:",
            f"  data_files: {json.dumps(str(docs))}",
            "test_split: train",
            "output_type: generate_until",
            f"doc_to_visual: {function}.doc_to_visual",
            f"doc_to_text: {function}.doc_to_text",
            "doc_to_target: ground_truth",
            f"process_results: {function}.process_results",
            "metric_list:",
            "  - metric: oa",
            f"    aggregation: {function}.overall_accuracy",
            "    higher_is_better: true",
            "  - metric: aa",
            f"    aggregation: {function}.average_accuracy",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )


def write_tasks(
    questions: Path,
    data_root: Path,
    folder: Path,
    name: str | None = None,
    *,
    bench: str = DEFAULT_BENCH,
    prompt: str = MME_PROMPT,
) -> list[str]:
    """Write the task folder of ``questions`` (see the module docstring).

    Args:
        questions: Question file of ``bench``.
        data_root: Folder its image paths are relative to.
        folder: Task folder (created); pass it to ``lmms-eval --include_path``.
        name: Group name (default: the benchmark's, :data:`GROUP_NAMES`); the parts
            are ``NAME_<subset>``.
        bench: A key of :data:`lrsvqa.bench.datasets.BENCHMARKS`.
        prompt: Multiple-choice prompt preset or template (``mme-rs`` only).

    Returns:
        The part task names, in the order of their first question.

    Raises:
        QuestionFileError: A missing or bad question file.
        UnsafeImagePathError: An image path leaving ``data_root``.
        ValueError: Unknown benchmark or prompt.
    """
    items = load_benchmark(bench, Path(questions), prompt=prompt)
    name = name or GROUP_NAMES[bench]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        doc = {
            **item.to_record(),
            "image_path": str(resolve_image(Path(data_root), item.image).resolve()),
        }
        parts.setdefault(item.subset, []).append(doc)
    tasks = []
    for subset, docs in parts.items():
        task = task_name(name, subset)
        docs_file = (folder / f"{task}.jsonl").resolve()
        docs_file.write_text(
            "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs), encoding="utf-8"
        )
        (folder / f"{task}.yaml").write_text(_task_yaml(task, docs_file), encoding="utf-8")
        tasks.append(task)
    group = [f"group: {name}", "task:", *(f"  - {task}" for task in tasks)]
    group += [
        "aggregate_metric_list:",
        "  - metric: oa",
        "    aggregation: mean",
        "    weight_by_size: true",
        "metadata:",
        "  version: 1.0",
        "",
    ]
    (folder / f"{name}.yaml").write_text("\n".join(group), encoding="utf-8")
    return tasks


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lrsvqa.integrations.lmms_eval.task``: write a task folder."""
    parser = argparse.ArgumentParser(description="Write lmms-eval tasks of a question file.")
    parser.add_argument("--questions", type=Path, required=True, help="Question file.")
    parser.add_argument("--data-root", type=Path, required=True, help="Image paths' folder.")
    parser.add_argument("-o", "--out", type=Path, required=True, help="Task folder.")
    parser.add_argument(
        "--bench", choices=sorted(BENCHMARKS), default=DEFAULT_BENCH, help=f"({DEFAULT_BENCH})"
    )
    parser.add_argument("--name", help="Group name (lrs_vqa / mme_realworld_rs).")
    parser.add_argument(
        "--prompt", default=MME_PROMPT, help=f"mme-rs prompt preset or template ({MME_PROMPT})."
    )
    args = parser.parse_args(argv)
    name = args.name or GROUP_NAMES[args.bench]
    try:
        tasks = write_tasks(
            args.questions, args.data_root, args.out, name, bench=args.bench, prompt=args.prompt
        )
    except ValueError as error:  # bad input: one line, as the lrsvqa CLI prints it
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {name} ({', '.join(tasks)}) to {args.out}")


if __name__ == "__main__":
    main()
