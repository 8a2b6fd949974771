"""Hostile inputs, tried as a new user would: each gives a right result or one line
naming the file. Small generated files only; nothing is decoded big."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.answers import AnswerFileError, read_any_answers
from lrsvqa.bench.datasets import (
    QuestionFileError,
    UnsafeImagePathError,
    load_benchmark,
    resolve_image,
)
from lrsvqa.errors import LrsvqaError, OptionError
from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.reader import MAX_REGION_PIXELS, WHOLE_DECODE_MAX_PIXELS, open_image
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.rfm import RegionFocusModule
from tests.test_trust import one_line_error

# --- images ---------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming a size, with one tiny (wrong) data chunk."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + data + png_chunk(b"IEND", b"")


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small real JPEG whose frame header is edited to claim ``width x height``."""
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, format="JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def tiff_claiming(path: Path, width: int, height: int) -> Path:
    """A 16 x 16 TIFF whose size tags are edited in place to claim ``width x height``."""
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            fmt = "<H" if tag.dtype == 3 else "<I"
            data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def tiled_tiff(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib", photometric="rgb")
    return path


def pyramid(path: Path, *extra: str):
    return CliRunner().invoke(app, ["pyramid", str(path), *extra])


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("empty.tif", lambda p: p.write_bytes(b""), "empty file"),
        ("notes.tif", lambda p: p.write_text("just some notes"), "not a supported image"),
        ("magic.tif", lambda p: p.write_bytes(b"II*\x00" + b"\xff" * 60), "cannot parse"),
        ("cut.tif", lambda p: p.write_bytes(tiled_tiff(p).read_bytes()[:300]), "truncated"),
        ("bomb.png", lambda p: p.write_bytes(png_claiming(20_000, 20_000)), "decoded whole"),
        ("bomb.jpg", lambda p: jpeg_claiming(p, 30_000, 30_000), "decoded whole"),
        ("bomb.tif", lambda p: tiff_claiming(p, 60_000, 60_000), "decompression-bomb"),
        ("zero.png", lambda p: p.write_bytes(png_claiming(0, 10)), "zero-sized"),
    ],
)
def test_bad_images_end_in_one_line(tmp_path, name, make, problem):
    path = tmp_path / name
    make(path)
    one_line_error(pyramid(path), str(path), problem)


def test_bombs_by_header_are_refused_before_any_decoding(tmp_path):
    png = tmp_path / "bomb.png"
    png.write_bytes(png_claiming(20_000, 20_000))  # 4e8 px: under the TIFF limit, 1 kB file
    assert 20_000 * 20_000 > WHOLE_DECODE_MAX_PIXELS
    with pytest.raises(ImageReadError, match="PNG/JPEG, which is decoded whole"):
        open_image(png)
    with open_image(png, max_pixels=None) as image:  # the off-switch opens it (lazily)
        assert (image.height, image.width) == (20_000, 20_000)
    assert pyramid(png, "--no-pixel-limit").exit_code == 0


def test_corrupt_pixels_fail_on_read_in_one_line(tmp_path):
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        jpeg, quality=95
    )
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    png = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    png.write_bytes(png.read_bytes()[:60])
    for path in (jpeg, png):
        try:
            with open_image(path) as image:
                image.read_region((0, 0, 64, 64), (8, 8))
        except ImageReadError as error:
            assert str(path) in str(error) and "\n" not in str(error)
        else:
            pytest.fail(f"{path.name} decoded without an error")


def write_image(path: Path, kind: str) -> None:
    """Unusual but valid images."""
    rng = np.random.default_rng(2)
    if kind == "1px.png":
        Image.new("RGB", (1, 1), (9, 9, 9)).save(path)
    elif kind == "1px.tif":
        tifffile.imwrite(path, np.full((1, 1, 3), 7, np.uint8), photometric="rgb")
    elif kind == "aspect.png":
        Image.new("RGB", (4000, 1), (5, 5, 5)).save(path)
    elif kind == "uint16.tif":
        tifffile.imwrite(path, rng.integers(0, 4096, (40, 30, 3), dtype=np.uint16))
    elif kind == "bands5.tif":
        tifffile.imwrite(path, rng.integers(0, 255, (5, 40, 30), dtype=np.uint8))
    elif kind == "nan.tif":
        data = rng.random((40, 30, 3), dtype=np.float32)
        data[:10] = np.nan
        tifffile.imwrite(path, data, photometric="rgb")
    elif kind == "palette.png":
        Image.new("P", (20, 10), 3).save(path)
    elif kind == "rgba.png":
        Image.new("RGBA", (20, 10), (1, 2, 3, 0)).save(path)
    elif kind == "cmyk.jpg":
        Image.new("CMYK", (20, 10), (0, 255, 0, 0)).save(path)
    elif kind == "png-named.jpg":
        Image.new("RGB", (20, 10), (4, 5, 6)).save(path, format="PNG")
    elif kind == "grey.png":
        Image.new("L", (20, 10), 100).save(path)


