"""Accuracy reports: per subset and category, OA and AA, localisation recall, cost.

* **OA** (overall accuracy): correct answers / items, over a subset (or over all
  items, in the ``all`` column when there is more than one subset).
* **AA** (average accuracy): the mean of the per-category accuracies, so rare
  question types weigh as much as frequent ones.
* OA and AA are given under both open-ended scoring rules
  (:data:`lrsvqa.bench.scoring.RULES`), the paper's rule first: quote that one beside
  the paper's numbers. The per-category rows use the report's chosen rule.
* Errored items (missing image, model failure) count as wrong answers and are
  also counted separately.
* **Localisation recall**, reported when the strategy returned selected boxes for
  at least one item: the fraction of answered items with an object box whose box
  the selection found (:func:`lrsvqa.bench.scoring.hbox_covered`); items for which
  the strategy selected nothing count as misses.
* **Cost**: means over answered items of the answer-file fields ``seconds``,
  ``vision_tokens_encoded``, ``vision_tokens_to_llm``, ``tokens_to_llm`` and
  ``tflops``, when present.

The same :class:`Report` renders as a rich terminal table, JSON and Markdown.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lrsvqa.bench.datasets import BenchItem
from lrsvqa.bench.scoring import DEFAULT_RULE, RULES, ScoredItem, score_record
from lrsvqa.errors import InputFileError

ALL = "all"
COST_FIELDS = (
    "seconds",
    "vision_tokens_encoded",
    "vision_tokens_to_llm",
    "tokens_to_llm",
    "tflops",
)


@dataclass
class Tally:
    """Correct answers out of a number of items."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """Fraction correct (0 for an empty tally)."""
        return self.correct / self.total if self.total else 0.0

    def add(self, correct: bool) -> None:
        """Count one item."""
        self.total += 1
        self.correct += int(correct)


@dataclass
class GroupReport:
    """Accuracy of one subset (or of all items).

    Attributes:
        categories: Tally per question category, under the report's rule.
        by_rule: Tally per question category under each scoring rule.
        errors: Items recorded with an error.
    """

    categories: dict[str, Tally] = field(default_factory=dict)
    by_rule: dict[str, dict[str, Tally]] = field(default_factory=dict)
    errors: int = 0

    @property
    def items(self) -> int:
        """Number of scored items."""
        return sum(tally.total for tally in self.categories.values())

    @property
    def overall_accuracy(self) -> float:
        """OA under the report's rule: correct / items."""
        return _overall(self.categories)

    @property
    def average_accuracy(self) -> float:
        """AA under the report's rule: mean of the per-category accuracies."""
        return _average(self.categories)

    def accuracies(self, rule: str) -> tuple[float, float]:
        """``(OA, AA)`` under ``rule``."""
        categories = self.by_rule.get(rule, {})
        return _overall(categories), _average(categories)

    def add(self, item: ScoredItem) -> None:
        """Count one scored item."""
        self.categories.setdefault(item.category, Tally()).add(item.correct)
        for rule, correct in item.by_rule.items():
            self.by_rule.setdefault(rule, {}).setdefault(item.category, Tally()).add(correct)
        self.errors += item.error is not None


def _overall(categories: Mapping[str, Tally]) -> float:
    """OA of per-category tallies."""
    items = sum(t.total for t in categories.values())
    return sum(t.correct for t in categories.values()) / items if items else 0.0


def _average(categories: Mapping[str, Tally]) -> float:
    """AA of per-category tallies."""
    tallies = list(categories.values())
    return sum(t.accuracy for t in tallies) / len(tallies) if tallies else 0.0


