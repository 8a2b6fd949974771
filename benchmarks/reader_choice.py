"""Which library should read windows of very large TIFFs? Measured, not guessed.

Candidates: tifffile + imagecodecs + zarr, pyvips (libvips from the pyvips-binary
wheel) and rasterio (GDAL bundled in its wheel); ``lrsvqa`` is our reader on top of
tifffile + zarr, including its resampling step, to show what it adds. Each reads,
from the 27,328 px tiled Deflate TIFF with overviews of ``pyramid_io.py``:

* 50 random 336 x 336 windows at full resolution (a DIP tile of the finest level);
* 50 random 336 x 336 windows of the 1/4 overview (a tile of a coarser level);
* the whole coarsest overview (the thumbnail's source).

Every candidate runs in its own child process (time, CPU, peak-memory growth via
``VmHWM``), after a warm-up window so one-off initialisation is not counted, and all
must return identical pixels. The file is in the page cache for everyone.

Usage: ``.venv/bin/python benchmarks/reader_choice.py`` (needs pyvips and rasterio
for the full comparison: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pyramid_io import ensure_files, peak_rss_mb

WINDOW = 336
COUNT = 50
SEED = 1
Reader = Callable[[int, int, int, int, int], np.ndarray]  # (level, y, x, h, w) -> (h, w, 3)

# Distributions each candidate needs beyond numpy, for the install footprint.
CANDIDATES = {
    "tifffile+zarr": ["tifffile", "imagecodecs", "zarr", "numcodecs"],
    "pyvips": ["pyvips", "pyvips-binary", "cffi"],
    "rasterio": ["rasterio", "affine", "click", "cligj", "click-plugins", "attrs"],
    "lrsvqa": ["tifffile", "imagecodecs", "zarr", "numcodecs", "pillow"],
}
_MODULES = {"tifffile+zarr": "zarr", "pyvips": "pyvips", "rasterio": "rasterio", "lrsvqa": "zarr"}


def open_tifffile_zarr(path: Path) -> tuple[Reader, list[tuple[int, int]]]:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    levels = tif.series[0].levels
    group = zarr.open(tif.series[0].aszarr(), mode="r")
    arrays = [group[str(k)] for k in range(len(levels))]

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.asarray(arrays[level][y : y + h, x : x + w])

    return read, [lv.shape[:2] for lv in levels]


def open_pyvips(path: Path) -> tuple[Reader, list[tuple[int, int]]]:
    import pyvips

    pages = pyvips.Image.new_from_file(str(path)).get("n-pages")
    images = [pyvips.Image.new_from_file(str(path), page=k, access="random") for k in range(pages)]

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return images[level].crop(x, y, w, h).numpy()

    return read, [(im.height, im.width) for im in images]


def open_rasterio(path: Path) -> tuple[Reader, list[tuple[int, int]]]:
    import rasterio
    from rasterio.windows import Window

    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    base = rasterio.open(path)
    datasets = [base] + [
        rasterio.open(path, overview_level=k) for k in range(len(base.overviews(1)))
    ]

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.moveaxis(datasets[level].read(window=Window(x, y, w, h)), 0, -1)

    return read, [(ds.height, ds.width) for ds in datasets]


def open_lrsvqa(path: Path) -> tuple[Reader, list[tuple[int, int]]]:
    from lrsvqa.imagery.reader import open_image

    image = open_image(path)
    sizes = image.level_sizes

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        fy, fx = image.height / sizes[level][0], image.width / sizes[level][1]
        box = (x * fx, y * fy, (x + w) * fx, (y + h) * fy)
        return image.read_region(box, (h, w))

    return read, list(sizes)


OPENERS = {
    "tifffile+zarr": open_tifffile_zarr,
    "pyvips": open_pyvips,
    "rasterio": open_rasterio,
    "lrsvqa": open_lrsvqa,
}


def _windows(size: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int]]:
    ys = rng.integers(0, size[0] - WINDOW, COUNT)
    xs = rng.integers(0, size[1] - WINDOW, COUNT)
    return list(zip(ys.tolist(), xs.tolist(), strict=True))


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def child(candidate: str, path: Path) -> None:
    """Measure one candidate and print the result as JSON."""
    for module in ("tifffile", "PIL.Image", _MODULES[candidate]):
        importlib.import_module(module)  # import time is not reading time
    started = time.perf_counter()
    read, sizes = OPENERS[candidate](path)
    open_ms = (time.perf_counter() - started) * 1000
    read(0, 0, 0, 16, 16)  # warm-up: codec and thread-pool initialisation
    floor = peak_rss_mb()
    digest = hashlib.sha256()
    result: dict[str, float | str] = {"open_ms": open_ms}
    cpu = _cpu_seconds()
    rng = np.random.default_rng(SEED)
    for name, level in (("full_ms", 0), ("quarter_ms", 2)):
        windows = _windows(sizes[level], rng)
        started = time.perf_counter()
        for y, x in windows:
            digest.update(np.ascontiguousarray(read(level, y, x, WINDOW, WINDOW)).tobytes())
        result[name] = (time.perf_counter() - started) * 1000 / COUNT
    coarsest = len(sizes) - 1
    started = time.perf_counter()
    digest.update(np.ascontiguousarray(read(coarsest, 0, 0, *sizes[coarsest])).tobytes())
    result["coarsest_ms"] = (time.perf_counter() - started) * 1000
    result["cpu_s"] = _cpu_seconds() - cpu
    result["peak_growth_mb"] = peak_rss_mb() - floor
    result["sha256"] = digest.hexdigest()[:12]
    print(json.dumps(result))


def footprint_mb(distributions: list[str]) -> float:
    """Installed size of the distributions (from their RECORD files)."""
    total = 0
    for name in distributions:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        total += sum(f.size or 0 for f in files)
    return total / 2**20


def main() -> None:
    path = ensure_files(27_328)["tiled+overviews"]
    header = (
        f"{'reader':<14} {'open ms':>8} {'full-res ms':>11} {'1/4-res ms':>10} "
        f"{'coarsest ms':>11} {'CPU s':>6} {'+peak MB':>8} {'install MB':>10}  pixels"
    )
    print(f"{COUNT} random {WINDOW}x{WINDOW} windows per level from {path.name}")
    print(header)
    rows = {}
    for candidate in OPENERS:
        if importlib.util.find_spec(_MODULES[candidate]) is None:
            print(f"{candidate:<14} not installed")
            continue
        done = subprocess.run(
            [sys.executable, __file__, "--child", candidate, str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows[candidate] = row
        print(
            f"{candidate:<14} {row['open_ms']:>8.1f} {row['full_ms']:>11.2f} "
            f"{row['quarter_ms']:>10.2f} {row['coarsest_ms']:>11.1f} {row['cpu_s']:>6.2f} "
            f"{row['peak_growth_mb']:>8.0f} {footprint_mb(CANDIDATES[candidate]):>10.0f}  "
            f"{row['sha256']}"
        )
    same = len({row["sha256"] for row in rows.values()}) == 1
    print(f"identical pixels from every reader: {same}")
    fastest = min(rows, key=lambda c: rows[c]["full_ms"])
    if "tifffile+zarr" in rows:
        ratio = rows["tifffile+zarr"]["full_ms"] / rows[fastest]["full_ms"]
        print(
            f"fastest full-resolution windows: {fastest}; tifffile+zarr takes {ratio:.2f}x its "
            "time per window"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("CANDIDATE", "IMAGE"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
    else:
        main()