@pytest.mark.parametrize(
    "kind",
    [
        "1px.png",
        "1px.tif",
        "aspect.png",
        "uint16.tif",
        "bands5.tif",
        "nan.tif",
        "palette.png",
        "rgba.png",
        "cmyk.jpg",
        "png-named.jpg",
        "grey.png",
    ],
)
def test_unusual_valid_images_are_read(tmp_path, kind):
    path = tmp_path / kind
    write_image(path, kind)
    with open_image(path) as image:
        pixels = image.read_region((0, 0, image.width, image.height), (4, 4))
    assert pixels.shape == (4, 4, 3) and pixels.dtype == np.uint8
    result = pyramid(path)
    assert result.exit_code == 0, result.output


def test_oversized_reads_and_tiles_are_refused(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    with open_image(path) as image, pytest.raises(OptionError, match="out_size: 100000x100000"):
        image.read_region((0, 0, 20, 10), (100_000, 100_000))
    assert MAX_REGION_PIXELS < 100_000**2
    with pytest.raises(OptionError, match="tile_size: 100000 is outside"):
        PyramidReader.open(path, tile_size=100_000)
    assert pyramid(path, "--tile-size", "100000").exit_code == 2  # typer's own range check


# --- question files ---------------------------------------------------------------------

GOOD = {"question_id": "FAIR_1", "image": "a.png", "text": "Q?", "ground_truth": "red"}
GOOD = GOOD | {"category": "color"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (json.dumps({**GOOD, "text": None}).encode(), "text is null"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "text"}).encode(), "'text'"),
        (json.dumps({**GOOD, "ground_truth": ""}).encode(), "ground_truth is empty"),
        (json.dumps({**GOOD, "category": {"a": 1}}).encode(), "category is a dict"),
        (json.dumps({**GOOD, "ground_truth": True}).encode(), "ground_truth is a bool"),
        (json.dumps({**GOOD, "hbox": [1, 2]}).encode(), "hbox must be"),
        (json.dumps({**GOOD, "hbox": "abc"}).encode(), "hbox must be"),
        (json.dumps(GOOD).encode(), "duplicate question_id"),
        (b'{"question_id": "\xff\xfe"}', "not UTF-8"),
    ],
)
def test_bad_question_lines_are_named_by_file_and_line(tmp_path, line, problem):
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    with pytest.raises(QuestionFileError, match=problem) as raised:
        load_benchmark("lrs-vqa", questions)
    assert str(raised.value).startswith(f"{questions}:2: ")
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": "FAIR_1", "answer": "red"}) + "\n")
    result = CliRunner().invoke(app, ["score", str(answers), "--questions", str(questions)])
    one_line_error(result, f"{questions}:2")


def test_a_byte_order_mark_is_accepted(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert [item.question_id for item in load_benchmark("lrs-vqa", questions)] == ["FAIR_1"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a JSON file"),
        ('[{"Question_id": 1', "not a JSON file"),
        ('{"a": 1}', "expected a JSON list"),
        ("[1]", "item 0"),
        ("[]", "no questions"),
    ],
)
def test_bad_mme_files(tmp_path, text, problem):
    questions = tmp_path / "MME_RealWorld_RS.json"
    questions.write_text(text)
    with pytest.raises(QuestionFileError, match=problem):
        load_benchmark("mme-rs", questions)


def test_missing_question_file_and_folder(tmp_path):
    with pytest.raises(QuestionFileError, match="no such file"):
        load_benchmark("lrs-vqa", tmp_path / "none.jsonl")
    with pytest.raises(QuestionFileError, match="not a file"):
        load_benchmark("lrs-vqa", tmp_path)


