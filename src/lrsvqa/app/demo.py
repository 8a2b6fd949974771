"""``lrsvqa demo``: the whole paper end to end on the embedded default.

Loads the shipped tiny model and its distilled RFM (or builds them where the shipped
ones do not match the recipe), generates a held-out
large scene, answers a few template questions with coarse-to-fine inference, and prints
answers, ground truth and traces, plus an overlay PNG of where the model looked.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from lrsvqa.app.default_model import DefaultModelConfig, default_home
from lrsvqa.app.inference import ask, load_model, trace_table
from lrsvqa.app.shipped import resolve_default_model
from lrsvqa.app.viz import save_attention_overlay
from lrsvqa.bench.templates import generate_questions
from lrsvqa.labels import LabeledObject
from lrsvqa.strategies.c2f import CoarseToFineConfig
from lrsvqa.synthetic.scene import SceneSpec, generate_scene
from lrsvqa.synthetic.world import write_scene

DEMO_CATEGORIES = (
    "object color",
    "object category",
    "object shape",
    "count",
    "object position",
    "object background",
)
DEMO_ALPHA = 0.1
# Rendering the scene is most of the demo's time (about 1 Mpx/s on 2 cores): 6,144 px
# keeps it within two minutes; ``lrsvqa demo --side 16384`` shows a larger one.
DEMO_SIDE = 6144


def demo_scene(out_dir: Path, side: int, seed: int) -> tuple[Path, list[LabeledObject]]:
    """Write (once) a held-out scene and return its image path and labels."""
    spec = SceneSpec(seed=50_000 + seed, height=side, width=side)
    name = f"demo_{side}_{seed}"
    image = out_dir / "images" / f"{name}.tif"
    labels = out_dir / "labels" / f"{name}.json"
    if not (image.is_file() and labels.is_file()):
        image, labels = write_scene(generate_scene(spec), out_dir, name)
    objects = [LabeledObject.from_dict(o) for o in json.loads(labels.read_text())]
    return image, objects


def run_demo(
    out_dir: Path | None = None,
    *,
    side: int = DEMO_SIDE,
    seed: int = 0,
    questions: int = 5,
    home: Path | None = None,
    config: DefaultModelConfig | None = None,
    console: Console | None = None,
) -> list[dict]:
    """Run the demo and return one record per question (question, answer, truth, trace).

    Args:
        out_dir: Where the scene and overlay PNGs go (default: ``<home>/demo``).
        side: Scene side in pixels (2,048 to 32,768).
        seed: Scene seed.
        questions: Number of questions to ask.
        home: Cache root of the default model.
        config: Recipe of the default model.
        console: Where to print.
    """
    console = console or Console()
    home = home or default_home()
    out_dir = out_dir or home / "demo"
    trained = resolve_default_model(home, config, log=console.print)
    loaded = load_model(trained.model_dir, trained.rfm_dir)
    console.print(f"model: {trained.model_dir}\nRFM: {trained.rfm_dir}")
    image, objects = demo_scene(out_dir, side, seed)
    console.print(f"scene: {image} ({side} x {side} px, {len(objects)} objects)")
    records = generate_questions(
        objects, image.name, (side, side), seed=seed, categories=DEMO_CATEGORIES
    )[:questions]
    config_c2f = CoarseToFineConfig(alpha=DEMO_ALPHA, max_new_tokens=8)
    results = []
    for number, record in enumerate(records):
        result, reader = ask(loaded, image, record["text"], config_c2f)
        question = record["text"].splitlines()[0]
        console.rule(f"question {number + 1}: {record['category']}")
        console.print(
            f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {result.answer}    "
            f"[bold]truth:[/bold] {record['ground_truth']}"
        )
        console.print(trace_table(result))
        overlay = out_dir / f"overlay_{number + 1}.png"
        target = [tuple(record["hbox"])] if record.get("hbox") else None
        save_attention_overlay(
            overlay,
            reader.thumbnail(),
            reader.geometry,
            result.coarse_scores,
            [(level.level, level.tiles_encoded) for level in result.levels],
            title=f"{question}\nanswer: {result.answer}",
            target_boxes=target,
        )
        reader.image.close()
        console.print(f"overlay: {overlay}")
        results.append(
            {
                "question": question,
                "answer": result.answer,
                "ground_truth": record["ground_truth"],
                "trace": result.trace_dict(),
            }
        )
    return results
