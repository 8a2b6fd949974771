"""The lmms-eval integration against the real package: `lmms-eval --model lrsvqa` = `lrsvqa eval`.

The command-line tests (LRS-VQA, MME-RealWorld-RS) are skipped where lmms-eval is not
installed (``pip install -e '.[lmms]'``); the task folders and their metrics are tested
everywhere.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.datasets import load_benchmark
from lrsvqa.bench.reports import ALL
from lrsvqa.bench.runner import EvalConfig, evaluate
from lrsvqa.bench.scoring import paper_choice
from lrsvqa.integrations.lmms_eval.task import MME_PROMPT, write_tasks
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from tests.mme_rs import MME_WORDS, write_mme_rs
from tests.tiny_models import WORDS

needs_lmms_eval = pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed"
)

OPTIONS = {"device": "cpu", "dtype": "float32", "max_new_tokens": "3"}
# One answer word: the paper rule reads it as the first option holding it, while the tiny
# model's longer answers ("ship ship ship") are in no option.
MME_OPTIONS = OPTIONS | {"max_new_tokens": "1"}


def _questions(path: Path, truths: list[str]) -> Path:
    layout = [
        ("STAR_1", "a.png", "object color", "what color is the ship?"),
        ("STAR_2", "a.png", "count", "how many ship are there?"),
        ("STAR_3", "b.png", "count", "how many red ship are there?"),
        ("FAIR_1", "b.png", "object color", "what color is the ship?"),
        ("FAIR_2", "b.png", "count", "how many blue ship are there?"),
    ]
    rows = [
        {"question_id": qid, "image": f"img/{image}", "category": category, "text": text}
        | {"ground_truth": truth}
        for (qid, image, category, text), truth in zip(layout, truths, strict=True)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _eval(
    root: Path,
    questions: Path,
    output: Path,
    model: Path,
    bench: str = "lrs-vqa",
    options: dict[str, str] = OPTIONS,
):
    options = {"model_path": str(model), **options}
    config = EvalConfig(
        bench=bench,
        prompt=MME_PROMPT,
        questions=questions,
        data_root=root,
        output=output,
        strategy="c2f",
        strategy_options=options,
        progress=False,
        rule="paper",
    )
    return evaluate(config)


def _lmms_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lmms-eval")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lmms_eval"]


def _run_lmms_eval(
    tmp_path: Path, model_dir: Path, tasks: str, options: dict[str, str] = OPTIONS
) -> dict:
    """The ``results`` of ``lmms-eval --model lrsvqa`` on the task folder ``tmp_path/tasks``."""
    model_args = ",".join(
        [f"pretrained={model_dir}", "strategy=c2f"]
        + [f"{key}={value}" for key, value in options.items()]
    )
    env = os.environ | {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    command = [
        *_lmms_eval_command(),
        "--model", "lrsvqa",
        "--model_args", model_args,
        "--tasks", tasks,
        "--include_path", str(tmp_path / "tasks"),
        "--output_path", str(tmp_path / "logs"),
        "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    # lmms-eval logs an evaluation error and still exits 0
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Error during evaluation" not in output, output[-6000:]
    found = list((tmp_path / "logs").rglob("*_results.json"))
    assert found, output[-6000:]
    return json.loads(found[0].read_text())["results"]


def _score_log(tmp_path: Path, task: str, questions: Path) -> dict:
    """``lrsvqa score`` of the task's ``--log_samples`` file, joined to ``questions``."""
    log = next((tmp_path / "logs").rglob(f"*_samples_{task}.jsonl"))
    out = tmp_path / f"{task}.json"
    scored = CliRunner().invoke(
        app, ["score", str(log), "--questions", str(questions), "--rule", "paper", "-o", str(out)]
    )
    assert scored.exit_code == 0, scored.output
    return json.loads(out.read_text())["groups"]


