from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.reader import open_image

rasterio = pytest.importorskip("rasterio")
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

H, W = 96, 128
# A rotated transform, so row and column terms are both checked.
TRANSFORM = Affine(10.0, 2.0, 500_000.0, 1.5, -10.0, 4_200_000.0)


def _pixels(bands: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4000, (bands, H, W), dtype=np.uint16)


def _write(path: Path, data: np.ndarray, driver: str = "GTiff", **profile: object) -> Path:
    with rasterio.open(
        path, "w", driver=driver, width=W, height=H, count=data.shape[0], dtype=data.dtype,
        crs="EPSG:32633", transform=TRANSFORM, **profile,
    ) as ds:  # fmt: skip
        ds.write(data)
    return path


def test_geotiff_georeference_matches_gdal(tmp_path: Path) -> None:
    path = _write(tmp_path / "geo.tif", _pixels(4), nodata=0)
    with rasterio.open(path, "r+") as ds:
        ds.descriptions = ("Blue", "Green", "Red", "NIR")
    with open_image(path) as image:
        georef = image.georef
        assert georef.epsg == 32633 and georef.crs == "EPSG:32633"
        assert georef.geotransform == pytest.approx(TRANSFORM.to_gdal())
        assert georef.nodata == 0
        assert georef.descriptions == ("Blue", "Green", "Red", "NIR")
        # Bands follow their meaning: red is band 3, blue band 1.
        assert image.bands == (3, 2, 1) and image.band_notice is None
        for col, row in ((0, 0), (W, H), (17.5, 3.25)):
            assert georef.pixel_to_map(col, row) == pytest.approx(TRANSFORM @ (col, row))
        # A box's ring is the true (rotated) quadrilateral, closed, corner by corner.
        ring = georef.box_ring((8, 4, 40, 36))
        corners = [(8, 4), (8, 36), (40, 36), (40, 4), (8, 4)]
        assert ring == [pytest.approx(list(TRANSFORM @ corner)) for corner in corners]


def test_a_crs_without_an_epsg_code_is_given_as_wkt(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app

    crs = "+proj=tmerc +lat_0=0 +lon_0=13.3 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m"
    with rasterio.open(
        tmp_path / "custom.tif", "w", driver="GTiff", width=W, height=H, count=3,
        dtype="uint8", crs=crs, transform=TRANSFORM, photometric="RGB",
    ) as ds:  # fmt: skip
        ds.write(_pixels(3).astype(np.uint8))
    with rasterio.open(tmp_path / "custom.tif") as ds:
        expected = ds.crs.to_wkt()
    with open_image(tmp_path / "custom.tif") as image:
        assert image.georef.epsg is None and image.georef.crs == expected
        assert 'central_meridian",13.3' in image.georef.crs
        assert image.georef.geotransform == pytest.approx(TRANSFORM.to_gdal())
    result = CliRunner().invoke(app, ["pyramid", str(tmp_path / "custom.tif")])
    assert "CRS: PROJCS[" in result.output and "CRS: none" not in result.output


def test_pixel_is_point_is_shifted_like_gdal(tmp_path: Path) -> None:
    data = np.zeros((H, W), np.uint8)
    path = tmp_path / "point.tif"
    tifffile.imwrite(
        path,
        data,
        extratags=[
            (33550, 12, 3, (2.0, 3.0, 0.0)),
            (33922, 12, 6, (0.0, 0.0, 0.0, 1000.0, 2000.0, 0.0)),
            (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32633)),
        ],
    )
    with rasterio.open(path) as ds:
        expected = ds.transform.to_gdal()
    with open_image(path) as image:
        assert image.georef.geotransform == pytest.approx(expected)
        assert image.georef.epsg == 32633


def test_unlabelled_multiband_gets_a_notice(tmp_path: Path) -> None:
    path = _write(tmp_path / "bgrn.tif", _pixels(4), photometric="MINISBLACK")
    with open_image(path) as image:
        assert image.bands == (1, 2, 3)
        assert image.band_notice is not None and "bands 1, 2, 3" in image.band_notice
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.nir]
    with open_image(path) as image:
        assert image.bands == (3, 2, 1) and image.band_notice is None


