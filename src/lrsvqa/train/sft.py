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

Optionally a grounding loss makes the last question token attend to the tokens of the
object the answer depends on, at chosen LLM layers. Coarse-to-fine inference rests on
that attention (the RFM is distilled from it); large pretrained LVLMs show it, but a
tiny LLM trained from scratch on answers alone spreads its attention evenly.
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
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions
from lrsvqa.train.teacher import rows_from_hidden_states

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
        target_tokens: Optional bool mask over the tiles' tokens (tile-major, before
            ``keep``) marking the object the answer depends on, for the grounding loss.
    """

    thumbnail: np.ndarray
    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]
    keep: np.ndarray | None = None
    token_labels: dict[str, np.ndarray] | None = None
    target_tokens: np.ndarray | None = None


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
    """Projected, unpooled tokens of every example's thumbnail then tiles, with gradients."""
    images = []
    for example in examples:
        images.append(example.visual.thumbnail)
        images.extend(example.visual.tiles)
    return adapter.encode_pixels(adapter.pixel_values(images))


def split_encoded(
    adapter: LlavaAdapter, encoded: torch.Tensor, examples: list[SFTExample]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(thumbnail, tiles)`` tokens of each example, cut from :func:`encode_batch`'s output.

    Tiles are pooled as the model pools high-resolution tiles, as inference feeds them.
    """
    parts, cursor = [], 0
    for example in examples:
        count = len(example.visual.tiles)
        tiles = adapter.pool_tiles(encoded[cursor + 1 : cursor + 1 + count])
        parts.append((encoded[cursor], tiles))
        cursor += 1 + count
    return parts


@dataclass
class EmbeddedBatch:
    """A right-padded batch, plus where each example's question ends and its targets sit.

    Attributes:
        embeds: (batch, n, hidden) input embeddings.
        mask: (batch, n) attention mask, 1 for real tokens.
        labels: (batch, n) answer token ids, ``IGNORE_INDEX`` elsewhere.
        query_positions: (batch,) index of the last prompt token (the RFM's query).
        tile_positions: Per example, sequence index of every kept tile token.
        target_flags: Per example, bool per kept tile token (None without targets).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    query_positions: torch.Tensor
    tile_positions: list[torch.Tensor]
    target_flags: list[torch.Tensor | None]


def embed_batch(
    adapter: LlavaAdapter, examples: list[SFTExample], encoded: torch.Tensor | None = None
) -> EmbeddedBatch:
    """Embed a batch (with gradients through the vision tower and projector).

    Args:
        adapter: The model.
        examples: The batch.
        encoded: Output of :func:`encode_batch` when the caller already has it.
    """
    if encoded is None:
        encoded = encode_batch(adapter, examples)
    sequences, targets, queries, tile_positions, target_flags = [], [], [], [], []
    parts = split_encoded(adapter, encoded, examples)
    for example, (thumbnail, tiles) in zip(examples, parts, strict=True):
        visual = example.visual
        tokens = tiles.reshape(-1, adapter.hidden_size)
        positions = tile_token_positions(visual.positions, adapter.tokens_per_side)
        flags = visual.target_tokens
        if visual.keep is not None:
            index = torch.as_tensor(np.flatnonzero(visual.keep), device=tokens.device)
            tokens, positions = tokens[index], positions[visual.keep]
            flags = flags[visual.keep] if flags is not None else None
        vision, hr_index, order = layout_vision_tokens(
            tokens, positions, thumbnail, adapter.image_newline
        )
        prompt_embeds, vision_slice = adapter.assemble(
            adapter.prompt_parts(example.question), vision
        )
        queries.append(prompt_embeds.shape[1] - 1)
        tile_positions.append(torch.as_tensor(vision_slice.start + hr_index, device=adapter.device))
        target_flags.append(
            torch.as_tensor(flags[order], device=adapter.device)
            if flags is not None and flags.any()
            else None
        )
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
    return EmbeddedBatch(
        embeds,
        mask,
        labels,
        torch.as_tensor(queries, device=adapter.device),
        tile_positions,
        target_flags,
    )


def build_batch(
    adapter: LlavaAdapter, examples: list[SFTExample], encoded: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs_embeds, attention_mask, labels)`` of :func:`embed_batch`."""
    batch = embed_batch(adapter, examples, encoded)
    return batch.embeds, batch.mask, batch.labels


def grounding_loss(
    adapter: LlavaAdapter,
    batch: EmbeddedBatch,
    hidden_states: tuple[torch.Tensor, ...],
    layers: tuple[int, ...],
) -> torch.Tensor:
    """Mean ``-log`` share of the query's tile attention that falls on the target tokens.

    The attention is the head average of the last prompt token's row at each of
    ``layers`` (what the RFM scores and is distilled from), restricted to the tile
    tokens and renormalised over them; examples without target tokens add nothing.

    Args:
        adapter: The model.
        batch: The embedded batch.
        hidden_states: The LLM's ``output_hidden_states`` (entry ``l`` enters layer ``l``).
        layers: LLM layer indices to ground.
    """
    grounded = [i for i, flags in enumerate(batch.target_flags) if flags is not None]
    if not grounded or not layers:
        return batch.embeds.sum() * 0.0
    queries = batch.query_positions[:, None]
    rows = rows_from_hidden_states(adapter, hidden_states, queries, batch.mask, layers)
    attention = rows.mean(dim=2)[:, :, 0]  # head average: (layers, batch, n)
    losses = []
    for per_layer in attention:
        for example in grounded:
            tiles = per_layer[example, batch.tile_positions[example]]
            share = tiles[batch.target_flags[example]].sum() / tiles.sum().clamp_min(1e-12)
            losses.append(-torch.log(share.clamp_min(1e-6)))
    return torch.stack(losses).mean()


class TokenHeads(nn.Module):
    """Linear classifiers on projected tile tokens, one per labelled attribute.

    Args:
        hidden_size: Width of the projected tokens (the LLM hidden size).
        classes: Number of classes of each head, by the name used in ``token_labels``.
    """

    def __init__(self, hidden_size: int, classes: dict[str, int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_size, n) for name, n in classes.items()})

    def loss(
        self, adapter: LlavaAdapter, encoded: torch.Tensor, examples: list[SFTExample]
    ) -> torch.Tensor:
        """Mean cross-entropy of every head over the labelled tile tokens of a batch.

        Args:
            adapter: The model (pools the tiles as it feeds them to the LLM).
            encoded: Output of :func:`encode_batch` for ``examples``.
            examples: The batch; examples without ``token_labels`` add nothing.
        """
        tokens, labels = [], {name: [] for name in self.heads}
        parts = split_encoded(adapter, encoded, examples)
        for example, (_, tiles) in zip(examples, parts, strict=True):
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
    grounding_layers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Answer-token cross-entropy, token-head loss and grounding loss of a batch.

    The last two are 0 without heads and without grounding layers.
    """
    encoded = encode_batch(adapter, examples)
    batch = embed_batch(adapter, examples, encoded)
    output = adapter.model(
        inputs_embeds=batch.embeds,
        attention_mask=batch.mask,
        labels=batch.labels,
        use_cache=False,
        output_hidden_states=bool(grounding_layers),
    )
    token_loss = heads.loss(adapter, encoded, examples) if heads is not None else output.loss * 0.0
    if grounding_layers:
        ground = grounding_loss(adapter, batch, output.hidden_states, grounding_layers)
    else:
        ground = output.loss * 0.0
    return output.loss, token_loss, ground


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
        grounding_layers: LLM layers whose last-prompt-token attention the grounding
            loss pulls onto the answer's target tokens (empty: no grounding loss).
        grounding_loss_weight: Weight of the grounding loss next to the answer loss.
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
    grounding_layers: tuple[int, ...] = ()
    grounding_loss_weight: float = 0.1

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
    to the answer loss. The heads are discarded at the end. With
    ``config.grounding_layers``, every main step also adds the weighted grounding loss.

    Args:
        adapter: The model to train (put in train mode here, eval mode on return).
        sample_batch: ``sample_batch(step, batch_size)`` returns the examples of a step.
        config: Optimisation settings.
        log_path: Optional JSONL log of ``{"phase", "step", "loss", "token_loss",
            "grounding_loss"}`` every ``log_every`` steps.

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

    def record(phase: str, step: int, series: dict[str, list[float]], bar) -> None:
        if step % config.log_every and step != bar.total - 1:
            return
        line = {"phase": phase, "step": step, "loss": None, "token_loss": None}
        for name, values in series.items():
            if values:
                line[name] = float(np.mean(values[-config.log_every :]))
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
                loss = heads.loss(adapter, encode_batch(adapter, examples), examples)
                _step(optimizer, loss, params)
                token_losses.append(loss.item())
                record("vision", step, {"token_loss": token_losses}, bar)
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config))
        token_losses, grounding_losses = [], []
        bar = tqdm(range(config.steps), desc="sft", leave=False)
        for step in bar:
            answer_loss, token_loss, ground = sft_loss(
                adapter,
                sample_batch(config.vision_steps + step, config.batch_size),
                heads,
                config.grounding_layers,
            )
            total = answer_loss + config.token_loss_weight * token_loss
            _step(optimizer, total + config.grounding_loss_weight * ground, params)
            scheduler.step()
            losses.append(answer_loss.item())
            if heads is not None:
                token_losses.append(token_loss.item())
            if config.grounding_layers:
                grounding_losses.append(ground.item())
            series = {"loss": losses, "token_loss": token_losses}
            record("sft", step, {**series, "grounding_loss": grounding_losses}, bar)
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
