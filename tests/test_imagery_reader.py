"""Large-image reading: formats and layouts, windows, overviews, radiometry, resources."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lrsvqa.imagery import reader as reader_module
from lrsvqa.imagery.radiometry import stretch_to_uint8
from lrsvqa.imagery.reader import LargeImage, open_image
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.writer import write_pyramidal_tiff

H, W = 600, 900
RGB = render_texture(0, 0, H, W, seed=5)


def _tiled(path: Path, data: np.ndarray, **options: object) -> Path:
    bands = data.shape[2]
    return write_pyramidal_tiff(
        path,
        data.shape[0],
        data.shape[1],
        lambda y, x, h, w: data[y : y + h, x : x + w],
        tile_size=128,
        bands=bands,
        dtype=data.dtype,
        **options,
    )


def _imwrite(path: Path, data: np.ndarray, *, planar: bool = False, **options: object) -> Path:
    photometric = "rgb" if data.shape[2] == 3 else "minisblack"
    if data.shape[2] == 1:
        tifffile.imwrite(path, data[:, :, 0], photometric=photometric, metadata=None, **options)
    elif planar:
        tifffile.imwrite(
            path,
            np.moveaxis(data, -1, 0),
            photometric=photometric,
            planarconfig="separate",
            metadata=None,
            **options,
        )
    else:
        tifffile.imwrite(path, data, photometric=photometric, metadata=None, **options)
    return path


def _subifds(path: Path, data: np.ndarray) -> Path:
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
        tif.write(data, subifds=1, metadata=None, **options)
        tif.write(data[::2, ::2], subfiletype=1, **options)
    return path


def _pillow(suffix: str, **options: object) -> Callable[[Path, np.ndarray], Path]:
    def write(path: Path, data: np.ndarray) -> Path:
        path = path.with_suffix(suffix)
        Image.fromarray(data).save(path, **options)
        return path

    return write


LOSSLESS_WRITERS: dict[str, Callable[[Path, np.ndarray], Path]] = {
    "tiled-pyramid": _tiled,
    "tiled-bigtiff": lambda p, d: _tiled(p, d, bigtiff=True),
    "tiled-subifds": _subifds,
    "strip-zlib": lambda p, d: _imwrite(p, d, compression="zlib", rowsperstrip=7),
    "strip-raw": lambda p, d: _imwrite(p, d, rowsperstrip=16),
    "strip-raw-one-strip": _imwrite,
    "strip-raw-big-endian": lambda p, d: _imwrite(p, d, byteorder=">"),
    "planar-raw": lambda p, d: _imwrite(p, d, planar=True),
    "planar-zlib": lambda p, d: _imwrite(p, d, planar=True, compression="zlib", tile=(64, 64)),
    "png": _pillow(".png"),
}


@pytest.mark.parametrize("layout", LOSSLESS_WRITERS)
def test_full_resolution_window_is_exact(tmp_path: Path, layout: str) -> None:
    path = LOSSLESS_WRITERS[layout](tmp_path / "img.tif", RGB)
    with open_image(path) as image:
        assert (image.height, image.width, image.num_bands) == (H, W, 3)
        assert image.dtype == np.uint8
        for x0, y0 in [(0, 0), (123, 77), (W - 336, H - 336), (500, 10)]:
            window = image.read_region((x0, y0, x0 + 336, y0 + 336), (336, 336))
            np.testing.assert_array_equal(window, RGB[y0 : y0 + 336, x0 : x0 + 336])


@pytest.mark.parametrize("layout", ["strip-raw-big-endian", "planar-raw"])
def test_16_bit_raw_layouts_read_exact_values(tmp_path: Path, layout: str) -> None:
    data = (RGB.astype(np.uint16) * 257)[:, :, [2, 0, 1]]
    path = LOSSLESS_WRITERS[layout](tmp_path / "img.tif", data)
    with open_image(path, percentiles=None) as image:
        window = image.read_region((10, 20, 110, 70), (50, 100))
    # Full-range mapping of uint16: v * 257 -> v.
    np.testing.assert_array_equal(window, RGB[20:70, 10:110][:, :, [2, 0, 1]])


def test_overviews_are_reported_and_read(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "p.tif", RGB)
    with open_image(path) as image:
        assert image.overview_sizes == ((300, 450), (150, 225), (75, 113))
        assert image.level_sizes[0] == (H, W)
        whole = (0.0, 0.0, float(W), float(H))
        assert image.source_level(whole, (75, 113)) == 3
        assert image.source_level(whole, (76, 114)) == 3  # within the 2% tolerance
        assert image.source_level(whole, (80, 120)) == 2  # 6% short: next finer level
        assert image.source_level(whole, (H, W)) == 0
        assert image.source_level((0, 0, 100, 100), (50, 50)) == 1
        reads = _spy_reads(image)
        thumb = image.read_region(whole, (100, 150))
        assert [level for level, *_ in reads] == [2]
    expected = np.asarray(Image.fromarray(RGB).resize((150, 100), Image.Resampling.BOX))
    assert np.abs(thumb.astype(int) - expected).mean() < 2


def _spy_reads(image: LargeImage) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Record every (level, rows, cols) window the image decodes."""
    calls: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
    source = image._source
    original = source.read

    def read(level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        calls.append((level, rows, cols))
        return original(level, rows, cols)

    source.read = read  # type: ignore[method-assign]
    return calls


def test_window_reads_decode_only_what_they_need(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "p.tif", RGB)
    with open_image(path) as image:
        reads = _spy_reads(image)
        image.read_region((400.5, 200.25, 500.5, 300.25), (50, 50))
    ((level, (r0, r1), (c0, c1)),) = reads
    # 2x reduction of a 100 px box -> level 1 (300 x 450), ~50 px plus filter slack.
    assert level == 1
    assert 50 <= r1 - r0 <= 54 and 50 <= c1 - c0 <= 54


def test_resampled_read_matches_pillow_on_the_whole_image(tmp_path: Path) -> None:
    path = _pillow(".png")(tmp_path / "img", RGB)
    box = (101.3, 57.9, 433.7, 401.2)
    with open_image(path) as image:
        shrunk = image.read_region(box, (120, 100))
        grown = image.read_region(box, (400, 380))
    for out, (h, w), resample in [
        (shrunk, (120, 100), Image.Resampling.BOX),
        (grown, (400, 380), Image.Resampling.BILINEAR),
    ]:
        expected = np.asarray(Image.fromarray(RGB).resize((w, h), resample, box=box))
        assert np.abs(out.astype(int) - expected).max() <= 1


def test_banded_resampling_equals_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _imwrite(tmp_path / "s.tif", RGB, compression="zlib", rowsperstrip=8)
    box, size = (3.5, 1.25, 897.0, 590.5), (111, 173)
    with open_image(path) as image:
        whole = image.read_region(box, size)
        monkeypatch.setattr(reader_module, "_SLAB_BUDGET_PIXELS", 20_000)
        reads = _spy_reads(image)
        banded = image.read_region(box, size)
    assert len(reads) > 10
    assert max(r1 - r0 for _, (r0, r1), _ in reads) < 60
    assert np.abs(banded.astype(int) - whole).max() <= 1


def _multispectral() -> np.ndarray:
    """4-band uint16: a smooth field at three very different gains, and a ramp."""
    field = np.arange(W, dtype=np.uint16)[None, :] * 2 + np.arange(H, dtype=np.uint16)[:, None]
    ramp = np.broadcast_to(np.linspace(0, 4000, W, dtype=np.uint16), (H, W))
    return np.dstack([field * 4, field * 10, field * 25, ramp])


def test_16_bit_stretch_uses_percentiles_from_an_overview(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _multispectral()
    path = _tiled(tmp_path / "ms.tif", data)
    # Measure on a view of <= 200 px: the 150 x 225 overview is the coarsest that has it.
    monkeypatch.setattr(reader_module, "_STATS_SIDE", 200)
    with open_image(path) as image:
        assert (image.num_bands, image.dtype) == (4, np.uint16)
        reads = _spy_reads(image)
        low, high = image.stretch_limits()
        assert {level for level, *_ in reads} == {2}, "statistics must not read full resolution"
        for band in range(3):
            true_low, true_high = np.percentile(data[:, :, band], (2, 98))
            assert low[band] == pytest.approx(true_low, rel=0.03)
            assert high[band] == pytest.approx(true_high, rel=0.03)
        window = image.read_region((100, 100, 300, 250), (150, 200))
    expected = stretch_to_uint8(data[100:250, 100:300, :3], low, high)
    np.testing.assert_array_equal(window, expected)
    # Per-band stretch removes the gains: all three channels look alike.
    assert np.abs(window[:, :, 0].astype(int) - window[:, :, 2]).max() <= 2


def test_bands_are_selectable(tmp_path: Path) -> None:
    data = _multispectral()
    path = _tiled(tmp_path / "ms.tif", data)
    box, size = (0, 0, 64, 48), (48, 64)
    with open_image(path, bands=(4, 3, 2), percentiles=None) as image:
        false_colour = image.read_region(box, size)
    with open_image(path, bands=[4], percentiles=None) as image:
        grey = image.read_region(box, size)
    ramp = stretch_to_uint8(data[:48, :64, 3:], 0, 65535)[:, :, 0]
    np.testing.assert_array_equal(false_colour[:, :, 0], ramp)
    np.testing.assert_array_equal(
        false_colour[:, :, 1], stretch_to_uint8(data[:48, :64, 2:3], 0, 65535)[:, :, 0]
    )
    for channel in range(3):
        np.testing.assert_array_equal(grey[:, :, channel], ramp)


def test_single_band_is_grey_rgb(tmp_path: Path) -> None:
    grey = RGB[:, :, 1:2].copy()
    path = _tiled(tmp_path / "g.tif", grey)
    with open_image(path) as image:
        assert image.num_bands == 1
        out = image.read_region((5, 5, 105, 55), (50, 100))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey[5:55, 5:105, 0])


def test_float_data_nan_is_black_and_percentiles_none_maps_0_1(tmp_path: Path) -> None:
    data = (RGB[:, :, :1] / 255.0).astype(np.float32)
    data[:10, :10] = np.nan
    path = _imwrite(tmp_path / "f.tif", data, compression="zlib")
    with open_image(path, percentiles=None) as image:
        out = image.read_region((0, 0, 40, 40), (40, 40))
    assert (out[:10, :10] == 0).all()
    np.testing.assert_array_equal(out[10:40, 10:40, 0], RGB[10:40, 10:40, 0])


def test_jpeg_uses_dct_scaling_for_coarse_reads(tmp_path: Path) -> None:
    path = _pillow(".jpg", quality=95)(tmp_path / "img", RGB)
    whole = (0.0, 0.0, float(W), float(H))
    with open_image(path) as image:
        assert image.overview_sizes == ((300, 450), (150, 225), (75, 113))
        assert image.source_level(whole, (75, 112)) == 3
        thumb = image.read_region(whole, (75, 112))
        window = image.read_region((100, 100, 300, 300), (200, 200))
    expected = np.asarray(Image.fromarray(RGB).resize((112, 75), Image.Resampling.BOX))
    assert np.abs(thumb.astype(int) - expected).mean() < 4
    assert np.abs(window.astype(int) - RGB[100:300, 100:300]).mean() < 4


@pytest.mark.parametrize(
    ("mode", "to_array"),
    [
        ("P", lambda im: np.asarray(im.convert("RGB"))),
        ("RGBA", lambda im: np.asarray(im)[:, :, :3]),
        ("L", lambda im: np.repeat(np.asarray(im)[:, :, None], 3, axis=2)),
    ],
)
def test_png_modes_become_rgb(
    tmp_path: Path, mode: str, to_array: Callable[[Image.Image], np.ndarray]
) -> None:
    image = Image.fromarray(RGB).convert(mode)
    image.save(tmp_path / "m.png")
    with open_image(tmp_path / "m.png") as opened:
        out = opened.read_region((0, 0, W, H), (H, W))
    np.testing.assert_array_equal(out, to_array(image))


def test_16_bit_png_is_stretched(tmp_path: Path) -> None:
    data = RGB[:, :, 0].astype(np.uint16) * 200
    Image.fromarray(data).save(tmp_path / "g16.png")
    with open_image(tmp_path / "g16.png") as image:
        assert (image.num_bands, image.dtype) == (1, np.uint16)
        low, high = image.stretch_limits()
        out = image.read_region((0, 0, W, H), (H, W))
    assert low[0] == pytest.approx(np.percentile(data, 2), rel=0.05)
    np.testing.assert_array_equal(
        out[:, :, 0], stretch_to_uint8(data[:, :, None], low[0], high[0])[:, :, 0]
    )


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ((0, 0, W + 1, 10), (5, 5)),
        ((-1, 0, 10, 10), (5, 5)),
        ((5, 5, 5, 10), (5, 5)),
        ((0, 0, 9, 9), (0, 3)),
    ],
)
def test_bad_requests_are_rejected(tmp_path: Path, box: tuple, size: tuple) -> None:
    path = _imwrite(tmp_path / "a.tif", RGB)
    with open_image(path) as image, pytest.raises(ValueError):
        image.read_region(box, size)


def test_float_noise_at_the_border_is_clipped(tmp_path: Path) -> None:
    path = _imwrite(tmp_path / "a.tif", RGB)
    with open_image(path) as image:
        out = image.read_region((W - 10, H - 10, W + 1e-9, H + 1e-9), (10, 10))
    np.testing.assert_array_equal(out, RGB[-10:, -10:])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("layout", ["tiled-pyramid", "strip-raw", "png"])
def test_close_releases_file_handles(tmp_path: Path, layout: str) -> None:
    path = LOSSLESS_WRITERS[layout](tmp_path / "img.tif", RGB)
    before = _open_fds()
    image = open_image(path)
    image.read_region((0, 0, 10, 10), (10, 10))
    image.close()
    assert _open_fds() == before
    with open_image(path) as image:
        image.read_region((0, 0, 10, 10), (10, 10))
    assert _open_fds() == before
