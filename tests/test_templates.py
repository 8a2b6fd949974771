import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.datasets import load_lrs_vqa
from lrsvqa.bench.templates import (
    COUNT_SHORT_ANSWER_PROMPT,
    SHORT_ANSWER_PROMPT,
    UniquenessMargins,
    count_question,
    find_unique_references,
    generate_from_labels,
    generate_questions,
    image_region,
    plural,
    to_llava_conversations,
)
from lrsvqa.labels import (
    LabeledObject,
    find_image,
    iter_label_files,
    read_dota,
    read_fair1m,
    read_geojson,
    read_json_labels,
)
from lrsvqa.types import LRSVQA_REQUIRED_KEYS, read_lrsvqa_jsonl, write_lrsvqa_jsonl

OFFICIAL = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
OFFICIAL_FILE = OFFICIAL / "LRS_VQA_merged.jsonl"


def box(x: float, y: float, w: float = 20, h: float = 20, **kw) -> LabeledObject:
    category = kw.pop("category", "ship")
    return LabeledObject(category, (x, y, x + w, y + h), **kw)


def refs_by_text(objects, **kw) -> dict[str, int]:
    return {ref.text: ref.index for ref in find_unique_references(objects, **kw)}


# --- unique references ---------------------------------------------------------------


def test_top_most_needs_the_position_margin():
    # Centres 8 px apart, object height 20: below the default 0.5 x 20 margin.
    close = [box(0, 100), box(200, 108), box(400, 300)]
    assert "the top-most ship" not in refs_by_text(close)
    # 12 px apart clears it.
    clear = [box(0, 100), box(200, 112), box(400, 300)]
    assert refs_by_text(clear)["the top-most ship"] == 0
    # And the margin is configurable.
    loose = UniquenessMargins(position=0.3)
    assert refs_by_text(close, margins=loose)["the top-most ship"] == 0


def test_extreme_position_requires_edge_and_centre_to_agree():
    # A tall ship reaches higher with its top edge; a small one sits higher by centre.
    tall = box(0, 0, w=20, h=400)  # centre y 200
    small = box(100, 150, w=10, h=10)  # centre y 155, top edge 150 > 0
    far = box(300, 600)
    assert "the top-most ship" not in refs_by_text([tall, small, far])


def test_all_four_directions_are_found():
    objects = [box(500, 10), box(10, 500), box(990, 500), box(500, 990), box(500, 500)]
    refs = refs_by_text(objects)
    assert refs["the top-most ship"] == 0
    assert refs["the left-most ship"] == 1
    assert refs["the right-most ship"] == 2
    assert refs["the bottom-most ship"] == 3
    assert all(index != 4 for index in refs.values())


def test_largest_and_smallest_need_the_area_ratio():
    ships = [box(0, 0, 30, 30), box(100, 0, 25, 25), box(200, 0, 10, 10)]
    # 900 / 625 = 1.44 < 1.5: no largest; 625 / 100 = 6.25: smallest.
    refs = refs_by_text(ships)
    assert "the largest ship" not in refs
    assert refs["the smallest ship"] == 2
    assert refs_by_text(ships, margins=UniquenessMargins(area_ratio=1.4))["the largest ship"] == 0


def test_size_uses_the_rotated_footprint():
    # A thin diagonal ship has a big horizontal box but a small hull.
    diagonal = LabeledObject("ship", (0, 0, 100, 100), rbox=((0, 5), (5, 0), (100, 95), (95, 100)))
    straight = box(300, 300, 60, 40)
    third = box(600, 600, 10, 10)
    refs = refs_by_text([diagonal, straight, third])
    assert diagonal.area == 10_000 and diagonal.footprint_area < 1000
    assert refs["the largest ship"] == 1


def test_two_objects_use_comparatives_and_combine_with_position():
    refs = refs_by_text([box(0, 0, 50, 50), box(300, 300, 10, 10)])
    assert refs["the larger ship"] == 0
    assert refs["the smaller ship"] == 1
    assert refs["the top-most and the larger ship"] == 0


def test_only_x_needs_exactly_one():
    one = [box(0, 0, category="harbor"), box(100, 100), box(300, 300)]
    assert refs_by_text(one)["the only harbor"] == 0
    two = [*one, box(500, 500, category="harbor")]
    assert "the only harbor" not in refs_by_text(two)


def test_references_are_per_category():
    # The ship is top-most among ships although a plane is higher.
    objects = [box(0, 0, category="plane"), box(0, 200), box(0, 500)]
    refs = refs_by_text(objects)
    assert refs["the top-most ship"] == 1
    assert refs["the only plane"] == 0


