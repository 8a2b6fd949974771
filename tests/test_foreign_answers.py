"""`lrsvqa score` on other tools' answers: lmms-eval sample logs, VLMEvalKit prediction files."""

import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.answers import AnswerFileError
from lrsvqa.bench.foreign import read_scorable
from lrsvqa.bench.scoring import is_correct

QUESTIONS = [
    {"question_id": "STAR_1", "image": "a.tif", "category": "object color", "text": "Color?"}
    | {"ground_truth": "grey"},
    {"question_id": "STAR_2", "image": "a.tif", "category": "count", "text": "How many?"}
    | {"ground_truth": "3"},
    {"question_id": "FAIR_1", "image": "b.tif", "category": "count", "text": "How many?"}
    | {"ground_truth": "2"},
]
ANSWERS = ["Gray", "3", "There are two."]


def _questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS), encoding="utf-8")
    return path


def _expected_paper():
    """Whether each of ANSWERS is right under the paper's rule, by the rule itself."""
    pairs = zip(ANSWERS, QUESTIONS, strict=True)
    return [is_correct(answer, q["ground_truth"], "paper") for answer, q in pairs]


def _score_json(tmp_path, *args):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["score", *map(str, args), "--rule", "paper", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _lmms_lines(with_doc):
    lines = []
    for doc_id, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS, strict=True)):
        sample = {"doc_id": doc_id, "target": question["ground_truth"], "exact_match": 0.0}
        if with_doc:  # lmms-eval before 0.5: the doc stays, resps nested per request
            sample |= {"doc": question, "resps": [[answer]], "filtered_resps": [answer]}
        else:  # 0.7: doc dropped, single response flattened, resps dropped when equal
            sample |= {"filtered_resps": answer, "doc_hash": "x", "input": "prompt"}
        lines.append(json.dumps(sample) + "\n")
    return lines


@pytest.mark.parametrize("with_doc", [True, False], ids=["with-doc", "without-doc"])
def test_lmms_eval_sample_logs_score_with_the_paper_rule(tmp_path, with_doc):
    log = tmp_path / "20260101_samples_lrs_vqa.jsonl"
    log.write_text("".join(_lmms_lines(with_doc)), encoding="utf-8")
    report = _score_json(tmp_path, log, "--questions", _questions(tmp_path))
    correct = _expected_paper()
    assert report["rule"] == "paper" and report["missing"] == 0 and not report["extra_ids"]
    star = report["groups"]["STAR"]["categories"]
    assert star["object color"]["correct"] == correct[0]
    assert star["count"]["correct"] == correct[1]
    assert report["groups"]["FAIR"]["categories"]["count"]["correct"] == correct[2]


def test_lmms_eval_log_scores_against_its_own_targets(tmp_path):
    log = tmp_path / "x_samples_lrs_vqa.jsonl"
    log.write_text("".join(_lmms_lines(with_doc=True)), encoding="utf-8")
    records = read_scorable(log)
    assert [r["question_id"] for r in records] == ["STAR_1", "STAR_2", "FAIR_1"]
    assert [r["prediction"] for r in records] == ANSWERS
    report = _score_json(tmp_path, log)
    assert report["groups"]["STAR"]["categories"]["count"]["correct"] == _expected_paper()[1]
    bare = tmp_path / "y_samples_lrs_vqa.jsonl"
    bare.write_text("".join(_lmms_lines(with_doc=False)), encoding="utf-8")
    grouped = _score_json(tmp_path, bare)["groups"]  # no doc: one group named by the task
    assert list(grouped) == ["lrs_vqa"] and grouped["lrs_vqa"]["items"] == 3


