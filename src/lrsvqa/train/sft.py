"""Supervised fine-tuning of a LLaVA model on DIP-shaped inputs.

Each example is laid out exactly as coarse-to-fine inference feeds the LLM:
``[prefix, thumbnail tokens, retained tile tokens in raster order (+ newline per row),
question, answer]``, so a model trained here sees at training time the sequences it
will see at inference. Loss is next-token cross-entropy on the answer only, optionally
plus token heads: linear probes that make every projected tile token predict the
attributes of the object under it. A vision tower trained from scratch only through
the answer loss learns nothing for hundreds of steps, because the LLM has no reason yet
to look at any one token; the heads give the vision path a dense signal from the first
step, and they are dropped after training (the saved model is a plain LLaVA).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
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
        token_labels: Optional class index per tile token (tile-major, before ``keep``)
            for each token head, ``IGNORE_INDEX`` where unknown.
    """

    thumbnail: np.ndarray
    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]
    keep: np.ndarray | None = None
    token_labels: dict[str, np.ndarray] | None = None


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


def encode_batch(adapter: LlavaAdapter, examples: list[SFTExample]) -> torch.Tensor:
    """Projected tokens of every example's thumbnail then tiles, with gradients."""
    images = []
    for example in examples:
        images.append(example.visual.thumbnail)
        images.extend(example.visual.tiles)
    return adapter.encode_pixels(adapter.pixel_values(images))


