"""Stage 4: the resolution-sweep quality check (paper section 4.2, Fig. 5).

A question worth asking about a *large* image should get easier when the model sees
more of its pixels. Every question is answered on the whole image downscaled to each
of several pixel budgets (the paper varied Qwen2-VL's maximum pixels); a question
category is kept when its accuracy at the largest budget beats the smallest by more
than ``min_gain``, and within kept categories an item is dropped when the model gets
it right at low resolution but wrong at high (a sign of a wrong or ill-posed
answer). The curves are saved as ``quality.json`` and plotted to ``quality.png``.

The answering model is any :class:`Answerer`; by default the same chat API as stage
3 (:class:`ApiAnswerer`), with the image sent as PNG.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure

from lrsvqa.bench.construct.llm import ChatClient, RequestFailed, user_message
from lrsvqa.bench.construct.store import (
    ANSWERS_FILE,
    QA_FILE,
    QUALITY_FILE,
    QUALITY_PLOT,
    JsonlAppender,
    latest,
    read_jsonl,
    write_json,
)
from lrsvqa.bench.construct.targets import load_targets
from lrsvqa.bench.scoring import is_correct as benchmark_is_correct
from lrsvqa.bench.templates import count_question, prompt_text
from lrsvqa.imagery.reader import open_image

logger = logging.getLogger(__name__)

DEFAULT_MEGAPIXELS = (0.25, 1.0, 4.0)
Scorer = Callable[[str, str], bool]


class Answerer(Protocol):
    """Anything that answers a question about an RGB image: an API model or a local one."""

    def __call__(self, image: np.ndarray, question: str) -> str:
        """Answer ``question`` (instruction included) about ``image`` (``H x W x 3`` uint8)."""
        ...


class ApiAnswerer:
    """Answer through an OpenAI-compatible chat API, sending the image as base64 PNG."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def __call__(self, image: np.ndarray, question: str) -> str:
        """One chat call; :class:`RequestFailed` propagates so the item is retried later."""
        return self.client.chat([user_message(question, [image])]).text


@dataclass(frozen=True)
class Question:
    """One question of the benchmark under construction.

    Attributes:
        qid: Internal id, stable across reruns (``{target_id}-q{n}`` or
            ``{image name}-count-{n}``).
        image: Image path relative to the images folder.
        category: LRS-VQA category.
        question: The bare question.
        answer: Ground truth.
        target_id: Target the question is about; ``None`` for count questions.
    """

    qid: str
    image: str
    category: str
    question: str
    answer: str
    target_id: str | None

    @property
    def text(self) -> str:
        """The question as asked, with the short-answer instruction."""
        return prompt_text(self.category, self.question)


def collect_questions(out_dir: Path, *, seed: int = 0, max_count: int = 20) -> list[Question]:
    """All questions so far: stage-3 pairs plus whole-image count questions from labels.

    Count questions come from the label counts of stage 1 (as in LRS-VQA, where counts
    are label facts, not model output); categories with more than ``max_count``
    objects are left out.
    """
    qa = latest(read_jsonl(out_dir / QA_FILE), lambda r: r["target_id"])
    questions: list[Question] = []
    for record in load_targets(out_dir):
        rng = random.Random(f"{seed}:{record['name']}:count")
        counted = [(c, n) for c, n in record["counts"].items() if n <= max_count]
        for n, (category, count) in enumerate(counted, start=1):
            questions.append(
                Question(
                    qid=f"{record['name']}-count-{n}",
                    image=record["image"],
                    category="count",
                    question=count_question(category, rng),
                    answer=str(count),
                    target_id=None,
                )
            )
        for target in record["targets"]:
            result = qa.get(target["target_id"])
            if result is None or result["status"] != "ok":
                continue
            for n, pair in enumerate(result["pairs"], start=1):
                questions.append(
                    Question(
                        qid=f"{target['target_id']}-q{n}",
                        image=record["image"],
                        category=pair["category"],
                        question=pair["question"],
                        answer=pair["answer"],
                        target_id=target["target_id"],
                    )
                )
    return questions


def budget_size(height: int, width: int, max_pixels: float) -> tuple[int, int]:
    """``(height, width)`` scaled to fit ``max_pixels``, keeping aspect; never upscaled."""
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


@dataclass(frozen=True)
class QualityResult:
    """Accuracy-vs-resolution curves and what survives the check.

    Attributes:
        megapixels: The pixel budgets, ascending.
        accuracy: Per category, accuracy at each budget over the questions answered
            at every budget (so each curve compares the same items).
        questions: Per category, how many questions the curve is over.
        kept_categories: Categories whose accuracy rose by more than ``min_gain``.
        kept_questions: Internal ids of the questions that pass.
        pending: Questions still lacking an answer at some budget (rerun to finish).
    """

    megapixels: list[float]
    accuracy: dict[str, list[float]]
    questions: dict[str, int]
    kept_categories: list[str]
    kept_questions: list[str]
    pending: int


