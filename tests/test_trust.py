"""Trustworthy runs: answers files say what made them, scores never silently drop or
mix items, and bad input ends in one line naming the file (exit status 2)."""

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.test_bench_runner as oracle  # registers the test strategies
from lrsvqa.app.cli import app
from lrsvqa.bench.answers import read_answers
from lrsvqa.bench.datasets import QuestionFileError, load_benchmark
from lrsvqa.bench.run_record import record_path
from lrsvqa.errors import LrsvqaError, ModelLoadError
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.checkpoint import check_safetensors, fingerprint, resolve_checkpoint


def one_line_error(result, *names: str) -> str:
    """The CLI failed with status 2 and one stderr line naming every ``names``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def fake_checkpoint(folder: Path, seed: int) -> Path:
    """A folder with a config and a (valid) safetensors file: enough to fingerprint."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "seed": seed}))
    weights = np.random.default_rng(seed).standard_normal((64, 64)).astype("float32")
    save_file({"w": weights}, str(folder / "model.safetensors"))
    return folder


def eval_cli(root: Path, questions: Path, *extra: str):
    args = ["eval", "--data-root", str(root), "--questions", str(questions)]
    args += ["--strategy", "test-oracle", "--strategy-option", f"questions={questions}"]
    return CliRunner().invoke(app, [*args, "--no-progress", *extra])


@pytest.fixture
def bench(tmp_path):
    questions = oracle.make_benchmark(tmp_path, images=2, per_image=3)
    model_a = fake_checkpoint(tmp_path / "model_a", 0)
    model_b = fake_checkpoint(tmp_path / "model_b", 1)
    return tmp_path, questions, model_a, model_b


# --- 1: run records ---------------------------------------------------------------


def test_resume_refuses_answers_made_by_another_model_or_option(bench):
    root, questions, model_a, model_b = bench
    out = root / "answers.jsonl"
    first = eval_cli(root, questions, "--model", str(model_a), "-o", str(out))
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    second = eval_cli(
        root, questions, "--model", str(model_b), "--strategy-option", "delay=0.001", "-o", str(out)
    )
    changed = ("model (config, weights differ)", "option delay: 0.0 -> 0.001")
    line = one_line_error(second, str(out), *changed)
    assert "give --out NEW.jsonl" in line
    assert out.read_bytes() == before
    same = eval_cli(root, questions, "--model", str(model_a), "-o", str(out))
    assert same.exit_code == 0 and "0 answered, 6 already done" in same.output


