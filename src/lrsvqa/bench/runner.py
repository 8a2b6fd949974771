"""Evaluation runner: drive any strategy over a benchmark, resumably and in shards.

Every item is answered through the two calls of :class:`~lrsvqa.strategies.base.Strategy`
and its record is appended to the answer file as soon as it exists
(:class:`~lrsvqa.bench.answers.AnswerLog`), so a rerun skips what is done and a
killed run loses nothing written. A failing item (missing or corrupt image, model
error) is recorded with its error and the run goes on.

While the model answers one image's questions, a background thread prepares the
next image (``Strategy.prepare`` is I/O only and thread-safe). Consecutive items on
the same image share one prepared image, as LRS-VQA asks several questions per
image; strategies must therefore not modify what ``prepare`` returned.

Answer record fields: ``question_id``, ``subset``, ``category``, ``image``,
``question``, ``ground_truth``, ``choices`` (multiple choice only), ``hbox``,
``answer``, ``error`` (``"Type: message"`` or ``null``), ``seconds`` (wall time from
the item's turn to its answer, waiting for its image included),
``vision_tokens_encoded``, ``tokens_to_llm``, ``vision_tokens_to_llm``, ``tflops``,
``selected_boxes`` and ``trace`` (:func:`summarize_trace`). Records carry the
benchmark facts, so ``lrsvqa score`` needs no question file.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lrsvqa.bench.answers import (
    AnswerLog,
    load_answers,
    merge_answer_files,
    read_answers,
    shard_path,
)
from lrsvqa.bench.datasets import BenchItem, load_benchmark, resolve_image
from lrsvqa.bench.reports import Report, report_paths, score_answers, write_report
from lrsvqa.bench.run_record import (
    check_resume,
    make_run_record,
    write_run_record,
)
from lrsvqa.bench.scoring import DEFAULT_RULE
from lrsvqa.models.placement import DEFAULT_DEVICE, resolve_device
from lrsvqa.strategies.base import Strategy, StrategyResult
from lrsvqa.strategies.registry import build_strategy

#: Largest JSON size of one trace value kept in an answer record; bigger values
#: (per-tile score maps, ...) are replaced by a short note so that lines stay small
#: and the per-item fsync cheap.
TRACE_VALUE_LIMIT = 1024

#: How long ranks wait for each other at the end of a sharded run: ranks finish
#: hours apart on large benchmarks, far beyond the 30-minute default.
BARRIER_TIMEOUT = timedelta(hours=72)


@dataclass(frozen=True)
class RunSummary:
    """What one run over one answer file did.

    Attributes:
        output: The answer file.
        items: Items assigned to this run (this rank's shard).
        skipped: Items already in the file, not answered again.
        answered: Items answered now (errored ones included).
        errors: Items of this run recorded with an error, previous runs included.
    """

    output: Path
    items: int
    skipped: int
    answered: int
    errors: int


def summarize_trace(trace: Mapping[str, Any]) -> dict[str, Any]:
    """The trace with every value larger than :data:`TRACE_VALUE_LIMIT` summarised."""
    summary: dict[str, Any] = {}
    for key, value in trace.items():
        encoded = json.dumps(value, default=str)
        if len(encoded) <= TRACE_VALUE_LIMIT:
            summary[str(key)] = json.loads(encoded)
        elif isinstance(value, Mapping | list | tuple):
            summary[str(key)] = f"<{type(value).__name__} of {len(value)} entries omitted>"
        else:
            summary[str(key)] = f"<{type(value).__name__} of {len(encoded)} characters omitted>"
    return summary


def run_items(
    strategy: Strategy,
    items: Sequence[BenchItem],
    data_root: Path,
    output: Path,
    *,
    progress: bool = True,
    retry_errors: bool = False,
    label: str = "",
    record: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Answer every item not yet in ``output``, appending one record per item.

    Args:
        strategy: The method under evaluation.
        items: Items to answer, in order.
        data_root: Directory the items' image paths are relative to.
        output: Answer file, created or resumed.
        progress: Show a progress bar with ETA.
        retry_errors: Remove errored records first, so those items are tried again.
        label: Prefix of the progress description (e.g. the rank).
        record: Run record (:mod:`lrsvqa.bench.run_record`): resume only a file this
            run made, and keep the record beside it.

    Raises:
        RunMismatchError: ``output`` holds answers of another run.
    """
    if record is not None:
        check_resume(output, record, has_answers=bool(load_answers(Path(output))[0]))
    with AnswerLog(output, drop_errors=retry_errors) as log:
        if record is not None:
            write_run_record(output, record)
        todo = [item for item in items if item.question_id not in log.done]
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        description = f"{label} answering".strip()
        with (
            Progress(*columns, disable=not progress) as bar,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool,
        ):
            task = bar.add_task(description, total=len(todo))
            failures = 0
            for item, prepared in _prefetch(strategy, todo, data_root, pool):
                record = _answer(strategy, item, prepared)
                log.append(record)
                failures += record["error"] is not None
                errors = f" ({failures} errors)" if failures else ""
                bar.update(task, advance=1, description=description + errors)
        wanted = {item.question_id for item in items}
        errors = sum(1 for r in log.records if r.get("error") and r["question_id"] in wanted)
    return RunSummary(
        output=Path(output),
        items=len(items),
        skipped=len(items) - len(todo),
        answered=len(todo),
        errors=errors,
    )


def _prefetch(
    strategy: Strategy, items: Sequence[BenchItem], data_root: Path, pool: ThreadPoolExecutor
) -> Iterator[tuple[BenchItem, Future[Any]]]:
    """Yield each item with its prepared image, preparing the next image meanwhile.

    Items are grouped by consecutive equal image paths; a group's image is submitted
    to ``pool`` before the previous group is handed out, so loading overlaps answering.
    """
    groups = [list(group) for _, group in itertools.groupby(items, key=lambda i: i.image)]

    def submit(group: list[BenchItem]) -> Future[Any]:
        return pool.submit(lambda: strategy.prepare(resolve_image(data_root, group[0].image)))

    pending = submit(groups[0]) if groups else None
    for index, group in enumerate(groups):
        current = pending
        pending = submit(groups[index + 1]) if index + 1 < len(groups) else None
        for item in group:
            yield item, current


def _answer(strategy: Strategy, item: BenchItem, prepared: Future[Any]) -> dict[str, Any]:
    """Answer one item; any exception becomes the record's ``error``."""
    start = time.perf_counter()
    result: StrategyResult | None = None
    error = None
    try:
        result = strategy.answer(prepared.result(), item.question)
    except Exception as exc:  # one bad item must not stop the run
        error = f"{type(exc).__name__}: {exc}"
    record = item.to_record()
    record["answer"] = result.answer if result else ""
    record["error"] = error
    record["seconds"] = round(time.perf_counter() - start, 4)
    if result is not None:
        record.update(
            vision_tokens_encoded=result.vision_tokens_encoded,
            tokens_to_llm=result.tokens_to_llm,
            vision_tokens_to_llm=result.vision_tokens_to_llm,
            tflops=result.tflops,
            selected_boxes=[list(box) for box in result.selected_boxes],
            trace=summarize_trace(result.trace),
        )
    return record


def shard_items(items: Sequence[BenchItem], rank: int, world_size: int) -> list[BenchItem]:
    """Rank ``rank``'s contiguous slice of ``items``.

    Contiguous (not strided) slices keep an image's consecutive questions on one
    rank, so each image is read once, and make the rank-ordered concatenation of
    the shards equal to the single-process order. Sizes differ by at most one.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    start = len(items) * rank // world_size
    stop = len(items) * (rank + 1) // world_size
    return list(items[start:stop])


def _launch_state() -> Any:
    """The processes ``torchrun`` / ``accelerate launch`` started, as accelerate sees them.

    Launched ranks join one gloo group (``cpu=True``) whatever their device: the group
    only splits the items and meets at the end, and gloo needs no GPU binding. A
    process started alone gets a single-process state and no group.
    """
    from accelerate import PartialState

    return PartialState(cpu=True, timeout=BARRIER_TIMEOUT)


@dataclass
class EvalConfig:
    """One ``lrsvqa eval`` invocation.

    Attributes:
        bench: ``lrs-vqa`` (also the synthetic benchmark) or ``mme-rs``.
        questions: Question file.
        data_root: Directory the image paths are relative to.
        output: Answer file (per-rank files are derived from it).
        strategy: Registered strategy name.
        strategy_options: Keyword options for the strategy factory.
        subsets: Keep only these subsets.
        prompt: Multiple-choice prompt preset or template.
        limit: Evaluate only the first ``limit`` items (before sharding).
        rank: This process's rank when sharding by hand (no launcher, no auto-merge).
        world_size: Number of shards when sharding by hand.
        retry_errors: Retry items recorded with an error.
        progress: Show a progress bar.
        score: Merge (when launched) and score once all items are answered.
        rule: Open-ended rule of the per-category numbers (OA/AA come under both).
    """

    bench: str
    questions: Path
    data_root: Path
    output: Path
    strategy: str
    strategy_options: dict[str, Any] = field(default_factory=dict)
    subsets: list[str] | None = None
    prompt: str = "official"
    limit: int | None = None
    rank: int | None = None
    world_size: int | None = None
    retry_errors: bool = False
    progress: bool = True
    score: bool = True
    rule: str = DEFAULT_RULE


@dataclass(frozen=True)
class EvalOutcome:
    """Result of :func:`evaluate` in this process.

    Attributes:
        run: What this process's run did.
        answers: The complete answers file, on the process that has it (rank 0 of a
            launched sharded run, or a single process); ``None`` elsewhere.
        report: Its report, when scored.
    """

    run: RunSummary
    answers: Path | None
    report: Report | None


def _gather_shards(output: Path) -> list[Path]:
    """The answer files of all launched ranks, in rank order (accelerate's gather)."""
    from accelerate.utils import gather_object

    return [Path(path) for path in gather_object([str(output)])]


def evaluate(config: EvalConfig) -> EvalOutcome:
    """Run a benchmark with a strategy, merge shards and score (see :class:`EvalConfig`).

    Sharding: a process started by ``torchrun`` or ``accelerate launch`` answers its
    contiguous shard (accelerate's ``split_between_processes``) into its own file; the
    ranks gather their files' names (``gather_object``, so they also wait for each
    other), then rank 0 merges the shards into ``output`` and scores.
    With explicit ``rank``/``world_size`` (e.g. separate jobs) each process writes its
    shard and ``lrsvqa merge`` combines them later. With ``device`` ``cuda`` (or ``auto``
    on a CUDA machine) a launched rank uses ``cuda:LOCAL_RANK``.

    Every answers file gets a run record beside it, and a rerun resumes it only when
    the record matches (:mod:`lrsvqa.bench.run_record`); the report carries it.

    Raises:
        QuestionFileError: Missing, bad or empty question file; before any model work.
        RunMismatchError: The output holds answers of another run.
        lrsvqa.bench.wordnet.WordNetUnavailableError: Scoring open-ended answers
            without WordNet; checked before any model work.
    """
    items = load_benchmark(
        config.bench, config.questions, subsets=config.subsets, prompt=config.prompt
    )
    if config.limit is not None:
        items = items[: config.limit]
    state = None
    if config.world_size is not None:
        rank, world_size, local_rank = config.rank or 0, config.world_size, 0
    else:
        state = _launch_state()
        rank, world_size = state.process_index, state.num_processes
        local_rank = state.local_process_index
    launched = state is not None and world_size > 1
    scores_here = config.score and rank == 0 and (world_size == 1 or launched)
    if scores_here and any(not item.is_multiple_choice for item in items):
        from lrsvqa.bench.wordnet import wordnet

        wordnet()
    options = dict(config.strategy_options)
    device = resolve_device(options.get("device", DEFAULT_DEVICE))
    if launched and device.type == "cuda" and device.index is None:
        options["device"] = f"cuda:{local_rank}"
    sharded = world_size > 1
    output = shard_path(config.output, rank, world_size) if sharded else config.output
    record = make_run_record(
        bench=config.bench,
        questions=config.questions,
        prompt=config.prompt,
        strategy=config.strategy,
        options=config.strategy_options,
        rule=config.rule,
    )
    check_resume(output, record, has_answers=bool(load_answers(Path(output))[0]))
    try:
        strategy = build_strategy(config.strategy, **options)
        if launched:
            with state.split_between_processes(items) as shard:
                mine = list(shard)
        else:
            mine = shard_items(items, rank, world_size)
        run = run_items(
            strategy,
            mine,
            config.data_root,
            output,
            progress=config.progress,
            retry_errors=config.retry_errors,
            label=f"rank {rank}/{world_size}" if sharded else "",
            record=record,
        )
        # Every rank's file, in rank order; also where the ranks wait for each other.
        shards = _gather_shards(output) if launched else [output]
    finally:
        if launched:
            state.destroy_process_group()
    if sharded and not (launched and rank == 0):
        return EvalOutcome(run=run, answers=None, report=None)
    if sharded:
        merge_answer_files(shards, config.output)
    report = None
    if config.score:
        report = score_answers(read_answers(config.output), items, rule=config.rule, run=record)
        write_report(report, *report_paths(config.output))
    return EvalOutcome(run=run, answers=Path(config.output), report=report)
