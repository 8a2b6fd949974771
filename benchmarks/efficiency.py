"""Efficiency of every strategy side by side: vision tokens, theoretical TFLOPs, wall time.

One table per image size (square synthetic scenes of 1k, 4k, 10k and 27k px, written
once as pyramidal TIFFs), one row per registered strategy:

* analytic columns for LLaVA-NeXT with Qwen2-7B and with Vicuna-7B (published config
  numbers below, CLIP-L/14-336: 576 tokens per tile), from :mod:`lrsvqa.flops`;
* measured columns for the model actually run (the tiny offline model unless
  ``--model`` is given), all strategies in one process sharing one loaded model:
  vision tokens to the LLM, theoretical TFLOPs of what it saw, and wall time of
  ``prepare`` + ``answer``.

Coarse-to-fine depends on the question: the 7B columns assume ``--c2f-tiles`` tiles
per level below the first (the measured run's own average is printed under each
table). VisionZip's 64-of-576 budget is scaled to the run model's tile (7 of 64 on the
tiny model) so it still reduces. A strategy whose analytic LLM input exceeds
``--max-llm-tokens`` for the run model is not timed, and the table says so. Wall time
is the best of ``--repeats`` runs; the tiny model runs on one intra-op thread (its
matrices are too small to share, and on busy shared cores thread hand-offs would
dominate the measurement), a real ``--model`` on torch's default unless ``--threads``.

    .venv/bin/python benchmarks/efficiency.py            # tiny model, a few minutes
    .venv/bin/python benchmarks/efficiency.py --model ./llava-next-qwen2 --sizes 4000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lrsvqa.budgets import VISIONZIP_RETAINED
from lrsvqa.flops import ModelDims
from lrsvqa.imagery.writer import write_pyramidal_tiff
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.strategies.base import StrategyResult
from lrsvqa.strategies.builtin import shared_adapter
from lrsvqa.strategies.registry import available_strategies, build_strategy, count_strategy

# Published dimensions (config.json of Qwen2-7B-Instruct and Vicuna-7B-v1.5), as
# LLaVA-NeXT configs with the CLIP-L/14-336 tower.
QWEN2_7B = {
    "model_type": "llava_next",
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28},
    "vision_config": {"image_size": 336, "patch_size": 14},
}
VICUNA_7B = {
    "model_type": "llava_next",
    "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32},
    "vision_config": {"image_size": 336, "patch_size": 14},
}
DEFAULT_SIZES = "1000,4000,10000,27328"
QUESTION = "what color is the ship ?"
WORDS = ("what", "color", "is", "the", "ship", "red", "blue", "how", "many", "are", "there")
REFERENCE = "anyres-p144"


@dataclass
class Run:
    """One strategy on one image: its result and wall time, or why it was not run."""

    result: StrategyResult | None = None
    seconds: float | None = None
    note: str = ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="LLaVA checkpoint to time (default: tiny offline model)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="square image sides in px")
    parser.add_argument("--strategies", help="comma-separated (default: every registered one)")
    parser.add_argument("--c2f-tiles", type=float, default=4.0, help="7B c2f tiles per level")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="wall time: best of N runs")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 for tiny)")
    parser.add_argument("--max-llm-tokens", type=int, default=20000, help="skip timing above")
    parser.add_argument("--image-dir", type=Path, default=Path("outputs/efficiency"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args()


def render_tile(y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """A cheap, compressible pattern: coloured blocks, a checker and a ramp."""
    yy = np.arange(y0, y0 + height)[:, None]
    xx = np.arange(x0, x0 + width)[None, :]
    tile = np.empty((height, width, 3), np.uint8)
    tile[..., 0] = (xx // 48 * 37 + yy // 48 * 91) % 251
    tile[..., 1] = ((xx // 8) ^ (yy // 8)) & 0xFF
    tile[..., 2] = (xx + 2 * yy) // 16 % 256
    return tile


def synthetic_image(side: int, directory: Path) -> Path:
    path = directory / f"scene_{side}.tif"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.tif")
        write_pyramidal_tiff(partial, side, side, render_tile, compression_level=1)
        partial.rename(path)
    return path


def model_path(args: argparse.Namespace, scratch: Path) -> str:
    if args.model:
        return args.model
    model, processor = build_tiny_llava(WORDS)
    return str(save_tiny_llava(model, processor, scratch / "tiny-llava"))


def strategy_options(name: str, dims: ModelDims) -> dict[str, object]:
    """VisionZip keeps the paper's 64-of-576 share of the run model's tile."""
    if name == "visionzip":
        return {"retained": max(1, round(VISIONZIP_RETAINED * dims.tokens_per_tile / 576))}
    return {}


def run_one(strategy, image: Path, repeats: int = 1) -> Run:
    """``prepare`` + ``answer``, best wall time of ``repeats`` runs."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = strategy.answer(strategy.prepare(image), QUESTION)
        best = min(best, time.perf_counter() - start)
    return Run(result, best)