def evaluate(
    questions: Sequence[Question],
    answers: Iterable[dict[str, Any]],
    megapixels: Sequence[float],
    *,
    min_gain: float = 0.0,
    is_correct: Scorer = benchmark_is_correct,
) -> QualityResult:
    """Score the recorded answers and decide what to keep (see module docstring)."""
    levels = sorted(megapixels)
    predictions = {
        (r["question_id"], r["megapixels"]): r["prediction"] for r in answers if "prediction" in r
    }
    scores: dict[str, list[list[bool]]] = defaultdict(list)
    complete: list[tuple[Question, list[bool]]] = []
    pending = 0
    for q in questions:
        answered = [predictions.get((q.qid, mp)) for mp in levels]
        if any(a is None for a in answered):
            pending += 1
            continue
        row = [is_correct(str(a), q.answer) for a in answered]
        scores[q.category].append(row)
        complete.append((q, row))
    accuracy = {
        category: [sum(col) / len(rows) for col in zip(*rows, strict=True)]
        for category, rows in sorted(scores.items())
    }
    kept = [c for c, acc in accuracy.items() if acc[-1] - acc[0] > min_gain]
    kept_questions = [
        q.qid for q, row in complete if q.category in kept and not (row[0] and not row[-1])
    ]
    return QualityResult(
        megapixels=list(levels),
        accuracy=accuracy,
        questions={c: len(rows) for c, rows in sorted(scores.items())},
        kept_categories=kept,
        kept_questions=kept_questions,
        pending=pending,
    )


def plot_quality(result: QualityResult, path: Path) -> None:
    """Accuracy against maximum megapixels per category, like the paper's Fig. 5.

    Dropped categories are dashed so the plot shows why they were dropped.
    """
    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.add_subplot()
    for category, acc in result.accuracy.items():
        style = "-" if category in result.kept_categories else "--"
        label = f"{category} (n={result.questions[category]})"
        axes.plot(result.megapixels, [100 * a for a in acc], style, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_xticks(result.megapixels, [f"{mp:g}" for mp in result.megapixels])
    axes.set_xlabel("maximum image size (megapixels)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy vs. resolution (dashed: dropped)")
    axes.grid(alpha=0.3)
    if result.accuracy:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def _answer(answerer: Answerer, image: np.ndarray, q: Question, *, mp: float) -> dict[str, Any]:
    record: dict[str, Any] = {"question_id": q.qid, "megapixels": mp}
    try:
        return {**record, "prediction": answerer(image, q.text)}
    except RequestFailed as err:
        return {**record, "error": str(err)}


def run_quality(
    out_dir: Path,
    images_dir: Path,
    answerer: Answerer,
    *,
    megapixels: Sequence[float] = DEFAULT_MEGAPIXELS,
    max_concurrency: int = 4,
    min_gain: float = 0.0,
    seed: int = 0,
    is_correct: Scorer = benchmark_is_correct,
) -> QualityResult:
    """Answer every question at every budget not yet answered, then evaluate and plot.

    Each image is read once per budget, downscaled on read, and all its pending
    questions at that budget are answered from that one array.

    Args:
        out_dir: Pipeline output folder.
        images_dir: Folder of the large images.
        answerer: The model under test.
        megapixels: Pixel budgets in millions of pixels.
        max_concurrency: Answers in flight at once.
        min_gain: Accuracy rise (fraction) a category needs to be kept.
        seed: Seed of the count-question wording (as in :func:`collect_questions`).
        is_correct: ``(prediction, ground truth) -> bool``; by default the
            benchmark's own scorer (:func:`lrsvqa.bench.scoring.is_correct`).
    """
    questions = collect_questions(out_dir, seed=seed)
    path = out_dir / ANSWERS_FILE
    done = {(r["question_id"], r["megapixels"]) for r in read_jsonl(path) if "prediction" in r}
    by_image: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_image[q.image].append(q)
    with (
        JsonlAppender(path) as out,
        ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool,
    ):
        for image_path, image_questions in by_image.items():
            todo = {
                mp: [q for q in image_questions if (q.qid, mp) not in done]
                for mp in sorted(megapixels)
            }
            if not any(todo.values()):
                continue
            with open_image(images_dir / image_path) as large:
                for mp, pending in todo.items():
                    if not pending:
                        continue
                    size = budget_size(large.height, large.width, mp * 1e6)
                    pixels = large.read_region((0, 0, large.width, large.height), out_size=size)
                    for record in pool.map(partial(_answer, answerer, pixels, mp=mp), pending):
                        out.write(record)
            logger.info("%s: answered at %s MP", image_path, list(megapixels))
    result = evaluate(
        questions, read_jsonl(path), megapixels, min_gain=min_gain, is_correct=is_correct
    )
    write_json(out_dir / QUALITY_FILE, asdict(result))
    plot_quality(result, out_dir / QUALITY_PLOT)
    return result