def split_encoded(
    encoded: torch.Tensor, examples: list[SFTExample]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(thumbnail, tiles)`` tokens of each example, cut from :func:`encode_batch`'s output."""
    parts, cursor = [], 0
    for example in examples:
        count = len(example.visual.tiles)
        parts.append((encoded[cursor], encoded[cursor + 1 : cursor + 1 + count]))
        cursor += 1 + count
    return parts


def build_batch(
    adapter: LlavaAdapter, examples: list[SFTExample], encoded: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed a batch (with gradients through the vision tower and projector).

    Args:
        adapter: The model.
        examples: The batch.
        encoded: Output of :func:`encode_batch` when the caller already has it.

    Returns:
        ``(inputs_embeds, attention_mask, labels)``, right-padded.
    """
    if encoded is None:
        encoded = encode_batch(adapter, examples)
    sequences, targets = [], []
    for example, (thumbnail, tiles) in zip(examples, split_encoded(encoded, examples), strict=True):
        visual = example.visual
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


class TokenHeads(nn.Module):
    """Linear classifiers on projected tile tokens, one per labelled attribute.

    Args:
        hidden_size: Width of the projected tokens (the LLM hidden size).
        classes: Number of classes of each head, by the name used in ``token_labels``.
    """

    def __init__(self, hidden_size: int, classes: dict[str, int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_size, n) for name, n in classes.items()})

    def loss(self, encoded: torch.Tensor, examples: list[SFTExample]) -> torch.Tensor:
        """Mean cross-entropy of every head over the labelled tile tokens of a batch.

        Args:
            encoded: Output of :func:`encode_batch` for ``examples``.
            examples: The batch; examples without ``token_labels`` add nothing.
        """
        tokens, labels = [], {name: [] for name in self.heads}
        for example, (_, tiles) in zip(examples, split_encoded(encoded, examples), strict=True):
            visual = example.visual
            if visual.token_labels is None:
                continue
            tokens.append(tiles.reshape(-1, tiles.shape[-1]))
            for name in self.heads:
                labels[name].append(torch.as_tensor(visual.token_labels[name], dtype=torch.long))
        if not tokens:
            return encoded.sum() * 0.0
        features = torch.cat(tokens)
        losses = [
            nn.functional.cross_entropy(
                head(features),
                torch.cat(labels[name]).to(features.device),
                ignore_index=IGNORE_INDEX,
            )
            for name, head in self.heads.items()
        ]
        return torch.stack(losses).nan_to_num(0.0).mean()


def sft_loss(
    adapter: LlavaAdapter,
    examples: list[SFTExample],
    heads: TokenHeads | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean answer-token cross-entropy of a batch, and the token-head loss (0 without heads)."""
    encoded = encode_batch(adapter, examples)
    embeds, mask, labels = build_batch(adapter, examples, encoded)
    output = adapter.model(
        inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False
    )
    token_loss = heads.loss(encoded, examples) if heads is not None else output.loss * 0.0
    return output.loss, token_loss


@dataclass
class SFTConfig:
    """Optimisation settings.

    Attributes:
        steps: Steps on the full loss.
        batch_size: Examples per step.
        learning_rate: Peak AdamW learning rate (linear warm-up, cosine decay).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        log_every: Steps between log lines.
        token_heads: Classes of each token head (empty: no heads).
        token_loss_weight: Weight of the token-head loss next to the answer loss.
        vision_steps: Steps before the main ones that train only the vision tower,
            projector and heads on the token-head loss (cheap: no LLM pass).
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    log_every: int = 25
    token_heads: dict[str, int] = field(default_factory=dict)
    token_loss_weight: float = 0.5
    vision_steps: int = 0

    def __post_init__(self) -> None:
        if self.vision_steps and not self.token_heads:
            raise ValueError("vision_steps train the token heads alone: set token_heads too")


def train_sft(
    adapter: LlavaAdapter,
    sample_batch: Callable[[int, int], list[SFTExample]],
    config: SFTConfig,
    log_path: Path | None = None,
) -> list[float]:
    """Train every parameter of the model with AdamW and a cosine schedule.

    With ``config.token_heads``, first ``config.vision_steps`` steps train the vision
    path on the token heads alone, then every step adds the weighted token-head loss
    to the answer loss. The heads are discarded at the end.

    Args:
        adapter: The model to train (put in train mode here, eval mode on return).
        sample_batch: ``sample_batch(step, batch_size)`` returns the examples of a step.
        config: Optimisation settings.
        log_path: Optional JSONL log of ``{"phase", "step", "loss", "token_loss"}``
            every ``log_every`` steps.

    Returns:
        The answer loss of every main step.
    """
    model = adapter.model
    model.train()
    heads = None
    if config.token_heads:
        heads = TokenHeads(adapter.hidden_size, config.token_heads).to(adapter.device)
    params = [*model.parameters(), *(heads.parameters() if heads else [])]
    losses: list[float] = []
    log = log_path.open("a") if log_path else None

    def record(phase: str, step: int, answer: list[float], token: list[float], bar) -> None:
        if step % config.log_every and step != bar.total - 1:
            return
        line = {"phase": phase, "step": step, "loss": None, "token_loss": None}
        if answer:
            line["loss"] = float(np.mean(answer[-config.log_every :]))
        if token:
            line["token_loss"] = float(np.mean(token[-config.log_every :]))
        bar.set_postfix({k: f"{v:.3f}" for k, v in line.items() if isinstance(v, float)})
        if log:
            log.write(json.dumps(line) + "\n")
            log.flush()

    try:
        if heads is not None and config.vision_steps:
            optimizer = torch.optim.AdamW(
                params, lr=config.learning_rate, weight_decay=config.weight_decay
            )
            token_losses: list[float] = []
            bar = tqdm(range(config.vision_steps), desc="sft vision", leave=False)
            for step in bar:
                examples = sample_batch(step, config.batch_size)
                loss = heads.loss(encode_batch(adapter, examples), examples)
                _step(optimizer, loss, params)
                token_losses.append(loss.item())
                record("vision", step, [], token_losses, bar)
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config))
        token_losses = []
        bar = tqdm(range(config.steps), desc="sft", leave=False)
        for step in bar:
            answer_loss, token_loss = sft_loss(
                adapter, sample_batch(config.vision_steps + step, config.batch_size), heads
            )
            _step(optimizer, answer_loss + config.token_loss_weight * token_loss, params)
            scheduler.step()
            losses.append(answer_loss.item())
            if heads is not None:
                token_losses.append(token_loss.item())
            record("sft", step, losses, token_losses, bar)
    finally:
        if log:
            log.close()
        model.eval()
    return losses


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """One clipped AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def _cosine(config: SFTConfig) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 5% of the peak rate."""

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule
