"""Runner tests. Run as a script, this file is the child process of the kill and
sharding tests: it registers the test strategies and runs the ``lrsvqa`` CLI."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.answers import AnswerFileError, AnswerLog, read_answers, shard_path
from lrsvqa.bench.datasets import BenchItem, load_benchmark
from lrsvqa.bench.runner import EvalConfig, evaluate, run_items, shard_items, summarize_trace
from lrsvqa.flops import TokenCount
from lrsvqa.strategies.base import StrategyResult
from lrsvqa.strategies.registry import (
    ModelOptions,
    available_strategies,
    build_strategy,
    option,
    register_strategy,
)

THIS_FILE = Path(__file__).resolve()


@dataclass(frozen=True)
class OracleOptions:
    questions: str = option("", "Question file to look the answers up in.")
    bench: str = option("lrs-vqa", "Its benchmark.")
    prompt: str = option("official", "Its multiple-choice prompt.")
    delay: float = option(0.0, "Seconds per answer.")
    fail_on: str = option("", "Raise on questions containing this.")
    layers: tuple[int, ...] = option((), "Ignored; tests typed conversion.")


class OracleStrategy:
    """Answers with the ground truth looked up by question text (test only).

    ``broken`` fails questions containing it from outside the run's options, like a
    failing disk.
    """

    name = "test-oracle"
    broken = ""

    def __init__(self, model: ModelOptions, options: OracleOptions):
        items = load_benchmark(options.bench, Path(options.questions), prompt=options.prompt)
        self.items = {item.question: item for item in items}
        self.delay = options.delay
        self.fail_on = options.fail_on
        self.model = model
        self.options = options
        self.prepared = []
        self.answered = []

    def prepare(self, image_path):
        self.prepared.append((Path(image_path).name, threading.current_thread().name))
        with Image.open(image_path) as image:
            image.load()
            return image.size

    def answer(self, prepared, question):
        if any(part and part in question for part in (self.fail_on, OracleStrategy.broken)):
            raise RuntimeError("model failed on purpose")
        time.sleep(self.delay)
        self.answered.append(question)
        item = self.items[question]
        return StrategyResult(
            answer=item.ground_truth,
            vision_tokens_encoded=576,
            tokens_to_llm=700,
            vision_tokens_to_llm=144,
            selected_boxes=[item.hbox] if item.hbox else [],
            tflops=1.5,
            trace={"levels": 2, "image_size": list(prepared), "scores": list(range(2000))},
        )


def oracle(questions) -> OracleStrategy:
    return OracleStrategy(ModelOptions(), OracleOptions(questions=str(questions)))


def count_oracle(image, options: OracleOptions) -> TokenCount:
    return TokenCount("test-oracle", 576, (144,) * image.dims.num_layers)


def register_test_strategies():
    register_strategy(
        "test-oracle", OracleStrategy, options=OracleOptions, counter=count_oracle, replace=True
    )


register_test_strategies()


def make_benchmark(root: Path, images: int = 6, per_image: int = 3) -> Path:
    """Tiny LRS-VQA-format benchmark: PNG images, consecutive questions per image."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    truths = ["red", "3", "yes"]
    for i in range(images):
        Image.new("RGB", (8 + i, 8), (i, 0, 0)).save(root / "img" / f"{i}.png")
        for j in range(per_image):
            subset = "FAIR" if i % 2 == 0 else "STAR"
            rows.append(
                {
                    "question_id": f"{subset}_{i * per_image + j}",
                    "image": f"img/{i}.png",
                    "category": ["object color", "count", "reasoning"][j % 3],
                    "text": f"Question {i}-{j}?",
                    "ground_truth": truths[j % 3],
                    **({"hbox": [0, 0, 4, 4]} if j != 1 else {}),
                }
            )
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return questions


def add_bad_items(root: Path, questions: Path) -> None:
    """Append a missing image, a corrupt image and an image path escaping the root."""
    (root / "img" / "corrupt.png").write_bytes(b"not a png at all")
    bad = [("missing.png", "BAD_1"), ("corrupt.png", "BAD_2"), ("../outside.png", "BAD_3")]
    with questions.open("a", encoding="utf-8") as handle:
        for name, qid in bad:
            row = {"question_id": qid, "image": f"img/{name}", "category": "reasoning"}
            row |= {"text": f"Bad {qid}?", "ground_truth": "yes"}
            handle.write(json.dumps(row) + "\n")


def config(root: Path, questions: Path, output: Path, **overrides) -> EvalConfig:
    options = {"questions": str(questions)} | overrides.pop("strategy_options", {})
    return EvalConfig(
        bench="lrs-vqa",
        questions=questions,
        data_root=root,
        output=output,
        strategy="test-oracle",
        strategy_options=options,
        progress=False,
        **overrides,
    )


