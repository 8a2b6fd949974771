import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.reports import build_report, report_to_markdown, score_answers
from lrsvqa.bench.scoring import (
    extract_choice,
    hbox_covered,
    is_correct,
    normalize_answer,
    score_record,
)
from lrsvqa.bench.wordnet import (
    WordNetUnavailableError,
    find_wordnet_dir,
    load_wordnet,
    max_path_similarity,
    wordnet,
)

REAL_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "LRS_VQA_merged.jsonl"


def test_wordnet_is_installed_offline_and_is_wordnet_3_0():
    reader = load_wordnet(find_wordnet_dir())
    assert reader.get_version() == "3.0"
    dog, cat = reader.synset("dog.n.01"), reader.synset("cat.n.01")
    assert dog.path_similarity(cat) == pytest.approx(0.2)
    assert dog.lexname() == "noun.animal"


def test_wordnet_similarity_is_the_max_over_synset_pairs():
    assert max_path_similarity("car", "automobile") == 1.0
    assert max_path_similarity("parking_lot", "parking_area") == 1.0
    assert max_path_similarity("parking lot", "parking area") == 0.0  # as given: no synsets
    assert max_path_similarity("ship", "boat") == pytest.approx(1 / 3)
    assert max_path_similarity("yes", "no") < 0.8
    assert max_path_similarity("qwzx", "car") == 0.0


def test_missing_wordnet_fails_with_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("LRSVQA_WORDNET_DIR", str(tmp_path))
    with pytest.raises(WordNetUnavailableError, match="apt-get install wordnet-base"):
        find_wordnet_dir()


def _official_script(ground_truth: str, text: str) -> bool:
    """The rule of VisionXLab/LRS-VQA ``Script/evaluation_LRSVQA.py``, restated for the test.

    gt and answer are only lower-cased; equal strings are right; otherwise right when
    a synset pair of the two raw strings has a path similarity (not None) above 0.8.
    """
    reader = wordnet()
    truth, answer = ground_truth.lower(), text.lower()
    if truth == answer:
        return True
    for first in reader.synsets(truth):
        for second in reader.synsets(answer):
            similarity = first.path_similarity(second)
            if similarity is not None and similarity > 0.8:
                return True
    return False


# Ground truths of the LRS-VQA kinds, each with answers a model might write.
_PAIRS_BY_KIND = {
    "colour": (
        ["white", "grey", "gray", "dark blue", "red", "green", "blue", "black", "light gray"],
        [
            "White",
            "white ",
            "white.",
            "Gray",
            "grey",
            "navy",
            "dark-blue",
            "dark_blue",
            "Dark Blue",
            "blue",
            "red",
            "crimson",
            "green",
            "greenish",
            "black",
            "silver",
        ],
    ),
    "count": (
        ["1", "2", "3", "4", "10", "12", "25"],
        [
            "1",
            "one",
            "One",
            "2",
            "two",
            "3",
            "three",
            " 3",
            "3.",
            "4",
            "four",
            "10",
            "ten",
            "twelve",
            "twenty-five",
            "25",
            "There are 3.",
            "3 ships",
        ],
    ),
    "category": (
        ["ship", "car", "plane", "harbor", "parking lot", "storage tank", "bridge", "tennis court"],
        [
            "ship",
            "Ship",
            "ships",
            "boat",
            "vessel",
            "car",
            "automobile",
            "cars",
            "airplane",
            "aeroplane",
            "plane",
            "harbour",
            "harbor",
            "car park",
            "parking lot",
            "parking_lot",
            "tank",
            "storage tank",
            "bridge",
            "Bridge.",
            "tennis court",
            "court",
        ],
    ),
    "yes/no": (
        ["yes", "no"],
        [
            "yes",
            "Yes",
            "YES",
            "yes.",
            "Yes, it is.",
            " yes",
            "yes\n",
            "no",
            "No",
            "no.",
            "nope",
            "yeah",
            "true",
            "false",
            "",
        ],
    ),
    "shape/status/place": (
        ["rectangular", "circular", "round", "moving", "stationary", "urban", "rural"],
        [
            "rectangle",
            "rectangular",
            "circle",
            "circular",
            "round",
            "Round",
            "moving",
            "stationary",
            "static",
            "parked",
            "urban",
            "Urban.",
            "rural",
            "countryside",
            "city",
        ],
    ),
}
_PAIRS = [
    (answer, truth)
    for truths, answers in _PAIRS_BY_KIND.values()
    for truth in truths
    for answer in answers
]