def test_task_folder_and_its_paper_rule_metrics_without_lmms_eval(tmp_path):
    from lrsvqa.bench.reports import score_answers
    from lrsvqa.integrations.lmms_eval import task

    questions = _questions(tmp_path / "q.jsonl", ["grey", "3", "2", "white", "1"])
    (tmp_path / "img").mkdir()
    assert task.write_tasks(questions, tmp_path, tmp_path / "t", "lrs") == ["lrs_star", "lrs_fair"]
    assert "  - lrs_star\n  - lrs_fair\n" in (tmp_path / "t" / "lrs.yaml").read_text()
    config = (tmp_path / "t" / "lrs_star.yaml").read_text()
    assert "dataset_path: json" in config and "task: lrs_star" in config
    docs = [
        json.loads(line) for line in (tmp_path / "t" / "lrs_star.jsonl").read_text().splitlines()
    ]
    assert task.doc_to_visual(docs[0]) == [str((tmp_path / "img" / "a.png").resolve())]
    assert task.doc_to_text(docs[1]) == "how many ship are there?"
    # A doc is the item's record (the head of `lrsvqa eval`'s answer record) plus its path.
    star = [item for item in load_benchmark("lrs-vqa", questions) if item.subset == "STAR"]
    assert [{k: v for k, v in d.items() if k != "image_path"} for d in docs] == [
        item.to_record() for item in star
    ]
    predictions = ["Gray", "three", "2"]
    answers = [task.process_results(d, [p])["oa"] for d, p in zip(docs, predictions, strict=True)]
    expected = score_answers(answers, rule="paper").groups["STAR"].accuracies("paper")
    assert task.overall_accuracy(answers) == pytest.approx(100 * expected[0])
    assert task.average_accuracy(answers) == pytest.approx(100 * expected[1])
    assert task.task_name("lrs_vqa", "GLH-Bridge") == "lrs_vqa_glh_bridge"