def test_image_region_and_its_ambiguity_border():
    size = (900, 900)
    assert image_region(box(40, 40), size, 0.05) == "top left"
    assert image_region(box(440, 440), size, 0.05) == "center"
    assert image_region(box(840, 440), size, 0.05) == "middle right"
    # Centre at x = 300 sits on the first grid line.
    assert image_region(box(290, 40), size, 0.05) is None


def test_plural():
    assert [plural(w) for w in ("ship", "bus", "harbor", "ferry", "bay")] == [
        "ships",
        "buses",
        "harbors",
        "ferries",
        "bays",
    ]


# --- questions -----------------------------------------------------------------------


def scene() -> list[LabeledObject]:
    return [
        box(
            100,
            50,
            60,
            40,
            color="red",
            shape="oval",
            attributes={"setting": "urban", "background": "water"},
        ),
        box(600, 250, 100, 80, color="white", shape="rectangular"),
        box(50, 450, 60, 40, color="grey", attributes={"setting": "rural"}),
        box(300, 200, 200, 200, category="harbor", shape="rectangular"),
        box(700, 520, 5, 5, category="car", attributes={"difficult": True}),
    ]


def test_generated_records_have_the_lrs_vqa_format():
    records = generate_questions(scene(), "imgs/a.png", (600, 800), seed=0, max_per_image=None)
    assert records
    assert len({r["question_id"] for r in records}) == len(records)
    for r in records:
        assert all(key in r for key in (*LRSVQA_REQUIRED_KEYS, "image_size"))
        assert r["image"] == "imgs/a.png"
        assert r["image_size"] == [800, 600]  # [width, height] as in the official file
        if r["category"] == "count":
            assert r["text"].endswith(COUNT_SHORT_ANSWER_PROMPT) and "hbox" not in r
        else:
            assert r["text"].endswith(SHORT_ANSWER_PROMPT) and len(r["hbox"]) == 4
    categories = {r["category"] for r in records}
    assert categories == {
        "count",
        "object category",
        "object color",
        "object shape",
        "rural or urban",
        "object background",
        "object position",
    }


def test_answers_come_from_the_labels():
    objects = scene()
    records = generate_questions(objects, "a.png", (600, 800), seed=3, max_per_image=None)
    by_box = {tuple(round(v) for v in o.hbox): o for o in objects}
    for r in records:
        if r["category"] == "count":
            noun = r["text"].split(" in the image")[0]
            category = "harbor" if "harbor" in noun else "car" if "car" in noun else "ship"
            assert r["ground_truth"] == str(sum(o.category == category for o in objects))
            continue
        obj = by_box[tuple(r["hbox"])]
        assert not obj.attributes.get("difficult"), "difficult objects are never the subject"
        if r["category"] == "object color":
            assert r["ground_truth"] == obj.color
        elif r["category"] == "object shape":
            assert r["ground_truth"] == obj.shape
        elif r["category"] == "rural or urban":
            assert r["ground_truth"] in (obj.attributes["setting"], "yes", "no")
        elif r["category"] == "object background":
            assert r["ground_truth"] == obj.attributes["background"]


def test_labels_without_colour_give_no_colour_questions():
    objects = [LabeledObject(o.category, o.hbox) for o in scene()]
    records = generate_questions(objects, "a.png", (600, 800), seed=0, max_per_image=None)
    assert {r["category"] for r in records}.isdisjoint(
        {"object color", "object shape", "rural or urban", "object background"}
    )


def test_count_is_over_the_whole_image_and_capped():
    many = [box(10 * i, 10 * i, 5, 5, category="car") for i in range(25)] + [box(0, 500)]
    records = generate_questions(
        many, "a.png", (1000, 1000), seed=0, categories=["count"], max_per_image=None
    )
    assert [r["ground_truth"] for r in records] == ["1"]  # 25 cars exceed max_count=20
    records = generate_questions(
        many, "a.png", (1000, 1000), seed=0, categories=["count"], max_count=30
    )
    assert sorted(r["ground_truth"] for r in records) == ["1", "25"]


def test_max_per_image_spreads_over_categories():
    records = generate_questions(scene(), "a.png", (600, 800), seed=1, max_per_image=7)
    assert len(records) == 7
    assert len({r["category"] for r in records}) == 7


def test_generation_is_deterministic_given_the_seed():
    first = generate_questions(scene(), "a.png", (600, 800), seed=7, max_per_image=None)
    again = generate_questions(scene(), "a.png", (600, 800), seed=7, max_per_image=None)
    assert first == again
    others = [generate_questions(scene(), "a.png", (600, 800), seed=s) for s in range(5)]
    assert any(o != first for o in others)


