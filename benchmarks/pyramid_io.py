"""Lazy DIP tiles versus decoding the whole image: time and peak memory.

Generates once, under ``benchmarks/.cache/``, a 27,328 x 27,328 textured RGB image
(the largest LRS-VQA size) in two layouts: a tiled Deflate TIFF with overviews and
a plain uncompressed strip TIFF. For each file, two approaches produce the same 20
random full-resolution DIP tiles:

* ``lrsvqa``: ``PyramidReader.open`` + ``tiles`` (reads only the windows needed);
* ``naive``: Pillow decodes the whole image, resizes it to the finest DIP level
  (``r_p``, eq. 3) and crops the tiles, as a straightforward DIP implementation does.

Each approach runs in its own child process, which reports its own peak resident
memory (``VmHWM``, the kernel's high-water mark of its resident set), so no approach
is charged for another's allocations; a child that only imports the libraries gives
the interpreter's floor. The tiles of both approaches are compared, so the speed-up
is not bought with different pixels.

Usage: ``.venv/bin/python benchmarks/pyramid_io.py`` (first run writes ~3.2 GB).
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

import numpy as np

NUM_TILES = 20
SEED = 0
STRIP_ROWS = 16
CACHE = Path(__file__).resolve().parent / ".cache"


def cached_files(size: int) -> dict[str, Path]:
    """The two layouts of the test image, by label."""
    return {
        "tiled+overviews": CACHE / f"tiled_{size}.tif",
        "strip, uncompressed": CACHE / f"strip_{size}.tif",
    }


def _is_complete(path: Path, size: int) -> bool:
    from lrsvqa.imagery.errors import ImageReadError
    from lrsvqa.imagery.reader import open_image

    try:
        with open_image(path) as image:
            return (image.height, image.width) == (size, size)
    except ImageReadError:
        return False


def ensure_files(size: int) -> dict[str, Path]:
    """Write both test images unless a complete copy is cached (written, then renamed)."""
    import tifffile

    from lrsvqa.imagery.texture import render_texture
    from lrsvqa.imagery.writer import write_pyramidal_tiff

    CACHE.mkdir(parents=True, exist_ok=True)
    files = cached_files(size)
    tiled, strip = files["tiled+overviews"], files["strip, uncompressed"]
    if not _is_complete(tiled, size):
        started = time.perf_counter()
        partial = tiled.with_suffix(".partial")
        write_pyramidal_tiff(partial, size, size, render_texture, compression_level=1)
        os.replace(partial, tiled)
        print(f"wrote {tiled} in {time.perf_counter() - started:.0f} s", flush=True)
    if not _is_complete(strip, size):
        started = time.perf_counter()
        partial = strip.with_suffix(".partial")
        strips = (
            render_texture(y0, 0, min(STRIP_ROWS, size - y0), size).tobytes()
            for y0 in range(0, size, STRIP_ROWS)
        )
        with tifffile.TiffWriter(partial) as tif:
            tif.write(
                strips,
                shape=(size, size, 3),
                dtype=np.uint8,
                photometric="rgb",
                rowsperstrip=STRIP_ROWS,
                metadata=None,
            )
        os.replace(partial, strip)
        print(f"wrote {strip} in {time.perf_counter() - started:.0f} s", flush=True)
    return files


def tile_positions(size: int) -> list[tuple[int, int]]:
    """The same 20 distinct random tiles of the finest level for every approach."""
    from lrsvqa.imagery.pyramid import build_pyramid

    rows, cols = build_pyramid(size, size).levels[-1].grid
    picks = np.random.default_rng(SEED).choice(rows * cols, size=NUM_TILES, replace=False)
    return [(int(p) // cols, int(p) % cols) for p in picks]


def run_lrsvqa(path: Path, positions: list[tuple[int, int]]) -> list[np.ndarray]:
    from lrsvqa.imagery.tiles import PyramidReader

    with PyramidReader.open(path) as reader:
        return reader.tiles(reader.geometry.num_levels - 1, positions)


def run_naive(path: Path, positions: list[tuple[int, int]]) -> list[np.ndarray]:
    from PIL import Image

    from lrsvqa.imagery.pyramid import build_pyramid

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        image.load()
        level = build_pyramid(image.height, image.width).levels[-1]
        rh, rw = level.resized_size
        resized = image.resize((rw, rh), Image.Resampling.BILINEAR)
    b = level.tile_size
    # crop() pads outside the image with zeros, the DIP's bottom/right padding.
    return [
        np.asarray(resized.crop((c * b, r * b, (c + 1) * b, (r + 1) * b))) for r, c in positions
    ]


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``).

    Not ``ru_maxrss``: that survives ``exec`` and so starts at the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def child(approach: str, path: Path, out: Path) -> None:
    """Run one approach (or, for ``imports``, nothing) and print time and peak memory."""
    import PIL.Image  # noqa: F401  - import cost is not part of the measured work

    import lrsvqa.imagery.tiles  # noqa: F401
    from lrsvqa.imagery.reader import open_image

    with open_image(path) as image:
        positions = tile_positions(image.height)
    runners = {"lrsvqa": run_lrsvqa, "naive": run_naive}
    started = time.perf_counter()
    tiles = runners[approach](path, positions) if approach in runners else []
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    if tiles:
        np.save(out, np.stack(tiles))
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(approach: str, path: Path, out: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", approach, str(path), str(out)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(size: int) -> None:
    files = ensure_files(size)
    results: dict[tuple[str, str], dict[str, float]] = {}
    print(f"{'file':<22} {'approach':<8} {'time s':>9} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        floor = measure("imports", files["tiled+overviews"], Path(tmp) / "none.npy")
        print(f"{'(imports only)':<22} {'-':<8} {'-':>9} {floor['peak_mb']:>12.0f}")
        for label, path in files.items():
            for approach in ("lrsvqa", "naive"):
                result = measure(approach, path, Path(tmp) / f"{label}-{approach}.npy")
                results[label, approach] = result
                print(
                    f"{label:<22} {approach:<8} {result['seconds']:>9.2f} "
                    f"{result['peak_mb']:>12.0f}",
                    flush=True,
                )
            ours = np.load(Path(tmp) / f"{label}-lrsvqa.npy").astype(np.int16)
            naive = np.load(Path(tmp) / f"{label}-naive.npy").astype(np.int16)
            diff = np.abs(ours - naive)
            print(
                f"{label:<22} tiles agree: mean |lrsvqa - naive| = {diff.mean():.3f} "
                f"grey levels, max {diff.max()}"
            )
    for label in ("strip, uncompressed", "tiled+overviews"):
        ours, naive = results[label, "lrsvqa"], results[label, "naive"]
        speed = naive["seconds"] / ours["seconds"]
        memory = naive["peak_mb"] / ours["peak_mb"]
        verdict = "meets" if speed >= 10 and memory >= 10 else "MISSES"
        suffix = f" ({verdict} the >= 10x / >= 10x target)" if label == "tiled+overviews" else ""
        print(
            f"ratio {label}: {speed:.0f}x faster, {memory:.1f}x less peak memory "
            f"({NUM_TILES} tiles of {size}x{size}){suffix}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=27_328, help="Image side (smoke runs).")
    parser.add_argument("--child", nargs=3, metavar=("APPROACH", "IMAGE", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
    else:
        main(args.size)