def test_paper_rule_agrees_with_the_official_script_on_every_pair():
    assert len(_PAIRS) > 400
    verdicts = [is_correct(answer, truth, rule="paper") for answer, truth in _PAIRS]
    assert verdicts == [_official_script(truth, answer) for answer, truth in _PAIRS]
    # Not a trivial agreement: both outcomes occur, and both rules disagree somewhere.
    assert 0 < sum(verdicts) < len(verdicts)
    normalised = [is_correct(answer, truth, rule="normalised") for answer, truth in _PAIRS]
    assert normalised != verdicts


@pytest.mark.skipif(not REAL_QUESTIONS.is_file(), reason="LRS-VQA questions not in ../shared")
def test_paper_rule_agrees_with_the_official_script_on_real_ground_truths():
    truths = sorted({json.loads(line)["ground_truth"] for line in REAL_QUESTIONS.open()})
    answers = ["yes", "No", "2", "two", "white", "Gray", "dark blue", "ship", "car park", "3."]
    pairs = [(answer, truth) for truth in truths[:60] for answer in answers]
    assert [is_correct(a, t, rule="paper") for a, t in pairs] == [
        _official_script(t, a) for a, t in pairs
    ]


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("Gray", "grey"),  # WordNet synonyms
        ("car", "automobile"),
        ("trees", "tree"),  # WordNet lemmatises plurals
        ("circular", "round"),
        ("urban", "urban"),
        ("Parking lot", "parking lot"),  # equal once lower-cased
        ("three", "3"),  # WordNet's synset for 3 lists the word too
    ],
)
def test_paper_rule_accepts_case_and_wordnet_synonyms(answer, truth):
    assert is_correct(answer, truth, rule="paper")


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("ship", "boat"),  # related, similarity 1/3
        ("white", "black"),
        ("rural", "urban"),
        ("rectangle", "rectangular"),
        ("no", "yes"),
        ("3", "4"),
        ("", "yes"),
    ],
)
def test_both_rules_reject_different_answers(answer, truth):
    assert not is_correct(answer, truth, rule="paper")
    assert not is_correct(answer, truth, rule="normalised")


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("Yes, it is.", "yes"),
        ("No. The plane is taxiing.", "no"),
        ("There are three ships.", "3"),
        ("twenty-five planes", "25"),
        ("1,200", "1200"),
        ("The runway.", "runway"),
        ("Answer: an airport", "airport"),
        ("light-blue", "light blue"),
        ("Gray.", "grey"),
        (" yes", "yes"),  # the paper's rule does not strip
        ("yes ", "yes"),
        ("navy", "dark blue"),  # "dark_blue" has synsets, "dark blue" has none
        ("car park", "parking lot"),
        ("parking_lot", "parking lot"),
    ],
)
def test_normalised_rule_accepts_what_the_paper_rule_does_not(answer, truth):
    assert is_correct(answer, truth)
    assert is_correct(answer, truth, rule="normalised")
    assert not is_correct(answer, truth, rule="paper")


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("3 or 4", "3"),  # two numbers: no guess is picked
        ("maybe yes", "yes"),  # yes/no must come first
        ("The answer is not 2, it is 5", "2"),
    ],
)
def test_normalised_rule_does_not_pick_from_hedged_answers(answer, truth):
    assert not is_correct(answer, truth)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown scoring rule"):
        is_correct("yes", "yes", rule="strict")


def test_normalisation_rules():
    assert normalize_answer("  The  Answer is: A RED-ROOFED house!  ") == "red roofed house"
    assert normalize_answer("forty two planes") == "42 planes"
    assert normalize_answer("twenty") == "20"
    assert normalize_answer("one hundred") == "1 hundred"


CHOICES = ("red", "blue", "green", "white", "a gray one")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(c)", "C"),
        ("D.", "D"),
        ("B. blue", "B"),
        ("(E) a gray one", "E"),
        ("The answer is D.", "D"),
        ("The best answer is: (b)", "B"),
        ("I think it is (E) because the roof is grey", "E"),
        ("blue", "B"),
        ("The roof is white.", "D"),
        ("A", "A"),
        ("E", "E"),
        ("", ""),
        ("I cannot tell", ""),
        ("red or blue", ""),  # two options named: no pick
        ("F", ""),  # not an offered letter
    ],
)
def test_option_letter_extraction(text, letter):
    assert extract_choice(text, CHOICES) == letter


