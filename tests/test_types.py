"""The shared base: one Box type, one LRS-VQA record rule for every reader and writer."""

import json
import re
from pathlib import Path

import pytest

from lrsvqa.bench.datasets import load_lrs_vqa
from lrsvqa.types import check_lrsvqa_record, read_lrsvqa_jsonl, write_lrsvqa_jsonl

SRC = Path(__file__).resolve().parents[1] / "src" / "lrsvqa"
RECORD = {
    "question_id": "SYN_1",
    "image": "a.tif",
    "category": "count",
    "text": "How many ships?",
    "ground_truth": "2",
}


def test_box_is_defined_once():
    defined = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if re.search(r"^Box\s*=", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert defined == ["types.py"]


def test_nothing_reaches_through_the_adapter_into_the_model():
    reaching = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if "adapter.model.model" in path.read_text(encoding="utf-8")
    ]
    assert reaching == []


def test_one_rule_for_the_benchmark_loader_and_the_generators(tmp_path):
    # image_size is optional for both: the eval loader and the generators' reader agree.
    path = tmp_path / "q.jsonl"
    assert write_lrsvqa_jsonl([RECORD, RECORD | {"question_id": "SYN_2"}], path) == 2
    assert read_lrsvqa_jsonl(path)[0] == RECORD
    assert [item.question_id for item in load_lrs_vqa(path)] == ["SYN_1", "SYN_2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORD | {"image_size": [800]}) + "\n", encoding="utf-8")
    for reader in (read_lrsvqa_jsonl, load_lrs_vqa):
        with pytest.raises(ValueError, match=r"bad.jsonl:1: image_size must be \[width, height\]"):
            reader(bad)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({k: v for k, v in RECORD.items() if k != "text"}, "missing ['text']"),
        (RECORD | {"image_size": [0, 5]}, "image_size must be"),
        (RECORD | {"hbox": [1, 2, 3]}, "hbox must be"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_records_breaking_the_rule_are_refused(record, message):
    with pytest.raises(ValueError) as error:
        check_lrsvqa_record(record)
    assert message in str(error.value)
    check_lrsvqa_record(RECORD | {"image_size": [800, 600], "hbox": [], "rbox": [[0, 0]]})


def test_the_writer_refuses_what_the_reader_would_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="record 2: duplicate question_id 'SYN_1'"):
        write_lrsvqa_jsonl([RECORD, RECORD], path)
    assert not path.exists()
    path.write_text(json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="out.jsonl:3: duplicate question_id"):
        read_lrsvqa_jsonl(path)