def measure(args, names, strategies, dims, side: int, image: Path) -> dict[str, Run]:
    """Time every strategy, except those whose LLM input would exceed the limit.

    Coarse-to-fine is always timed: ``N_max`` bounds what it feeds the LLM.
    """
    runs = {}
    for name in names:
        if not name.startswith("c2f"):
            expected = count_strategy(name, dims, side, side).tokens_to_llm
            if expected > args.max_llm_tokens:
                runs[name] = Run(note=f"not timed: {expected:,} LLM tokens > --max-llm-tokens")
                continue
        runs[name] = run_one(strategies[name], image, args.repeats)
    return runs


def c2f_tiles(run: Run | None) -> str:
    if run is None or run.result is None:
        return "n/a"
    levels = run.result.trace["tiles_per_level"]
    below = levels[1:]
    tiles = f"{sum(below) / len(below):.1f} tiles/level below level 1" if below else "no descent"
    return f"{len(levels)} level(s), {tiles}"


def size_table(side, names, runs, dims_7b, tiles, run_dims) -> Table:
    table = Table(title=f"{side:,} x {side:,} px")
    columns = (
        "strategy",
        "7B tokens enc.",
        "7B tokens->LLM",
        "TFLOPs Qwen2-7B",
        "TFLOPs Vicuna-7B",
        f"run tokens->LLM (d={run_dims.hidden_size})",
        "run TFLOPs",
        "run wall s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    qwen, vicuna = dims_7b
    for name in names:
        count = count_strategy(name, qwen, side, side, tiles)
        run = runs[name]
        measured = run.result
        table.add_row(
            name,
            f"{count.vision_tokens_encoded:,}",
            f"{count.tokens_to_llm:,}",
            f"{count.tflops(qwen):.2f}",
            f"{count_strategy(name, vicuna, side, side, tiles).tflops(vicuna):.2f}",
            f"{measured.vision_tokens_to_llm:,}" if measured else "-",
            f"{measured.tflops:.2e}" if measured else "-",
            f"{run.seconds:.2f}" if run.seconds is not None else run.note,
        )
    return table


def ratio_table(sides, names, all_runs, qwen, tiles) -> Table:
    table = Table(title=f"ratios against {REFERENCE} (Qwen2-7B TFLOPs / run wall time)")
    table.add_column("strategy")
    for side in sides:
        table.add_column(f"{side:,} px", justify="right")
    for name in names:
        cells = []
        for side in sides:
            reference = count_strategy(REFERENCE, qwen, side, side, tiles).tflops(qwen)
            flops = count_strategy(name, qwen, side, side, tiles).tflops(qwen) / reference
            ours, base = all_runs[side][name].seconds, all_runs[side][REFERENCE].seconds
            wall = f"{ours / base:.2f}" if ours is not None and base else "-"
            cells.append(f"{flops:.3f} / {wall}")
        table.add_row(name, *cells)
    return table


def main() -> None:
    args = parse_args()
    threads = args.threads or (None if args.model else 1)
    if threads:
        torch.set_num_threads(threads)
    console = Console(width=160)
    sides = [int(side) for side in args.sizes.split(",") if side.strip()]
    # native is a Qwen-VL model's own resolution: not one of a LLaVA model's strategies.
    everything = [name for name in available_strategies() if name != "native"]
    chosen = args.strategies.split(",") if args.strategies else everything
    names = [name.strip() for name in chosen if name.strip()]
    if REFERENCE not in names:
        names.append(REFERENCE)
    qwen, vicuna = ModelDims.from_config(QWEN2_7B), ModelDims.from_config(VICUNA_7B)
    tiles = (args.c2f_tiles,)  # 7B c2f: mean tiles at every level below the first
    with tempfile.TemporaryDirectory() as scratch:
        path = model_path(args, Path(scratch))
        adapter = shared_adapter(path, args.dtype, args.device)
        run_dims = ModelDims.from_config(adapter.config.to_dict())
        common = {"model_path": path, "device": args.device, "dtype": args.dtype}
        common["max_new_tokens"] = args.max_new_tokens
        strategies = {
            name: build_strategy(name, **common, **strategy_options(name, run_dims))
            for name in names
        }
        images = {side: synthetic_image(side, args.image_dir) for side in sides}
        for strategy in strategies.values():  # warm-up: first calls pay one-off costs
            run_one(strategy, images[min(sides)])
        all_runs = {}
        for side in sides:
            all_runs[side] = measure(args, names, strategies, run_dims, side, images[side])
            console.print(size_table(side, names, all_runs[side], (qwen, vicuna), tiles, run_dims))
            if "c2f" in names:
                console.print(f"  c2f on the run model: {c2f_tiles(all_runs[side].get('c2f'))}")
    console.print(ratio_table(sides, names, all_runs, qwen, tiles))


if __name__ == "__main__":
    main()
