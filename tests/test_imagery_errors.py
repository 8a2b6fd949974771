"""Bad input gets an ImageReadError that names the file and the problem."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.reader import BUILTIN_MAX_PIXELS, open_image, parse_max_pixels
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.writer import write_pyramidal_tiff

RGB = render_texture(0, 0, 300, 400)


def _tiled(path: Path) -> Path:
    return write_pyramidal_tiff(
        path, 300, 400, lambda y, x, h, w: RGB[y : y + h, x : x + w], tile_size=128
    )


def _expect(path: Path, message: str, **options: object) -> ImageReadError:
    with pytest.raises(ImageReadError, match=message) as info:
        open_image(path, **options)
    assert str(path) in str(info.value) and info.value.path == str(path)
    return info.value


def test_error_is_a_value_error_naming_file_and_problem() -> None:
    error = ImageReadError("/data/x.tif", "broken")
    assert isinstance(error, ValueError)
    assert (str(error), error.path, error.problem) == (
        "/data/x.tif: broken",
        "/data/x.tif",
        "broken",
    )


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.tif", "no such file")


def test_directory(tmp_path: Path) -> None:
    _expect(tmp_path, "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    _expect(tmp_path / "e.png", "empty file")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.tif").write_text("hello, this is text\n")
    _expect(tmp_path / "notes.tif", "not a supported image")


def test_truncated_tiff_is_caught_at_open(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "t.tif")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated file")


def test_truncated_tiff_header(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "t.tif")
    path.write_bytes(path.read_bytes()[:12])
    _expect(path, "corrupt or truncated")


def test_corrupt_tile_data_opens_lazily_and_fails_on_read(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "c.tif")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * count)
    # Opening decodes no pixel, so it succeeds ...
    with open_image(path) as image:
        assert (image.height, image.width, image.num_bands) == (300, 400, 3)
        # ... tiles away from the damage still read ...
        image.read_region((300, 200, 400, 300), (100, 100))
        # ... and the damaged tile fails with the file's name.
        with pytest.raises(ImageReadError, match="cannot decode pixels") as info:
            image.read_region((0, 0, 100, 100), (100, 100))
    assert str(path) in str(info.value)


def test_truncated_png_fails_on_read(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.fromarray(RGB).save(path)
    path.write_bytes(path.read_bytes()[:5000])
    with open_image(path) as image, pytest.raises(ImageReadError, match=str(path)):
        image.read_region((0, 0, 10, 10), (10, 10))


def test_zero_sized_tiff(tmp_path: Path) -> None:
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["ImageWidth"]
    data = bytearray(path.read_bytes())
    data[tag.valueoffset : tag.valueoffset + 2] = b"\0\0"
    path.write_bytes(bytes(data))
    _expect(path, r"zero-sized image \(8x0\)")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def test_zero_sized_png(tmp_path: Path) -> None:
    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)  # width 0, height 10, RGB
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    (tmp_path / "z.png").write_bytes(png)
    _expect(tmp_path / "z.png", r"zero-sized image \(10x0\)")


def test_two_band_tiff_needs_explicit_bands(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, RGB[:, :, :2], photometric="minisblack", planarconfig="contig")
    _expect(path, "2-band image: choose bands")
    with open_image(path, bands=(2,)) as image:
        out = image.read_region((0, 0, 50, 40), (40, 50))
    np.testing.assert_array_equal(out[:, :, 2], RGB[:40, :50, 1])


def test_two_band_png_grey_alpha(tmp_path: Path) -> None:
    Image.fromarray(RGB[:, :, 0]).convert("LA").save(tmp_path / "la.png")
    _expect(tmp_path / "la.png", "2-band")


def test_bands_out_of_range(tmp_path: Path) -> None:
    _expect(_tiled(tmp_path / "t.tif"), r"bands \[4\] out of range", bands=(1, 2, 4))


def test_unsupported_layout(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 16, 16), np.uint8), photometric="minisblack")
    _expect(path, "unsupported layout")


def test_pixel_limit_guards_against_decompression_bombs(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "t.tif")
    error = _expect(path, "exceeds the limit of 100,000", max_pixels=100_000)
    assert "max_pixels=None" in str(error) and "LRSVQA_MAX_PIXELS=0" in str(error)
    with open_image(path, max_pixels=120_000) as image:  # exactly 300 x 400
        assert image.width == 400
    with open_image(path, max_pixels=None) as image:
        assert image.height == 300


def test_default_limit_admits_the_largest_benchmark_images() -> None:
    assert 27_328 * 27_328 < BUILTIN_MAX_PIXELS < 50_000 * 50_000


def test_pixel_limit_check_decodes_nothing(tmp_path: Path) -> None:
    """A PNG header claiming 10^10 pixels is refused before any decoding is tried."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    _expect(tmp_path / "bomb.png", "decompression-bomb guard")


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1000", 1000),
        ("1_000_000", 1_000_000),
        (" 5 ", 5),
        ("0", None),
        ("None", None),
        ("off", None),
    ],
)
def test_parse_max_pixels(text: str, limit: int | None) -> None:
    assert parse_max_pixels(text) == limit


@pytest.mark.parametrize("text", ["lots", "-5", "1e9"])
def test_parse_max_pixels_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_max_pixels(text)


def test_environment_variable_sets_the_default_limit() -> None:
    code = "from lrsvqa.imagery.reader import DEFAULT_MAX_PIXELS as d; print(d)"
    outputs = []
    for value in ("12345", "0"):
        env = os.environ | {"LRSVQA_MAX_PIXELS": value}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(done.stdout.strip())
    assert outputs == ["12345", "None"]