@dataclass
class Report:
    """Everything ``lrsvqa score`` prints.

    Attributes:
        groups: Per-subset reports in order of first appearance, then ``all`` when
            there are several subsets.
        localisation: Localisation recall tally, or ``None`` when no box was selected.
        cost: Mean cost per answered item for each field of :data:`COST_FIELDS` present.
        rule: The open-ended scoring rule of the per-category numbers.
        errors: Errored items over all subsets.
        missing: Questions of the question file with no answer in the answer file.
        extra: Ids answered but not in the question file (not scored).
        duplicates: Ids answered more than once (the first answer is scored).
        run: The run record of the answers (:mod:`lrsvqa.bench.run_record`), if any.
    """

    groups: dict[str, GroupReport]
    localisation: Tally | None
    cost: dict[str, float]
    rule: str = DEFAULT_RULE
    errors: int = 0
    missing: int = 0
    extra: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        groups = {
            name: {
                "items": group.items,
                "errors": group.errors,
                "overall_accuracy": group.overall_accuracy,
                "average_accuracy": group.average_accuracy,
                "by_rule": {
                    rule: dict(
                        zip(
                            ("overall_accuracy", "average_accuracy"),
                            group.accuracies(rule),
                            strict=True,
                        )
                    )
                    for rule in RULES
                },
                "categories": {
                    category: {"correct": t.correct, "total": t.total, "accuracy": t.accuracy}
                    for category, t in sorted(group.categories.items())
                },
            }
            for name, group in self.groups.items()
        }
        localisation = None
        if self.localisation is not None:
            localisation = {
                "found": self.localisation.correct,
                "items": self.localisation.total,
                "recall": self.localisation.accuracy,
            }
        return {
            "rule": self.rule,
            "errors": self.errors,
            "missing": self.missing,
            "extra_ids": self.extra,
            "duplicate_ids": self.duplicates,
            "groups": groups,
            "localisation_recall": localisation,
            "cost": self.cost,
            "run": self.run,
        }


def build_report(
    scored: Iterable[ScoredItem],
    records: Iterable[Mapping[str, Any]] = (),
    *,
    rule: str = DEFAULT_RULE,
    missing: int = 0,
) -> Report:
    """Aggregate scored items (and their raw records, for cost) into a report."""
    scored = list(scored)
    groups: dict[str, GroupReport] = {}
    for item in scored:
        groups.setdefault(item.subset, GroupReport()).add(item)
    if len(groups) > 1:
        pooled = GroupReport()
        for item in scored:
            pooled.add(item)
        groups[ALL] = pooled
    localisation = None
    if any(item.selected_boxes for item in scored):
        localisation = Tally()
        for item in scored:
            if item.localised is not None:
                localisation.add(item.localised)
    return Report(
        groups=groups,
        localisation=localisation,
        cost=_mean_cost(records),
        rule=rule,
        errors=sum(item.error is not None for item in scored),
        missing=missing,
    )


def score_answers(
    records: Iterable[Mapping[str, Any]],
    items: Iterable[BenchItem] | None = None,
    *,
    rule: str = DEFAULT_RULE,
    run: Mapping[str, Any] | None = None,
    source: Path | None = None,
) -> Report:
    """Score answer records into a report, saying which were extra or repeated.

    Args:
        records: Answer-file records (see :func:`lrsvqa.bench.scoring.score_record`).
        items: Benchmark items to join by ``question_id``; when given, records of other
            questions are reported as ``extra`` and not scored, and unanswered items
            are counted as ``missing``.
        rule: Open-ended rule of the per-category numbers (OA/AA come under every rule).
        run: The answers' run record, carried into the report.
        source: The answers file, named in errors.

    Raises:
        InputFileError: A record cannot be scored (no prediction or ground truth).
    """
    by_id = None if items is None else {item.question_id: item for item in items}
    scored: list[ScoredItem] = []
    used: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    extra: list[str] = []
    duplicates: list[str] = []
    for record in records:
        question_id = str(record["question_id"])
        if question_id in seen:
            if question_id not in duplicates:
                duplicates.append(question_id)
            continue
        seen.add(question_id)
        item = None if by_id is None else by_id.get(question_id)
        if by_id is not None and item is None:
            extra.append(question_id)
            continue
        try:
            scored.append(score_record(record, item, rule=rule))
        except (KeyError, TypeError, ValueError) as error:
            where = source or "answers"
            raise InputFileError(where, f"question_id {question_id!r}: {error}") from None
        used.append(record)
    missing = 0 if by_id is None else len(by_id) - len(scored)
    report = build_report(scored, used, rule=rule, missing=missing)
    report.extra, report.duplicates = extra, duplicates
    report.run = dict(run) if run is not None else None
    return report


def report_paths(answers: Path) -> tuple[Path, Path]:
    """Default JSON and Markdown report files next to an answers file."""
    answers = Path(answers)
    return answers.with_suffix(".report.json"), answers.with_suffix(".report.md")


