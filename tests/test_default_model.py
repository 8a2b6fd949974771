"""The embedded default pipeline, run end to end with a miniature recipe."""

import json

import numpy as np
import pytest

from lrsvqa.app.default_model import (
    READY_NAME,
    RECIPE_DIP_RULE,
    DefaultModelConfig,
    ask_templates,
    build_default_model,
    vocabulary,
)
from lrsvqa.app.demo import run_demo
from lrsvqa.labels import LabeledObject
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.synthetic import CATEGORIES, COLORS
from lrsvqa.train.samplers import (
    MIN_LABEL_SCALE,
    TrainingRecord,
    TrainingSampler,
    recolor,
    record_targets,
    token_label_table,
)

MINI = DefaultModelConfig(
    train_scenes=2,
    min_side=2048,
    max_side=2304,
    questions_per_scene=1,
    hidden_size=32,
    vision_hidden_size=32,
    num_layers=4,
    vision_steps=2,
    token_loss_weight=0.5,
    recolor_share=0.5,
    added_objects=(1, 3),
    placements_per_scene=20,
    question_weights=(("object color", 2.0),),
    focus_steps=3,
    grounding_layers=(1, 3),
    search_share=0.3,
    sft_steps=4,
    batch_size=2,
    rfm_layers=(0, 3),
    distill_pairs=((0, 0), (1, 3)),
    distill_steps=2,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def built(home):
    return build_default_model(home, MINI, log=lambda message: None)


def test_build_writes_loadable_model_rfm_and_report(built):
    report = built.report
    assert report["sft"]["config"]["sft_steps"] == 4
    assert report["distill"]["steps"] == 2 and report["distill"]["pairs"] == [[0, 0], [1, 3]]
    assert json.loads((built.root / READY_NAME).read_text()) == report["sft"]
    adapter = LlavaAdapter.from_pretrained(built.model_dir)
    assert adapter.config.vision_config.hidden_size == MINI.vision_hidden_size
    rfm = RegionFocusModule.load(built.rfm_dir, adapter)
    assert rfm.rfm_config.layer_indices == [0, 3]
    log = [json.loads(line) for line in (built.root / "sft_log.jsonl").read_text().splitlines()]
    assert {line["phase"] for line in log} == {"vision", "sft"}
    assert all(line["grounding_loss"] > 0 for line in log if line["phase"] == "sft")


def test_build_is_cached_and_keyed_by_recipe(home, built):
    stamp = (built.model_dir / "model.safetensors").stat().st_mtime_ns
    again = build_default_model(home, MINI, log=lambda message: None)
    assert again.root == built.root
    assert (again.model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    reseeded = DefaultModelConfig(**{**MINI.__dict__, "seed": 1})
    assert reseeded.sft_key() != MINI.sft_key()
    redistilled = DefaultModelConfig(**{**MINI.__dict__, "distill_steps": 3})
    assert redistilled.sft_key() == MINI.sft_key()
    assert redistilled.distill_key() != MINI.distill_key()


def test_demo_answers_and_writes_overlay(home, built, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=120)
    results = run_demo(tmp_path, side=2048, questions=2, home=home, config=MINI, console=console)
    assert len(results) == 2
    for result in results:
        assert result["ground_truth"] and isinstance(result["answer"], str)
        assert result["trace"]["levels"][0]["level"] == 1
    assert (tmp_path / "overlay_1.png").stat().st_size > 1000
    text = console.export_text()
    assert "truth:" in text and "coarse-to-fine trace" in text


def test_sampler_keeps_target_tokens(built, home):
    from lrsvqa.bench.templates import generate_questions
    from lrsvqa.imagery.tiles import PyramidReader
    from lrsvqa.synthetic.world import generate_world

    manifest = generate_world(built.root / "world", **MINI.world_options())
    entry = manifest["scenes"][0]
    split = built.root / "world" / "train"
    objects = [
        LabeledObject.from_dict(o) for o in json.loads((split / entry["labels"]).read_text())
    ]
    questions = generate_questions(
        objects,
        entry["image"],
        (entry["height"], entry["width"]),
        seed=0,
        categories=("object color",),
    )
    assert questions
    assert set(vocabulary(questions)) >= {"color", "what"}
    reader = PyramidReader.open(split / entry["image"], dip_rule=RECIPE_DIP_RULE)
    records = [
        TrainingRecord(0, q["text"], q["ground_truth"], record_targets(q, objects))
        for q in questions
    ]
    sampler = TrainingSampler(
        [(reader, objects)], records, tokens_per_side=8, seed=0, label_tokens=True
    )
    for _ in range(10):
        example = sampler.example()
        assert 1 <= len(example.visual.tiles) <= 3
        assert example.visual.keep.shape == (64 * len(example.visual.tiles),)
        assert example.visual.keep.any()
        if example.visual.token_labels is not None:
            assert example.visual.token_labels["colour"].shape == example.visual.keep.shape

    # Token labels: at the finest level every object shows on a token of its own cell,
    # with its colour and category; every labelled token lies on an object; coarse
    # levels, where a token cannot resolve an object, get no labels.
    levels = reader.geometry.levels
    finest = levels[-1]
    table = token_label_table(finest, objects, 8)
    step = finest.tile_size / 8
    rh, rw = finest.resized_size
    sy, sx = rh / finest.image_height, rw / finest.image_width

    def cell_box(row: int, col: int) -> tuple[float, float, float, float]:
        return col * step / sx, row * step / sy, (col + 1) * step / sx, (row + 1) * step / sy

    def overlaps(a, b) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for obj in objects:
        label = (list(COLORS).index(obj.color), list(CATEGORIES).index(obj.category))
        assert any(v == label and overlaps(cell_box(*k), obj.hbox) for k, v in table.items())
    for (row, col), (colour, category) in table.items():
        assert any(
            overlaps(cell_box(row, col), o.hbox)
            and o.color == list(COLORS)[colour]
            and o.category == list(CATEGORIES)[category]
            for o in objects
        )
    coarse = [lv for lv in levels if lv.resized_size[1] / lv.image_width < MIN_LABEL_SCALE]
    assert coarse and all(token_label_table(lv, objects, 8) == {} for lv in coarse)
    reader.close()


def _touching(level, tiles, target) -> np.ndarray:
    """(tiles, 64) tokens of 8 x 8 per tile whose image box overlaps ``target``."""
    out = np.zeros((len(tiles), 64), dtype=bool)
    for n, (row, col) in enumerate(tiles):
        for cell in range(64):
            r, c = row * 8 + cell // 8, col * 8 + cell % 8
            x0, y0, x1, y1 = level.token_image_box(r, c, 8)
            out[n, cell] = x0 < target[2] and target[0] < x1 and y0 < target[3] and target[1] < y1
    return out


def test_search_examples_show_a_window_of_tiles_and_mark_the_target(built):
    """search_share=1: up to 3 x 3 neighbouring tiles around the target, its tokens marked."""
    from lrsvqa.bench.templates import generate_questions
    from lrsvqa.imagery.tiles import PyramidReader

    split = built.root / "world" / "train"
    entry = json.loads((split / "manifest.json").read_text())["scenes"][0]
    objects = [
        LabeledObject.from_dict(o) for o in json.loads((split / entry["labels"]).read_text())
    ]
    questions = generate_questions(
        objects, entry["image"], (entry["height"], entry["width"]), seed=0
    )
    records = [
        TrainingRecord(0, q["text"], q["ground_truth"], record_targets(q, objects))
        for q in questions
        if q.get("hbox")
    ]
    assert records
    reader = PyramidReader.open(split / entry["image"], dip_rule=RECIPE_DIP_RULE)
    sampler = TrainingSampler([(reader, objects)], records, tokens_per_side=8, seed=0)
    sampler.search_share = 1.0
    levels = reader.geometry.levels
    seen_levels = set()
    for _ in range(20):
        example = sampler.example()
        target = next(r.targets[0] for r in records if r.question == example.question)
        tiles = example.visual.positions
        rows, cols = {r for r, _ in tiles}, {c for _, c in tiles}
        # A full rectangle of neighbouring tiles, 3 wide where the level allows.
        assert len(tiles) == len(rows) * len(cols) >= 4
        assert max(rows) - min(rows) == len(rows) - 1 and max(cols) - min(cols) == len(cols) - 1
        flags = example.visual.target_tokens.reshape(len(tiles), 64)

        # Several levels may hold these tile indices; the marks fit exactly one of them.
        candidates = [
            lv
            for lv in levels
            if lv.num_tiles >= 4
            and set(tiles) <= set(lv.tiles())
            and set(lv.tiles_covering(target)) & set(tiles)
        ]
        matching = [lv for lv in candidates if np.array_equal(_touching(lv, tiles, target), flags)]
        assert matching, "target marks fit no level's token geometry"
        seen_levels.add(matching[0].index)
        assert flags.any() and not flags.all(axis=1).all()
        assert example.visual.keep[example.visual.target_tokens].all()
    assert len(seen_levels) == sum(lv.num_tiles >= 4 for lv in levels)
    reader.close()


def test_recolor_moves_body_colours_by_the_permutation_and_keeps_the_ground():
    red, blue = np.array(COLORS["red"]), np.array(COLORS["blue"])
    image = np.full((4, 4, 3), (90, 120, 60), dtype=np.uint8)
    image[0, 0] = red
    image[1, 1] = blue + 5  # a body pixel slightly changed by resampling
    order = list(range(len(COLORS)))
    r, b = list(COLORS).index("red"), list(COLORS).index("blue")
    order[r], order[b] = b, r
    out = recolor(image, order)
    assert tuple(out[0, 0]) == COLORS["blue"]
    assert tuple(out[1, 1]) == tuple(red + 5)
    assert (out[2:] == image[2:]).all() and out.dtype == np.uint8


def test_default_recipe_is_keyed_by_the_world_generator(monkeypatch):
    from lrsvqa.app import default_model

    key = MINI.sft_key()
    monkeypatch.setattr(default_model, "GENERATOR_VERSION", default_model.GENERATOR_VERSION + 1)
    assert MINI.sft_key() != key


def test_sampler_adds_fresh_objects_it_paints_labels_and_asks_about(built):
    """Added objects are in the pixels, the token labels and the questions, anew each time."""
    from lrsvqa.bench.templates import display_name
    from lrsvqa.imagery.tiles import PyramidReader
    from lrsvqa.synthetic.scene import SceneSpec, candidate_placements, generate_scene

    split = built.root / "world" / "train"
    entry = json.loads((split / "manifest.json").read_text())["scenes"][0]
    scene = generate_scene(SceneSpec.from_dict(entry["spec"]))
    placements = candidate_placements(scene, 60, seed=0)
    reader = PyramidReader.open(split / entry["image"], dip_rule=RECIPE_DIP_RULE)
    sampler = TrainingSampler(
        [(reader, list(scene.objects))],
        [],
        tokens_per_side=8,
        seed=0,
        finest_level_share=1.0,
        label_tokens=True,
        layouts=[(scene, placements)],
        ask=ask_templates,
        added_objects=(2, 4),
        question_weights={"object color": 1e9},
        focus_steps=1,
        focus_weights={"object category": 1.0},
    )
    # The focus steps ask only the focus questions, then the weighted mix takes over.
    names = {display_name(name) for name in CATEGORIES}
    assert all(e.answer in names for e in sampler.batch(0, 8))
    finest = reader.geometry.levels[-1]
    scene_labels = token_label_table(finest, list(scene.objects), 8)
    colour_answers, checked = [], 0
    for example in sampler.batch(1, 60):
        colour_answers.append(example.answer)
        labels = example.visual.token_labels
        if labels is None or len(example.visual.tiles) * 64 != len(labels["colour"]):
            continue
        for n, (row, col) in enumerate(example.visual.positions):
            tile = example.visual.tiles[n]
            for cell in range(64):
                colour = labels["colour"][n * 64 + cell]
                global_cell = (row * 8 + cell // 8, col * 8 + cell % 8)
                if colour == len(COLORS) or global_cell in scene_labels:
                    continue
                # A token labelled with an added object shows that object's colour.
                r, c = divmod(cell, 8)
                pixels = tile[r * 42 : (r + 1) * 42, c * 42 : (c + 1) * 42].reshape(-1, 3)
                target = np.array(COLORS[list(COLORS)[colour]])
                assert (np.abs(pixels.astype(int) - target).max(axis=1) <= 12).sum() >= 20
                checked += 1
    assert checked >= 5
    # The weights ask only colour questions; on one scene their answers still spread
    # over the palette, so they cannot be memorised.
    assert set(colour_answers) <= set(COLORS) and len(set(colour_answers)) >= 6
    reader.close()


def test_crowd_examples_show_other_objects_but_mark_only_the_target(built):
    """crowd_share=1: finest-level tiles of the target and of 1-3 other objects."""
    from lrsvqa.imagery.tiles import PyramidReader

    split = built.root / "world" / "train"
    entry = json.loads((split / "manifest.json").read_text())["scenes"][0]
    reader = PyramidReader.open(split / entry["image"], dip_rule=RECIPE_DIP_RULE)
    finest = reader.geometry.levels[-1]
    x0, y0 = finest.image_width / 2, finest.image_height / 2
    boxes = [
        (x0 + dx, y0 + dy, x0 + dx + 40, y0 + dy + 30)
        for dx, dy in [(0, 0), (-900, 0), (900, 0), (0, -900), (0, 900)]
    ]
    objects = [LabeledObject(category="ship", hbox=box) for box in boxes]
    record = TrainingRecord(0, "What is the color of the only ship?", "red", [boxes[0]])
    sampler = TrainingSampler(
        [(reader, objects)], [record], tokens_per_side=8, seed=0, crowd_share=1.0
    )
    own = set(finest.tiles_covering(boxes[0]))
    counts = set()
    for _ in range(20):
        example = sampler.example()
        tiles = set(example.visual.positions)
        assert own <= tiles <= set(finest.tiles())
        shown = [box for box in boxes[1:] if set(finest.tiles_covering(box)) <= tiles]
        counts.add(len(shown))
        flags = example.visual.target_tokens.reshape(len(tiles), 64)
        for n, (row, col) in enumerate(example.visual.positions):
            assert flags[n].any() == ((row, col) in own)
    assert counts == {1, 2, 3}
    reader.close()


def test_sampler_that_adds_objects_needs_a_question_generator():
    with pytest.raises(ValueError, match="ask"):
        TrainingSampler([], [], tokens_per_side=8, seed=0, layouts=[])
