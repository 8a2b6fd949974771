import json
from collections import Counter
from pathlib import Path

import pytest

from lrsvqa.bench.datasets import (
    MME_PROMPTS,
    UnsafeImagePathError,
    load_benchmark,
    load_lrs_vqa,
    load_mme_realworld,
    resolve_image,
    subset_of,
)

SHARED_QUESTIONS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LRS_VQA_FILE = (SHARED_QUESTIONS / "LRS_VQA_merged.jsonl").resolve()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.skipif(not LRS_VQA_FILE.is_file(), reason="shared LRS-VQA question file absent")
def test_official_lrs_vqa_file_loads_with_the_papers_subset_sizes():
    items = load_lrs_vqa(LRS_VQA_FILE)
    assert Counter(item.subset for item in items) == {
        "FAIR": 2272,
        "GLH-Bridge": 1062,
        "STAR": 3999,
    }
    assert {item.category for item in items} == {
        "count",
        "object background",
        "object category",
        "object color",
        "object shape",
        "object status",
        "reasoning",
        "rural or urban",
    }
    first = items[0]
    assert first.question_id == "FAIR_1"
    assert first.image == "LRS_VQA/image/15565.tif"
    assert first.question.endswith("Answer the question using a single word or phrase.")
    assert first.hbox == (282.0, 3418.0, 763.0, 4050.0)
    assert not first.is_multiple_choice
    counts = [item for item in items if item.category == "count"]
    assert counts and all(item.hbox is None for item in counts)
    fair = load_benchmark("lrs-vqa", LRS_VQA_FILE, subsets={"FAIR"})
    assert len(fair) == 2272


def test_lrs_vqa_loader_reads_synthetic_prefixes_and_rejects_duplicates(tmp_path):
    rows = [
        {
            "question_id": "SYN-v1_7",
            "image": "scenes/a.tif",
            "category": "object color",
            "text": "What color is the ship?",
            "ground_truth": "red",
            "hbox": [1, 2, 3, 4],
        },
        {
            "question_id": "SYN-v1_8",
            "image": "scenes/a.tif",
            "category": "count",
            "text": "How many ships?",
            "ground_truth": "2",
        },
    ]
    items = load_lrs_vqa(write_jsonl(tmp_path / "q.jsonl", rows))
    assert [item.subset for item in items] == ["SYN-v1", "SYN-v1"]
    assert items[0].hbox == (1.0, 2.0, 3.0, 4.0)
    assert items[1].hbox is None
    with pytest.raises(ValueError, match="duplicate question_id"):
        load_lrs_vqa(write_jsonl(tmp_path / "dup.jsonl", rows + rows[:1]))
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_lrs_vqa(write_jsonl(tmp_path / "bad.jsonl", [{"question_id": "X_1"}]))


def test_subset_is_the_prefix_before_the_last_underscore():
    assert subset_of("GLH-Bridge_12") == "GLH-Bridge"
    assert subset_of("STAR_3") == "STAR"
    assert subset_of("plain") == "plain"


@pytest.mark.parametrize(
    "bad",
    ["/etc/passwd", "../secret.tif", "LRS_VQA/../../x.tif", "C:\\img.tif", "a\\..\\..\\b", ""],
)
def test_image_paths_escaping_the_root_are_refused(tmp_path, bad):
    with pytest.raises(UnsafeImagePathError):
        resolve_image(tmp_path, bad)


def test_image_paths_inside_the_root_resolve(tmp_path):
    assert (
        resolve_image(tmp_path, "LRS_VQA/image/1.tif") == tmp_path / "LRS_VQA" / "image" / "1.tif"
    )


MME_ITEMS = [
    {
        "Question_id": "perception/remote_sensing/color/0001",
        "Image": "remote_sensing/03553_Toronto.png",
        "Text": "What color is the roof of the building at the top left?",
        "Answer choices": ["(A) Red", "(B) Blue", "(C) White", "(D) Green", "(E) A gray one"],
        "Ground truth": "C",
        "Category": "color",
        "Subtask": "Remote Sensing",
        "Task": "Perception",
    },
    {
        # Key variants another export might use.
        "question_id": "rs-count-2",
        "image_path": "remote_sensing/x.png",
        "question": "How many planes are there?",
        "options": {"A": "2", "B": "4", "C": "6", "D": "8", "E": "The image does not feature it"},
        "answer": "(B)",
        "category": "Count",
    },
    {
        "Question_id": "rs/position/3",
        "Image": "remote_sensing/y.png",
        "Text": "Where is the ship?",
        "Answer Choices": ["A. top", "B. bottom", "A red car"],
        "Ground Truth": "A red car",
        "Category": "position",
        "Subtask": "Remote Sensing",
    },
]


def test_mme_realworld_loader_accepts_the_official_format_and_key_variants(tmp_path):
    path = tmp_path / "MME_RealWorld_RS.json"
    path.write_text(json.dumps(MME_ITEMS), encoding="utf-8")
    items = load_mme_realworld(path)
    assert [item.question_id for item in items] == [
        "perception/remote_sensing/color/0001",
        "rs-count-2",
        "rs/position/3",
    ]
    color, count, position = items
    assert color.choices == ("Red", "Blue", "White", "Green", "A gray one")
    assert color.ground_truth == "C"
    assert (color.category, color.subset) == ("color", "Remote Sensing")
    assert color.image == "remote_sensing/03553_Toronto.png"
    assert color.is_multiple_choice
    assert count.choices[1] == "4" and count.ground_truth == "B"
    assert (count.category, count.subset) == ("count", "MME-RealWorld-RS")
    # An option that merely starts with the word "A" keeps it; ground truth given as text.
    assert position.choices == ("top", "bottom", "A red car")
    assert position.ground_truth == "C"


def test_mme_prompt_is_configurable_and_the_paper_preset_drops_the_last_line(tmp_path):
    path = tmp_path / "mme.json"
    path.write_text(json.dumps(MME_ITEMS[:1]), encoding="utf-8")
    official = load_mme_realworld(path, "official")[0].question
    paper = load_mme_realworld(path, "paper")[0].question
    assert official.startswith("What color is the roof of the building at the top left? ")
    assert "(A) Red\n(B) Blue\n(C) White\n(D) Green\n(E) A gray one\n" in official
    assert "(A, B, C, D, or E)" in official
    assert official.endswith("The best answer is:")
    assert "The best answer is" not in paper
    # The authors' script also puts a blank line before the options.
    assert official == paper.replace("below: \n\n", "below: \n") + "\nThe best answer is:"
    custom = load_mme_realworld(path, "Q: {question}\n{options}\nLetter:")[0].question
    assert custom.startswith("Q: What color") and custom.endswith("(E) A gray one\nLetter:")
    with pytest.raises(ValueError, match="template"):
        load_mme_realworld(path, "no placeholders")
    assert set(MME_PROMPTS) == {"official", "paper"}


def test_mme_loader_reports_the_bad_item(tmp_path):
    path = tmp_path / "mme.json"
    broken = dict(MME_ITEMS[0], **{"Ground truth": "Z"})
    path.write_text(json.dumps([MME_ITEMS[0], broken]), encoding="utf-8")
    with pytest.raises(ValueError, match="item 1"):
        load_mme_realworld(path)
