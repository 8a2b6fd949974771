"""Supervised fine-tuning of a LLaVA model on DIP-shaped inputs.

Each example is laid out exactly as coarse-to-fine inference feeds the LLM:
``[prefix, thumbnail tokens, retained tile tokens in raster order (+ newline per row),
question, answer]``, so a model trained here sees at training time the sequences it
will see at inference. Loss is next-token cross-entropy on the answer only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.pruning.coarse_to_fine import layout_vision_tokens, tile_token_positions

IGNORE_INDEX = -100


@dataclass
class VisualInput:
    """The visual part of one example.

    Attributes:
        thumbnail: ``B x B`` uint8 RGB thumbnail.
        tiles: ``B x B`` uint8 RGB tiles of one pyramid level.
        positions: Grid position ``(row, col)`` of each tile in its level.
        keep: Optional bool mask over the tiles' tokens (tile-major), as left by pruning.
    """

    thumbnail: np.ndarray
    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]
    keep: np.ndarray | None = None


@dataclass
class SFTExample:
    """One question-answer pair on one visual input."""

    visual: VisualInput
    question: str
    answer: str


def answer_ids(adapter: LlavaAdapter, answer: str) -> torch.Tensor:
    """Token ids the model must produce: the answer, then end-of-sequence."""
    ids = adapter.tokenizer(" " + answer, add_special_tokens=False).input_ids
    return torch.tensor([*ids, adapter.tokenizer.eos_token_id], device=adapter.device)


def build_batch(
    adapter: LlavaAdapter, examples: list[SFTExample]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed a batch (with gradients through the vision tower and projector).

    Returns:
        ``(inputs_embeds, attention_mask, labels)``, right-padded.
    """
    images = []
    for example in examples:
        images.append(example.visual.thumbnail)
        images.extend(example.visual.tiles)
    encoded = adapter.encode_pixels(adapter.pixel_values(images))
    sequences, targets = [], []
    cursor = 0
    for example in examples:
        visual = example.visual
        thumbnail = encoded[cursor]
        tiles = encoded[cursor + 1 : cursor + 1 + len(visual.tiles)]
        cursor += 1 + len(visual.tiles)
        tokens = tiles.reshape(-1, adapter.hidden_size)
        positions = tile_token_positions(visual.positions, adapter.tokens_per_side)
        if visual.keep is not None:
            index = torch.as_tensor(np.flatnonzero(visual.keep), device=tokens.device)
            tokens, positions = tokens[index], positions[visual.keep]
        vision, _, _ = layout_vision_tokens(tokens, positions, thumbnail, adapter.image_newline)
        prompt_embeds, _ = adapter.assemble(adapter.prompt_parts(example.question), vision)
        target = answer_ids(adapter, example.answer)
        sequences.append(torch.cat([prompt_embeds[0], adapter.embed_ids(target)]))
        labels = torch.full((sequences[-1].shape[0],), IGNORE_INDEX, device=adapter.device)
        labels[-len(target) :] = target
        targets.append(labels)
    length = max(seq.shape[0] for seq in sequences)
    embeds = sequences[0].new_zeros(len(sequences), length, adapter.hidden_size)
    mask = torch.zeros(len(sequences), length, dtype=torch.long, device=adapter.device)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, device=adapter.device)
    for i, (seq, lab) in enumerate(zip(sequences, targets, strict=True)):
        embeds[i, : seq.shape[0]] = seq
        mask[i, : seq.shape[0]] = 1
        labels[i, : seq.shape[0]] = lab
    return embeds, mask, labels


def sft_loss(adapter: LlavaAdapter, examples: list[SFTExample]) -> torch.Tensor:
    """Mean answer-token cross-entropy of a batch."""
    embeds, mask, labels = build_batch(adapter, examples)
    output = adapter.model(
        inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False
    )
    return output.loss


@dataclass
class SFTConfig:
    """Optimisation settings."""

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    log_every: int = 25


def train_sft(
    adapter: LlavaAdapter,
    sample_batch: Callable[[int, int], list[SFTExample]],
    config: SFTConfig,
    log_path: Path | None = None,
) -> list[float]:
    """Train every parameter of the model with AdamW and a cosine schedule.

    Args:
        adapter: The model to train (put in train mode here, eval mode on return).
        sample_batch: ``sample_batch(step, batch_size)`` returns the examples of a step.
        config: Optimisation settings.
        log_path: Optional JSONL log of ``{"step", "loss"}`` every ``log_every`` steps.

    Returns:
        The loss of every step.
    """
    model = adapter.model
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    log = log_path.open("a") if log_path else None
    try:
        progress = tqdm(range(config.steps), desc="sft", leave=False)
        for step in progress:
            loss = sft_loss(adapter, sample_batch(step, config.batch_size))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if step % config.log_every == 0 or step == config.steps - 1:
                recent = float(np.mean(losses[-config.log_every :]))
                progress.set_postfix(loss=f"{recent:.3f}")
                if log:
                    log.write(json.dumps({"step": step, "loss": recent}) + "\n")
                    log.flush()
    finally:
        if log:
            log.close()
        model.eval()
    return losses