def test_retrained_weights_in_the_same_folder_are_a_different_run(bench):
    root, questions, model_a, _ = bench
    out = root / "answers.jsonl"
    assert eval_cli(root, questions, "--model", str(model_a), "-o", str(out)).exit_code == 0
    data = bytearray((model_a / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one weight changed, same size and header
    (model_a / "model.safetensors").write_bytes(bytes(data))
    again = eval_cli(root, questions, "--model", str(model_a), "-o", str(out))
    one_line_error(again, str(out), "model (weights differ)")


def test_editing_the_question_file_is_a_different_run(bench):
    root, questions, model_a, _ = bench
    out = root / "answers.jsonl"
    assert eval_cli(root, questions, "-o", str(out)).exit_code == 0
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    rows[0]["ground_truth"] = "blue"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    one_line_error(eval_cli(root, questions, "-o", str(out)), "question file's content")


def test_answers_without_a_run_record_are_not_resumed(bench):
    root, questions, _, _ = bench
    out = root / "answers.jsonl"
    assert eval_cli(root, questions, "-o", str(out)).exit_code == 0
    record_path(out).unlink()
    one_line_error(eval_cli(root, questions, "-o", str(out)), str(out), "no run record")


def test_run_record_is_kept_beside_the_answers_and_copied_into_the_report(bench):
    root, questions, model_a, _ = bench
    out = root / "answers.jsonl"
    result = eval_cli(
        root, questions, "--model", str(model_a), "--rule", "normalised", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    record = json.loads(record_path(out).read_text())
    assert record_path(out).name == "answers.run.json"
    assert record["model"] == fingerprint(model_a) and record["model"]["weights_sha256"]
    assert record["model"]["config_sha256"] and record["rfm"] is None
    assert record["strategy"]["name"] == "test-oracle"
    options = record["strategy"]["options"]  # as parsed, defaults included
    assert options["questions"] == str(questions) and options["delay"] == 0.0
    assert options["dtype"] == "float32" and "device" not in options  # auto, resolved on CPU
    assert len(record["questions"]["sha256"]) == 64 and record["scoring_rule"] == "normalised"
    assert set(record["software"]) == {"lrsvqa", "torch", "transformers"}
    assert all(record["software"].values()) and "commit" in record
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["run"] == record
    scored = CliRunner().invoke(app, ["score", str(out), "--json", str(root / "r.json")])
    assert scored.exit_code == 0 and json.loads((root / "r.json").read_text())["run"] == record


def test_default_output_names_carry_model_strategy_and_options(bench, monkeypatch):
    root, questions, model_a, model_b = bench
    monkeypatch.chdir(root)
    for extra in ([], ["--strategy-option", "fail_on=zzz"]):
        for model in (model_a, model_b):
            assert eval_cli(root, questions, "--model", str(model), *extra).exit_code == 0
    names = sorted(p.name for p in (root / "outputs").glob("*.jsonl"))
    assert len(names) == 4, names
    assert all(n.startswith("lrs-vqa-model_") and "-test-oracle-" in n for n in names)


def test_merge_refuses_shards_of_different_runs(bench):
    root, questions, model_a, model_b = bench
    merged = root / "merged.jsonl"
    for rank, model in ((0, model_a), (1, model_b)):
        extra = ["--model", str(model), "--rank", str(rank), "--world-size", "2"]
        assert eval_cli(root, questions, *extra, "-o", str(merged)).exit_code == 0
    one_line_error(CliRunner().invoke(app, ["merge", str(merged)]), "rank1-of-2", "model")


# --- 2: score reads finished files whole and reports extra and repeated ids ---------


def answer_line(question_id: str, answer: str, truth: str = "red") -> str:
    row = {"question_id": question_id, "answer": answer, "ground_truth": truth}
    return json.dumps(row | {"category": "color"})


def test_score_keeps_the_last_answer_of_a_file_without_final_newline(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text(answer_line("FAIR_1", "red") + "\n" + answer_line("FAIR_2", "blue"))
    result = CliRunner().invoke(app, ["score", str(answers), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["groups"]["FAIR"]["items"] == 2
    assert report["groups"]["FAIR"]["overall_accuracy"] == 0.5


def test_score_reports_extra_and_duplicate_ids(tmp_path):
    questions = oracle.make_benchmark(tmp_path, images=1, per_image=2)
    lines = [answer_line("FAIR_0", "red"), answer_line("FAIR_0", "blue")]
    lines += [answer_line("OTHER_9", "red"), answer_line("FAIR_1", "3")]
    answers = tmp_path / "a.jsonl"
    answers.write_text("\n".join(lines) + "\n")
    args = ["score", str(answers), "--questions", str(questions)]
    result = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not in the question file (not scored): 1 (OTHER_9)" in text
    assert "answered more than once (first answer scored): 1 (FAIR_0)" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["extra_ids"], report["duplicate_ids"]) == (["OTHER_9"], ["FAIR_0"])
    assert report["groups"]["FAIR"]["overall_accuracy"] == 1.0  # first FAIR_0 answer: red


def test_own_log_still_drops_a_torn_tail_when_resumed(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text(answer_line("FAIR_1", "red") + "\n" + '{"question_id": "FA')
    assert [r["question_id"] for r in read_answers(answers)] == ["FAIR_1"]


# --- 3: null fields -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["ground_truth", "category", "question_id", "text", "image"])
def test_null_fields_are_refused_with_file_and_line(tmp_path, field):
    questions = oracle.make_benchmark(tmp_path, images=1, per_image=3)
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    rows[1][field] = None
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(QuestionFileError, match=f"questions.jsonl:2: .*{field} is null"):
        load_benchmark("lrs-vqa", questions)
    answers = tmp_path / "a.jsonl"
    answers.write_text(answer_line("FAIR_0", "red") + "\n")
    result = CliRunner().invoke(app, ["score", str(answers), "--questions", str(questions)])
    one_line_error(result, f"{questions}:2", f"{field} is null")


def test_null_ground_truth_in_an_answers_file_is_refused(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": "FAIR_1", "answer": "red", "ground_truth": None}))
    one_line_error(CliRunner().invoke(app, ["score", str(answers)]), str(answers), "FAIR_1")


def test_null_mme_fields_are_refused(tmp_path):
    rows = [{"Question_id": "a", "Image": "x.png", "Text": "Colour?", "Ground truth": None}]
    rows[0]["Answer choices"] = ["(A) red", "(B) blue"]
    questions = tmp_path / "mme.json"
    questions.write_text(json.dumps(rows))
    with pytest.raises(QuestionFileError, match="item 0: .*answer is null"):
        load_benchmark("mme-rs", questions)


# --- 8: empty question file, truncated weights -----------------------------------


def test_empty_question_file_stops_before_loading_the_model(tmp_path):
    built = []

    def build(model, options):
        built.append(options)

    oracle.register_strategy("test-built", build, counter=oracle.count_oracle, replace=True)
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n\n")
    args = ["eval", "--data-root", str(tmp_path), "--questions", str(questions)]
    result = CliRunner().invoke(app, [*args, "--strategy", "test-built", "--no-progress"])
    one_line_error(result, str(questions), "no questions")
    assert built == [] and not list(tmp_path.glob("**/*.run.json"))


def test_subsets_without_questions_say_so(bench):
    root, questions, _, _ = bench
    result = eval_cli(root, questions, "--subset", "NOPE", "-o", str(root / "a.jsonl"))
    one_line_error(result, str(questions), "no questions of subsets NOPE", "FAIR, STAR")


def test_truncated_model_safetensors_is_named(tmp_path):
    from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
    from tests.tiny_models import WORDS

    folder = save_tiny_llava(*build_tiny_llava(WORDS), tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match="model.safetensors: truncated safetensors file"):
        LlavaAdapter.from_pretrained(folder)
    weights.write_bytes(b"\x05\x00")
    with pytest.raises(ModelLoadError, match="truncated safetensors file \\(2 bytes\\)"):
        check_safetensors(weights)
    weights.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{ab}")
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        check_safetensors(weights)


# --- 6: a mistyped --model fails at once ----------------------------------------------


def test_missing_model_path_fails_at_once(tmp_path):
    for name in ("./missing", str(tmp_path / "missing"), "a/b/c", "~/no-such-model"):
        with pytest.raises(ModelLoadError, match="no such folder"):
            resolve_checkpoint(name)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="not a folder"):
        resolve_checkpoint(tmp_path / "file")


def test_uncached_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="nonexist_model: .*HF_HUB_OFFLINE=1"):
        resolve_checkpoint("nonexist_model")
    assert time.monotonic() - start < 30  # generous: the bug retried for ~150 s
    result = CliRunner().invoke(app, ["ask", "x.png", "q", "--model", "nonexist_model"])
    one_line_error(result, "nonexist_model", "not in the Hugging Face cache")


def test_uncached_hub_id_without_network_says_so(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ModelLoadError, match="hub cannot be reached \\(ConnectionError\\)"):
        resolve_checkpoint("org/nonexist_model")


# --- 9: the error boundary ---------------------------------------------------------------


def test_debug_shows_the_traceback_of_input_errors(tmp_path, monkeypatch):
    missing = str(tmp_path / "none.jsonl")
    plain = CliRunner().invoke(app, ["score", missing])
    one_line_error(plain, missing, "no such file")
    debug = CliRunner().invoke(app, ["--debug", "score", missing])
    assert isinstance(debug.exception, LrsvqaError) and debug.exit_code == 1
    monkeypatch.setenv("LRSVQA_DEBUG", "1")
    assert isinstance(CliRunner().invoke(app, ["score", missing]).exception, LrsvqaError)


def test_unexpected_errors_keep_their_traceback(tmp_path):
    def broken(model, options):
        raise RuntimeError("a bug, not bad input")

    oracle.register_strategy("test-broken", broken, counter=oracle.count_oracle, replace=True)
    questions = oracle.make_benchmark(tmp_path, images=1, per_image=1)
    args = ["eval", "--data-root", str(tmp_path), "--questions", str(questions)]
    result = CliRunner().invoke(app, [*args, "--strategy", "test-broken", "--no-progress"])
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1


def test_run_records_hold_the_resolved_dtype_not_auto(monkeypatch, tmp_path):
    # "auto" is float32 on the CPU and the checkpoint's (or bfloat16) on a GPU: recording
    # the word would let a CPU run resume a GPU run's answers and mix the two.
    import torch

    from lrsvqa.bench.run_record import resolved_dtype

    assert resolved_dtype("auto", "cpu", None) == "float32"
    assert resolved_dtype("fp16", "cpu", None) == "float16"  # one name per dtype
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolved_dtype("auto", None, None) == "bfloat16"
    config = tmp_path / "model"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps({"model_type": "llama", "dtype": "float16"}), encoding="utf-8"
    )
    assert resolved_dtype("auto", "cuda", str(config)) == "float16"
    assert resolved_dtype("auto", "cpu", str(config)) == "float32"