def write_report(report: Report, json_path: Path | None, markdown_path: Path | None) -> None:
    """Write the report as JSON and/or Markdown (``None`` skips a format)."""
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if markdown_path is not None:
        Path(markdown_path).write_text(report_to_markdown(report), encoding="utf-8")


def _mean_cost(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each cost field over answered records that have it."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for record in records:
        if record.get("error"):
            continue
        for name in COST_FIELDS:
            value = record.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in COST_FIELDS if name in sums}


def _group_rows(groups: Mapping[str, GroupReport]) -> list[list[str]]:
    """Rows of categories, OA/AA under each rule, items and errors, a column per group."""
    categories = sorted({c for g in groups.values() for c in g.categories})
    rows = []
    for category in categories:
        tallies = [g.categories.get(category) for g in groups.values()]
        rows.append([category, *(f"{100 * t.accuracy:.2f}" if t else "-" for t in tallies)])
    for rule in RULES:
        scores = [g.accuracies(rule) for g in groups.values()]
        rows.append([f"OA ({rule} rule)", *(f"{100 * oa:.2f}" for oa, _ in scores)])
        rows.append([f"AA ({rule} rule)", *(f"{100 * aa:.2f}" for _, aa in scores)])
    rows.append(["items", *(str(g.items) for g in groups.values())])
    rows.append(["errors", *(str(g.errors) for g in groups.values())])
    return rows


def report_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Table header and rows of one report: a column per subset (then ``all``)."""
    return ["accuracy (%)", *report.groups], _group_rows(report.groups)


def comparison_rows(reports: Mapping[str, Report]) -> tuple[list[str], list[list[str]]]:
    """One column per named report (its pooled ``all`` group, or its only subset).

    The same rows as a single report's table: categories under each report's rule,
    OA and AA under every rule, items and errors.
    """
    pooled = {name: r.groups.get(ALL) or _only_group(r) for name, r in reports.items()}
    return ["accuracy (%)", *reports], _group_rows(pooled)


def _only_group(report: Report) -> GroupReport:
    """The one subset of a report without an ``all`` group (an empty one if none)."""
    return next(iter(report.groups.values()), GroupReport())


def rows_to_csv(header: list[str], rows: list[list[str]]) -> str:
    """Table rows as CSV text (header first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def print_rows(
    header: list[str], rows: list[list[str]], title: str, console: Console | None = None
) -> None:
    """Print table rows as a rich table, numbers right-aligned."""
    table = Table(*header, title=title)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)


def _footer(report: Report) -> list[str]:
    """Lines below the table: rule, localisation recall, cost, missing answers."""
    lines = [
        f"categories scored with the {report.rule} rule; quote the paper rule beside the paper"
    ]
    if report.localisation is not None:
        loc = report.localisation
        lines.append(f"localisation recall: {100 * loc.accuracy:.2f}% ({loc.correct}/{loc.total})")
    if report.cost:
        lines.append("mean cost: " + ", ".join(f"{k}={v:.4g}" for k, v in report.cost.items()))
    if report.missing:
        lines.append(f"unanswered questions: {report.missing}")
    if report.extra:
        lines.append(
            f"answers to questions not in the question file (not scored): "
            f"{len(report.extra)} ({_examples(report.extra)})"
        )
    if report.duplicates:
        lines.append(
            f"question ids answered more than once (first answer scored): "
            f"{len(report.duplicates)} ({_examples(report.duplicates)})"
        )
    if report.run and report.run.get("model"):
        lines.append(f"model: {report.run['model'].get('path')}")
    return lines


def _examples(ids: list[str], shown: int = 5) -> str:
    """The first few ids, for a one-line note."""
    return ", ".join(ids[:shown]) + (", ..." if len(ids) > shown else "")


def rows_to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """Table rows as a Markdown table, numbers right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report_to_markdown(report: Report) -> str:
    """The report as a Markdown table plus notes."""
    notes = "\n".join(f"- {line}" for line in _footer(report))
    return rows_to_markdown(*report_rows(report)) + "\n" + notes + "\n"


def print_report(report: Report, console: Console | None = None) -> None:
    """Print the report as a rich table on the terminal."""
    console = console or Console()
    print_rows(*report_rows(report), title="Accuracy", console=console)
    for line in _footer(report):
        console.print(line)