@needs_lmms_eval
@pytest.mark.slow
def test_lmms_eval_command_line_scores_equal_lrsvqa_eval(tmp_path):
    model_dir = save_tiny_llava(*build_tiny_llava(WORDS), tmp_path / "model")
    (tmp_path / "img").mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        pixels = np.random.default_rng(seed).integers(0, 256, (500, 700, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / name)
    # The tiny model's answers are noise: make some ground truths equal to them, so the
    # scores compared are neither all wrong nor all right.
    first = _eval(
        tmp_path, _questions(tmp_path / "q0.jsonl", ["x"] * 5), tmp_path / "a0.jsonl", model_dir
    )
    answers = [json.loads(line)["answer"] for line in first.answers.read_text().splitlines()]
    truths = [answers[0], "x", answers[2], answers[3], "x"]
    questions = _questions(tmp_path / "q.jsonl", truths)
    report = _eval(tmp_path, questions, tmp_path / "a.jsonl", model_dir).report
    assert 0 < report.groups[ALL].accuracies("paper")[0] < 1

    tasks = write_tasks(questions, tmp_path, tmp_path / "tasks")
    assert tasks == ["lrs_vqa_star", "lrs_vqa_fair"]
    results = _run_lmms_eval(tmp_path, model_dir, "lrs_vqa")
    for task, subset in (("lrs_vqa_star", "STAR"), ("lrs_vqa_fair", "FAIR")):
        overall, average = report.groups[subset].accuracies("paper")
        assert results[task]["oa,none"] == pytest.approx(100 * overall)
        assert results[task]["aa,none"] == pytest.approx(100 * average)
    assert results["lrs_vqa"]["oa,none"] == pytest.approx(
        100 * report.groups[ALL].accuracies("paper")[0]
    )

    # Its --log_samples files score the same with `lrsvqa score` (the lmms-eval reader).
    for task, subset in (("lrs_vqa_star", "STAR"), ("lrs_vqa_fair", "FAIR")):
        group = _score_log(tmp_path, task, questions)[subset]
        assert group["overall_accuracy"] == pytest.approx(
            report.groups[subset].accuracies("paper")[0]
        )


def test_mme_task_folder_and_its_paper_rule_metrics_without_lmms_eval(tmp_path):
    from lrsvqa.bench.reports import score_answers
    from lrsvqa.integrations.lmms_eval import task

    questions = write_mme_rs(tmp_path, ["A", "B", "C", "D", "E"], images=False)
    assert task.write_tasks(questions, tmp_path, tmp_path / "t", bench="mme-rs") == [
        "mme_realworld_rs_remote_sensing"
    ]
    group = (tmp_path / "t" / "mme_realworld_rs.yaml").read_text()
    assert "  - mme_realworld_rs_remote_sensing\n" in group
    part = tmp_path / "t" / "mme_realworld_rs_remote_sensing.jsonl"
    docs = [json.loads(line) for line in part.read_text().splitlines()]
    items = load_benchmark("mme-rs", questions, prompt="paper")
    assert [task.doc_to_text(doc) for doc in docs] == [item.question for item in items]
    assert "The best answer is" not in docs[0]["question"]
    assert docs[0]["choices"] == list(items[0].choices) and docs[0]["ground_truth"] == "A"
    assert task.doc_to_visual(docs[2]) == [str((tmp_path / "remote_sensing/b.png").resolve())]
    # The paper rule reads "Best answer: C" as B (of "Best"), "white" as A, "" as A.
    predictions = ["(A)", "Best answer: C", "C", "white", ""]
    answers = [task.process_results(d, [p])["oa"] for d, p in zip(docs, predictions, strict=True)]
    expected = score_answers(answers, rule="paper").groups["Remote Sensing"]
    assert expected.accuracies("paper") == (0.6, pytest.approx(2 / 3))
    assert task.overall_accuracy(answers) == pytest.approx(60.0)
    assert task.average_accuracy(answers) == pytest.approx(100 * 2 / 3)
    official = tmp_path / "official"
    task.write_tasks(questions, tmp_path, official, "mme", bench="mme-rs", prompt="official")
    line = (official / "mme_remote_sensing.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["question"].endswith("\nThe best answer is:")


def test_the_task_writer_command_line_errors_in_one_line(tmp_path, capsys):
    from lrsvqa.integrations.lmms_eval import task

    questions = write_mme_rs(tmp_path, ["A", "B", "C", "D", "Z"], images=False)
    args = ["--bench", "mme-rs", "--questions", str(questions), "--data-root", str(tmp_path)]
    args += ["-o", str(tmp_path / "t")]
    with pytest.raises(SystemExit) as stopped:
        task.main(args)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {questions}: item 4: ") and error.count("\n") == 1
    write_mme_rs(tmp_path, ["A"] * 5, images=False)
    task.main(args)
    assert "wrote mme_realworld_rs (mme_realworld_rs_remote_sensing)" in capsys.readouterr().out


@needs_lmms_eval
@pytest.mark.slow
def test_lmms_eval_command_line_mme_realworld_rs_scores_equal_lrsvqa_eval(tmp_path):
    model_dir = save_tiny_llava(*build_tiny_llava(MME_WORDS), tmp_path / "model")
    # As for LRS-VQA: some ground truths are the letters the paper rule reads from the
    # tiny model's answers (the prompt does not show them), the others another letter.
    placeholder = write_mme_rs(tmp_path, ["A"] * 5)
    first = _eval(tmp_path, placeholder, tmp_path / "a0.jsonl", model_dir, "mme-rs", MME_OPTIONS)
    answers = [json.loads(line)["answer"] for line in first.answers.read_text().splitlines()]
    items = load_benchmark("mme-rs", placeholder)
    read = [paper_choice(answer, item.choices) for answer, item in zip(answers, items, strict=True)]
    assert all(read[i] for i in (0, 2, 3)), answers
    other = dict(zip("ABCDE", "BCDEA", strict=True))
    truths = [read[0], other.get(read[1], "A"), read[2], read[3], other.get(read[4], "A")]
    questions = write_mme_rs(tmp_path, truths)  # rewrites the placeholder file
    done = _eval(tmp_path, questions, tmp_path / "a.jsonl", model_dir, "mme-rs", MME_OPTIONS)
    group = done.report.groups["Remote Sensing"]
    assert 0 < group.accuracies("paper")[0] < 1

    tasks = write_tasks(questions, tmp_path, tmp_path / "tasks", bench="mme-rs")
    assert tasks == ["mme_realworld_rs_remote_sensing"]
    results = _run_lmms_eval(tmp_path, model_dir, "mme_realworld_rs", MME_OPTIONS)
    overall, average = group.accuracies("paper")
    print(f"lrsvqa eval: OA {100 * overall:.2f} AA {100 * average:.2f}; lmms-eval: {results}")
    assert results[tasks[0]]["oa,none"] == pytest.approx(100 * overall)
    assert results[tasks[0]]["aa,none"] == pytest.approx(100 * average)
    assert results["mme_realworld_rs"]["oa,none"] == pytest.approx(100 * overall)
    logged = _score_log(tmp_path, tasks[0], questions)["Remote Sensing"]
    assert logged["overall_accuracy"] == pytest.approx(overall)
    assert logged["average_accuracy"] == pytest.approx(average)
