"""Memory follows what is read, not the image size (measured in a child process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lrsvqa.imagery.writer import write_pyramidal_tiff

MiB = 2**20

# Runs in a fresh interpreter: VmHWM (peak resident set) before and after each step.
_CHILD = """
import json, sys
from pathlib import Path
from lrsvqa.imagery.reader import open_image
from lrsvqa.imagery.tiles import PyramidReader

def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

big, small = sys.argv[1], sys.argv[2]
result = {}
with PyramidReader.open(big) as reader:
    start = peak()
    level = reader.geometry.levels[-1]
    tiles = reader.tiles(level.index, [(0, 0), (10, 20), (30, 5), (59, 59), (45, 33)])
    result["tiles"] = [int(t[100, 100, 0]) for t in tiles]
    result["tiles_growth"] = peak() - start
with open_image(small) as image:
    start = peak()
    thumb = image.read_region((0, 0, image.width, image.height), (336, 336))
    result["thumb_growth"] = peak() - start
    result["thumb_mean"] = float(thumb[:, :, 0].mean())
print(json.dumps(result))
"""


def _block_value(y0: int, x0: int) -> int:
    return (y0 // 1024 * 7 + x0 // 1024 * 13) % 256


def _blocks(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Cheap content: one grey level per 1024 px block, constant within a tile."""
    return np.full((h, w, 3), _block_value(y0, x0), np.uint8)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("memory")
    # 20,000 x 20,000 RGB is 1.2 GB decoded; tiles compress to almost nothing.
    big = write_pyramidal_tiff(
        folder / "big.tif", 20_000, 20_000, _blocks, tile_size=1024, overviews=False,
        compression="zstd", compression_level=1,
    )  # fmt: skip
    # 8,000 x 8,000 without overviews: a thumbnail must stream through all of it (192 MB).
    small = write_pyramidal_tiff(folder / "small.tif", 8000, 8000, _blocks, overviews=False)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(big), str(small)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_a_few_full_resolution_tiles_of_a_20k_image_cost_megabytes(measured: dict) -> None:
    # Tile (r, c) at the finest level (r_p = 1.008) starts near pixel 333 * (r, c).
    expected = [_block_value(int(333.3 * r) + 99, int(333.3 * c) + 99) for r, c in
                [(0, 0), (10, 20), (30, 5), (59, 59), (45, 33)]]  # fmt: skip
    assert measured["tiles"] == expected
    assert measured["tiles_growth"] < 64 * MiB, measured


def test_thumbnail_without_overviews_streams(measured: dict) -> None:
    assert measured["thumb_growth"] < 96 * MiB, measured
    values = [_block_value(y, x) for y in range(0, 8000, 1024) for x in range(0, 8000, 1024)]
    # Area-weighted mean of the blocks (the last row/column of blocks is 832 px wide).
    weights = [(min(1024, 8000 - y)) * min(1024, 8000 - x) for y in range(0, 8000, 1024)
               for x in range(0, 8000, 1024)]  # fmt: skip
    assert measured["thumb_mean"] == pytest.approx(np.average(values, weights=weights), abs=0.5)
