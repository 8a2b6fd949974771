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

Remote case (``--remote``): a Cloud-Optimised GeoTIFF (``--remote-side`` px, default
16,384, Deflate, 512 px blocks, overviews; written once under ``benchmarks/.cache/``)
is served by a loopback HTTP server on 127.0.0.1 that answers byte-range requests
and counts every byte and request it serves; it can pace its replies to a simulated
link (``--link MBPS:MS``: bandwidth shared by all connections and a delay per
request; several allowed, ``0:0`` is plain loopback). Two ways to get DIP tiles:

* ``lrsvqa (GDAL /vsicurl)``: ``PyramidReader.open(URL)`` and read tiles; GDAL fetches
  the header and only the blocks under each window, from the coarsest overview that
  is fine enough;
* ``download, then read``: fetch the whole file, then ``PyramidReader.open`` it locally.

Each runs in its own child process and reports the bytes fetched and the time to the
first full-resolution tile (open, pyramid, one tile), and after a c2f-like session
(thumbnail, 16 tiles of the middle level and 16 of the finest). Both must return
identical tiles.

Usage: ``.venv/bin/python benchmarks/reader_choice.py`` (needs pyvips and rasterio
for the full comparison: ``pip install -e '.[bench]'``);
``.venv/bin/python benchmarks/reader_choice.py --remote --link 0:0 --link 100:20``
(needs rasterio: ``pip install -e '.[geo]'``).
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


# ---------------------------------------------------------------------- remote case
REMOTE_SIDE = 16_384
REMOTE_TILES = 16
STATS_PATH = "/_served"
REMOTE_READERS = (("gdal", "lrsvqa (GDAL /vsicurl)"), ("download", "download, then read"))