def test_unknown_category_is_rejected():
    with pytest.raises(ValueError, match="unknown template categories"):
        generate_questions(scene(), "a.png", (600, 800), seed=0, categories=["weather"])


def test_count_wording_matches_the_official_file():
    wordings = {count_question("ship", random.Random(s)) for s in range(40)}
    assert wordings == {
        "How many ships are there in the image?",
        "What is the number of ship in the image?",
        "What is the amount of ship in the image?",
        "What is the count of ships in the image?",
    }


@pytest.mark.skipif(not OFFICIAL_FILE.is_file(), reason="shared LRS-VQA question file absent")
def test_count_wording_and_instruction_occur_in_the_official_file():
    rows = [json.loads(line) for line in OFFICIAL_FILE.read_text().splitlines()]
    texts = {r["text"] for r in rows}
    assert "What is the number of ship in the image?" + COUNT_SHORT_ANSWER_PROMPT in texts
    assert any(t.endswith(SHORT_ANSWER_PROMPT) for t in texts)


# --- files, conversations, readers ------------------------------------------------------


def test_jsonl_round_trip_and_loader_compatibility(tmp_path):
    records = generate_questions(scene(), "a.png", (600, 800), seed=0, question_id_prefix="TPL")
    path = tmp_path / "qa.jsonl"
    assert write_lrsvqa_jsonl(records, path) == len(records)
    assert read_lrsvqa_jsonl(path) == records
    items = load_lrs_vqa(path)
    assert {item.subset for item in items} == {"TPL"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: missing"):
        read_lrsvqa_jsonl(bad)


def test_llava_conversations_multi_and_single_turn():
    records = generate_questions(scene(), "a.png", (600, 800), seed=0, max_per_image=5)
    records += generate_questions(scene(), "b.png", (600, 800), seed=0, max_per_image=2)
    multi = to_llava_conversations(records, max_turns=3)
    assert [len(c["conversations"]) for c in multi] == [6, 4, 4]
    assert [c["image"] for c in multi] == ["a.png", "a.png", "b.png"]
    for conv in multi:
        turns = conv["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert not any("<image>" in t["value"] for t in turns[1:])
    assert multi[0]["conversations"][1]["value"] == records[0]["ground_truth"]
    single = to_llava_conversations(records, multi_turn=False)
    assert [c["id"] for c in single] == [r["question_id"] for r in records]


DOTA = """imagesource:GoogleEarth
gsd:0.146
100 100 160 100 160 140 100 140 ship 0
600 250 700 250 700 330 600 330 ship 1
50 450 110 450 110 490 50 490 small-vehicle 0
10 10 20 10 20 20 10 20 plane
"""


def test_dota_parsing(tmp_path):
    path = tmp_path / "P0001.txt"
    path.write_text(DOTA)
    labels = read_dota(path)
    assert labels.name == "P0001"
    assert labels.meta == {"imagesource": "GoogleEarth", "gsd": "0.146"}
    assert [o.category for o in labels.objects] == ["ship", "ship", "small-vehicle", "plane"]
    first = labels.objects[0]
    assert first.hbox == (100, 100, 160, 140)
    assert first.rbox == ((100, 100), (160, 100), (160, 140), (100, 140))
    assert labels.objects[1].attributes == {"difficult": True}
    assert labels.objects[2].attributes == {"supercategory": "vehicle"}
    path.write_text("1 2 3 4 ship 0\n")
    with pytest.raises(ValueError, match="P0001.txt:1"):
        read_dota(path)


FAIR1M = """<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <source><filename>12.tif</filename><origin>GF2/GF3</origin></source>
  <size><width>1000</width><height>800</height><depth>3</depth></size>
  <objects>
    <object>
      <coordinate>pixel</coordinate><type>rectangle</type><description>None</description>
      <possibleresult><name>Boeing737</name><probability>1</probability></possibleresult>
      <points>
        <point>100.0,200.0</point><point>180.0,200.0</point><point>180.0,260.0</point>
        <point>100.0,260.0</point><point>100.0,200.0</point>
      </points>
    </object>
    <object>
      <possibleresult><name>Bridge</name></possibleresult>
      <points>
        <point>500,500</point><point>520,480</point><point>620,580</point><point>600,600</point>
        <point>500,500</point>
      </points>
    </object>
  </objects>
</annotation>
"""


def test_fair1m_parsing(tmp_path):
    path = tmp_path / "12.xml"
    path.write_text(FAIR1M)
    labels = read_fair1m(path)
    assert labels.image_file == "12.tif" and labels.image_size == (800, 1000)
    plane, bridge = labels.objects
    assert plane.category == "Boeing737" and plane.hbox == (100, 200, 180, 260)
    assert len(plane.rbox) == 4  # the repeated closing point is dropped
    assert plane.attributes == {"supercategory": "airplane"}
    assert bridge.hbox == (500, 480, 620, 600) and bridge.attributes == {}
    assert bridge.footprint_area == pytest.approx(4000)


def test_fair1m_supercategory_drives_type_questions(tmp_path):
    path = tmp_path / "12.xml"
    path.write_text(FAIR1M)
    objects = read_fair1m(path).objects
    asked = {
        (r["text"].split("\n")[0], r["ground_truth"])
        for seed in range(10)
        for r in generate_questions(
            objects, "12.tif", (800, 1000), seed=seed, categories=["object category"]
        )
    }
    assert any("the only airplane" in text and answer == "boeing737" for text, answer in asked)
    # The bridge has no coarse type, so it is only named as an object.
    assert all("airplane" in t or "object" in t for t, _ in asked)


def test_json_and_geojson_readers(tmp_path):
    listed = tmp_path / "a.json"
    listed.write_text(
        json.dumps(
            [
                {"category": "ship", "hbox": [1, 2, 3, 4], "color": "red", "shape": "oval"},
                {"category": "tank", "rbox": [0, 0, 10, 0, 10, 10, 0, 10]},
            ]
        )
    )
    ship, tank = read_json_labels(listed).objects
    assert ship.color == "red" and ship.shape == "oval" and ship.hbox == (1, 2, 3, 4)
    assert tank.hbox == (0, 0, 10, 10) and tank.rbox[2] == (10, 10)
    assert LabeledObject.from_dict(ship.to_dict()) == ship
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"image": "b.tif", "objects": [ship.to_dict()]}))
    assert read_json_labels(wrapped).image_file == "b.tif"
    geo = tmp_path / "c.geojson"
    ring = [[0, 0], [40, 0], [40, 20], [0, 20], [0, 0]]
    geo.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                        "properties": {"category": "dock", "color": "grey", "setting": "urban"},
                    }
                ],
            }
        )
    )
    (dock,) = read_geojson(geo).objects
    assert dock.hbox == (0, 0, 40, 20) and dock.color == "grey"
    assert dock.attributes == {"setting": "urban"} and len(dock.rbox) == 4
    with pytest.raises(ValueError, match="category"):
        LabeledObject.from_dict({"hbox": [0, 0, 1, 1]})


