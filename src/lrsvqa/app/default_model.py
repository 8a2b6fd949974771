"""The embedded default: a tiny LLaVA-NeXT (or Qwen2-VL) trained here on the synthetic world.

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
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrsvqa.bench.templates import display_name, generate_questions, plural
from lrsvqa.imagery.pyramid import DEFAULT_TILE_SIZE, PAPER_TEXT_DIP_RULE
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.labels import LabeledObject
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.qwen_adapter import QwenVLAdapter
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.models.tiny_qwen import build_tiny_qwen_vl, save_tiny_qwen_vl
from lrsvqa.synthetic.facilities import FACILITY_KINDS
from lrsvqa.synthetic.objects import CATEGORIES, COLORS
from lrsvqa.synthetic.scene import SceneSpec, candidate_placements, generate_scene
from lrsvqa.synthetic.world import GENERATOR_VERSION, generate_world
from lrsvqa.train.samplers import TOKEN_HEADS, TrainingRecord, TrainingSampler, record_targets
from lrsvqa.train.sft import SFTConfig, train_sft

READY_NAME = "READY.json"
MODEL_DIRNAME = "model"
RFM_DIRNAME = "rfm"
# The DIP levels the recipe trains on (SFT examples and distillation): the rule in force
# when the recipe was fixed. Not a config field, so the recipe's hashes stay valid.
RECIPE_DIP_RULE = PAPER_TEXT_DIP_RULE
SFT_CHECKPOINTS_DIRNAME = "sft_checkpoints"
SFT_SAVE_EVERY = 200  # steps between SFT checkpoints; a stopped build resumes at the last
LLAVA_NEXT = "llava-next"
QWEN2_VL = "qwen2-vl"
ARCHITECTURES = (LLAVA_NEXT, QWEN2_VL)
# The tiny Qwen2-VL's patches: its 2 x 2 merger makes one LLM token of 42 px and a 336 px
# tile (DEFAULT_TILE_SIZE, recorded in its config) 8 x 8 tokens, the ground and token count
# of the LLaVA default's 42 px CLIP patches, so the two differ in positions, not in pixels.
QWEN_PATCH_SIZE = 21


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
    8 px or more at a level (docs/results/), at about twice the build time. The rest
    is the recipe that first read colour and category from the target's tile in our
    runs: fresh objects, token heads, colour and category questions weighted up, and a
    learning rate of 5e-4 (at 2e-3 the LLM never learned to look at the object's colour).

    The RFM layers are a sparse subset of the 6 LLM layers (like the paper's 1, 5, 11,
    14 of 28): skipping layers is what makes the RFM cheap and what distillation must
    compensate for; pairs map RFM layer index -> LLM layer (first and last).

    ``architecture`` is the model the recipe trains: ``"llava-next"`` (the shipped
    default) or ``"qwen2-vl"``, a tiny Qwen2-VL of the same widths and depth whose
    retained tokens keep their 2-D M-RoPE positions (``QWEN_PATCH_SIZE``). It enters
    the SFT hash only when it is not ``"llava-next"``, so the recipes hashed before the
    field existed (the shipped default's) keep their hashes.
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
    architecture: str = LLAVA_NEXT

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; use one of {', '.join(ARCHITECTURES)}"
            )

    def _hash(self, fields: dict[str, Any]) -> str:
        text = json.dumps({**fields, "world_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def recipe(self) -> dict[str, Any]:
        """The fields as hashed and written to manifests.

        ``architecture`` is left out at its LLaVA-NeXT value, so a recipe from before the
        field existed (the shipped default's) reads and hashes as it did.
        """
        fields = asdict(self)
        if self.architecture == LLAVA_NEXT:
            del fields["architecture"]
        return fields

    def sft_key(self) -> str:
        """Hash of what the trained model depends on."""
        return self._hash({k: v for k, v in self.recipe().items() if k not in DISTILL_FIELDS})

    def distill_key(self) -> str:
        """Hash of what the distilled RFM depends on (beyond the model)."""
        return self._hash({k: v for k, v in self.recipe().items() if k in DISTILL_FIELDS})

    def world_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`generate_world` for the training split.

        The shipped model was trained on scenes whose short side is also at least
        ``min_side`` and with no scene forced to the largest aspect ratio (the draw of
        world v4 before it grew extreme strips): both are pinned here, so the recipe's
        hash still names the scenes it was trained on.
        """
        return {
            "num_scenes": self.train_scenes,
            "min_side": self.min_side,
            "max_side": self.max_side,
            "seed": self.world_seed,
            "split": "train",
            "objects": self.objects_per_scene,
            "min_short_side": self.min_side,
            "extreme_every": 0,
        }


def recipe_with(config: DefaultModelConfig, options: dict[str, str]) -> DefaultModelConfig:
    """The recipe with some fields changed from their text (``build-default --set``).

    Each value is read by the type of the field's value in ``config``: an int, a float,
    a string or a tuple of ints (``rfm_layers=0,2,5``); fields holding pairs are not
    settable this way.

    Raises:
        ValueError: An unknown field, a value of the wrong type, or a pair field.
    """
    current = asdict(config)
    changes: dict[str, Any] = {}
    for name, text in options.items():
        if name not in current:
            raise ValueError(f"unknown recipe field {name!r}; fields: {', '.join(current)}")
        default = current[name]
        if isinstance(default, tuple) and all(type(value) is int for value in default):
            kind, read = "ints", lambda text: tuple(int(piece) for piece in text.split(","))
        elif type(default) in (int, float, str):
            kind, read = type(default).__name__, type(default)
        else:
            raise ValueError(f"recipe field {name!r} cannot be set from the command line")
        try:
            changes[name] = read(text)
        except ValueError:
            raise ValueError(f"recipe field {name!r} takes {kind}, got {text!r}") from None
    return replace(config, **changes)


@dataclass(frozen=True)
class DefaultModel:
    """Where the trained default lives."""

    root: Path
    distill_key: str

    @property
    def model_dir(self) -> Path:
        """``save_pretrained`` folder of the trained model."""
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


def ask_templates(
    objects: list[LabeledObject], size: tuple[int, int], seed: int
) -> list[dict[str, Any]]:
    """The sampler's question generator: template QA about a whole scene."""
    return generate_questions(objects, "scene", size, seed=seed)


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
                TrainingRecord(index, q["text"], str(q["ground_truth"]), record_targets(q, objects))
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
    resumes at the stage it lost (SFT at its last checkpoint) and a new distillation
    recipe reuses the model.

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
    manifest = generate_world(world_dir, **config.world_options())
    return manifest, *_load_split(manifest, world_dir / "train", config)


def _train_default(
    result: DefaultModel, world_dir: Path, config: DefaultModelConfig, log: Callable[[str], None]
) -> None:
    """SFT stage: template QA on the training split, tiny model from scratch."""
    torch.manual_seed(config.seed)
    started = time.time()
    manifest, scenes, records, raw = _training_split(world_dir, config, log)
    log(f"{len(records)} template questions; training the tiny {config.architecture} from scratch")
    adapter = _tiny_model(config, vocabulary(raw))
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
        ask=ask_templates,
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
        save_every=SFT_SAVE_EVERY,
    )
    result.root.mkdir(parents=True, exist_ok=True)
    checkpoints = result.root / SFT_CHECKPOINTS_DIRNAME
    losses = train_sft(
        adapter,
        sampler.batch,
        sft,
        log_path=result.root / "sft_log.jsonl",
        checkpoint_dir=checkpoints,
        resume=True,
        sampler_state=sampler,
    )
    for reader, _ in scenes:
        reader.close()
    save = save_tiny_qwen_vl if config.architecture == QWEN2_VL else save_tiny_llava
    save(adapter.model, adapter.processor, result.model_dir)
    report = {
        "config": asdict(config),
        "questions": len(records),
        "sft_loss_first": float(np.mean(losses[:25])),
        "sft_loss_last": float(np.mean(losses[-25:])),
        "sft_seconds": round(time.time() - started, 1),
    }
    (result.root / READY_NAME).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)
    log(
        f"SFT done: loss {report['sft_loss_first']:.3f} -> {report['sft_loss_last']:.3f} "
        f"in {report['sft_seconds']:.0f} s"
    )


def _tiny_model(config: DefaultModelConfig, words: list[str]) -> LlavaAdapter | QwenVLAdapter:
    """The recipe's untrained model in its adapter, LLaVA-NeXT or Qwen2-VL."""
    if config.architecture == QWEN2_VL:
        model, processor = build_tiny_qwen_vl(
            words,
            kind="qwen2_vl",
            num_layers=config.num_layers,
            hidden_size=config.hidden_size,
            vision_width=config.vision_hidden_size,
            patch_size=QWEN_PATCH_SIZE,
            seed=config.seed,
        )
        model.config.tile_size = DEFAULT_TILE_SIZE  # read back by QwenVLOptions.from_config
        return QwenVLAdapter(model, processor)
    model, processor = build_tiny_llava(
        words,
        hidden_size=config.hidden_size,
        vision_hidden_size=config.vision_hidden_size,
        num_layers=config.num_layers,
        seed=config.seed,
    )
    return LlavaAdapter(model, processor)


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