def ensure_cog(side: int, cache: Path | None = None) -> Path:
    """A textured RGB COG of ``side`` px (Deflate, 512 px blocks, overviews), cached."""
    import rasterio
    from rasterio.shutil import copy as copy_raster
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from lrsvqa.imagery.texture import render_texture
    from pyramid_io import CACHE

    cache = cache or CACHE
    cog = cache / f"cog_{side}.tif"
    if cog.exists():
        return cog
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plain, partial = cache / f"cog_{side}.plain.tif", cache / f"cog_{side}.partial.tif"
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500_000.0, 4_300_000.0, 0.5, 0.5),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "photometric": "RGB",
        "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(plain, "w", **profile) as ds:
        for y0 in range(0, side, 512):
            h = min(512, side - y0)
            block = render_texture(y0, 0, h, side)
            ds.write(np.moveaxis(block, -1, 0), window=Window(0, y0, side, h))
    copy_raster(
        plain, partial, driver="COG", COMPRESS="DEFLATE", LEVEL=1, BLOCKSIZE=512,
        OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    plain.unlink()
    os.replace(partial, cog)
    print(f"wrote {cog} in {time.perf_counter() - started:.0f} s", flush=True)
    return cog


class _Pacer:
    """A shared link: bytes leave at ``mbps`` megabit/s in total, in arrival order."""

    def __init__(self, mbps: float) -> None:
        import threading

        self.bytes_per_s = mbps * 1e6 / 8
        self._lock = threading.Lock()
        self._free_at = 0.0

    def send(self, n: int) -> None:
        if self.bytes_per_s <= 0:
            return
        with self._lock:
            now = time.perf_counter()
            self._free_at = max(now, self._free_at) + n / self.bytes_per_s
            wait = self._free_at - now
        time.sleep(wait)


class CountingRangeServer:
    """Serves one folder over HTTP on 127.0.0.1 with byte ranges, counting what it sends.

    ``GET /_served`` answers ``{"bytes": ..., "requests": ...}`` (not counted), so a
    child process can read the counters between its steps.
    """

    CHUNK = 64 * 1024

    def __init__(self, root: Path, mbps: float = 0.0, latency_ms: float = 0.0) -> None:
        import http.server
        import threading

        server = self
        self.bytes_served = 0
        self.requests = 0
        self._lock = threading.Lock()
        pacer = _Pacer(mbps)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, send_body: bool) -> None:
                if self.path == STATS_PATH:
                    with server._lock:
                        stats = {"bytes": server.bytes_served, "requests": server.requests}
                    body = json.dumps(stats).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                time.sleep(latency_ms / 1000)
                file = root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = file.stat().st_size
                start, end = 0, size - 1
                spec = self.headers.get("Range")
                if spec and spec.startswith("bytes="):
                    first, _, last = spec[6:].split(",")[0].partition("-")
                    start, end = int(first), min(int(last or size - 1), size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                with server._lock:
                    server.requests += 1
                if not send_body:
                    return
                with open(file, "rb") as f:
                    f.seek(start)
                    left = end - start + 1
                    while left > 0:
                        data = f.read(min(server.CHUNK, left))
                        pacer.send(len(data))
                        self.wfile.write(data)
                        left -= len(data)
                        with server._lock:
                            server.bytes_served += len(data)

            def do_HEAD(self) -> None:  # noqa: N802
                self._reply(send_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._reply(send_body=True)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def _served(base: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(base + STATS_PATH) as reply:  # noqa: S310 - loopback only
        return json.loads(reply.read())


def _session(reader) -> list[np.ndarray]:  # noqa: ANN001 - a PyramidReader
    """What one c2f question reads: thumbnail, then tiles of the middle and finest levels."""
    rng = np.random.default_rng(SEED)
    out = [reader.thumbnail()]
    geometry = reader.geometry
    for level in (geometry.num_levels // 2, geometry.num_levels - 1):
        positions = geometry.levels[level].tiles()
        picks = rng.choice(len(positions), size=min(REMOTE_TILES, len(positions)), replace=False)
        out += reader.tiles(level, [positions[int(p)] for p in sorted(picks)])
    return out


def remote_child(mode: str, url: str) -> None:
    """Measure one way of reading the served COG; print JSON."""
    import tempfile
    import urllib.request

    import rasterio  # noqa: F401 - import time is not reading time

    from lrsvqa.imagery.tiles import PyramidReader

    base = url.rsplit("/", 1)[0]
    before = _served(base)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        location = url
        if mode == "download":
            location = str(Path(tmp) / url.rsplit("/", 1)[1])
            with urllib.request.urlopen(url) as reply, open(location, "wb") as out:  # noqa: S310
                while chunk := reply.read(2**20):
                    out.write(chunk)
        with PyramidReader.open(location) as reader:
            finest = reader.geometry.num_levels - 1
            rows, cols = reader.geometry.levels[finest].grid
            first = reader.tile(finest, rows // 2, cols // 2)
            first_s = time.perf_counter() - started
            at_first = _served(base)
            tiles = [first, *_session(reader)]
            session_s = time.perf_counter() - started
            levels = len(reader.image.level_sizes)
    after = _served(base)
    digest = hashlib.sha256()
    for tile in tiles:
        digest.update(np.ascontiguousarray(tile).tobytes())
    result = {
        "first_s": first_s,
        "first_bytes": at_first["bytes"] - before["bytes"],
        "first_requests": at_first["requests"] - before["requests"],
        "session_s": session_s,
        "session_bytes": after["bytes"] - before["bytes"],
        "session_requests": after["requests"] - before["requests"],
        "tiles": len(tiles),
        "levels": levels,
        "sha256": digest.hexdigest()[:12],
    }
    print(json.dumps(result))


def remote_main(side: int, links: list[tuple[float, float]], cache: Path | None = None) -> None:
    """Serve the COG over each simulated link and compare the two ways of reading it."""
    cog = ensure_cog(side, cache)
    size = cog.stat().st_size
    env = dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    print(f"{cog.name}: {side} x {side} px RGB COG, {size / 2**20:.1f} MiB, served on 127.0.0.1")
    print(
        f"{'link':<18} {'reader':<24} {'first tile s':>12} {'MiB':>8} {'req':>5} "
        f"{'session s':>10} {'MiB':>8} {'req':>5} {'% of file':>9}  pixels"
    )
    for mbps, latency in links:
        link = "loopback" if mbps <= 0 and latency <= 0 else f"{mbps:g} Mbit/s, {latency:g} ms"
        server = CountingRangeServer(cog.parent, mbps=mbps, latency_ms=latency)
        try:
            for mode, label in REMOTE_READERS:
                done = subprocess.run(
                    [sys.executable, __file__, "--remote-child", mode, f"{server.url}/{cog.name}"],
                    check=False, capture_output=True, text=True, env=env,
                )  # fmt: skip
                if done.returncode:
                    sys.exit(f"{label} failed:\n{done.stderr}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{link:<18} {label:<24} {row['first_s']:>12.2f} "
                    f"{row['first_bytes'] / 2**20:>8.2f} {row['first_requests']:>5} "
                    f"{row['session_s']:>10.2f} {row['session_bytes'] / 2**20:>8.2f} "
                    f"{row['session_requests']:>5} {100 * row['session_bytes'] / size:>8.1f}%  "
                    f"{row['sha256']}",
                    flush=True,
                )
        finally:
            server.close()
    print(
        f"session: first tile, thumbnail, {REMOTE_TILES} tiles of the middle DIP level and "
        f"{REMOTE_TILES} of the finest; 'pixels' must match between the two readers"
    )


def _link(text: str) -> tuple[float, float]:
    mbps, _, latency = text.partition(":")
    return float(mbps), float(latency or 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("CANDIDATE", "IMAGE"))
    parser.add_argument("--remote", action="store_true", help="Measure the remote (COG) case.")
    parser.add_argument("--remote-side", type=int, default=REMOTE_SIDE, help="COG side, px.")
    parser.add_argument(
        "--link", type=_link, action="append", metavar="MBPS:MS",
        help="Simulated link: megabit/s (0: unpaced) and ms per request; repeatable.",
    )  # fmt: skip
    parser.add_argument("--remote-cache", type=Path, help="Folder of the COG (default: .cache).")
    parser.add_argument("--remote-child", nargs=2, metavar=("MODE", "URL"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
    elif args.remote_child:
        remote_child(*args.remote_child)
    elif args.remote:
        remote_main(args.remote_side, args.link or [(0.0, 0.0), (100.0, 20.0)], args.remote_cache)
    else:
        main()
