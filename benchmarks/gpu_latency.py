"""Time per question of each strategy on a LLaVA-NeXT of Qwen2-7B size (the paper's FPS table).

The model is built from a config with random weights (nothing is downloaded): LLaVA-NeXT
with Qwen2-7B's text dimensions (hidden 3,584, MLP 18,944, 28 layers, 28 heads, 4 KV
heads, vocabulary 152,064) and CLIP-L/14-336, each high-resolution tile pooled 2 x 2 as
the paper's model does (``mm_spatial_pool_stride`` 2), in bfloat16 with sdpa attention.
Random weights answer nonsense, but the time of a question depends only on the shapes:
how many tiles are encoded and how many tokens reach the LLM. Each strategy is timed
on ``prepare`` + ``answer`` (exactly ``--new-tokens`` generated tokens) for each image
size, after one warm-up question; the table gives seconds per question (best of
``--repeats``), peak GPU memory, and the ratio of each strategy's time to anyres-p144's.

    .venv/bin/python benchmarks/gpu_latency.py               # on a CUDA machine
    .venv/bin/python benchmarks/gpu_latency.py --smoke       # scaled down, on CPU (CI)

``--smoke`` builds a tiny model of the same architecture (the same code path) and uses
small images, so the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from lrsvqa.imagery.writer import write_pyramidal_tiff
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.tiny import build_tiny_llava
from lrsvqa.strategies.builtin import share_adapter
from lrsvqa.strategies.registry import build_strategy

# Published Qwen2-7B-Instruct text dimensions and the CLIP-L/14-336 tower, as a LLaVA-NeXT
# config; anyres pinpoints of LLaVA-NeXT (up to 2 x 2 tiles for its own anyres).
QWEN2_7B_LLAVA_NEXT = {
    "model_type": "llava_next",
    "text_config": {
        "model_type": "qwen2",
        "vocab_size": 152_064,
        "hidden_size": 3584,
        "intermediate_size": 18_944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32_768,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "image_size": 336,
        "patch_size": 14,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "projection_dim": 768,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "bilinear",
}
STRATEGIES = "anyres-p144,prumerge++,visionzip,fastv,pdrop,c2f-nodip,c2f"
REFERENCE = "anyres-p144"
QUESTION = "what color is the ship ?"
MODEL_NAME = "random-llava-next-qwen2-7b"
SIDES = (4000, 27_328)
SMOKE_SIDES = (700, 1400)


@dataclass
class Timing:
    """One strategy on one image."""

    strategy: str
    side: int
    seconds: float
    peak_gib: float | None
    vision_tokens_to_llm: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, small images, CPU")
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--sides", help="square image sides in px (default 4000,27328)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (after a warm-up)")
    parser.add_argument("--device", help="default: cuda, cpu with --smoke")
    parser.add_argument("--image-dir", type=Path, help="where the test images are kept")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    return parser.parse_args(argv)


def render_tile(y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """A cheap, compressible pattern: coloured blocks, a checker and a ramp."""
    yy = np.arange(y0, y0 + height)[:, None]
    xx = np.arange(x0, x0 + width)[None, :]
    tile = np.empty((height, width, 3), np.uint8)
    tile[..., 0] = (xx // 48 * 37 + yy // 48 * 91) % 251
    tile[..., 1] = ((xx // 8) ^ (yy // 8)) & 0xFF
    tile[..., 2] = (xx + 2 * yy) // 16 % 256
    return tile


def test_image(side: int, directory: Path) -> Path:
    """A square pyramidal TIFF of ``side`` px, written once."""
    path = directory / f"latency_{side}.tif"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.tif")
        write_pyramidal_tiff(partial, side, side, render_tile, compression_level=1)
        partial.rename(path)
    return path


def build_model(smoke: bool, device: str) -> LlavaAdapter:
    """The random-weight model: Qwen2-7B dimensions in bf16, or a tiny one for ``--smoke``."""
    # The tiny model's word tokenizer and processor serve both (ids the tokenizer lacks
    # decode to nothing); only the model's shapes matter for the time.
    model, processor = build_tiny_llava(QUESTION.split(), kind="llava_next", family="qwen2")
    tokenizer = processor.tokenizer
    if smoke:
        model.config.mm_spatial_pool_stride = QWEN2_7B_LLAVA_NEXT["mm_spatial_pool_stride"]
        model.config.mm_spatial_pool_mode = QWEN2_7B_LLAVA_NEXT["mm_spatial_pool_mode"]
        model.generation_config.eos_token_id = None  # always generate --new-tokens tokens
        return LlavaAdapter(model.to(device), processor)
    config = LlavaNextConfig(
        **{k: v for k, v in QWEN2_7B_LLAVA_NEXT.items() if k != "model_type"},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation("sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = None  # always generate --new-tokens tokens
    return LlavaAdapter(model.eval(), processor)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_strategy(
    strategy, image: Path, repeats: int, device: str
) -> tuple[float, float | None, object]:
    """Best ``prepare`` + ``answer`` wall time after a warm-up, and peak GPU memory (GiB)."""
    cuda = device.startswith("cuda")
    strategy.answer(strategy.prepare(image), QUESTION)  # warm-up: kernels, caches
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        _synchronize(device)
        start = time.perf_counter()
        result = strategy.answer(strategy.prepare(image), QUESTION)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return best, peak, result


def run(args: argparse.Namespace) -> list[Timing]:
    """Build the model, register it for the strategies and time each one on each image."""
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU smoke test")
    sides = (
        tuple(int(s) for s in args.sides.split(","))
        if args.sides
        else (SMOKE_SIDES if args.smoke else SIDES)
    )
    dtype = "float32" if args.smoke else "bfloat16"
    if args.smoke:
        torch.set_num_threads(1)  # the tiny model's matrices are too small to share
    adapter = build_model(args.smoke, device)
    share_adapter(MODEL_NAME, adapter, dtype, device)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    strategies = {
        name: build_strategy(
            name, model_path=MODEL_NAME, dtype=dtype, device=device, max_new_tokens=args.new_tokens
        )
        for name in names
    }
    timings = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.image_dir or Path(scratch)
        for side in sides:
            image = test_image(side, directory)
            for name in names:
                seconds, peak, result = time_strategy(strategies[name], image, args.repeats, device)
                timings.append(Timing(name, side, seconds, peak, result.vision_tokens_to_llm))
                print(f"{side} px {name}: {seconds:.3f} s", flush=True)
    return timings


def table(timings: list[Timing]) -> str:
    """Markdown table: seconds per question, peak memory, ratio to anyres-p144, per size."""
    reference = {t.side: t.seconds for t in timings if t.strategy == REFERENCE}
    lines = [
        "| image | strategy | vision tokens to LLM | s / question | peak GPU GiB | "
        f"time / {REFERENCE} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        ratio = f"{t.seconds / reference[t.side]:.2f}" if t.side in reference else "-"
        peak = f"{t.peak_gib:.1f}" if t.peak_gib is not None else "-"
        lines.append(
            f"| {t.side:,} px | {t.strategy} | {t.vision_tokens_to_llm:,} | {t.seconds:.3f} | "
            f"{peak} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Timing]:
    args = parse_args(argv)
    timings = run(args)
    print(table(timings))
    if args.json:
        args.json.write_text(json.dumps([t.__dict__ for t in timings], indent=2) + "\n")
    return timings


if __name__ == "__main__":
    main()
