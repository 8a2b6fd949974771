"""How large facilities and objects of the synthetic world are at every scale a strategy sees.

For scenes of several sizes (generator version 4) prints, in pixels at each DIP level,
in the thumbnail and at each anyres grid's effective resolution: the median long side
of a facility (the setting a question's words lead to) and of an object (what the
question asks about). Writes the table to ``docs/results/world_scales.md``.

    python benchmarks/world_scales.py [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from lrsvqa.imagery.pyramid import build_pyramid
from lrsvqa.synthetic import SceneSpec, generate_scene

SIZES = ((8192, 8192), (16384, 16384), (32768, 32768), (4096, 32768))
ANYRES = (4, 9, 25)  # tiles of 336 px: the long side is seen at sqrt(n) * 336 px
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "world_scales.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = [
        "# Facility and object sizes at every scale (synthetic world, generator version 4)",
        "",
        f"Command: `python benchmarks/world_scales.py --seed {args.seed}`. Median long side "
        "in pixels of a facility / an object at each scale; DIP levels coarse to fine.",
        "",
        "| scene | scale | px per image px | facility px | object px |",
        "|---|---|---|---|---|",
    ]
    for height, width in SIZES:
        scene = generate_scene(SceneSpec(args.seed, height, width))
        facility = float(np.median([max(f.x1 - f.x0, f.y1 - f.y0) for f in scene.facilities]))
        objects = float(np.median([o.attributes["length_px"] for o in scene.objects]))
        geometry = build_pyramid(height, width)
        long_side = max(height, width)
        scales = [("thumbnail", max(geometry.thumbnail.resized_size) / long_side)]
        scales += [(f"anyres-p{n}", math.isqrt(n) * 336 / long_side) for n in ANYRES]
        scales += [
            (f"DIP level {lv.index}", max(lv.resized_size) / long_side) for lv in geometry.levels
        ]
        for name, scale in scales:
            lines.append(
                f"| {height}x{width} | {name} | {scale:.4f} | {facility * scale:.1f} "
                f"| {objects * scale:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
