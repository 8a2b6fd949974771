"""Every command's input errors end in one line naming the file, with exit status 2.

The commands not covered elsewhere: ``distill``, ``sft`` and ``build-bench`` (with
their checkpoint, data and API errors), ``eval`` and ``merge`` missing files. ``ask``
(tests/test_ask_cli.py), ``score`` and ``make-qa`` (tests/test_hostile_inputs.py),
``pyramid`` (tests/test_hostile_inputs.py, tests/test_imagery_geo.py) and the run
record errors of ``eval``/``merge`` (tests/test_trust.py) are tested beside their
features.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.train.checkpoint import FORMAT, STATE_NAME, checkpoint_name
from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset
from tests.test_construct import error as api_error
from tests.test_construct import make_dataset, serve  # noqa: F401 - serve is a fixture
from tests.test_train_loop import plant_pickle
from tests.test_trust import one_line_error


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    tiny, processor = build_tiny_llava(TOY_WORDS, num_layers=2, seed=0)
    return save_tiny_llava(tiny, processor, root / "model")


@pytest.fixture
def data(tmp_path) -> Path:
    return write_toy_dataset(tmp_path / "data", 1, seed=0, size_range=(300, 400))


def fake_checkpoint(out: Path, step: int = 1) -> Path:
    """A checkpoint folder that passes for ours (format tag only)."""
    folder = out / "checkpoints" / checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / STATE_NAME).write_text(json.dumps({"format": FORMAT}))
    return folder


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- distill and sft: checkpoints are data only, and errors are one line ------------------

TRAIN_COMMANDS = {
    "distill": ("--rfm-layers", "0,1", "--pairs", "0:0,1:1", "--steps", "2"),
    "sft": ("--steps", "2"),
}


@pytest.mark.parametrize("command", sorted(TRAIN_COMMANDS))
def test_resume_never_unpickles_a_planted_file(command, tmp_path, data):
    out = tmp_path / "out"
    folder = fake_checkpoint(out)
    marker = tmp_path / "pwned"
    planted = plant_pickle(folder, marker)
    # The model is never loaded: the checkpoint is refused first.
    args = [command, "--model", tmp_path / "no-model", "--data", data, "--out", out]
    result = run(*args, *TRAIN_COMMANDS[command], "--resume")
    one_line_error(result, str(planted), "pickle-format file")
    assert not marker.exists()
    if command == "distill":
        result = run(*args, *TRAIN_COMMANDS[command], "--resume-from", folder)
        one_line_error(result, str(planted), "pickle-format file")
        assert not marker.exists()


@pytest.mark.parametrize("command", sorted(TRAIN_COMMANDS))
def test_checkpoint_mistakes_end_in_one_line(command, tmp_path, data):
    out = tmp_path / "out"
    args = [command, "--model", tmp_path / "no-model", "--data", data, "--out", out]
    extra = TRAIN_COMMANDS[command]
    one_line_error(run(*args, *extra, "--resume"), str(out), "no checkpoint to resume from")
    fake_checkpoint(out)
    one_line_error(run(*args, *extra), str(out), "already holds checkpoints")
    (out / "checkpoints" / checkpoint_name(1) / STATE_NAME).write_text("{")
    one_line_error(run(*args, *extra, "--resume"), STATE_NAME, "not a readable lrsvqa checkpoint")
    if command == "distill":
        gone = tmp_path / "gone"
        one_line_error(run(*args, *extra, "--resume-from", gone), str(gone), "does not exist")


@pytest.mark.parametrize("command", sorted(TRAIN_COMMANDS))
def test_training_model_and_data_errors_end_in_one_line(command, tmp_path, data, model):
    extra = TRAIN_COMMANDS[command]
    missing = tmp_path / "no-model"
    result = run(command, "--model", missing, "--data", data, "--out", tmp_path / "a", *extra)
    one_line_error(result, str(missing), "no such folder")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image": "x.png"')
    result = run(command, "--model", model, "--data", bad, "--out", tmp_path / "b", *extra)
    one_line_error(result, str(bad), "not valid JSON")
    items = json.loads(data.read_text())
    items[0]["image"] = "../../../outside.png"
    moved = data.with_name("moved.json")
    moved.write_text(json.dumps(items))
    result = run(command, "--model", model, "--data", moved, "--out", tmp_path / "c", *extra)
    one_line_error(result, str(moved), "does not exist")


# --- build-bench ---------------------------------------------------------------------------


def build_bench(images: Path, labels: Path, out: Path, *extra: str):
    return run("build-bench", "--images", images, "--labels", labels, "--out", out, *extra)


def test_build_bench_option_and_file_errors_end_in_one_line(tmp_path):
    images, labels = make_dataset(tmp_path)
    out = tmp_path / "bench"
    one_line_error(build_bench(images, labels, out), "--api-base", "--model")
    bad_stage = build_bench(images, labels, out, "--stages", "targets,crop")
    one_line_error(bad_stage, "--stages", "crop")
    out.mkdir()
    (out / "targets.jsonl").write_text('{"name": "scene1"}\nnot json\n{"name": "x"}\n')
    one_line_error(
        build_bench(images, labels, out, "--stages", "targets"), "targets.jsonl:2", "corrupt"
    )
    (labels / "scene1.txt").write_text("0 0 4 0 4 4 0 4 ship 0\n")  # beside scene1.json
    one_line_error(
        build_bench(images, labels, tmp_path / "b2", "--stages", "targets"),
        "scene1",
        "two label files",
    )
    (labels / "scene1.txt").unlink()
    (labels / "scene2.txt").write_text("1 2 3\n")
    one_line_error(
        build_bench(images, labels, tmp_path / "b3", "--stages", "targets"), "scene2.txt:1"
    )


def test_build_bench_bad_api_key_is_one_line_and_never_shown(serve, tmp_path):  # noqa: F811
    images, labels = make_dataset(tmp_path)
    server = serve(lambda body, n: api_error(401, "invalid api key sk-secret-123"))
    args = ["--api-base", server.base_url, "--model", "fake-vl", "--max-retries", "0"]
    result = build_bench(images, labels, tmp_path / "bench", *args, "--api-key", "sk-secret-123")
    line = one_line_error(result, "AuthenticationError")
    assert "sk-secret-123" not in result.output and "sk-secret-123" not in line
    for written in (tmp_path / "bench").rglob("*.jsonl"):
        assert "sk-secret-123" not in written.read_text()


# --- eval and merge ------------------------------------------------------------------------


def test_eval_and_merge_missing_files_end_in_one_line(tmp_path):
    import tests.test_bench_runner  # noqa: F401 - registers test-oracle

    missing = tmp_path / "none.jsonl"
    args = ["eval", "--data-root", tmp_path, "--questions", missing, "--strategy", "test-oracle"]
    one_line_error(run(*args, "--no-progress"), str(missing), "no such file")
    merged = tmp_path / "merged.jsonl"
    one_line_error(run("merge", merged), str(merged), "no shard files")
    one_line_error(run("merge", merged, missing), str(missing))


# --- ask and eval: models, RFMs and images -------------------------------------------------


def test_truncated_weights_and_missing_rfm_end_in_one_line(tmp_path, model):
    import shutil

    from PIL import Image

    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64)).save(image)
    cut = shutil.copytree(model, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    result = run("ask", image, "what?", "--model", cut)
    one_line_error(result, str(weights), "truncated safetensors file")
    # A mistyped --rfm fails before the model loads (no progress bar, no wait).
    missing = tmp_path / "no-rfm"
    one_line_error(run("ask", image, "what?", "--model", model, "--rfm", missing), str(missing))
    from lrsvqa.strategies.registry import build_strategy

    with pytest.raises(ValueError, match="no-rfm: no such folder"):
        build_strategy("c2f", model_path="never-loaded", rfm_path=str(missing))


@pytest.mark.parametrize(
    ("text", "problem"), [("[{", "not a JSON file"), ("[1]", "item 0"), ("[]", "no questions")]
)
def test_bad_mme_question_files_end_in_one_line(tmp_path, text, problem):
    questions = tmp_path / "MME_RealWorld_RS.json"
    questions.write_text(text)
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": "1", "answer": "A"}) + "\n")
    result = run("score", answers, "--questions", questions)
    one_line_error(result, str(questions), problem)


def test_formats_and_urls_that_need_gdal_say_how_to_get_it(tmp_path, monkeypatch):
    from lrsvqa.imagery import gdal

    monkeypatch.setattr(gdal, "available", lambda: False)
    jp2 = tmp_path / "scene.jp2"
    jp2.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64))
    one_line_error(run("pyramid", jp2), str(jp2), "JPEG2000", "pip install 'lrsvqa[geo]'")
    url = "https://example.invalid/scene.tif"  # refused before any request
    one_line_error(run("pyramid", url), url, "remote image needs GDAL")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["pyramid", "scene.tif", "--tile-size", "abc"], "--tile-size"),
        (["flops", "--format", "xml"], "--format"),
        (["eval", "--bench", "lrs-vqa", "--questions", "q.jsonl"], "--data-root"),
        (["ask", "scene.tif", "what?", "--model", "m", "--alpha", "x"], "--alpha"),
        (["score", "a.jsonl", "--rule", "lenient"], "--rule"),
    ],
)
def test_bad_or_missing_option_values_end_in_one_line(args, names, tmp_path, monkeypatch):
    # Typer's own checks used to print a boxed panel; every bad value is one line now.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scene.tif").write_bytes(b"")
    (tmp_path / "a.jsonl").write_text("")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