def test_nodata_is_black_and_left_out_of_the_stretch(tmp_path: Path) -> None:
    data = np.full((3, H, W), 1000, np.uint16)
    data[:, :, W // 2 :] = 3000
    data[:, : H // 2, : W // 4] = 0  # nodata corner
    path = _write(tmp_path / "nd.tif", data, nodata=0)
    with open_image(path, percentiles=(0, 100)) as image:
        low, high = image.stretch_limits()
        out = image.read_region((0, 0, W, H), (H, W))
    # Nodata (0) is not the stretch's low end: valid data spans 1000..3000.
    assert low == pytest.approx([1000] * 3) and high == pytest.approx([3000] * 3)
    assert (out[: H // 2, : W // 4] == 0).all()
    assert (out[H // 2 :, : W // 2] == 0).all() and (out[:, W // 2 :] == 255).all()
    # Halving keeps the nodata/valid edge: no grey mix of nodata into valid pixels.
    with open_image(path, percentiles=(0, 100)) as image:
        half = image.read_region((0, 0, W, H), (H // 2, W // 2))
    assert set(np.unique(half[:, :, 0])) <= {0, 255}


def test_eight_bit_nodata_is_black(tmp_path: Path) -> None:
    data = np.full((3, H, W), 120, np.uint8)
    data[:, :, : W // 2] = 255  # nodata: would be white if it were data
    path = _write(tmp_path / "nd8.tif", data, nodata=255, photometric="RGB")
    with open_image(path) as image:
        assert image.nodata == 255
        out = image.read_region((0, 0, W, H), (H, W))
    assert (out[:, : W // 2] == 0).all() and (out[:, W // 2 :] == 120).all()


def test_bands_count_from_one_like_gdal(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app
    from tests.test_trust import one_line_error

    data = np.stack([np.full((H, W), 10 * (b + 1), np.uint8) for b in range(4)])
    path = _write(tmp_path / "four.tif", data, photometric="MINISBLACK")
    with open_image(path, bands=(4, 3, 2)) as image:
        assert image.read_region((0, 0, W, H), (4, 4))[0, 0].tolist() == [40, 30, 20]
    with open_image(path, bands=(1,)) as image:
        assert image.read_region((0, 0, W, H), (4, 4))[0, 0].tolist() == [10, 10, 10]
    with pytest.raises(ImageReadError, match=r"bands \[0\] out of range.*count from 1"):
        open_image(path, bands=(0, 1, 2))
    result = CliRunner().invoke(app, ["pyramid", str(path), "--bands", "0,1,2"])
    one_line_error(result, str(path), "count from 1")


def test_gdal_block_cache_is_bounded_while_reading(tmp_path: Path) -> None:
    from rasterio.env import getenv

    from lrsvqa.imagery.gdal import DEFAULT_GDAL_CACHE_BYTES, GdalSource

    path = tmp_path / "img.vrt"
    path.write_text(_vrt(_write(tmp_path / "src.tif", _pixels(3).astype(np.uint8))))
    seen: list[int] = []

    class Spy:
        def __init__(self, dataset: object) -> None:
            self._dataset = dataset

        def read(self, **kwargs: object) -> np.ndarray:
            seen.append(int(getenv()["GDAL_CACHEMAX"]))
            return self._dataset.read(**kwargs)

    source = GdalSource(str(path), cache_bytes=8 * 2**20)
    try:
        source._datasets = [Spy(d) for d in source._datasets]
        source.read(0, (0, 8), (0, 8))
    finally:
        source._datasets = [spy._dataset for spy in source._datasets]
        source.close()
    assert seen == [8 * 2**20]
    assert DEFAULT_GDAL_CACHE_BYTES <= 256 * 2**20  # GDAL's own default is 5% of RAM


def _vrt(source: Path) -> str:
    """A VRT of one GeoTIFF, written out as GDAL's format describes it."""
    gt = ", ".join(repr(v) for v in TRANSFORM.to_gdal())
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{W}" ySize="{H}"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{W}" ySize="{H}"/>'
        f"</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    return (
        f'<VRTDataset rasterXSize="{W}" rasterYSize="{H}"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )


@pytest.mark.parametrize("driver", ["JP2OpenJPEG", "VRT"])
def test_gdal_only_formats_open_through_the_gdal_backend(tmp_path: Path, driver: str) -> None:
    data = _pixels(3, seed=1).astype(np.uint8)
    tif = _write(tmp_path / "src.tif", data, photometric="RGB")
    if driver == "VRT":
        path = tmp_path / "mosaic.vrt"
        path.write_text(_vrt(tif))
    else:
        path = _write(tmp_path / "img.jp2", data, driver=driver, QUALITY=100, REVERSIBLE="YES")
    with open_image(path, max_pixels=None) as image:
        assert (image.height, image.width) == (H, W)
        assert image.georef.epsg == 32633
        assert image.georef.geotransform == pytest.approx(TRANSFORM.to_gdal())
        window = image.read_region((8, 4, 40, 36), (32, 32))
    np.testing.assert_array_equal(window, np.moveaxis(data, 0, -1)[4:36, 8:40])
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        open_image(path, max_pixels=100)


def test_pyramid_prints_georeference_and_bands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app

    path = _write(tmp_path / "geo.tif", _pixels(4), nodata=0, photometric="MINISBLACK")
    result = CliRunner().invoke(app, ["pyramid", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "CRS: EPSG:32633" in result.output
    assert "geotransform: 500000, 10, 2, 4200000, 1.5, -10" in result.output
    assert "nodata: 0" in result.output
    assert "notice: showing bands 1, 2, 3" in result.output
    result = CliRunner().invoke(app, ["pyramid", str(path), "--bands", "4,3,2"])
    assert "shown as R, G, B: bands 4, 3, 2" in result.output and "notice" not in result.output


class _CountingRangeServer:
    """A loopback HTTP server that answers byte-range requests and counts bytes served."""

    def __init__(self, root: Path) -> None:
        import http.server
        import threading

        server = self
        self.bytes_served = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes | None:
                file = root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = file.read_bytes()
                spec = self.headers.get("Range")
                if spec and spec.startswith("bytes="):
                    first, _, last = spec[6:].split(",")[0].partition("-")
                    start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                    data = data[start : end + 1]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return data

            def do_HEAD(self) -> None:  # noqa: N802
                self._body()

            def do_GET(self) -> None:  # noqa: N802
                data = self._body()
                if data:
                    server.bytes_served += len(data)
                    self.wfile.write(data)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def test_remote_cog_reads_a_small_fraction_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app
    from lrsvqa.imagery.texture import render_texture
    from lrsvqa.imagery.tiles import PyramidReader
    from tests.test_trust import one_line_error

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    side = 4096
    texture = render_texture(0, 0, side, side)
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
        crs="EPSG:32633", transform=TRANSFORM, tiled=True, photometric="RGB",
    ) as ds:  # fmt: skip
        ds.write(np.moveaxis(texture, -1, 0))
    served = tmp_path / "served"
    served.mkdir()
    cog = served / "scene.tif"
    from rasterio.shutil import copy as copy_raster

    copy_raster(plain, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256)
    server = _CountingRangeServer(served)
    try:
        with PyramidReader.open(f"{server.url}/scene.tif", tile_size=336) as reader:
            assert reader.image.georef.epsg == 32633
            assert len(reader.image.level_sizes) > 1
            reader.thumbnail()
            tiles = reader.tiles(reader.geometry.num_levels - 1, [(0, 0), (3, 4), (7, 7)])
        with pytest.raises(ImageReadError, match="missing.tif"):
            open_image(f"{server.url}/missing.tif")
        # The same pixel limit as local files, and one-line CLI errors naming the URL.
        with pytest.raises(ImageReadError, match="exceeds the limit"):
            open_image(f"{server.url}/scene.tif", max_pixels=side * side - 1)
        one_line_error(CliRunner().invoke(app, ["pyramid", f"{server.url}/missing.tif"]),
                       f"{server.url}/missing.tif", "GDAL cannot open it")  # fmt: skip
        remote_fetched = server.bytes_served
    finally:
        server.close()
    closed = f"{server.url}/other.tif"  # nothing listens there any more
    one_line_error(CliRunner().invoke(app, ["pyramid", closed]), closed, "GDAL cannot open it")
    server.bytes_served = remote_fetched
    fraction = server.bytes_served / cog.stat().st_size
    print(f"fetched {server.bytes_served} of {cog.stat().st_size} bytes ({fraction:.1%})")
    assert fraction < 0.1, f"fetched {fraction:.1%} of the file"
    with PyramidReader.open(cog, tile_size=336) as local:
        expected = local.tiles(local.geometry.num_levels - 1, [(0, 0), (3, 4), (7, 7)])
    for remote_tile, local_tile in zip(tiles, expected, strict=True):
        np.testing.assert_array_equal(remote_tile, local_tile)


def test_reader_choice_remote_benchmark_runs_and_fetches_less_than_the_file(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "reader_choice.py"
    command = [sys.executable, str(bench), "--remote", "--remote-side", "2048"]
    command += ["--link", "0:0", "--remote-cache", str(tmp_path)]
    src = str(bench.parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("loopback")]
    gdal_row, download_row = rows
    assert gdal_row[-1] == download_row[-1]  # the same pixels
    share = float(gdal_row[-2].rstrip("%"))
    assert share < 100.0 and download_row[-2] == "100.0%"