def test_find_image_by_stated_name_or_stem(tmp_path):
    (tmp_path / "12.tif").write_bytes(b"")
    (tmp_path / "P0001.png").write_bytes(b"")
    fair = tmp_path / "12.xml"
    fair.write_text(FAIR1M)
    assert find_image(tmp_path, read_fair1m(fair)) == tmp_path / "12.tif"
    dota = tmp_path / "P0001.txt"
    dota.write_text(DOTA)
    assert find_image(tmp_path, read_dota(dota)) == tmp_path / "P0001.png"
    assert list(iter_label_files(tmp_path, "dota")) == [dota]
    dota.rename(tmp_path / "P0002.txt")
    with pytest.raises(FileNotFoundError):
        find_image(tmp_path, read_dota(tmp_path / "P0002.txt"))


def write_png(path: Path, height: int, width: int) -> None:
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)


def test_generate_from_labels_reads_image_size_and_numbers_ids(tmp_path):
    labels, images = tmp_path / "labels", tmp_path / "images"
    labels.mkdir()
    images.mkdir()
    for name in ("P1", "P2"):
        (labels / f"{name}.txt").write_text(DOTA)
        write_png(images / f"{name}.png", 600, 800)
    records = generate_from_labels(sorted(labels.iterdir()), images, "dota", seed=0)
    assert [r["question_id"] for r in records] == [f"TPL_{n}" for n in range(1, len(records) + 1)]
    assert {r["image"] for r in records} == {"P1.png", "P2.png"}
    assert all(r["image_size"] == [800, 600] for r in records)


def test_make_qa_cli(tmp_path):
    labels, images = tmp_path / "labels", tmp_path / "images"
    labels.mkdir()
    images.mkdir()
    (labels / "P1.txt").write_text(DOTA)
    write_png(images / "P1.png", 600, 800)
    out, llava = tmp_path / "qa.jsonl", tmp_path / "llava.json"
    args = ["make-qa", "--labels", str(labels), "--images", str(images), "--format", "dota"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--llava", str(llava)])
    assert result.exit_code == 0, result.output
    records = read_lrsvqa_jsonl(out)
    assert records and json.loads(llava.read_text())[0]["image"] == "P1.png"
    again = tmp_path / "again.jsonl"
    assert CliRunner().invoke(app, [*args, "--out", str(again)]).exit_code == 0
    assert again.read_text() == out.read_text()