def comparable(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_registry_builds_by_name_and_guards_names():
    made = []

    def factory(model, options):
        made.append((model, options))
        return OracleStrategy.__new__(OracleStrategy)

    typed = {"options": OracleOptions, "counter": count_oracle}
    register_strategy("test-registry", factory, **typed, replace=True)
    register_strategy("test-registry", factory, **typed)  # same factory again: fine
    assert "test-registry" in available_strategies()
    build_strategy("test-registry", model_path="m", device="cpu", delay="2")
    assert made == [(ModelOptions(model_path="m", device="cpu"), OracleOptions(delay=2.0))]
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("test-registry", lambda m, o: None, **typed)
    with pytest.raises(KeyError, match="test-registry"):
        build_strategy("no-such-strategy")


def test_run_answers_everything_and_records_bad_items(tmp_path):
    questions = make_benchmark(tmp_path)
    add_bad_items(tmp_path, questions)
    output = tmp_path / "out" / "answers.jsonl"
    cfg = config(tmp_path, questions, output, strategy_options={"fail_on": "Question 5-2"})
    outcome = evaluate(cfg)
    records = read_answers(output)
    items = load_benchmark("lrs-vqa", questions)
    assert [r["question_id"] for r in records] == [item.question_id for item in items]
    assert [
        {k: r[k] for k in item.to_record()} for r, item in zip(records, items, strict=True)
    ] == [item.to_record() for item in items]
    errors = {r["question_id"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {"STAR_17", "BAD_1", "BAD_2", "BAD_3"}
    assert errors["STAR_17"] == "RuntimeError: model failed on purpose"
    assert errors["BAD_1"].startswith("FileNotFoundError")
    assert errors["BAD_2"].startswith("UnidentifiedImageError")
    assert errors["BAD_3"].startswith("UnsafeImagePathError")
    assert outcome.run.errors == 4 and outcome.run.answered == 21
    ok = records[0]
    assert ok["answer"] == "red" and ok["tokens_to_llm"] == 700 and ok["tflops"] == 1.5
    assert ok["trace"]["levels"] == 2 and ok["trace"]["image_size"] == [8, 8]
    assert ok["trace"]["scores"] == "<list of 2000 entries omitted>"
    assert ok["seconds"] >= 0 and ok["selected_boxes"] == [[0, 0, 4, 4]]
    report = outcome.report
    assert report.errors == 4
    assert report.groups["FAIR"].overall_accuracy == 1.0
    assert report.groups["all"].overall_accuracy == pytest.approx(17 / 21)
    assert report.localisation.accuracy == 1.0
    assert json.loads(output.with_suffix(".report.json").read_text())["errors"] == 4
    assert "| OA (paper rule) |" in output.with_suffix(".report.md").read_text()


def test_rerun_resumes_and_retry_errors_answers_failed_items_again(tmp_path, monkeypatch):
    questions = make_benchmark(tmp_path)
    output = tmp_path / "answers.jsonl"
    first = evaluate(config(tmp_path, questions, output, limit=5, score=False))
    assert (first.run.answered, first.report) == (5, None)
    head = output.read_bytes()
    monkeypatch.setattr(OracleStrategy, "broken", "Question 4-")
    second = evaluate(config(tmp_path, questions, output))
    assert (second.run.skipped, second.run.answered, second.run.errors) == (5, 13, 3)
    assert output.read_bytes().startswith(head)
    monkeypatch.setattr(OracleStrategy, "broken", "")
    third = evaluate(config(tmp_path, questions, output, retry_errors=True))
    assert (third.run.skipped, third.run.answered, third.run.errors) == (15, 3, 0)
    records = read_answers(output)
    assert len(records) == len(output.read_text().splitlines()) == 18
    assert third.report.groups["all"].overall_accuracy == 1.0


def test_only_unfinished_items_reach_the_strategy(tmp_path):
    questions = make_benchmark(tmp_path)
    items = load_benchmark("lrs-vqa", questions)
    output = tmp_path / "answers.jsonl"
    strategy = oracle(questions)
    run_items(strategy, items[:7], tmp_path, output, progress=False)
    strategy = oracle(questions)
    summary = run_items(strategy, items, tmp_path, output, progress=False)
    assert strategy.answered == [item.question for item in items[7:]]
    assert (summary.skipped, summary.answered) == (7, 11)


def test_torn_last_line_is_dropped_and_the_item_answered_again(tmp_path):
    questions = make_benchmark(tmp_path)
    items = load_benchmark("lrs-vqa", questions)
    output = tmp_path / "answers.jsonl"
    run_items(oracle(questions), items[:4], tmp_path, output, progress=False)
    complete = output.read_bytes()
    with output.open("ab") as handle:
        handle.write(b'{"question_id": "STAR_4", "answer": "re')
    with AnswerLog(output) as log:
        assert log.dropped_bytes == len(b'{"question_id": "STAR_4", "answer": "re')
        assert len(log.done) == 4
    assert output.read_bytes() == complete
    run_items(oracle(questions), items, tmp_path, output, progress=False)
    ids = [json.loads(line)["question_id"] for line in output.read_text().splitlines()]
    assert ids == [item.question_id for item in items]


def test_a_corrupt_complete_line_is_an_error_not_silently_skipped(tmp_path):
    output = tmp_path / "answers.jsonl"
    output.write_text('{"question_id": "A_1"}\nnot json\n{"question_id": "A_2"}\n')
    with pytest.raises(AnswerFileError, match="answers.jsonl:2"):
        AnswerLog(output)


def test_two_runs_cannot_append_to_the_same_file(tmp_path):
    output = tmp_path / "answers.jsonl"
    with AnswerLog(output), pytest.raises(AnswerFileError, match="another run"):
        AnswerLog(output)
    AnswerLog(output).close()  # released


def test_next_image_is_prepared_in_the_background_once_per_image(tmp_path):
    questions = make_benchmark(tmp_path, images=3, per_image=2)
    items = load_benchmark("lrs-vqa", questions)
    second_image_loading = threading.Event()

    class WaitingOracle(OracleStrategy):
        def prepare(self, image_path):
            if Path(image_path).name == "1.png":
                second_image_loading.set()
            return super().prepare(image_path)

        def answer(self, prepared, question):
            if question == items[0].question:
                # Returns at once if image 1 is being prepared while image 0 is answered.
                assert second_image_loading.wait(timeout=30)
            return super().answer(prepared, question)

    strategy = WaitingOracle(ModelOptions(), OracleOptions(questions=str(questions)))
    run_items(strategy, items, tmp_path, tmp_path / "a.jsonl", progress=False)
    assert [name for name, _ in strategy.prepared] == ["0.png", "1.png", "2.png"]
    assert all(thread.startswith("prefetch") for _, thread in strategy.prepared)
    assert len(read_answers(tmp_path / "a.jsonl")) == 6


def test_shards_are_contiguous_balanced_and_cover_everything():
    items = [BenchItem(str(i), "x", "q", "a", "c", "s") for i in range(11)]
    shards = [shard_items(items, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 4, 4]
    assert [i for s in shards for i in s] == items
    with pytest.raises(ValueError):
        shard_items(items, 3, 3)


def test_trace_summary_keeps_small_values_and_notes_big_ones():
    summary = summarize_trace(
        {"a": 1, "b": [1, 2], "big": "x" * 5000, "map": {i: i for i in range(500)}}
    )
    assert summary["a"] == 1 and summary["b"] == [1, 2]
    assert summary["big"] == "<str of 5002 characters omitted>"
    assert summary["map"] == "<dict of 500 entries omitted>"


def test_eval_command_passes_model_options_to_the_factory(tmp_path, monkeypatch):
    questions = make_benchmark(tmp_path, images=1, per_image=2)
    seen = {}

    def factory(model, options):
        seen.update(model=model, options=options)
        return OracleStrategy(model, options)

    register_strategy(
        "test-options", factory, options=OracleOptions, counter=count_oracle, replace=True
    )
    output = tmp_path / "answers.jsonl"
    args = ["eval", "--data-root", str(tmp_path), "--questions", str(questions)]
    args += ["--strategy", "test-options", "--model", "ckpt", "--device", "cpu", "--dtype", "bf16"]
    args += ["--strategy-option", f"questions={questions}", "--strategy-option", "delay=0"]
    args += ["--strategy-option", "layers=[7, 14]", "-o", str(output), "--no-progress"]
    args += ["--hr-pool", "2", "--hr-pool-mode", "average", "--no-newline"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == {
        "model": ModelOptions(
            model_path="ckpt",
            device="cpu",
            dtype="bf16",
            hr_pool=2,
            hr_pool_mode="average",
            newline=False,
        ),
        "options": OracleOptions(questions=str(questions), delay=0.0, layers=(7, 14)),
    }
    assert "2 answered" in result.output and "OA" in result.output


def test_multiple_choice_benchmark_runs_through_the_same_harness(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rs.png")
    rows = [
        {
            "Question_id": f"rs/color/{i}",
            "Image": "rs.png",
            "Text": f"Colour {i}?",
            "Answer choices": ["(A) red", "(B) blue", "(C) white", "(D) green", "(E) none"],
            "Ground truth": "ABCDE"[i],
            "Category": "color",
            "Subtask": "Remote Sensing",
        }
        for i in range(5)
    ]
    questions = tmp_path / "MME_RealWorld_RS.json"
    questions.write_text(json.dumps(rows), encoding="utf-8")
    output = tmp_path / "mme.jsonl"
    oracle = {"bench": "mme-rs", "prompt": "paper"}
    cfg = config(tmp_path, questions, output, strategy_options=oracle, prompt="paper")
    cfg.bench = "mme-rs"
    outcome = evaluate(cfg)
    assert outcome.report.groups["Remote Sensing"].overall_accuracy == 1.0
    record = read_answers(output)[0]
    assert record["choices"] == ["red", "blue", "white", "green", "none"]
    assert "The best answer is" not in record["question"]


# --- real processes -------------------------------------------------------------


def cli_child(*args, env=None):
    """Start this file as a child running ``lrsvqa ARGS`` with the test strategies."""
    return subprocess.Popen(
        [sys.executable, str(THIS_FILE), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def eval_args(root, questions, output, *extra):
    return [
        "eval",
        "--data-root",
        str(root),
        "--questions",
        str(questions),
        "--strategy",
        "test-oracle",
        "--strategy-option",
        f"questions={questions}",
        "-o",
        str(output),
        "--no-progress",
        *extra,
    ]


def wait_for_lines(path: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"child exited early: {process.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("child wrote nothing")


@pytest.mark.slow
def test_kill_9_loses_nothing_written_and_never_duplicates(tmp_path):
    questions = make_benchmark(tmp_path, images=10, per_image=3)
    output = tmp_path / "answers.jsonl"
    child = cli_child(*eval_args(tmp_path, questions, output, "--strategy-option", "delay=0.2"))
    wait_for_lines(output, 3, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = output.read_bytes()
    kept = written[: written.rfind(b"\n") + 1]
    done_before = [json.loads(line)["question_id"] for line in kept.splitlines()]
    assert 3 <= len(done_before) < 30
    with output.open("ab") as handle:  # as if the kill had torn a line in half
        handle.write(b'{"question_id": "FAIR_29", "ans')

    outcome = evaluate(config(tmp_path, questions, output, strategy_options={"delay": 0.2}))
    assert outcome.run.skipped == len(done_before)
    final = output.read_bytes()
    assert final.startswith(kept)
    ids = [json.loads(line)["question_id"] for line in final.splitlines()]
    assert sorted(ids) == sorted(item.question_id for item in load_benchmark("lrs-vqa", questions))
    assert len(ids) == len(set(ids)) == 30
    assert outcome.report.groups["all"].overall_accuracy == 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_merged_equal_a_single_process_run(tmp_path):
    questions = make_benchmark(tmp_path, images=5, per_image=3)
    add_bad_items(tmp_path, questions)
    single = tmp_path / "single.jsonl"
    evaluate(config(tmp_path, questions, single))

    sharded = tmp_path / "sharded.jsonl"
    port = str(free_port())
    children = [
        cli_child(
            *eval_args(tmp_path, questions, sharded),
            env={
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "GLOO_SOCKET_IFNAME": "lo",
            },
        )
        for rank in range(2)
    ]
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert shard_path(sharded, 0, 2).exists() and shard_path(sharded, 1, 2).exists()
    assert comparable(read_answers(sharded)) == comparable(read_answers(single))
    assert "OA" in outputs[0] and "OA" not in outputs[1]
    reports = [json.loads(p.with_suffix(".report.json").read_text()) for p in (sharded, single)]
    for report in reports:
        assert report.pop("cost")["seconds"] >= 0  # timings differ, nothing else may
        assert report.pop("run")["strategy"]["name"] == "test-oracle"  # made at other times
    assert reports[0] == reports[1]
    assert reports[0]["errors"] == 3


def test_manual_shards_then_merge_command_equal_a_single_run(tmp_path):
    questions = make_benchmark(tmp_path, images=4, per_image=3)
    single = tmp_path / "single.jsonl"
    evaluate(config(tmp_path, questions, single, score=False))
    merged = tmp_path / "merged.jsonl"
    for rank in (1, 0):
        outcome = evaluate(config(tmp_path, questions, merged, rank=rank, world_size=2))
        assert outcome.answers is None and outcome.report is None
    assert not merged.exists()
    result = CliRunner().invoke(app, ["merge", str(merged)])
    assert result.exit_code == 0, result.output
    assert "12 answers from 2 shards" in result.output
    assert comparable(read_answers(merged)) == comparable(read_answers(single))
    shard_path(merged, 1, 2).unlink()
    missing = CliRunner().invoke(app, ["merge", str(merged)])
    assert missing.exit_code == 2 and "missing shard ranks [1]" in missing.stderr


if __name__ == "__main__":
    app()
