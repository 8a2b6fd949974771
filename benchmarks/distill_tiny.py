"""Attention distillation on a tiny LLaVA-NeXT: does the RFM learn the LLM's attention?

A 6-layer tiny model (random weights, built offline) is the frozen teacher. The RFM
starts as copies of LLM layers 0 and 1 and is distilled towards LLM layers 2 and 5
(pairs 0:2, 1:5), so it starts measurably different from its teachers. Synthetic
672-1,000 px scenes with template questions (one to three turns) are the data; a
held-out set with another seed measures agreement before and after:

* ``kl`` / ``kl_hr``: KL(teacher || student) of the attention of each turn's last
  prompt token over the vision / high-resolution tokens (mean over pairs and heads);
* ``overlap``: share of the teacher's top-25% high-resolution tokens (head-averaged,
  as inference ranks them) that the student also puts in its top 25% (chance: 0.25);
  ``overlap_last`` for the last pair, whose RFM layer inference uses.

Runs single-process in this interpreter and/or as 2 CPU processes (``torchrun``,
gloo, DDP), the latter through the ``lrsvqa distill`` command.

Usage: ``.venv/bin/python benchmarks/distill_tiny.py [--steps 300] [--processes 1 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = ("loss", "kl", "kl_hr", "mse", "overlap", "overlap_last")
RFM_LAYERS = (0, 1)
PAIRS = ((0, 2), (1, 5))


def prepare(root: Path, train: int, held_out: int, size: tuple[int, int]) -> dict[str, Path]:
    """Save the tiny model and write the training and held-out conversation sets."""
    from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
    from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset

    model, processor = build_tiny_llava(TOY_WORDS, num_layers=6, seed=0)
    return {
        "model": save_tiny_llava(model, processor, root / "model"),
        "train": write_toy_dataset(root / "train", train, seed=0, size_range=size),
        "eval": write_toy_dataset(root / "eval", held_out, seed=1, size_range=size),
    }


def run_single(paths: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    """Distil in this process through the Python API."""
    import torch

    from lrsvqa.train.distill import DistillConfig, distill

    torch.set_num_threads(1)  # tiny tensors: threads only contend on shared cores
    report = distill(
        DistillConfig(
            model=paths["model"],
            data=paths["train"],
            out_dir=out,
            rfm_layers=RFM_LAYERS,
            pairs=PAIRS,
            steps=args.steps,
            lr=args.lr,
            log_every=args.steps // 10 or 1,
            save_every=0,
            eval_data=paths["eval"],
            eval_size=args.held_out,
            progress=False,
        )
    )
    return report.to_dict()


def run_two_processes(paths: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    """Distil with 2 CPU processes (gloo DDP) through ``torchrun ... lrsvqa distill``."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        str(Path(sys.executable).parent / "lrsvqa"),
        *("distill", "--cpu", "--model", str(paths["model"]), "--data", str(paths["train"])),
        *("--out", str(out), "--rfm-layers", ",".join(map(str, RFM_LAYERS))),
        *("--pairs", ",".join(f"{r}:{m}" for r, m in PAIRS), "--steps", str(args.steps)),
        *("--lr", str(args.lr), "--log-every", str(args.steps // 10 or 1), "--save-every", "0"),
        *("--eval-data", str(paths["eval"]), "--eval-size", str(args.held_out)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"2-process run failed:\n{done.stderr[-4000:]}")
    return json.loads((out / "report.json").read_text())


def table(results: dict[str, dict]) -> str:
    """Markdown table of before/after agreement per run."""
    lines = [
        "| run | metric | before | after |",
        "|---|---|---:|---:|",
    ]
    for name, result in results.items():
        for metric in METRICS:
            before, after = result["before"][metric], result["after"][metric]
            lines.append(f"| {name} | {metric} | {before:.4g} | {after:.4g} |")
        lines.append(
            f"| {name} | train loss (first/last window) | {result['first_loss']:.4g} "
            f"| {result['last_loss']:.4g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train", type=int, default=32, help="training conversations")
    parser.add_argument("--held-out", type=int, default=16, help="held-out conversations")
    parser.add_argument("--size", type=int, nargs=2, default=(672, 1000), help="pixel range")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    parser.add_argument("--out", type=Path, default=None, help="keep outputs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        paths = prepare(root, args.train, args.held_out, tuple(args.size))
        runners = {1: ("1 process", run_single), 2: ("2 processes (gloo DDP)", run_two_processes)}
        results, seconds = {}, {}
        for processes in args.processes:
            name, runner = runners[processes]
            start = time.perf_counter()
            results[name] = runner(paths, root / f"rfm_{processes}p", args)
            seconds[name] = round(time.perf_counter() - start, 1)
        print(
            f"{args.steps} steps, {args.train} training / {args.held_out} held-out dialogues, "
            f"images {args.size[0]}-{args.size[1]} px, RFM layers {RFM_LAYERS}, pairs {PAIRS}"
        )
        print(table(results))
        print("wall time (s, shared machine):", json.dumps(seconds))
        if args.out is not None:
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