def test_a_leading_article_is_not_read_as_option_a():
    assert extract_choice("A car is parked; answer C", CHOICES) == "C"
    assert extract_choice("A car is parked", ("boat", "truck", "car")) == "C"


def test_localisation_counts_centre_inside_or_half_covered():
    hbox = (100.0, 100.0, 200.0, 200.0)
    assert hbox_covered(hbox, [(140.0, 140.0, 160.0, 160.0)])  # centre inside
    assert not hbox_covered(hbox, [(0.0, 0.0, 140.0, 300.0)])  # 40 % covered
    # Two boxes, neither holding the centre, jointly covering 60 %.
    assert hbox_covered(hbox, [(0.0, 0.0, 149.0, 300.0), (151.0, 0.0, 161.0, 300.0)])
    # Overlapping boxes are not double counted: 2 x 40 % on the same strip.
    assert not hbox_covered(hbox, [(0.0, 0.0, 140.0, 300.0), (90.0, 90.0, 140.0, 210.0)])
    assert not hbox_covered(hbox, [])


def record(qid, answer, truth, category, **extra):
    return {
        "question_id": qid,
        "answer": answer,
        "ground_truth": truth,
        "category": category,
    } | extra


def test_report_has_per_subset_and_category_accuracy_oa_aa_and_recall():
    records = [
        record(
            "FAIR_1",
            "yes",
            "yes",
            "reasoning",
            hbox=[0, 0, 10, 10],
            selected_boxes=[[0, 0, 20, 20]],
        ),
        record(
            "FAIR_2",
            "no",
            "yes",
            "reasoning",
            hbox=[0, 0, 10, 10],
            selected_boxes=[[50, 50, 60, 60]],
        ),
        record("FAIR_3", "2", "2", "count", selected_boxes=[[0, 0, 1, 1]]),
        record("STAR_1", "red", "red", "object color", hbox=[5, 5, 6, 6], selected_boxes=[]),
        record("STAR_2", "", "blue", "object color", error="FileNotFoundError: x.tif"),
    ]
    report = score_answers(records)
    fair, star, pooled = report.groups["FAIR"], report.groups["STAR"], report.groups["all"]
    assert fair.categories["reasoning"].accuracy == 0.5
    assert fair.overall_accuracy == pytest.approx(2 / 3)
    assert fair.average_accuracy == pytest.approx((0.5 + 1.0) / 2)
    assert (star.items, star.errors, star.overall_accuracy) == (2, 1, 0.5)
    assert pooled.overall_accuracy == pytest.approx(3 / 5)
    assert pooled.average_accuracy == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert report.errors == 1
    # FAIR_1 found, FAIR_2 missed, STAR_1 selected nothing (a miss), STAR_2 errored.
    assert (report.localisation.correct, report.localisation.total) == (1, 3)

    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["groups"]["all"]["categories"]["object color"] == {
        "correct": 1,
        "total": 2,
        "accuracy": 0.5,
    }
    assert as_json["localisation_recall"]["recall"] == pytest.approx(1 / 3)
    markdown = report_to_markdown(report)
    assert "| accuracy (%) | FAIR | STAR | all |" in markdown
    assert "| OA (paper rule) | 66.67 | 50.00 | 60.00 |" in markdown
    assert markdown.index("OA (paper rule)") < markdown.index("OA (normalised rule)")
    assert "| object color | - | 50.00 | 50.00 |" in markdown
    assert "localisation recall: 33.33% (1/3)" in markdown


def test_no_recall_without_selected_boxes_and_cost_means():
    records = [
        record("X_1", "yes", "yes", "c", seconds=1.0, tokens_to_llm=100, tflops=None),
        record("X_2", "no", "yes", "c", seconds=3.0, tokens_to_llm=300),
        record("X_3", "", "yes", "c", seconds=50.0, error="boom"),
    ]
    report = score_answers(records)
    assert report.localisation is None
    assert report.cost == {"seconds": 2.0, "tokens_to_llm": 200.0}
    assert list(report.groups) == ["X"]


