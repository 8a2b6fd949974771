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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DEFAULT_MIN_SHORT_SIDE
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.auto import load_adapter
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from lrsvqa.train.batch import (
    IGNORE_INDEX,
    EmbeddedBatch,
    SFTExample,
    embed_batch,
    encode_batch,
    split_encoded,
)
from lrsvqa.train.checkpoint import check_folder, list_checkpoints, resume_point
from lrsvqa.train.data import ConversationData, load_conversations
from lrsvqa.train.loop import (
    LoopConfig,
    Phase,
    Stateful,
    StepSampler,
    TrainingLoop,
    warmup_cosine,
)
from lrsvqa.train.samplers import ConversationSampler
from lrsvqa.train.teacher import rows_from_hidden_states

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIRNAME = "model"


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
        return batch.inputs_embeds.sum() * 0.0
    rows = rows_from_hidden_states(
        adapter,
        hidden_states,
        batch.query_positions,
        batch.attention_mask,
        layers,
        batch.position_ids,
        inputs_embeds=batch.inputs_embeds,
    )
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
            # The token itself, without the deepstack columns of a Qwen3-VL row.
            tokens.append(tiles.reshape(-1, tiles.shape[-1])[:, : adapter.hidden_size])
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
    forward = getattr(adapter, "causal_lm_outputs", None)
    if forward is not None:  # Qwen-VL: carries Qwen3-VL's deepstack features
        output = forward(
            batch.inputs_embeds,
            batch.attention_mask,
            batch.position_ids,
            batch.labels,
            output_hidden_states=bool(grounding_layers),
        )
    else:
        output = adapter.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
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
        min_lr_ratio: Floor of the cosine decay, as a share of the peak rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (0 disables).
        log_every: Steps between log lines.
        token_heads: Classes of each token head (empty: no heads).
        token_loss_weight: Weight of the token-head loss next to the answer loss.
        vision_steps: Steps before the main ones that train only the vision tower,
            projector and heads on the token-head loss (cheap: no LLM pass).
        grounding_layers: LLM layers whose last-prompt-token attention the grounding
            loss pulls onto the answer's target tokens (empty: no grounding loss).
        grounding_loss_weight: Weight of the grounding loss next to the answer loss.
        save_every: Steps between checkpoints (0: none), counted over both phases.
        save_total_limit: Checkpoints kept (oldest deleted first).
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 25
    token_heads: dict[str, int] = field(default_factory=dict)
    token_loss_weight: float = 0.5
    vision_steps: int = 0
    grounding_layers: tuple[int, ...] = ()
    grounding_loss_weight: float = 0.1
    save_every: int = 0
    save_total_limit: int = 2

    def __post_init__(self) -> None:
        if self.vision_steps and not self.token_heads:
            raise ValueError("vision_steps train the token heads alone: set token_heads too")
        if min(self.steps, self.vision_steps, self.save_every) < 0 or self.save_total_limit < 1:
            raise ValueError("steps, vision_steps, save_every must be >= 0; save_total_limit >= 1")