def _vlmevalkit_rows():
    header = ["index", "question", "answer", "prediction", "category"]
    rows = [
        [q["question_id"], q["text"], q["ground_truth"], a, q["category"]]
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    return header, rows


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_vlmevalkit_text_tables_score_with_the_paper_rule(tmp_path, suffix):
    header, rows = _vlmevalkit_rows()
    path = tmp_path / f"Model_LRS-VQA{suffix}"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerows([header, *rows])
    correct = _expected_paper()
    own = _score_json(tmp_path, path)["groups"]
    assert own["STAR"]["categories"]["object color"]["correct"] == correct[0]
    joined = _score_json(tmp_path, path, "--questions", _questions(tmp_path))
    assert joined["groups"]["FAIR"]["categories"]["count"]["correct"] == correct[2]


def test_vlmevalkit_multiple_choice_columns_and_numeric_index(tmp_path):
    path = tmp_path / "Model_MME-RealWorld.tsv"
    path.write_text(
        "index\tquestion\tA\tB\tC\tanswer\tprediction\tcategory\n"
        "0\tColour?\tred\tblue\twhite\tB\tThe answer is (B)\tcolor\n"
        "1\tColour?\tred\tblue\twhite\tC\tA\tcolor\n",
        encoding="utf-8",
    )
    records = read_scorable(path)
    assert records[0]["choices"] == {"A": "red", "B": "blue", "C": "white"}
    groups = _score_json(tmp_path, path)["groups"]
    assert groups["MME-RealWorld-RS"]["categories"]["color"]["correct"] == 1


def test_vlmevalkit_xlsx(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    header, rows = _vlmevalkit_rows()
    book = openpyxl.Workbook()
    for row in [header, *rows]:
        book.active.append(row)
    path = tmp_path / "Model_LRS-VQA.xlsx"
    book.save(path)
    report = _score_json(tmp_path, path)
    assert report["groups"]["STAR"]["categories"]["count"]["correct"] == _expected_paper()[1]


def test_xlsx_without_openpyxl_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    path = tmp_path / "Model_LRS-VQA.xlsx"
    path.write_bytes(b"PK")
    result = CliRunner().invoke(app, ["score", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: reading .xlsx needs openpyxl: pip install 'lrsvqa[xlsx]' "
        "(or save it as .tsv)"
    ]


@pytest.mark.parametrize(
    ("name", "text", "where", "problem"),
    [
        ("a_samples_t.jsonl", '{"doc_id": 0, "filtered_resps": "x"}\n{"doc_id": 1\n', 2, "JSON"),
        ("b_samples_t.jsonl", '{"doc_id": 0, "resps": [["x"]]}\n{"resps": "y"}\n', 2, "doc_id"),
        (
            "c_samples_t.jsonl",
            '{"doc_id": 0, "resps": [[[-1.5, false]]], "filtered_resps": [[-1.5, false]]}\n',
            1,
            "no text answer",
        ),
        ("d.tsv", "index\tquestion\tanswer\n1\tq\ta\n", 1, "no column prediction"),
        ("e.csv", "index,answer,prediction\n1,a,b\n,a,b\n", 3, "no index"),
    ],
)
def test_bad_foreign_files_give_file_and_line(tmp_path, name, text, where, problem):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AnswerFileError) as caught:
        read_scorable(path)
    assert caught.value.path == f"{path}:{where}"
    assert problem in caught.value.problem
    result = CliRunner().invoke(app, ["score", str(path)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"error: {path}:{where}: ") and "\n" not in line


def test_lmms_doc_id_past_the_question_file_is_an_error(tmp_path):
    log = tmp_path / "z_samples_t.jsonl"
    log.write_text('{"doc_id": 7, "filtered_resps": "3", "target": "3"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["score", str(log), "--questions", str(_questions(tmp_path))])
    assert result.exit_code == 2
    assert "doc_id 7 is outside the 3 questions" in result.output


def test_project_answer_files_still_read_as_before(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "STAR_2", "text": "3"}) + "\n", encoding="utf-8")
    report = _score_json(tmp_path, answers, "--questions", _questions(tmp_path))
    assert report["groups"]["STAR"]["categories"]["count"]["correct"] == 1
