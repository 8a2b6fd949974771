"""The embedded default pipeline, run end to end with a miniature recipe."""

import json

import pytest

from lrsvqa.bench.labels import LabeledObject
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.synthetic.default_model import (
    READY_NAME,
    DefaultModelConfig,
    TrainingSampler,
    build_default_model,
    vocabulary,
)
from lrsvqa.synthetic.demo import run_demo

MINI = DefaultModelConfig(
    train_scenes=2,
    min_side=2048,
    max_side=2304,
    questions_per_scene=1,
    hidden_size=32,
    num_layers=4,
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
    rfm = RegionFocusModule.load(built.rfm_dir, adapter)
    assert rfm.rfm_config.layer_indices == [0, 3]
    assert (built.root / "sft_log.jsonl").read_text().count("\n") >= 1


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
    from lrsvqa.synthetic.default_model import TrainingRecord, _record_targets
    from lrsvqa.synthetic.world import generate_world

    manifest = generate_world(
        built.root / "world",
        num_scenes=MINI.train_scenes,
        min_side=MINI.min_side,
        max_side=MINI.max_side,
        seed=MINI.world_seed,
        split="train",
    )
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
    reader = PyramidReader.open(split / entry["image"])
    records = [
        TrainingRecord(0, q["text"], q["ground_truth"], _record_targets(q, objects))
        for q in questions
    ]
    sampler = TrainingSampler([(reader, objects)], records, tokens_per_side=8, seed=0)
    for _ in range(10):
        example = sampler.example()
        assert 1 <= len(example.visual.tiles) <= 3
        assert example.visual.keep.shape == (64 * len(example.visual.tiles),)
        assert example.visual.keep.any()
    reader.close()
