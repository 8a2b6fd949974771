"""MME-RealWorld-RS: the official annotation file, the paper's prompt, the authors' scoring."""

import json

import pytest
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.datasets import QuestionFileError, load_benchmark
from lrsvqa.bench.reports import report_paths
from lrsvqa.bench.scoring import extract_choice, paper_choice, score_record
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from tests.mme_rs import LAYOUT, MME_WORDS, NONE, write_mme_rs
from tests.test_trust import one_line_error

TRUTHS = ["B", "E", "A", "D", "C"]
INSTRUCTION = (
    "Select the best answer to the above multiple-choice question based on the image. "
    "Respond with only the letter (A, B, C, D, or E) of the correct option."
)
OPTIONS = f"(A) red\n(B) blue\n(C) green\n(D) white\n(E) {NONE}"


def test_the_official_file_loads_as_the_remote_sensing_subtask(tmp_path):
    path = write_mme_rs(tmp_path, TRUTHS, images=False)
    items = load_benchmark("mme-rs", path)
    assert [item.category for item in items] == [row[0] for row in LAYOUT]
    assert {item.subset for item in items} == {"Remote Sensing"}
    assert [item.ground_truth for item in items] == TRUTHS
    assert items[0].choices == ("red", "blue", "green", "white", NONE)
    assert items[0].image == "remote_sensing/a.png"
    assert items[1].question_id == "perception/remote_sensing/count/0001"
    assert load_benchmark("mme-rs", path, subsets={"Remote Sensing"}) == items


def test_the_prompts_are_the_scripts_own_and_the_paper_drops_the_best_answer_line(tmp_path):
    path = write_mme_rs(tmp_path, TRUTHS, images=False)
    official = load_benchmark("mme-rs", path, prompt="official")[0].question
    paper = load_benchmark("mme-rs", path, prompt="paper")[0].question
    # MME-RealWorld's evaluation/model_vqa_mme_real_world.py
    assert official == (
        f"What color is the ship? The choices are listed below: \n{OPTIONS}\n{INSTRUCTION}"
        "\nThe best answer is:"
    )
    # LRS-VQA-Code/llava/eval/model_vqa_mme_realworld.py
    assert (
        paper
        == f"What color is the ship? The choices are listed below: \n\n{OPTIONS}\n{INSTRUCTION}"
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"Answer choices": "(A) red (B) blue"}, "answer choices are one string"),
        ({"Answer choices": ["(A) red"]}, "fewer than two answer options"),
        ({"Ground truth": "F"}, "ground truth 'F' is neither an option letter nor an option"),
        ({"Text": None}, "question is null"),
        ({"Image": None}, "image is null"),
        ({"Question_id": "perception/remote_sensing/color/0000"}, "duplicate id"),
    ],
)
def test_a_bad_item_is_one_error_naming_the_file_and_the_item(tmp_path, change, problem):
    path = write_mme_rs(tmp_path, TRUTHS, images=False)
    rows = json.loads(path.read_text())
    rows[1] = {key: value for key, value in rows[1].items() if key not in change} | change
    path.write_text(json.dumps(rows))
    with pytest.raises(QuestionFileError, match=problem) as caught:
        load_benchmark("mme-rs", path)
    assert str(caught.value).startswith(f"{path}: item 1: ")
    result = CliRunner().invoke(
        app,
        ["eval", "--bench", "mme-rs", "--data-root", str(tmp_path), "--strategy", "c2f"]
        + ["--model", str(tmp_path / "never-loaded"), "-o", str(tmp_path / "a.jsonl")],
    )
    assert problem in one_line_error(result, str(path), "item 1")


CHOICES = ("red", "blue", "green", "white", NONE)


@pytest.mark.parametrize(
    ("text", "paper", "normalised"),
    [
        ("B", "B", "B"),
        ("(C)", "C", "C"),
        (" D. white ", "D", "D"),
        ("The best answer is (E).", "E", "E"),
        ("The answer is: A", "A", "A"),
        ("white", "D", "D"),  # option text
        ("ship", "E", ""),  # in option E's text, "(e) the image does not feature the ship."
        ("e", "A", "E"),  # no capital: the first option containing "e", "(a) red"
        ("Blue", "B", "B"),
        ("Dark red", "D", "A"),  # the first capital A-E anywhere
        ("Best answer: C", "B", "C"),  # "Best answer:" alone is not deleted (see prefixes)
        ("It is red, not blue", "", ""),  # two options: no letter
        ("", "A", ""),  # the empty answer is in every option
        ("x " * 11, "", ""),  # over ten words, no capital
        ("F", "E", ""),  # not a letter A-E, but "f" is in "(e) ... feature ..."
        ("?!", "", ""),
    ],
)
def test_option_letters_as_mme_realworlds_scorer_reads_them(text, paper, normalised):
    assert paper_choice(text, CHOICES) == paper
    assert extract_choice(text, CHOICES) == normalised


def test_multiple_choice_answers_score_by_the_rule_of_each_letter_reader():
    record = {"question_id": "rs/1", "Ground truth": "C", "Answer choices": list(CHOICES)}
    paper_wrong = score_record(record | {"Output": "Best answer: C"}, rule="paper")
    assert not paper_wrong.correct and paper_wrong.by_rule == {"paper": False, "normalised": True}
    empty = score_record(record | {"Ground truth": "A", "Output": ""}, rule="paper")
    assert empty.by_rule == {"paper": True, "normalised": False}


@pytest.mark.slow
def test_lrsvqa_eval_on_the_fixture_with_a_tiny_model(tmp_path):
    model = save_tiny_llava(*build_tiny_llava(MME_WORDS), tmp_path / "model")
    path = write_mme_rs(tmp_path, TRUTHS)
    out = tmp_path / "answers.jsonl"
    command = ["eval", "--bench", "mme-rs", "--data-root", str(tmp_path), "--model", str(model)]
    command += ["--strategy", "c2f", "--prompt", "paper", "--rule", "paper", "-o", str(out)]
    command += ["--device", "cpu", "--dtype", "float32", "--strategy-option", "max_new_tokens=3"]
    result = CliRunner().invoke(app, [*command, "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    items = load_benchmark("mme-rs", path, prompt="paper")
    assert [r["question"] for r in records] == [item.question for item in items]
    assert all(record["error"] is None for record in records)
    report = json.loads(report_paths(out)[0].read_text())
    group = report["groups"]["Remote Sensing"]
    assert set(group["categories"]) == {"color", "count", "position"}
    for rule, reader in (("paper", paper_choice), ("normalised", extract_choice)):
        right = [
            reader(record["answer"], item.choices) == item.ground_truth
            for record, item in zip(records, items, strict=True)
        ]
        assert group["by_rule"][rule]["overall_accuracy"] == pytest.approx(sum(right) / 5)
    assert group["overall_accuracy"] == group["by_rule"]["paper"]["overall_accuracy"]
