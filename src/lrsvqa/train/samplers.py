"""Training examples drawn from the synthetic world, shaped as coarse-to-fine feeds the LLM.

The sampler turns the labelled training split of :mod:`lrsvqa.synthetic` into SFT
examples: a question, the tiles of one pyramid level around what it asks about (or a
search window, or a crowd of objects), pruned the way inference prunes, with token
labels and target marks for the auxiliary losses. Questions come from a generator the
caller passes in (the template QA of :mod:`lrsvqa.bench`, a floor above training).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, Box, Level
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.labels import LabeledObject
from lrsvqa.models.layout import tile_token_positions
from lrsvqa.synthetic.objects import CATEGORIES, COLORS, SceneObject, paint_resampled
from lrsvqa.synthetic.scene import Placement, Scene, add_objects
from lrsvqa.train.batch import SFTExample, VisualInput
from lrsvqa.train.data import Conversation, DistillDataError

TOKEN_OBJECT_SHARE = 0.2  # share of an object's pixels that makes a token "show" it
MIN_LABEL_SCALE = 0.45  # coarser levels shrink objects below what a token can resolve
PALETTE_TOLERANCE = 12  # max per-channel distance of a resampled body pixel to its colour
TOKEN_HEADS = {"colour": len(COLORS) + 1, "category": len(CATEGORIES) + 1}


# ``ask(objects, (height, width), seed)``: template questions (dicts with "text",
# "ground_truth", "category" and, for a referred object, "hbox") about a scene.
QuestionGenerator = Callable[[list[LabeledObject], tuple[int, int], int], list[dict[str, Any]]]


@dataclass
class TrainingRecord:
    """One template question bound to its scene."""

    scene: int
    question: str
    answer: str
    targets: list[Box]


def record_targets(record: dict[str, Any], objects: list[LabeledObject]) -> list[Box]:
    """Boxes the answer depends on: the referred object, or every counted object."""
    if record.get("hbox"):
        return [tuple(float(v) for v in record["hbox"])]
    noun = record["text"].lower()
    counted = [o for o in objects if o.category.replace("-", " ") in noun.replace("-", " ")]
    return [o.hbox for o in (counted or objects)]


class _SeededSampler:
    """A sampler whose only state is ``self.rng``, checkpointed as JSON."""

    rng: random.Random

    def state_dict(self) -> dict[str, Any]:
        """The random state (JSON-ready): with it a resumed run draws what a straight one does."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


class ConversationSampler(_SeededSampler):
    """SFT examples from LLaVA-format conversations (``lrsvqa sft``).

    Every turn becomes a one-turn example: its question (without the earlier turns) on
    the image's thumbnail and coarsest-DIP-level tiles, the input distillation trains
    on, with its answer as the target. Turns are drawn uniformly with replacement.

    Args:
        conversations: Validated conversations (:func:`lrsvqa.train.data.load_conversations`).
        tile_size: Tile side ``B`` of the vision tower.
        min_short_side: DIP minimum short side (the coarsest level's size).
        seed: Seed of the draws.
        dip_rule: DIP halving rule (:func:`lrsvqa.imagery.pyramid.level_sizes`).
    """

    def __init__(
        self,
        conversations: list[Conversation],
        tile_size: int,
        min_short_side: int,
        seed: int,
        dip_rule: str = DEFAULT_DIP_RULE,
    ) -> None:
        self.conversations = conversations
        self.turns = [(i, turn) for i, c in enumerate(conversations) for turn in c.turns]
        self.tile_size, self.min_short_side = tile_size, min_short_side
        self.dip_rule = dip_rule
        self.rng = random.Random(seed)
        self._visual = lru_cache(maxsize=256)(self._read)

    def _read(self, index: int) -> VisualInput:
        conversation = self.conversations[index]
        try:
            with PyramidReader.open(
                conversation.image,
                tile_size=self.tile_size,
                min_short_side=self.min_short_side,
                dip_rule=self.dip_rule,
            ) as reader:
                tiles = reader.geometry.levels[0].tiles()
                return VisualInput(reader.thumbnail(), list(reader.tiles(0, tiles)), tiles)
        except ImageReadError as error:
            raise DistillDataError(conversation.where, str(error)) from error

    def batch(self, step: int, batch_size: int) -> list[SFTExample]:
        """``train_sft``'s sampling callback."""
        picks = [self.rng.choice(self.turns) for _ in range(batch_size)]
        return [SFTExample(self._visual(i), turn.question, turn.answer) for i, turn in picks]


class TrainingSampler(_SeededSampler):
    """Draws DIP-shaped training examples from the synthetic training split.

    Each example picks a question, a pyramid level (the finest more often), the tiles of
    that level covering the objects the answer depends on plus a few distractor tiles,
    and drops a random share of the tokens away from objects, as pruning would.

    With ``layouts`` (each scene with placements that suit its terrain), every example
    first adds ``added_objects`` fresh objects of random colours to the scene, painted
    into the tiles and thumbnail, and asks one of ``ask``'s questions about the enlarged
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
        ask: QuestionGenerator | None = None,
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
        if layouts is not None and ask is None:
            raise ValueError("layouts add objects to ask about: pass ask, the question generator")
        self.layouts = layouts
        self.ask = ask
        self.added_objects = added_objects
        self.question_weights = question_weights or {}
        self.focus_steps = focus_steps
        self.focus_weights = focus_weights or {}
        self._weights, self._default_weight = self.question_weights, 1.0
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
        return tokens_touching(level, tile_token_positions(tiles, self.g), boxes, self.g)

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
        questions = self.ask(objects, (layout.height, layout.width), self.rng.getrandbits(32))
        weights = [self._weights.get(q["category"], self._default_weight) for q in questions]
        q = self.rng.choices(questions, weights)[0] if sum(weights) else self.rng.choice(questions)
        shapes = [p.shape for p in added]
        targets = record_targets(q, objects)
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
            self._weights, self._default_weight = self.focus_weights, 0.0
        else:
            self._weights, self._default_weight = self.question_weights, 1.0
        return [self.example() for _ in range(batch_size)]


def tokens_touching(
    level: Level, positions: np.ndarray, boxes: list[Box], tokens_per_side: int
) -> np.ndarray:
    """Bool (tokens, boxes): which tokens at grid ``positions`` cover ground of which box.

    Args:
        level: The pyramid level of the tokens.
        positions: (m, 2) global token grid positions (row, col) in that level.
        boxes: Image-pixel boxes ``(x0, y0, x1, y1)``.
        tokens_per_side: Tokens per tile side.
    """
    positions = np.asarray(positions, dtype=np.float64)
    step = level.tile_size / tokens_per_side
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
