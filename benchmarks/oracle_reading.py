"""Can the default model read what coarse-to-fine hands it? An oracle for c2f's last step.

Coarse-to-fine has two jobs: find the target (the RFM's search) and read it (the LLM on
the retained tokens). The synthetic benchmark scores both together. This benchmark
takes the search away: for every question about one object it gives the LLM the
thumbnail plus the finest-level tiles covering the object's box, exactly in the layout
c2f's last step uses, with

* ``all``: every token of those tiles kept, and
* ``target``: only the tokens touching the box kept (perfect pruning),

and scores the answers by question category and reference kind. If the oracle reads
no better than the thumbnail, c2f cannot either, whatever its RFM finds.

    python benchmarks/oracle_reading.py --world benchmarks/.cache/synthetic_world/world/bench
        [--questions FILE] [--limit 200]

``--world`` is a benchmark world written by ``benchmarks/synthetic_world.py`` (its
``questions.jsonl`` is read unless ``--questions`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from lrsvqa.app.shipped import resolve_default_model
from lrsvqa.bench.scoring import is_correct
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions
from lrsvqa.train.samplers import tokens_touching

VARIANTS = ("all", "target")


@torch.no_grad()
def oracle_answers(
    adapter: LlavaAdapter, reader: PyramidReader, question: str, box
) -> dict[str, str]:
    """The answer under each variant, from the finest tiles covering ``box``."""
    g = adapter.tokens_per_side
    level_index = reader.geometry.num_levels - 1
    level = reader.geometry.levels[level_index]
    tiles = level.tiles_covering(box)
    prompt = adapter.prompt_parts(question)
    thumbnail = adapter.encode_tiles([reader.thumbnail()])[0]
    hr = adapter.encode_hr_tiles([reader.tile(level_index, r, c) for r, c in tiles])
    hr = hr.reshape(-1, adapter.hidden_size)
    positions = tile_token_positions(tiles, g)
    masks = {
        "all": np.ones(len(positions), bool),
        "target": tokens_touching(level, positions, [box], g)[:, 0],
    }
    answers = {}
    for variant, mask in masks.items():
        if not mask.any():
            mask = np.ones(len(positions), bool)
        keep = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
        sequence, _, _ = layout_vision_tokens(
            hr[keep], positions[mask], thumbnail, adapter.image_newline
        )
        embeds, _ = adapter.assemble(prompt, sequence)
        answers[variant] = adapter.generate(embeds, 8)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--questions", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped default")
    args = parser.parse_args()
    model_dir = args.model or resolve_default_model().model_dir
    adapter = LlavaAdapter.from_pretrained(model_dir)
    questions = args.questions or args.world / "questions.jsonl"
    records = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("hbox")][: args.limit]
    correct: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    readers: dict[str, PyramidReader] = {}
    for record in records:
        image = record["image"]
        if image not in readers:
            readers[image] = PyramidReader.open(args.world / image)
        answers = oracle_answers(adapter, readers[image], record["text"], record["hbox"])
        for variant, answer in answers.items():
            ok = is_correct(answer, str(record["ground_truth"]), rule="paper")
            for key in (record["category"], f"ref:{record.get('reference_kind', '-')}", "OA"):
                correct[(variant, key, "")].append(ok)
    for reader in readers.values():
        reader.close()
    keys = sorted({k for _, k, _ in correct}, key=lambda k: (k == "OA", k))
    print(f"oracle reading, {len(records)} single-object questions, paper rule, {model_dir}")
    print(f"{'':28s}" + "".join(f"{v:>12s}" for v in VARIANTS))
    table = {}
    for key in keys:
        cells = [correct[(v, key, "")] for v in VARIANTS]
        table[key] = {v: 100 * float(np.mean(c)) for v, c in zip(VARIANTS, cells, strict=True)}
        row = "".join(f"{100 * np.mean(c):9.1f} ({len(c):>3d})"[-12:] for c in cells)
        print(f"{key:28s}{row}")
    if args.out:
        args.out.write_text(json.dumps({"model": str(model_dir), "accuracy": table}, indent=2))


if __name__ == "__main__":
    main()
