from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lrsvqa.imagery import writer
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.writer import halve, overview_shapes, write_pyramidal_tiff


def test_overview_shapes_halve_with_ceil_until_one_tile() -> None:
    assert overview_shapes(1000, 1500, 256) == [(500, 750), (250, 375), (125, 188)]
    assert overview_shapes(27_328, 600, 512) == [(13_664, 300), (6832, 150), (3416, 75)] + [
        (1708, 38),
        (854, 19),
        (427, 10),
    ]
    assert overview_shapes(512, 512, 512) == []


def test_halve_means_2x2_blocks_and_repeats_odd_edges() -> None:
    block = np.array([[1, 2, 9], [3, 5, 9], [7, 7, 0]], dtype=np.uint8)[:, :, None]
    # Blocks: (1+2+3+5)/4 = 2.75 -> 3; (9+9+9+9)/4; (7+7+7+7)/4; (0+0+0+0)/4
    assert halve(block)[:, :, 0].tolist() == [[3, 9], [7, 0]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_halve_keeps_dtype_and_rounds_integers(dtype: type) -> None:
    block = np.array([[0, 1], [1, 1]], dtype=dtype)[:, :, None]
    out = halve(block)
    assert out.dtype == dtype and out.shape == (1, 1, 1)
    assert out[0, 0, 0] == (0.75 if np.dtype(dtype).kind == "f" else 1)


def _texture(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    return render_texture(y0, x0, h, w, seed=3)


@pytest.mark.parametrize(
    ("bands", "dtype", "compression"),
    [(3, np.uint8, "zlib"), (4, np.uint16, "zlib"), (1, np.float32, None), (2, np.int16, "zstd")],
)
def test_round_trip_and_overviews_equal_repeated_halving(
    tmp_path: Path, bands: int, dtype: type, compression: str | None
) -> None:
    height, width = 700, 1000
    full = np.concatenate([_texture(0, 0, height, width)] * 2, axis=-1)[:, :, :bands].astype(dtype)
    calls: list[tuple[int, int, int, int]] = []

    def render(y0: int, x0: int, h: int, w: int) -> np.ndarray:
        calls.append((y0, x0, h, w))
        return full[y0 : y0 + h, x0 : x0 + w]

    path = write_pyramidal_tiff(
        tmp_path / "a.tif",
        height,
        width,
        render,
        tile_size=256,
        bands=bands,
        dtype=dtype,
        compression=compression,
    )
    # One call per tile, row-major, edge tiles clipped to the image.
    assert calls == [
        (y, x, min(256, height - y), min(256, width - x))
        for y in range(0, height, 256)
        for x in range(0, width, 256)
    ]
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_bigtiff
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(700, 1000), (350, 500), (175, 250)]
        assert all(p.is_tiled and p.tilelength == 256 for p in tif.pages)
        assert [p.is_reduced for p in tif.pages] == [False, True, True]
        expected = full
        for level in levels:
            data = level.asarray().reshape(expected.shape)
            np.testing.assert_array_equal(data, expected)
            expected = halve(expected)


def test_single_band_accepts_2d_tiles(tmp_path: Path) -> None:
    path = write_pyramidal_tiff(
        tmp_path / "g.tif", 40, 50, lambda y, x, h, w: np.full((h, w), 7, np.uint8), bands=1
    )
    assert (tifffile.imread(path) == 7).all()


def test_overviews_can_be_skipped(tmp_path: Path) -> None:
    path = write_pyramidal_tiff(tmp_path / "f.tif", 600, 600, _texture, overviews=False)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1


@pytest.mark.parametrize(
    ("tile", "message"),
    [
        (
            np.zeros((16, 16, 3), np.uint8),
            r"returned uint8\[16, 16, 3\], expected uint8\[32, 32, 3\]",
        ),
        (np.zeros((32, 32, 3), np.float64), "returned float64"),
        (np.zeros((32, 32), np.uint8), "expected uint8"),
    ],
)
def test_wrong_tiles_are_rejected(tmp_path: Path, tile: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_pyramidal_tiff(tmp_path / "x.tif", 32, 32, lambda *_: tile, tile_size=32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 0}, "positive"),
        ({"tile_size": 100}, "multiple of 16"),
        ({"bands": 0}, "bands"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"height": 32, "width": 32, "tile_size": 32, "bands": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        write_pyramidal_tiff(tmp_path / "x.tif", render_tile=_texture, **args)


def test_bigtiff_is_chosen_when_the_pyramid_could_pass_4_gib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = write_pyramidal_tiff(tmp_path / "s.tif", 64, 64, _texture, tile_size=32)
    forced = write_pyramidal_tiff(tmp_path / "f.tif", 64, 64, _texture, tile_size=32, bigtiff=True)
    monkeypatch.setattr(writer, "_CLASSIC_TIFF_LIMIT", 64 * 64 * 3)
    auto = write_pyramidal_tiff(tmp_path / "a.tif", 64, 64, _texture, tile_size=32)
    flags = []
    for path in (small, forced, auto):
        with tifffile.TiffFile(path) as tif:
            flags.append(tif.is_bigtiff)
            np.testing.assert_array_equal(tif.asarray(), _texture(0, 0, 64, 64))
    assert flags == [False, True, True]


def test_writing_never_holds_the_image(tmp_path: Path) -> None:
    """A 250 MB image (+ 85 MB of overviews) is written with a few MB of Python memory."""
    size = 8192 + 1000
    tile = np.full((512, 512, 3), 200, np.uint8)
    tracemalloc.start()
    try:
        write_pyramidal_tiff(
            tmp_path / "big.tif", size, size, lambda y, x, h, w: tile[:h, :w], tile_size=512
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.series[0].levels[-1].asarray().max() == 200
