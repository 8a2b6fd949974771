"""Run the construction stages in order, any subset of them, resumably."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa.bench.construct.crops import run_crops
from lrsvqa.bench.construct.export import run_export
from lrsvqa.bench.construct.llm import ApiSettings, ChatClient
from lrsvqa.bench.construct.qa import run_qa
from lrsvqa.bench.construct.quality import DEFAULT_MEGAPIXELS, Answerer, ApiAnswerer, run_quality
from lrsvqa.bench.construct.targets import run_targets
from lrsvqa.bench.templates import DEFAULT_MARGINS, UniquenessMargins
from lrsvqa.errors import OptionError
from lrsvqa.labels import LabelFormat

logger = logging.getLogger(__name__)

STAGES = ("targets", "crops", "qa", "quality", "export")


@dataclass(frozen=True)
class BuildConfig:
    """Everything a benchmark build needs.

    Attributes:
        images: Folder of large images.
        labels: Label file or folder.
        out: Output folder holding every stage's files.
        label_format: Format of the labels; ``None`` guesses per file from the suffix.
        api: Chat API for QA generation and (unless another answerer is given) the
            quality check; only needed by those stages.
        megapixels: Pixel budgets of the quality check.
        max_concurrency: API requests in flight at once.
        max_targets_per_image: Cap on targets per image.
        pairs_per_target: QA pairs asked for per target.
        min_gain: Accuracy rise a category needs to pass the quality check.
        margins: How clearly a unique reference must single out its object.
        subset: Id prefix of the exported questions.
        seed: Seed of every random choice, so reruns agree with earlier stages.
    """

    images: Path
    labels: Path
    out: Path
    label_format: LabelFormat | None = None
    api: ApiSettings | None = None
    megapixels: tuple[float, ...] = DEFAULT_MEGAPIXELS
    max_concurrency: int = 4
    max_targets_per_image: int = 8
    pairs_per_target: int = 5
    min_gain: float = 0.0
    margins: UniquenessMargins = DEFAULT_MARGINS
    subset: str = "LRS"
    seed: int = 0


def build_benchmark(
    config: BuildConfig,
    stages: Sequence[str] = STAGES,
    *,
    answerer: Answerer | None = None,
) -> dict[str, Any]:
    """Run the chosen stages in pipeline order and return each stage's report.

    Every stage skips what its file already records, so rerunning after an
    interruption (or with more stages) never repeats a paid call.

    Args:
        config: The build settings.
        stages: Names from :data:`STAGES`, any order (they run in pipeline order).
        answerer: Model for the quality check; by default the chat API of ``config``.

    Returns:
        ``{stage: report}`` plus ``"usage"``: API calls and tokens spent in this run.

    Raises:
        OptionError: For an unknown stage, or an API stage without API settings.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise OptionError(
            "--stages", f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}"
        )
    client: ChatClient | None = None
    if "qa" in stages or ("quality" in stages and answerer is None):
        if config.api is None:
            raise OptionError(
                "--api-base", "the qa and quality stages need API settings (base URL and model)"
            )
        client = ChatClient(config.api)
    if answerer is None and client is not None:
        answerer = ApiAnswerer(client)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, Any] = {}
    if "targets" in stages:
        reports["targets"] = run_targets(
            config.images,
            config.labels,
            out,
            fmt=config.label_format,
            margins=config.margins,
            max_targets_per_image=config.max_targets_per_image,
            seed=config.seed,
        )
    if "crops" in stages:
        reports["crops"] = run_crops(config.images, out)
    if "qa" in stages and client is not None:
        reports["qa"] = run_qa(
            out,
            client,
            max_concurrency=config.max_concurrency,
            pairs_per_target=config.pairs_per_target,
        )
    if "quality" in stages and answerer is not None:
        reports["quality"] = run_quality(
            out,
            config.images,
            answerer,
            megapixels=config.megapixels,
            max_concurrency=config.max_concurrency,
            min_gain=config.min_gain,
            seed=config.seed,
        )
    if "export" in stages:
        reports["export"] = run_export(out, subset=config.subset, seed=config.seed)
    reports["usage"] = client.usage.as_dict() if client is not None else {}
    return reports


def report_lines(reports: dict[str, Any]) -> list[str]:
    """Human-readable lines for the reports of :func:`build_benchmark`."""
    lines = []
    if "targets" in reports:
        r = reports["targets"]
        lines.append(f"targets: {r.targets} in {r.images} new images ({r.skipped} images done)")
    if "crops" in reports:
        r = reports["crops"]
        lines.append(f"crops: {r.written} written ({r.skipped} done)")
    if "qa" in reports:
        r = reports["qa"]
        lines.append(
            f"qa: {r.ok} ok, {r.bad_reply} bad replies, {r.failed} failed (rerun to retry), "
            f"{r.skipped} done, {r.missing_crops} without crops"
        )
    if "quality" in reports:
        r = reports["quality"]
        header = "  ".join(f"{mp:g} MP" for mp in r.megapixels)
        lines.append(f"quality: accuracy at {header} ({r.pending} questions pending)")
        for category, accuracy in r.accuracy.items():
            verdict = "kept" if category in r.kept_categories else "dropped"
            values = "  ".join(f"{a:.2f}" for a in accuracy)
            lines.append(f"  {category} (n={r.questions[category]}): {values}  {verdict}")
    if "export" in reports:
        r = reports["export"]
        lines.append(f"export: {r.questions} questions -> {r.path}")
        lines.extend(f"  {c}: {n}" for c, n in r.summary["per_category"].items())
    usage = reports.get("usage") or {}
    if usage:
        lines.append(
            f"API: {usage['calls']} calls, {usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} completion tokens this run"
        )
    return lines
