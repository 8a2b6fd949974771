"""A self-contained tour of large-image reading and the Dynamic Image Pyramid."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from lrsvqa.imagery.display import pyramid_table, save_grid_overlay
from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.reader import open_image
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.imagery.writer import write_pyramidal_tiff

DEMO_HEIGHT, DEMO_WIDTH = 4000, 6000
# CLIP-L/14 at 336 px: 24 x 24 vision tokens per tile.
_TOKENS_PER_SIDE = 24


def ensure_demo_scene(out_dir: Path) -> Path:
    """Write the textured 6,000 x 4,000 tiled TIFF once; later runs reuse it.

    The file is written under a temporary name and renamed, so an interrupted run
    never leaves a half-written scene that would be mistaken for the cached one.
    """
    path = out_dir / f"demo_scene_{DEMO_WIDTH}x{DEMO_HEIGHT}.tif"
    try:
        with open_image(path) as image:
            if (image.height, image.width) == (DEMO_HEIGHT, DEMO_WIDTH):
                return path
    except ImageReadError:
        pass
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tif")
    write_pyramidal_tiff(partial, DEMO_HEIGHT, DEMO_WIDTH, render_texture, compression_level=1)
    os.replace(partial, path)
    return path


def run_pyramid_demo(out_dir: Path) -> None:
    """Build a DIP over a synthetic scene, read a coarse-to-fine path of tiles, draw it.

    Prints the pyramid table and timings and writes ``pyramid_overlay.png`` to
    ``out_dir``.
    """
    console = Console()
    started = time.perf_counter()
    scene = ensure_demo_scene(out_dir)
    console.print(f"scene: {scene} ({time.perf_counter() - started:.1f} s to prepare)")
    with PyramidReader.open(scene) as reader:
        console.print(pyramid_table(reader))
        geometry = reader.geometry
        started = time.perf_counter()
        reader.thumbnail()
        coarse = geometry.levels[0]
        reader.tiles(0, coarse.tiles())
        read = 1 + coarse.num_tiles
        # Zoom on the scene centre: the centre token of each level selects the tiles
        # of the next level beneath it, as the coarse-to-fine search does.
        for index in range(geometry.num_levels - 1):
            rows, cols = geometry.levels[index].token_grid(_TOKENS_PER_SIDE)
            tiles = geometry.next_level_tiles(index, [(rows // 2, cols // 2)], _TOKENS_PER_SIDE)
            reader.tiles(index + 1, tiles)
            read += len(tiles)
            console.print(f"level {index + 1} centre token -> level {index + 2} tiles {tiles}")
        elapsed = time.perf_counter() - started
        console.print(f"read {read} tiles of {geometry.tile_size} px in {elapsed:.2f} s")
        overlay = save_grid_overlay(reader, out_dir / "pyramid_overlay.png")
    console.print(f"tile-grid overlay: {overlay}")
