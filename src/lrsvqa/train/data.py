r"""Distillation data: LLaVA-format conversations, their token layout and their tiles.

Each item holds one image and a single- or multi-turn dialogue::

    {"image": "rel/path.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat ...?"},
                       {"from": "gpt", "value": "..."}, ...]}

Training sees the image as the paper's training input (sec. 4.1.1): the thumbnail plus
every tile of the coarsest DIP level (``I_thumb`` and ``I^1_tiles``). The text is
rendered with the model's own chat template, so the last prompt token of every turn
sits exactly where inference puts its last token (the generation prompt).

Everything here runs on the CPU side of a ``DataLoader`` (tile reading, tokenising);
turning samples into embeddings happens on the device in :mod:`lrsvqa.train.batch`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrsvqa.errors import InputFileError
from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DEFAULT_MIN_SHORT_SIDE
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.layout import tile_token_positions

IMAGE_PLACEHOLDER = "<image>"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")

ConversationData = str | Path | Sequence[Mapping]


class DistillDataError(InputFileError):
    """A conversation item cannot be used; the message names the file and the item."""


@dataclass(frozen=True)
class Turn:
    """One question and its answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Conversation:
    """A validated dialogue about one image.

    Attributes:
        image: Path of the image file.
        turns: The dialogue, in order.
        where: Human-readable origin (file and item), used in error messages.
    """

    image: Path
    turns: tuple[Turn, ...]
    where: str


def _describe(source: str, index: int, item: object) -> str:
    """``'data.json item 3 (id abc)'``: enough to find a bad item in a large file."""
    identifier = item.get("id") if isinstance(item, Mapping) else None
    suffix = f" (id {identifier})" if identifier is not None else ""
    return f"{source} item {index}{suffix}"


