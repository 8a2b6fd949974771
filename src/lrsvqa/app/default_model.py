"""The embedded default: a tiny LLaVA-NeXT trained here on the synthetic world.

No pretrained weights can be downloaded, so the demo and the synthetic benchmark use a
tiny model trained from scratch on CPU: synthetic training scenes, template QA from
their labels, supervised fine-tuning on DIP-shaped inputs (tiles at several pyramid
levels, pruned the way coarse-to-fine inference prunes), then RFM distillation. The
result is saved with ``save_pretrained`` and reused from a cache; it is loaded through
the same ``from_pretrained`` path as a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrsvqa.bench.templates import (
    TEMPLATE_CATEGORIES,
    display_name,
    generate_questions,
    plural,
)
from lrsvqa.imagery.pyramid import PAPER_TEXT_DIP_RULE, Box, Level
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.labels import LabeledObject
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.layout import tile_token_positions
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.synthetic.facilities import FACILITY_KINDS
from lrsvqa.synthetic.objects import CATEGORIES, COLORS, SceneObject, paint_resampled
from lrsvqa.synthetic.scene import (
    Placement,
    Scene,
    SceneSpec,
    add_objects,
    candidate_placements,
    generate_scene,
)
from lrsvqa.synthetic.world import GENERATOR_VERSION, generate_world
from lrsvqa.train.sft import SFTConfig, SFTExample, VisualInput, train_sft

READY_NAME = "READY.json"
TOKEN_OBJECT_SHARE = 0.2  # share of an object's pixels that makes a token "show" it
MIN_LABEL_SCALE = 0.45  # coarser levels shrink objects below what a token can resolve
PALETTE_TOLERANCE = 12  # max per-channel distance of a resampled body pixel to its colour
TOKEN_HEADS = {"colour": len(COLORS) + 1, "category": len(CATEGORIES) + 1}
MODEL_DIRNAME = "model"
RFM_DIRNAME = "rfm"
# The DIP levels the recipe trains on (SFT examples and distillation): the rule in force
# when the recipe was fixed. Not a config field, so the recipe's hashes stay valid.
RECIPE_DIP_RULE = PAPER_TEXT_DIP_RULE


def default_home() -> Path:
    """Cache root: ``$LRSVQA_HOME`` or ``~/.cache/lrsvqa``."""
    return Path(os.environ.get("LRSVQA_HOME", Path.home() / ".cache" / "lrsvqa")).expanduser()


DISTILL_FIELDS = ("rfm_layers", "distill_pairs", "distill_steps", "distill_lr")


@dataclass(frozen=True)
class DefaultModelConfig:
    """Recipe of the embedded default model.

    Two cache stages, each named by a hash of the fields it depends on: the SFT model
    (world, model size, optimisation) and, inside it, the distilled RFM (the
    ``DISTILL_FIELDS``), so changing the distillation reuses the trained model.

    ``token_loss_weight`` > 0 turns on the SFT token heads (colour and category of the
    object under each tile token, see :mod:`lrsvqa.train.sft`), ``vision_steps`` trains
    them alone first, and ``recolor_share`` repaints that share of examples at
    resolvable levels with a permuted palette. ``added_objects`` > 0 adds that many
    fresh objects of random colours (from ``placements_per_scene`` checked positions
    per scene) to every example and asks about the enlarged scene, so answers cannot
    be memorised; ``question_weights`` weighs question categories, and the first
    ``focus_steps`` steps (vision steps included) ask only the ``focus_weights``
    categories. ``grounding_layers`` turns on the SFT grounding loss at those LLM layers
    (weight ``grounding_loss_weight``) and ``search_share`` shows that share of examples
    a 3 x 3 tile window at a random level, as coarse-to-fine's first levels do;
    ``crowd_share`` shows that share the finest tiles of the target among 1-3 other
    objects' (off: in our runs the LLM then gave one colour to most colour questions). Without
    them the tiny LLM's attention hardly follows the question, so neither the RFM nor
    coarse-to-fine has anything to find; with them it finds objects (or their sites) of
    8 px or more at a level (README, "Results"), at about twice the build time. The rest
    is the recipe that first read colour and category from the target's tile in our
    runs: fresh objects, token heads, colour and category questions weighted up, and a
    learning rate of 5e-4 (at 2e-3 the LLM never learned to look at the object's colour).

    The RFM layers are a sparse subset of the 6 LLM layers (like the paper's 1, 5, 11,
    14 of 28): skipping layers is what makes the RFM cheap and what distillation must
    compensate for; pairs map RFM layer index -> LLM layer (first and last).
    """

    train_scenes: int = 16
    min_side: int = 3072
    max_side: int = 6144
    objects_per_scene: tuple[int, int] = (1, 4)
    world_seed: int = 1
    questions_per_scene: int = 3
    hidden_size: int = 128
    vision_hidden_size: int = 64
    num_layers: int = 6
    sft_steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 5e-4
    finest_level_share: float = 0.9
    token_loss_weight: float = 0.5
    vision_steps: int = 400
    recolor_share: float = 0.0
    added_objects: tuple[int, int] = (1, 6)
    placements_per_scene: int = 200
    question_weights: tuple[tuple[str, float], ...] = (
        ("object color", 6.0),
        ("object category", 3.0),
    )
    focus_steps: int = 0
    focus_weights: tuple[tuple[str, float], ...] = (("object color", 1.0), ("object category", 1.0))
    grounding_layers: tuple[int, ...] = (3, 5)
    grounding_loss_weight: float = 0.2
    search_share: float = 0.1
    crowd_share: float = 0.0
    seed: int = 0
    rfm_layers: tuple[int, ...] = (0, 2, 5)
    distill_pairs: tuple[tuple[int, int], ...] = ((0, 0), (2, 5))
    distill_steps: int = 400
    distill_lr: float = 1e-4

    def _hash(self, fields: dict[str, Any]) -> str:
        text = json.dumps({**fields, "world_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def sft_key(self) -> str:
        """Hash of what the trained model depends on."""
        return self._hash({k: v for k, v in asdict(self).items() if k not in DISTILL_FIELDS})

    def distill_key(self) -> str:
        """Hash of what the distilled RFM depends on (beyond the model)."""
        return self._hash({k: v for k, v in asdict(self).items() if k in DISTILL_FIELDS})


@dataclass(frozen=True)
class DefaultModel:
    """Where the trained default lives."""

    root: Path
    distill_key: str

    @property
    def model_dir(self) -> Path:
        """``save_pretrained`` folder of the LLaVA-NeXT model."""
        return self.root / MODEL_DIRNAME

    @property
    def rfm_dir(self) -> Path:
        """Distilled RFM folder."""
        return self.root / f"{RFM_DIRNAME}-{self.distill_key}"

    @property
    def report(self) -> dict[str, Any]:
        """Training reports of both stages."""
        return {
            "sft": json.loads((self.root / READY_NAME).read_text()),
            "distill": json.loads((self.rfm_dir / READY_NAME).read_text()),
        }


@dataclass
class TrainingRecord:
    """One template question bound to its scene."""

    scene: int
    question: str
    answer: str
    targets: list[Box]


def vocabulary(records: list[dict[str, Any]]) -> list[str]:
    """Words of questions and answers plus every word the synthetic world can answer."""
    words: set[str] = set()
    texts = [r["text"] for r in records] + [str(r["ground_truth"]) for r in records]
    texts += list(CATEGORIES) + list(COLORS)
    texts += [s.name for c in CATEGORIES.values() for s in c.shapes]
    texts += [f"{k.name} {k.background}" for k in FACILITY_KINDS.values()]
    texts += [plural(display_name(name)) for name in CATEGORIES]
    texts += [str(n) for n in range(64)]
    for text in texts:
        for token in text.lower().replace("-", " - ").split():
            words.update(_split_punctuation(token))
    return sorted(words)


def _split_punctuation(token: str) -> list[str]:
    """Split leading/trailing punctuation the way the word tokenizer does."""
    parts, current = [], ""
    for char in token:
        if char.isalnum() or char == "_":
            current += char
        else:
            if current:
                parts.append(current)
            parts.append(char)
            current = ""
    if current:
        parts.append(current)
    return parts


def _record_targets(record: dict[str, Any], objects: list[LabeledObject]) -> list[Box]:
    """Boxes the answer depends on: the referred object, or every counted object."""
    if record.get("hbox"):
        return [tuple(float(v) for v in record["hbox"])]
    noun = record["text"].lower()
    counted = [o for o in objects if o.category.replace("-", " ") in noun.replace("-", " ")]
    return [o.hbox for o in (counted or objects)]


class TrainingSampler:
    """Draws DIP-shaped training examples from the synthetic training split.

    Each example picks a question, a pyramid level (the finest more often), the tiles of
    that level covering the objects the answer depends on plus a few distractor tiles,
    and drops a random share of the tokens away from objects, as pruning would.

    With ``layouts`` (each scene with placements that suit its terrain), every example
    first adds ``added_objects`` fresh objects of random colours to the scene, painted
    into the tiles and thumbnail, and asks a template question about the enlarged
    scene, drawn with ``question_weights`` by question category (default 1): a few
    hundred fixed objects are otherwise easier to memorise than to look at, and the
    same question about the same scene gets a new answer every time.

    ``search_share`` of the examples show a window of up to 3 x 3 tiles around a
    target at a random level instead, as the first coarse-to-fine levels do, and
    ``crowd_share`` the finest tiles of the targets and of 1-3 other objects, as its
    last level does. Every example marks the tokens touching its targets (for the SFT
    grounding loss).

    With ``label_tokens``, at levels where objects are resolvable it also labels every
    tile token with the colour and category of the object covering it (for the SFT token
    heads), and repaints ``recolor_share`` of those examples with a random permutation
    of the palette, the answer and labels following.
    """

    def __init__(
        self,
        scenes: list[tuple[PyramidReader, list[LabeledObject]]],
        records: list[TrainingRecord],
        tokens_per_side: int,
        seed: int,
        *,
        finest_level_share: float = 0.6,
        label_tokens: bool = False,
        recolor_share: float = 0.0,
        layouts: list[tuple[Scene, list[Placement]]] | None = None,
        added_objects: tuple[int, int] = (0, 0),
        question_weights: dict[str, float] | None = None,
        focus_steps: int = 0,
        focus_weights: dict[str, float] | None = None,
        search_share: float = 0.0,
        crowd_share: float = 0.0,
    ) -> None:
        self.scenes = scenes
        self.search_share = search_share
        self.crowd_share = crowd_share
        self.layouts = layouts
        self.added_objects = added_objects
        self.question_weights = question_weights or {}
        self.focus_steps = focus_steps
        self.focus_weights = focus_weights or {}
        self._weights = self.question_weights
        self.records = records
        self.g = tokens_per_side
        self.rng = random.Random(seed)
        self.finest_level_share = finest_level_share
        self.label_tokens = label_tokens
        self.recolor_share = recolor_share
        self._tile = lru_cache(maxsize=8192)(self._read_tile)
        self._thumb = lru_cache(maxsize=None)(lambda s: self.scenes[s][0].thumbnail())
        self._labels = lru_cache(maxsize=None)(
            lambda s, i: token_label_table(
                self.scenes[s][0].geometry.levels[i], self.scenes[s][1], self.g
            )
        )

    def _read_tile(self, scene: int, level: int, row: int, col: int) -> np.ndarray:
        return self.scenes[scene][0].tile(level, row, col)

    def _choose_level(self, reader: PyramidReader, targets: list[Box]) -> tuple[int, list]:
        levels = reader.geometry.levels
        order = [len(levels) - 1] if self.rng.random() < self.finest_level_share else []
        order += self.rng.sample(range(len(levels)), len(levels))
        for index in order:
            tiles = sorted(_tiles_covering(levels[index], targets))
            if 0 < len(tiles) <= 2:
                return index, tiles
        return 0, levels[0].tiles()

    def _touching(self, level, tiles: list[tuple[int, int]], boxes: list[Box]) -> np.ndarray:
        """Bool (tokens, boxes): which of the tiles' tokens (tile-major) touch which box."""
        positions = tile_token_positions(tiles, self.g).astype(np.float64)
        step = level.tile_size / self.g
        rh, rw = level.resized_size
        sx, sy = level.image_width / rw, level.image_height / rh
        x0, y0 = positions[:, 1] * step * sx, positions[:, 0] * step * sy
        x1, y1 = x0 + step * sx, y0 + step * sy
        boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        return (
            (x0[:, None] < boxes[None, :, 2])
            & (boxes[None, :, 0] < x1[:, None])
            & (y0[:, None] < boxes[None, :, 3])
            & (boxes[None, :, 1] < y1[:, None])
        )

    def _keep_mask(
        self, level, tiles: list[tuple[int, int]], objects: list[LabeledObject]
    ) -> np.ndarray:
        """Tokens touching an object are always kept; a random share of the rest too."""
        touches = self._touching(level, tiles, [o.hbox for o in objects])
        keep_share = self.rng.uniform(0.15, 1.0)
        noise = np.random.default_rng(self.rng.getrandbits(32)).random(len(touches))
        mask = touches.any(axis=1) | (noise < keep_share)
        if not mask.any():
            mask[0] = True
        return mask

    def _search_tiles(self, reader: PyramidReader, targets: list[Box]) -> tuple[int, list] | None:
        """A window of up to 3 x 3 tiles holding a target, at a random level with several tiles.

        This is what coarse-to-fine asks of the model at its first levels: find the
        object among many tiles, most of them without it.
        """
        levels = [lv for lv in reader.geometry.levels if lv.num_tiles >= 4]
        if not levels or not targets:
            return None
        level = self.rng.choice(levels)
        covering = level.tiles_covering(self.rng.choice(targets))
        if not covering:
            return None
        row, col = self.rng.choice(covering)
        rows, cols = level.grid
        top = self.rng.randint(max(0, row - 2), min(row, max(0, rows - 3)))
        left = self.rng.randint(max(0, col - 2), min(col, max(0, cols - 3)))
        tiles = [
            (r, c) for r in range(top, min(rows, top + 3)) for c in range(left, min(cols, left + 3))
        ]
        return level.index, tiles

    def _crowd_tiles(
        self, reader: PyramidReader, targets: list[Box], objects: list[LabeledObject]
    ) -> tuple[int, list] | None:
        """Finest-level tiles of the targets and of one to three other objects.

        This is what the LLM gets at coarse-to-fine's last step: several objects' tiles
        kept because coarse sites looked alike, of which the question means one.
        """
        level = reader.geometry.levels[-1]
        own = _tiles_covering(level, targets)
        per_object = (_tiles_covering(level, [o.hbox]) for o in objects)
        others = [tiles for tiles in per_object if not tiles <= own]
        if not own or not others:
            return None
        chosen = self.rng.sample(others, min(len(others), self.rng.randint(1, 3)))
        return level.index, sorted(own.union(*chosen))

    def _token_labels(
        self, scene: int, index: int, tiles: list, added: list[LabeledObject]
    ) -> dict[str, np.ndarray] | None:
        """Colour and category class of every token of ``tiles`` (last class: no object)."""
        level = self.scenes[scene][0].geometry.levels[index]
        table = {**self._labels(scene, index), **token_label_table(level, added, self.g)}
        if not table:
            return None
        positions = tile_token_positions(tiles, self.g)
        colour = np.full(len(positions), len(COLORS), dtype=np.int64)
        category = np.full(len(positions), len(CATEGORIES), dtype=np.int64)
        for n, (row, col) in enumerate(positions.tolist()):
            if (row, col) in table:
                colour[n], category[n] = table[(row, col)]
        return {"colour": colour, "category": category}

    def _question(
        self,
    ) -> tuple[int, list[SceneObject], list[LabeledObject], str, str, list[Box]]:
        """A scene, its added objects' shapes and labels, a question, answer and targets."""
        if self.layouts is None:
            record = self.rng.choice(self.records)
            return record.scene, [], [], record.question, record.answer, record.targets
        scene = self.rng.randrange(len(self.scenes))
        layout, placements = self.layouts[scene]
        count = self.rng.randint(*self.added_objects)
        added = add_objects(
            layout, placements, count, np.random.default_rng(self.rng.getrandbits(32))
        )
        added_labels = [p.label() for p in added]
        objects = self.scenes[scene][1] + added_labels
        questions = generate_questions(
            objects, "scene", (layout.height, layout.width), seed=self.rng.getrandbits(32)
        )
        weights = [self._weights.get(q["category"], 1.0) for q in questions]
        q = self.rng.choices(questions, weights)[0] if sum(weights) else self.rng.choice(questions)
        shapes = [p.shape for p in added]
        targets = _record_targets(q, objects)
        return scene, shapes, added_labels, q["text"], str(q["ground_truth"]), targets

    def example(self) -> SFTExample:
        """One random example."""
        scene, shapes, added_labels, question, answer, targets = self._question()
        reader, scene_objects = self.scenes[scene]
        objects = scene_objects + added_labels
        search = (
            self._search_tiles(reader, targets)
            if self.search_share and self.rng.random() < self.search_share
            else None
        )
        crowd = (
            self._crowd_tiles(reader, targets, objects)
            if search is None and self.crowd_share and self.rng.random() < self.crowd_share
            else None
        )
        if search is not None or crowd is not None:
            index, tiles = search or crowd
            level = reader.geometry.levels[index]
        else:
            index, tiles = self._choose_level(reader, targets)
            level = reader.geometry.levels[index]
            others = [t for t in level.tiles() if t not in tiles]
            count = min(len(others), self.rng.randint(0, 1))
            tiles = sorted(tiles + self.rng.sample(others, count))
        images = [self._tile(scene, index, r, c) for r, c in tiles]
        thumbnail = self._thumb(scene)
        if shapes:
            images = [
                paint_tile(image, level, r, c, shapes)
                for image, (r, c) in zip(images, tiles, strict=True)
            ]
            thumbnail = paint_thumbnail(thumbnail, reader, shapes)
        labels = (
            self._token_labels(scene, index, tiles, added_labels) if self.label_tokens else None
        )
        if labels is not None and self.rng.random() < self.recolor_share:
            order = list(range(len(COLORS)))
            self.rng.shuffle(order)
            images = [recolor(image, order) for image in images]
            mapping = np.array([*order, len(COLORS)])
            labels = {**labels, "colour": mapping[labels["colour"]]}
            if answer in COLORS:
                answer = list(COLORS)[order[list(COLORS).index(answer)]]
        visual = VisualInput(
            thumbnail=thumbnail,
            tiles=images,
            positions=tiles,
            keep=self._keep_mask(level, tiles, objects),
            token_labels=labels,
            target_tokens=self._touching(level, tiles, targets).any(axis=1),
        )
        return SFTExample(visual, question, answer)

    def batch(self, step: int, batch_size: int) -> list[SFTExample]:
        """``train_sft``'s sampling callback: focus questions first, then the full mix."""
        if step < self.focus_steps:
            self._weights = {c: self.focus_weights.get(c, 0.0) for c in TEMPLATE_CATEGORIES}
        else:
            self._weights = self.question_weights
        return [self.example() for _ in range(batch_size)]


def _tiles_covering(level: Level, boxes: list[Box]) -> set[tuple[int, int]]:
    """Tiles of ``level`` that cover any of ``boxes`` (original-image pixels)."""
    return {tile for box in boxes for tile in level.tiles_covering(box)}


def token_label_table(
    level: Level, objects: list[LabeledObject], tokens_per_side: int
) -> dict[tuple[int, int], tuple[int, int]]:
    """Global token ``(row, col)`` -> ``(colour, category)`` of the objects of a level.

    A token is labelled with an object when it holds at least ``TOKEN_OBJECT_SHARE``
    of the object's pixels; empty at levels too coarse to resolve objects.
    """
    rh, rw = level.resized_size
    sy, sx = rh / level.image_height, rw / level.image_width
    if min(sx, sy) < MIN_LABEL_SCALE:
        return {}
    step = level.tile_size / tokens_per_side
    table: dict[tuple[int, int], tuple[int, int]] = {}
    for obj in objects:
        if obj.rbox is None or obj.color not in COLORS:
            continue
        ys, xs = _polygon_pixels(obj.rbox)
        cells, counts = np.unique(
            np.stack([(ys + 0.5) * sy // step, (xs + 0.5) * sx // step], axis=1).astype(int),
            axis=0,
            return_counts=True,
        )
        label = (list(COLORS).index(obj.color), list(CATEGORIES).index(obj.category))
        for cell in cells[counts >= TOKEN_OBJECT_SHARE * counts.sum()]:
            table[(int(cell[0]), int(cell[1]))] = label
    return table


def paint_tile(
    tile: np.ndarray, level: Level, row: int, col: int, shapes: list[SceneObject]
) -> np.ndarray:
    """A copy of tile ``(row, col)`` of ``level`` with ``shapes`` painted into its content."""
    x0, y0, x1, y1 = (int(v) for v in level.tile_canvas_box(row, col))
    rh, rw = level.resized_size
    content_h, content_w = min(y1, rh) - y0, min(x1, rw) - x0
    out = tile.copy()
    if content_h > 0 and content_w > 0:
        box = level.canvas_to_image((x0, y0, x0 + content_w, y0 + content_h))
        paint_resampled(out[:content_h, :content_w], box, shapes)
    return out


def paint_thumbnail(
    thumbnail: np.ndarray, reader: PyramidReader, shapes: list[SceneObject]
) -> np.ndarray:
    """A copy of the thumbnail with ``shapes`` painted into its content."""
    geometry = reader.geometry
    rh, rw = geometry.thumbnail.resized_size
    out = thumbnail.copy()
    whole = (0.0, 0.0, float(geometry.image_width), float(geometry.image_height))
    paint_resampled(out[:rh, :rw], whole, shapes)
    return out


def recolor(image: np.ndarray, order: list[int]) -> np.ndarray:
    """Repaint object bodies: colour ``i`` of the palette becomes colour ``order[i]``.

    Body pixels are those within ``PALETTE_TOLERANCE`` of a palette colour on every
    channel; each moves by the difference between its new and old colour, so pixels
    blended by resampling keep their blend.
    """
    palette = np.array(list(COLORS.values()), dtype=np.int16)
    pixels = image.astype(np.int16)
    out = pixels.copy()
    for old, new in enumerate(order):
        if old == new:
            continue
        body = (np.abs(pixels - palette[old]) <= PALETTE_TOLERANCE).all(axis=-1)
        out[body] += palette[new] - palette[old]
    return np.clip(out, 0, 255).astype(np.uint8)


def _polygon_pixels(corners) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel rows and columns inside a polygon (a rotated box)."""
    from PIL import Image, ImageDraw

    points = np.asarray(corners, dtype=np.float64)
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    canvas = Image.new("1", (int(x1 - x0), int(y1 - y0)))
    ImageDraw.Draw(canvas).polygon([(x - x0, y - y0) for x, y in points.tolist()], fill=1)
    ys, xs = np.nonzero(np.asarray(canvas))
    return ys + y0, xs + x0


def _load_split(manifest: dict[str, Any], split_dir: Path, config: DefaultModelConfig):
    scenes, records, raw = [], [], []
    for index, entry in enumerate(manifest["scenes"]):
        objects = [
            LabeledObject.from_dict(o)
            for o in json.loads((split_dir / entry["labels"]).read_text())
        ]
        reader = PyramidReader.open(split_dir / entry["image"], dip_rule=RECIPE_DIP_RULE)
        scenes.append((reader, objects))
        for variant in range(config.questions_per_scene):
            qs = generate_questions(
                objects,
                entry["image"],
                (entry["height"], entry["width"]),
                seed=config.seed * 1000 + index * 10 + variant,
            )
            raw.extend(qs)
            records.extend(
                TrainingRecord(
                    index, q["text"], str(q["ground_truth"]), _record_targets(q, objects)
                )
                for q in qs
            )
    return scenes, records, raw


def build_default_model(
    home: Path | None = None,
    config: DefaultModelConfig | None = None,
    log: Callable[[str], None] = print,
) -> DefaultModel:
    """Build (or reuse) the tiny default model and its distilled RFM.

    Each stage is skipped when its cache entry is complete, so an interrupted build
    resumes at the stage it lost and a new distillation recipe reuses the model.

    Args:
        home: Cache root (default :func:`default_home`).
        config: The recipe.
        log: Progress messages.
    """
    config = config or DefaultModelConfig()
    result = DefaultModel(
        (home or default_home()) / f"default-{config.sft_key()}", config.distill_key()
    )
    world_dir = result.root / "world"
    if not (result.root / READY_NAME).is_file():
        _train_default(result, world_dir, config, log)
    if not (result.rfm_dir / READY_NAME).is_file():
        _distill_default(result, world_dir, config, log)
    return result


def _training_split(world_dir: Path, config: DefaultModelConfig, log: Callable[[str], None]):
    """The training world (generated once): its manifest, scenes, records and raw questions."""
    log(f"training scenes: {config.train_scenes} in {world_dir} (reused when present)")
    manifest = generate_world(
        world_dir,
        num_scenes=config.train_scenes,
        min_side=config.min_side,
        max_side=config.max_side,
        seed=config.world_seed,
        split="train",
        objects=config.objects_per_scene,
    )
    return manifest, *_load_split(manifest, world_dir / "train", config)


def _train_default(
    result: DefaultModel, world_dir: Path, config: DefaultModelConfig, log: Callable[[str], None]
) -> None:
    """SFT stage: template QA on the training split, tiny model from scratch."""
    torch.manual_seed(config.seed)
    started = time.time()
    manifest, scenes, records, raw = _training_split(world_dir, config, log)
    log(f"{len(records)} template questions; training the tiny LLaVA-NeXT from scratch")
    model, processor = build_tiny_llava(
        vocabulary(raw),
        hidden_size=config.hidden_size,
        vision_hidden_size=config.vision_hidden_size,
        num_layers=config.num_layers,
        seed=config.seed,
    )
    adapter = LlavaAdapter(model, processor)
    heads = config.token_loss_weight > 0
    layouts = None
    if config.added_objects[1] > 0:
        layouts = []
        for index, entry in enumerate(manifest["scenes"]):
            layout = generate_scene(SceneSpec.from_dict(entry["spec"]))
            placements = candidate_placements(
                layout, config.placements_per_scene, seed=config.seed * 1000 + index
            )
            layouts.append((layout, placements))
        log(f"{sum(len(p) for _, p in layouts)} placements for added objects")
    sampler = TrainingSampler(
        scenes,
        records,
        adapter.tokens_per_side,
        config.seed,
        finest_level_share=config.finest_level_share,
        label_tokens=heads,
        recolor_share=config.recolor_share,
        layouts=layouts,
        added_objects=config.added_objects,
        question_weights=dict(config.question_weights),
        focus_steps=config.focus_steps,
        focus_weights=dict(config.focus_weights),
        search_share=config.search_share,
        crowd_share=config.crowd_share,
    )
    sft = SFTConfig(
        steps=config.sft_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        token_heads=TOKEN_HEADS if heads else {},
        token_loss_weight=config.token_loss_weight,
        vision_steps=config.vision_steps if heads else 0,
        grounding_layers=config.grounding_layers,
        grounding_loss_weight=config.grounding_loss_weight,
    )
    result.root.mkdir(parents=True, exist_ok=True)
    log_path = result.root / "sft_log.jsonl"
    log_path.unlink(missing_ok=True)
    losses = train_sft(adapter, sampler.batch, sft, log_path=log_path)
    for reader, _ in scenes:
        reader.close()
    save_tiny_llava(adapter.model, adapter.processor, result.model_dir)
    report = {
        "config": asdict(config),
        "questions": len(records),
        "sft_loss_first": float(np.mean(losses[:25])),
        "sft_loss_last": float(np.mean(losses[-25:])),
        "sft_seconds": round(time.time() - started, 1),
    }
    (result.root / READY_NAME).write_text(json.dumps(report, indent=2) + "\n")
    log(
        f"SFT done: loss {report['sft_loss_first']:.3f} -> {report['sft_loss_last']:.3f} "
        f"in {report['sft_seconds']:.0f} s"
    )


def _distill_default(
    result: DefaultModel, world_dir: Path, config: DefaultModelConfig, log: Callable[[str], None]
) -> None:
    """Distillation stage: train the RFM of the trained model on the training questions."""
    from lrsvqa.bench.templates import to_llava_conversations
    from lrsvqa.train.distill import DistillConfig, distill

    _, scenes, _, raw = _training_split(world_dir, config, log)
    for reader, _ in scenes:
        reader.close()
    started = time.time()
    report = distill(
        DistillConfig(
            model=str(result.model_dir),
            data=to_llava_conversations(raw),
            out_dir=str(result.rfm_dir),
            image_root=str(world_dir / "train"),
            rfm_layers=list(config.rfm_layers),
            pairs=[tuple(pair) for pair in config.distill_pairs],
            steps=config.distill_steps,
            lr=config.distill_lr,
            dip_rule=RECIPE_DIP_RULE,
            save_every=0,
            eval_size=32,
            seed=config.seed,
            progress=True,
        )
    )
    summary = {"seconds": round(time.time() - started, 1), **asdict(report)}
    (result.rfm_dir / READY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log(
        f"RFM distilled into {result.rfm_dir}: top-25% overlap with the LLM "
        f"{report.before.overlap_last:.2f} -> {report.after.overlap_last:.2f}"
    )


def heldout_scene(seed: int, side: int) -> tuple[SceneSpec, Any]:
    """A scene that is not in the training split (used by the demo)."""
    spec = SceneSpec(seed=10_000 + seed, height=side, width=side)
    return spec, generate_scene(spec)