def train_sft(
    adapter: LlavaAdapter,
    sample_batch: Callable[[int, int], list[SFTExample]],
    config: SFTConfig,
    log_path: Path | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    sampler_state: Stateful | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> list[float]:
    """Train every parameter of the model with AdamW and a cosine schedule.

    With ``config.token_heads``, first ``config.vision_steps`` steps train the vision
    path on the token heads alone, then every step adds the weighted token-head loss
    to the answer loss. The heads are discarded at the end. With
    ``config.grounding_layers``, every main step also adds the weighted grounding loss.
    Both phases run in :class:`lrsvqa.train.loop.TrainingLoop` (one process).

    Args:
        adapter: The model to train (put in train mode here, eval mode on return).
        sample_batch: ``sample_batch(step, batch_size)`` returns the examples of a step
            (steps counted over both phases).
        config: Optimisation settings.
        log_path: Optional JSONL log of ``{"phase", "step", "lr", "loss", "token_loss",
            "grounding_loss"}`` (means over the window) every ``log_every`` steps.
        checkpoint_dir: Where checkpoints go every ``config.save_every`` steps.
        resume: Continue from the newest checkpoint in ``checkpoint_dir``, if any.
        sampler_state: Where ``sample_batch`` keeps its randomness (e.g. the
            :class:`lrsvqa.train.samplers.TrainingSampler`), checkpointed with the run.
        stop_after: Stop this invocation at this step (over both phases); a resumed
            run continues to the end.
        progress: Show progress bars.

    Returns:
        The answer loss of every main step (of the whole run when resumed).
    """
    model = adapter.model
    heads = None
    if config.token_heads:
        heads = TokenHeads(adapter.hidden_size, config.token_heads).to(adapter.device)
    params = [*model.parameters(), *(heads.parameters() if heads else [])]
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        raise ValueError("SFT runs in one process; launch it without accelerate/torchrun")

    def adamw() -> torch.optim.Optimizer:
        return accelerator.prepare(
            torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        )

    def vision_loss(examples: list[SFTExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = heads.loss(adapter, encode_batch(adapter, examples), examples)
        return loss, {"token_loss": loss}

    def main_loss(examples: list[SFTExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        answer_loss, token_loss, ground = sft_loss(
            adapter, examples, heads, config.grounding_layers
        )
        total = answer_loss + config.token_loss_weight * token_loss
        terms = {"loss": answer_loss}
        if heads is not None:
            terms["token_loss"] = token_loss
        if config.grounding_layers:
            terms["grounding_loss"] = ground
        return total + config.grounding_loss_weight * ground, terms

    phases = []
    if heads is not None and config.vision_steps:
        phases.append(Phase("vision", config.vision_steps, vision_loss, adamw(), params))
    optimizer = adamw()
    # warmup_offset=1: the first step already trains (this recipe's schedule since v1).
    scheduler = warmup_cosine(
        optimizer, config.warmup_steps, config.steps, config.min_lr_ratio, warmup_offset=1
    )
    phases.append(Phase("sft", config.steps, main_loss, optimizer, params, scheduler))
    modules = {"model": model, **({"heads": heads} if heads is not None else {})}
    loop = TrainingLoop(
        accelerator,
        phases,
        StepSampler(sample_batch, config.batch_size, sampler_state),
        LoopConfig(
            max_grad_norm=config.max_grad_norm,
            log_every=config.log_every,
            save_every=config.save_every,
            save_total_limit=config.save_total_limit,
            stop_after=stop_after,
            progress=progress,
        ),
        modules,
        checkpoint_dir=checkpoint_dir,
        log_path=log_path,
    )
    existing = list_checkpoints(checkpoint_dir) if resume and checkpoint_dir else []
    if existing:
        loop.resume(existing[-1])
    model.train()
    try:
        result = loop.run()
    finally:
        model.eval()
    return result.history.get("sft", {}).get("loss", [])


def finetune_conversations(
    model: str | Path,
    data: ConversationData,
    out_dir: str | Path,
    config: SFTConfig,
    *,
    image_root: str | Path | None = None,
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
    dip_rule: str = DEFAULT_DIP_RULE,
    hr_pool: int | None = None,
    pool_mode: str | None = None,
    newline: bool | None = None,
    seed: int = 0,
    stop_after: int | None = None,
    resume: bool = False,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    attn_implementation: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a LLaVA checkpoint on LLaVA-format conversations (``lrsvqa sft``).

    Every turn is an example on the image's thumbnail and coarsest-level tiles (see
    :class:`lrsvqa.train.samplers.ConversationSampler`), trained with :func:`train_sft`
    (answer loss only). ``out_dir`` gets ``log.jsonl``, ``checkpoints/`` every
    ``config.save_every`` steps, and, once the last step is done, ``model/``
    (``save_pretrained``, loadable as ``--model``) and ``report.json``.

    Args:
        model: Checkpoint folder or hub id.
        data: LLaVA JSON file or the decoded list of items.
        out_dir: Output folder.
        config: Optimisation settings.
        image_root: Image folder (default: the JSON file's folder).
        min_short_side: DIP minimum short side (the coarsest level's size).
        dip_rule: DIP halving rule, likewise.
        hr_pool: Pooling stride of the high-resolution tiles (None: the checkpoint's);
            recorded in the saved model's config (``hr_pool``), which loads pooled.
        pool_mode: How they are pooled (None: the checkpoint's), recorded likewise.
        newline: False trains without row-end tokens (None: the model's own).
        seed: Seed of the draws and of the run.
        stop_after: Stop at this step (checkpointed); ``resume`` continues.
        resume: Continue from the newest checkpoint in ``out_dir``.
        dtype: Dtype to load the model in (``auto``: the checkpoint's on a GPU, float32
            on the CPU).
        device: Torch device (``auto``: CUDA, then MPS, then the CPU).
        attn_implementation: Attention kernel (None: transformers' choice).
        progress: Show progress bars.

    Raises:
        DistillDataError: Bad conversations (named by file and item).
        CheckpointError: Checkpoints exist and ``resume`` is off, ``resume`` without a
            checkpoint, or the checkpoint holds a pickle-format file or is not ours.
    """
    out = Path(out_dir)
    checkpoints = out / CHECKPOINTS_DIR
    start = resume_point(out, checkpoints, resume)
    if start is not None:
        check_folder(start)  # before loading the model
    conversations = load_conversations(data, image_root)  # bad data fails before it, too
    torch.manual_seed(seed)
    adapter = load_adapter(
        model, dtype=dtype, device=device, attn_implementation=attn_implementation
    ).with_options(hr_pool=hr_pool, pool_mode=pool_mode, newline=newline)
    sampler = ConversationSampler(
        conversations, adapter.tile_size, min_short_side, seed, dip_rule=dip_rule
    )
    out.mkdir(parents=True, exist_ok=True)
    losses = train_sft(
        adapter,
        sampler.batch,
        config,
        log_path=out / "log.jsonl",
        checkpoint_dir=checkpoints,
        resume=resume,
        sampler_state=sampler,
        stop_after=stop_after,
        progress=progress,
    )
    report = {
        "model": str(model),
        "conversations": len(conversations),
        "turns": len(sampler.turns),
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    if len(losses) == config.steps:
        adapter.model.config.hr_pool = adapter.options.hr_pool
        adapter.model.config.hr_pool_mode = adapter.options.pool_mode
        adapter.model.save_pretrained(out / MODEL_DIRNAME)
        adapter.processor.save_pretrained(out / MODEL_DIRNAME)
        report["model_dir"] = str(out / MODEL_DIRNAME)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