# --- answers files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("a.jsonl", '{"question_id": "A_1", "answer": "x"}\nnot json\n', "a.jsonl:2: not a JSON"),
        ("a.jsonl", '{"answer": "x"}\n', "a.jsonl:1: no question_id"),
        ("a.jsonl", '{"question_id": null, "answer": "x"}\n', "a.jsonl:1: no question_id"),
        ("a.jsonl", b"\xff\xfe\n", "a.jsonl:1: not a JSON line"),
        ("a.json", "[1, 2]", "entry 0 is not a JSON object"),
        ("a.json", '[{"answer": "x"}]', "entry 0 has no question_id"),
        ("a.json", '{"question_id": 1}', "expected a JSON list"),
        ("a.json", "[{", "not a JSON file"),
    ],
)
def test_bad_answers_files(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(AnswerFileError, match=problem):
        read_any_answers(path)
    one_line_error(CliRunner().invoke(app, ["score", str(path)]), str(path))


def test_answers_file_that_is_missing_or_a_folder(tmp_path):
    one_line_error(CliRunner().invoke(app, ["score", str(tmp_path / "x.jsonl")]), "no such file")
    one_line_error(CliRunner().invoke(app, ["score", str(tmp_path)]), "not a file")


# --- paths from files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative", ["../x.png", "img/../../x.png", "/etc/passwd", "C:\\x.png", "..\\x.png", ""]
)
def test_image_paths_may_not_escape_the_data_root(tmp_path, relative):
    with pytest.raises(UnsafeImagePathError):
        resolve_image(tmp_path, relative)


def test_rfm_folder_that_does_not_exist(tmp_path):
    with pytest.raises(LrsvqaError, match="none: no such folder"):
        RegionFocusModule.load(tmp_path / "none", adapter=None)  # checked before any use


# --- label files ---------------------------------------------------------------------------


def make_qa(labels: Path, images: Path, fmt: str = "dota"):
    args = ["make-qa", "--labels", str(labels), "--images", str(images), "--format", fmt]
    return CliRunner().invoke(app, [*args, "--out", str(images / "qa.jsonl")])


@pytest.mark.parametrize(
    ("name", "fmt", "content", "where"),
    [
        ("P1.txt", "dota", "1 2 3\n", "P1.txt:1"),
        ("P1.txt", "dota", "a b c d e f g h ship 0\n", "P1.txt:1"),
        ("P1.json", "json", "[{", "P1.json"),
        ("P1.json", "json", '[{"hbox": [0, 0, 4, 4]}]', "P1.json"),
        ("P1.xml", "fair1m", "<annotation><object>", "P1.xml"),
        ("P1.geojson", "geojson", '{"type": "Point"}', "P1.geojson"),
    ],
)
def test_bad_label_files_end_in_one_line(tmp_path, name, fmt, content, where):
    (tmp_path / name).write_text(content)
    Image.new("RGB", (8, 8)).save(tmp_path / "P1.png")
    one_line_error(make_qa(tmp_path / name, tmp_path, fmt), where)


def test_labels_without_their_image(tmp_path):
    (tmp_path / "P1.txt").write_text("0 0 4 0 4 4 0 4 ship 0\n")
    one_line_error(make_qa(tmp_path / "P1.txt", tmp_path), str(tmp_path), "no image for labels")


def test_missing_wordnet_is_one_line(tmp_path, monkeypatch):
    from lrsvqa.bench import wordnet

    answers = tmp_path / "a.jsonl"
    row = {"question_id": "FAIR_1", "answer": "crimson", "ground_truth": "red"}
    answers.write_text(json.dumps(row | {"category": "color"}) + "\n")
    monkeypatch.setenv("LRSVQA_WORDNET_DIR", str(tmp_path))
    caches = (wordnet.wordnet, wordnet.max_path_similarity)  # earlier tests filled them
    for cached in caches:
        cached.cache_clear()
    try:
        result = CliRunner().invoke(app, ["score", str(answers)])
    finally:
        for cached in caches:
            cached.cache_clear()
    one_line_error(result, str(tmp_path), "apt-get install wordnet-base")