def test_multiple_choice_records_from_other_tools():
    mme_style = {
        "Question_id": "rs/color/1",
        "question_id": "rs/color/1",
        "Output": "The best answer is (C)",
        "Ground truth": "C",
        "Answer choices": ["(A) red", "(B) blue", "(C) white"],
        "Category": "color",
        "Subtask": "Remote Sensing",
    }
    scored = score_record(mme_style)
    assert scored.correct and scored.subset == "Remote Sensing" and scored.category == "color"
    assert not score_record(mme_style | {"Output": "blue"}).correct


def test_questions_file_join_counts_unanswered_and_ignores_strangers(tmp_path):
    from lrsvqa.bench.datasets import load_lrs_vqa

    questions = tmp_path / "q.jsonl"
    rows = [
        {"question_id": f"FAIR_{i}", "image": "a.tif", "category": "count", "text": "How many?"}
        | {"ground_truth": str(i)}
        for i in range(1, 4)
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    answers = [{"question_id": "FAIR_1", "text": "one"}, {"question_id": "OTHER_9", "text": "x"}]
    report = score_answers(answers, load_lrs_vqa(questions))
    assert report.missing == 2
    assert report.groups["FAIR"].categories["count"].correct == 1
    assert "OTHER" not in report.groups


def test_score_command_joins_a_question_file_and_writes_reports(tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [
        {"question_id": "STAR_1", "image": "a.tif", "category": "object color", "text": "Color?"}
        | {"ground_truth": "grey"},
        {"question_id": "STAR_2", "image": "a.tif", "category": "count", "text": "How many?"}
        | {"ground_truth": "3"},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps({"question_id": "STAR_1", "text": "Gray."})
        + "\n"
        + json.dumps({"question_id": "STAR_2", "text": "There are three."})
        + "\n",
        encoding="utf-8",
    )
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    args = ["score", str(answers), "--questions", str(questions)]
    result = CliRunner().invoke(app, [*args, "--json", str(out_json), "--markdown", str(out_md)])
    assert result.exit_code == 0, result.output
    assert "OA" in result.output
    assert json.loads(out_json.read_text())["groups"]["STAR"]["overall_accuracy"] == 1.0
    markdown = out_md.read_text()
    assert "| OA (normalised rule) | 100.00 |" in markdown
    assert "| OA (paper rule) | 0.00 |" in markdown  # "Gray." and "There are three." fail
    both = json.loads(out_json.read_text())["groups"]["STAR"]["by_rule"]
    assert both["paper"]["overall_accuracy"] == 0 and both["normalised"]["average_accuracy"] == 1
    paper = CliRunner().invoke(app, [*args, "--rule", "paper", "--json", str(out_json)])
    assert paper.exit_code == 0, paper.output
    report = json.loads(out_json.read_text())
    assert report["rule"] == "paper" and report["groups"]["STAR"]["overall_accuracy"] == 0


def test_score_command_reads_mme_realworld_json_answer_lists(tmp_path):
    entry = {
        "Question_id": "perception/remote_sensing/color/0001",
        "Answer choices": ["(A) red", "(B) blue", "(C) white", "(D) green", "(E) none"],
        "Ground truth": "B",
        "Category": "color",
        "Subtask": "Remote Sensing",
    }
    answers = tmp_path / "results.json"
    outputs = ["B", "The best answer is (B).", "blue", "A"]
    rows = [entry | {"Question_id": f"rs/{i}", "Output": out} for i, out in enumerate(outputs)]
    answers.write_text(json.dumps(rows), encoding="utf-8")
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["score", str(answers), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    group = json.loads(out_json.read_text())["groups"]["Remote Sensing"]
    assert group["categories"]["color"] == {"correct": 3, "total": 4, "accuracy": 0.75}


def test_report_prints_as_a_terminal_table():
    console = Console(record=True, width=120)
    from lrsvqa.bench.reports import print_report

    print_report(build_report([score_record(record("A_1", "yes", "yes", "reasoning"))]), console)
    text = console.export_text()
    assert "reasoning" in text and "100.00" in text and "normalised" in text


def test_cli_help_stays_light():
    code = (
        "import sys; from lrsvqa.app.cli import app; "
        "heavy = [m for m in ('torch', 'nltk', 'lrsvqa.bench.runner') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "[]"