def _turns(messages: object, where: str) -> tuple[Turn, ...]:
    """Validate alternating human/gpt messages with one ``<image>`` in the first question."""
    if not isinstance(messages, list) or not messages:
        raise DistillDataError(where, "'conversations' must be a non-empty list")
    if len(messages) % 2:
        raise DistillDataError(
            where, f"expected human/gpt pairs, got an odd number ({len(messages)}) of messages"
        )
    turns = []
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("value"), str):
            raise DistillDataError(
                where, f"message {position} must be an object with a string 'value'"
            )
        roles = HUMAN_ROLES if position % 2 == 0 else ASSISTANT_ROLES
        if message.get("from") not in roles:
            raise DistillDataError(
                where,
                f"message {position} is from {message.get('from')!r}, expected "
                f"one of {roles} (turns must alternate, starting with the human)",
            )
    placeholders = [m["value"].count(IMAGE_PLACEHOLDER) for m in messages]
    if placeholders[0] != 1 or sum(placeholders) != 1:
        raise DistillDataError(
            where,
            f"the first human message must contain the only {IMAGE_PLACEHOLDER!r} "
            f"placeholder (found {placeholders[0]} there, {sum(placeholders)} in total)",
        )
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        text = question["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if not text:
            raise DistillDataError(where, "a human message has no text besides the image")
        turns.append(Turn(text, answer["value"].strip()))
    return tuple(turns)


def parse_conversation(item: object, image_root: Path, where: str) -> Conversation:
    """Validate one LLaVA-format item and resolve its image path.

    Args:
        item: The decoded JSON object.
        image_root: Directory relative image paths are resolved against.
        where: Origin of the item, for error messages.

    Raises:
        DistillDataError: Naming ``where`` and what is wrong.
    """
    if not isinstance(item, Mapping):
        raise DistillDataError(where, f"expected a JSON object, got {type(item).__name__}")
    image = item.get("image")
    if not isinstance(image, str) or not image:
        raise DistillDataError(where, "missing 'image' (one image per conversation)")
    path = Path(image) if Path(image).is_absolute() else image_root / image
    if not path.is_file():
        raise DistillDataError(where, f"image file {path} does not exist")
    return Conversation(path, _turns(item.get("conversations"), where), where)


def load_conversations(
    data: ConversationData, image_root: str | Path | None = None
) -> list[Conversation]:
    """Read and validate every conversation up front, so bad data fails before training.

    Args:
        data: A LLaVA JSON file (a list of items) or the already decoded list.
        image_root: Directory of the images; defaults to the JSON file's directory
            (or the working directory for an in-memory list).

    Raises:
        DistillDataError: For an unreadable file, bad JSON or any bad item.
    """
    if isinstance(data, (str, Path)):
        source = Path(data)
        try:
            items = json.loads(source.read_text())
        except OSError as error:
            raise DistillDataError(source, f"cannot read ({error})") from error
        except json.JSONDecodeError as error:
            raise DistillDataError(source, f"not valid JSON ({error})") from error
        root = Path(image_root) if image_root is not None else source.parent
        name = str(source)
    else:
        items, root, name = data, Path(image_root or "."), "conversation list"
    if not isinstance(items, list) or not items:
        raise DistillDataError(name, "expected a non-empty JSON list of conversations")
    return [
        parse_conversation(item, root, _describe(name, index, item))
        for index, item in enumerate(items)
    ]


@dataclass(frozen=True)
class TextLayout:
    """Token ids around the image and where each turn's last prompt token is.

    Attributes:
        prefix_ids: Chat-template tokens before the image (system prompt, user tag).
        suffix_ids: Every token after the image: questions, generation prompts, answers.
        query_offsets: For each turn, the index in ``suffix_ids`` of the last token
            before the answer starts (the token inference would generate from).
        label_ids: Optional target id per ``suffix_ids`` token (``-100`` where no loss
            applies), for training on the answers (SFT).
    """

    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor
    query_offsets: tuple[int, ...]
    label_ids: torch.Tensor | None = None


def _messages(turns: Sequence[Turn]) -> list[dict]:
    """Chat messages with the image first in the first question, as inference builds them."""
    messages = []
    for index, turn in enumerate(turns):
        content = [{"type": "image"}] if index == 0 else []
        content.append({"type": "text", "text": turn.question})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    return messages


def _render(processor, messages: list[dict], generation_prompt: bool, where: str) -> str:
    if not getattr(processor, "chat_template", None):
        raise DistillDataError(where, "the model's processor has no chat template")
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def text_layout(processor, turns: Sequence[Turn], where: str) -> TextLayout:
    """Tokenise a dialogue with the chat template and locate each turn's query token.

    The whole dialogue is rendered and tokenised once (so tokens match what the model
    was trained on). Each turn's query is the last token lying entirely inside the
    dialogue rendered up to that question with the generation prompt: a token that
    straddles the boundary would already contain answer text.

    Args:
        processor: The model's processor (chat template, tokenizer, image token).
        turns: The dialogue.
        where: Origin of the item, for error messages.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
    messages = _messages(turns)
    full = _render(processor, messages, False, where)
    if full.count(image_token) != 1:
        raise DistillDataError(where, f"rendered chat must contain one {image_token!r}")
    before, after = full.split(image_token)
    start = len(before) + len(image_token)
    encoded = tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in encoded["offset_mapping"]]
    offsets = []
    for turn in range(len(turns)):
        prompt = _render(processor, messages[: 2 * turn + 1], True, where)
        if not full.startswith(prompt) or len(prompt) <= start:
            raise DistillDataError(
                where,
                f"the chat template renders turn {turn + 1} with a generation prompt "
                "that is not a prefix of the full dialogue; cannot locate its last prompt token",
            )
        offsets.append(int(np.searchsorted(ends, len(prompt) - start, side="right")) - 1)
    prefix = tokenizer(before, add_special_tokens=True, return_tensors="pt").input_ids[0]
    suffix = torch.tensor(encoded["input_ids"], dtype=torch.long)
    return TextLayout(prefix, suffix, tuple(offsets))


@dataclass
class RawSample:
    """One conversation ready for the device: tokens, tiles and their token positions.

    Attributes:
        where: Origin of the item.
        text: Token layout of the dialogue.
        thumbnail: (B, B, 3) uint8 global view.
        tiles: (T, B, B, 3) uint8 tiles (the coarsest DIP level's, row-major, here).
        positions: (T * g * g, 2) global token-grid position of every tile token,
            tile-major, as :func:`tile_token_positions` lays them out.
        keep: Optional bool mask over the tile tokens, as left by pruning.
        target_tokens: Optional bool mask over the tile tokens (before ``keep``) marking
            what the answer depends on.
    """

    where: str
    text: TextLayout
    thumbnail: np.ndarray
    tiles: np.ndarray | list[np.ndarray]
    positions: np.ndarray
    keep: np.ndarray | None = None
    target_tokens: np.ndarray | None = None


class ConversationDataset(Dataset):
    """Conversations read as ``(thumbnail, level-1 tiles, token layout)`` samples.

    Args:
        conversations: Validated conversations.
        processor: The model's processor.
        tile_size: Tile side ``B`` of the vision tower.
        tokens_per_side: Vision tokens per tile side.
        min_short_side: DIP minimum short side (the coarsest level's size).
        dip_rule: DIP halving rule (:func:`lrsvqa.imagery.pyramid.level_sizes`), which
            decides what the coarsest level is.
    """

    def __init__(
        self,
        conversations: Sequence[Conversation],
        processor,
        tile_size: int,
        tokens_per_side: int,
        min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
        dip_rule: str = DEFAULT_DIP_RULE,
    ) -> None:
        self.conversations = list(conversations)
        self.processor = processor
        self.tile_size = tile_size
        self.tokens_per_side = tokens_per_side
        self.min_short_side = min_short_side
        self.dip_rule = dip_rule

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> RawSample:
        conversation = self.conversations[index]
        text = text_layout(self.processor, conversation.turns, conversation.where)
        try:
            with PyramidReader.open(
                conversation.image,
                tile_size=self.tile_size,
                min_short_side=self.min_short_side,
                dip_rule=self.dip_rule,
            ) as reader:
                tiles = reader.geometry.levels[0].tiles()
                pixels = np.stack(reader.tiles(0, tiles))
                thumbnail = reader.thumbnail()
        except ImageReadError as error:
            raise DistillDataError(conversation.where, str(error)) from error
        return RawSample(
            where=conversation.where,
            text=text,
            thumbnail=thumbnail,
            tiles=pixels,
            positions=tile_token_positions(tiles, self.tokens_per_side),
        )


def collate(samples: list[RawSample]) -> list[RawSample]:
    """Keep samples as a list: lengths differ, padding happens on the device."""
    return samples
