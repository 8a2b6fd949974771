r"""LRS-VQA as lmms-eval tasks on local files, scored with the paper's rule.

:func:`write_tasks` turns a question file (LRS-VQA format: the official
``LRS_VQA_merged.jsonl`` or the synthetic benchmark's) into a task folder for
``lmms-eval --include_path``: one task per part (``lrs_vqa_fair``,
``lrs_vqa_glh_bridge``, ``lrs_vqa_star``; ``NAME_<subset>`` in general), each a JSON
Lines file of its docs (image paths made absolute against the data root) and a YAML
config, and a group ``NAME`` of all parts::

    python -m lrsvqa.integrations.lmms_eval.task --questions DIR/LRS_VQA_merged.jsonl \
        --data-root DIR -o tasks/
    lmms-eval --model lrsvqa --model_args pretrained=./llava,strategy=c2f \
        --tasks lrs_vqa --include_path tasks/ --log_samples --output_path logs/

Metrics, under the paper's rule (:func:`lrsvqa.bench.scoring.is_correct`,
``rule="paper"``) as in the paper's tables, in percent: ``oa`` (overall accuracy: right
answers over items) and ``aa`` (average accuracy: the mean of the per-category
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

from lrsvqa.bench.datasets import load_benchmark, resolve_image
from lrsvqa.bench.reports import ALL, Report, report_to_markdown, score_answers

#: The scoring rule of the tasks: the paper's.
RULE = "paper"
_MODULE = "lrsvqa.integrations.lmms_eval.task"


def doc_to_visual(doc: Mapping[str, Any]) -> list[str]:
    """The doc's image file (absolute path); the ``lrsvqa`` model reads it itself."""
    return [doc["image_path"]]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    """The question as ``lrsvqa eval`` asks it: the file's ``text``, format hint included."""
    return doc["text"]


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """One answer, kept for the aggregations (they score it, needing every item for AA)."""
    answer = {
        "question_id": doc["question_id"],
        "prediction": results[0] if results else "",
        "ground_truth": doc["ground_truth"],
        "category": doc["category"],
        "subset": doc["subset"],
    }
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


def write_tasks(questions: Path, data_root: Path, folder: Path, name: str = "lrs_vqa") -> list[str]:
    """Write the task folder of ``questions`` (see the module docstring).

    Args:
        questions: LRS-VQA-format question file.
        data_root: Folder its image paths are relative to.
        folder: Task folder (created); pass it to ``lmms-eval --include_path``.
        name: Group name; the parts are ``NAME_<subset>``.

    Returns:
        The part task names, in the order of their first question.

    Raises:
        QuestionFileError: A missing or bad question file.
        UnsafeImagePathError: An image path leaving ``data_root``.
    """
    items = load_benchmark("lrs-vqa", Path(questions))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        parts.setdefault(item.subset, []).append(
            {
                "question_id": item.question_id,
                "image": item.image,
                "image_path": str(resolve_image(Path(data_root), item.image).resolve()),
                "text": item.question,
                "ground_truth": item.ground_truth,
                "category": item.category,
                "subset": item.subset,
            }
        )
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
    parser = argparse.ArgumentParser(description="Write lmms-eval LRS-VQA tasks.")
    parser.add_argument("--questions", type=Path, required=True, help="LRS-VQA question file.")
    parser.add_argument("--data-root", type=Path, required=True, help="Image paths' folder.")
    parser.add_argument("-o", "--out", type=Path, required=True, help="Task folder.")
    parser.add_argument("--name", default="lrs_vqa", help="Group name (default lrs_vqa).")
    args = parser.parse_args(argv)
    tasks = write_tasks(args.questions, args.data_root, args.out, args.name)
    print(f"wrote {args.name} ({', '.join(tasks)}) to {args.out}")


if __name__ == "__main__":
    main()
