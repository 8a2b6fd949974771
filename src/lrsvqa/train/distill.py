"""Distil the Region Focus Module from the frozen LLM (paper sec. 4.1.2), on accelerate.

Training runs in the shared loop (:mod:`lrsvqa.train.loop`), so the same code runs on
one CPU, several GPUs (DDP) or several nodes, chosen by ``accelerate launch`` /
``torchrun`` configuration (DeepSpeed ZeRO and FSDP without checkpoints). Only
:class:`StudentAttention` (holding the RFM) is handed to ``accelerator.prepare``: the
vision tower, projector and LLM stay frozen outside the wrapped module, and the
teacher's attention is computed under ``no_grad``.

Outputs in ``out_dir``:

* ``rfm.safetensors`` + ``rfm_config.json``: what :meth:`RegionFocusModule.from_pretrained`
  reads (the config records ``distill_pairs`` and the run's data, recipe and losses),
  and ``README.md``, the model card generated from it (``push_to_hub`` uploads all);
* ``log.jsonl``: one line per logging window (step, loss, kl, kl_hr, mse, lr);
* ``checkpoints/step_NNNNNNN``: safetensors + JSON folders (RFM, optimizer, schedule,
  RNG, data position, progress; see :mod:`lrsvqa.train.checkpoint`, never a pickle)
  that ``resume`` continues from;
* ``report.json``: the :class:`DistillReport`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader

from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DEFAULT_MIN_SHORT_SIDE
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.auto import load_adapter
from lrsvqa.models.placement import DEFAULT_DTYPE
from lrsvqa.models.rfm import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    SELECTED_STRUCTURE,
    RegionFocusModule,
    RFMConfig,
    default_layer_indices,
)
from lrsvqa.strategies.c2f import DEFAULT_ALPHA
from lrsvqa.train.batch import embed_batch
from lrsvqa.train.checkpoint import check_folder, resume_point
from lrsvqa.train.data import (
    Conversation,
    ConversationData,
    ConversationDataset,
    collate,
    load_conversations,
)
from lrsvqa.train.loop import LoaderSource, LoopConfig, Phase, TrainingLoop, warmup_cosine
from lrsvqa.train.losses import LossWeights, distillation_loss, top_overlap
from lrsvqa.train.teacher import (
    StudentAttention,
    mark_trainable,
    resolve_pairs,
    teacher_attention,
)

LOG_NAME = "log.jsonl"
REPORT_NAME = "report.json"
CHECKPOINTS_DIR = "checkpoints"
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class DistillConfig:
    """Everything a distillation run needs.

    Attributes:
        model: A loaded :class:`LlavaAdapter` or a checkpoint path / hub id. A loaded
            model is frozen in place (``requires_grad_(False)``, eval mode).
        data: LLaVA-format JSON file or the already decoded list of items.
        out_dir: Where the RFM, log, checkpoints and report go.
        image_root: Directory of the images (default: the JSON file's directory).
        rfm_layers: LLM layers ``m_1 < ... < m_R`` the RFM layers start from
            (default: :func:`default_layer_indices`, the paper's 1, 5, 11, 14).
        pairs: Student-teacher pairs ``(r_k, m_k)``: RFM layer index -> LLM layer
            (default: first and last RFM layer with their own LLM layers).
        steps: Optimizer steps of the whole schedule (a resumed run continues up to this).
        stop_after: Stop this invocation at this step (checkpointed and exported), e.g.
            to fit a cluster time slot; a later ``resume`` run continues to ``steps``.
        batch_size: Conversations per process per micro-batch.
        grad_accum: Micro-batches per optimizer step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of ``steps`` spent warming up.
        max_grad_norm: Gradient clipping norm (0 disables).
        weights: Loss weights ``lambda_hr``, ``lambda_mse``, ``lambda_kl``.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast. One process can
            only use one setting (accelerate's state is process-wide).
        cpu: Force CPU; needed for multi-process CPU runs (gloo) under ``torchrun``.
        model_dtype: Dtype to load a model path in (the RFM always trains in float32);
            ``auto``: the checkpoint's on a GPU, float32 on the CPU.
        attn_implementation: Attention kernel of the frozen model (None: transformers').
        min_short_side: DIP minimum short side; fixes which level is "level 1".
        dip_rule: DIP halving rule (``"official"`` or ``"paper-text"``), likewise.
        hr_pool: Pooling stride of the high-resolution tiles (None: the model's config;
            2 = the paper's model); inference must use the same.
        pool_mode: How they are pooled (None: the model's config).
        newline: Row-end tokens (None: the model's own; False: none).
        seed: Seed of weights-independent randomness and data order.
        num_workers: ``DataLoader`` workers reading tiles.
        log_every: Steps per ``log.jsonl`` line (losses averaged over the window).
        save_every: Steps between checkpoints (0: no checkpoints at all); the last step
            is always checkpointed when checkpoints are on.
        save_total_limit: Checkpoints kept (oldest deleted first).
        resume: Continue from the latest checkpoint in ``out_dir`` (True) or from a
            given checkpoint folder.
        eval_data: Conversations to measure agreement on before and after training
            (default: the first ``eval_size`` training conversations).
        eval_size: Conversations used for that measurement (0 skips it).
        alpha: Top-alpha share of tokens for the overlap metric.
        progress: Show a progress bar on the main process.
    """

    model: LlavaAdapter | str | Path
    data: ConversationData
    out_dir: str | Path
    image_root: str | Path | None = None
    rfm_layers: Sequence[int] | None = None
    pairs: Sequence[tuple[int, int]] | None = None
    steps: int = 1000
    stop_after: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    mixed_precision: str = "no"
    cpu: bool = False
    model_dtype: str = DEFAULT_DTYPE
    attn_implementation: str | None = None
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE
    dip_rule: str = DEFAULT_DIP_RULE
    hr_pool: int | None = None
    pool_mode: str | None = None
    newline: bool | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    save_every: int = 500
    save_total_limit: int = 2
    resume: bool | str | Path = False
    eval_data: ConversationData | None = None
    eval_size: int = 0
    alpha: float = DEFAULT_ALPHA
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "log_every": self.log_every,
            "save_total_limit": self.save_total_limit,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if min(self.save_every, self.eval_size, self.num_workers) < 0:
            raise ValueError("save_every, eval_size and num_workers must be >= 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")


@dataclass(frozen=True)
class Agreement:
    """How well the student's attention matches the teacher's on a set of dialogues.

    Attributes:
        loss: Distillation loss (eq. 6), mean over dialogues.
        kl: KL(teacher || student) over all vision tokens, mean over pairs and heads.
        kl_hr: The same over high-resolution tokens only.
        mse: MSE over high-resolution tokens.
        overlap: Share of the teacher's top-alpha high-res tokens (head-averaged) that
            the student also selects, mean over pairs, turns and dialogues.
        overlap_last: The same for the last pair only, whose RFM layer inference uses.
        conversations: Number of dialogues measured.
    """

    loss: float
    kl: float
    kl_hr: float
    mse: float
    overlap: float
    overlap_last: float
    conversations: int


@dataclass
class DistillReport:
    """What a run did and what it achieved.

    Attributes:
        out_dir: Output directory (holds the RFM files).
        steps: Optimizer steps reached.
        start_step: Step the run started from (non-zero when resumed).
        num_processes: Processes that trained.
        layer_indices: LLM layers the RFM layers were initialised from.
        pairs: Distilled ``(rfm_layer, llm_layer)`` pairs.
        first_loss: Loss of the first logged window of this run.
        last_loss: Loss of the last logged window.
        before: Agreement of the initial RFM (main process only).
        after: Agreement of the distilled RFM (main process only).
        is_main_process: Whether this process is the one that wrote the outputs.
    """

    out_dir: Path
    steps: int
    start_step: int
    num_processes: int
    layer_indices: list[int]
    pairs: list[list[int]]
    first_loss: float | None
    last_loss: float | None
    before: Agreement | None
    after: Agreement | None
    is_main_process: bool = True

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


# ---------------------------------------------------------------------- set-up
def _accelerator(config: DistillConfig) -> Accelerator:
    """Accelerator whose accumulation ignores epoch ends.

    ``sync_with_dataloader=False`` makes every optimizer step exactly ``grad_accum``
    micro-batches, also across epoch boundaries, so the data position of a checkpoint
    is simply a micro-batch count.
    """
    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.grad_accum, sync_with_dataloader=False
        ),
        mixed_precision=config.mixed_precision,
        cpu=config.cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        project_dir=str(config.out_dir),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes but accelerate set up {accelerator.num_processes}; "
            "without GPUs pass cpu=True (--cpu) so the processes join a gloo group"
        )
    return accelerator


def _load_adapter(
    model: LlavaAdapter | str | Path, dtype: str, device, attn_implementation: str | None = None
) -> LlavaAdapter:
    """Load (or take) the model, move it to the device and freeze it."""
    adapter = (
        load_adapter(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
        if isinstance(model, str | Path)
        else model
    )
    adapter.model.to(device)
    adapter.model.requires_grad_(False)
    adapter.model.eval()
    return adapter


def _base_model_name(model: LlavaAdapter | str | Path) -> str:
    if not isinstance(model, str | Path):
        return str(getattr(model.model, "name_or_path", "") or "")
    return str(model)


def _initial_rfm(
    adapter: LlavaAdapter, config: DistillConfig
) -> tuple[RegionFocusModule, list[tuple[int, int]]]:
    """The RFM copied from the LLM (float32 master weights) and its validated pairs."""
    num_llm_layers = len(adapter.decoder_layers)
    layer_indices = list(config.rfm_layers or default_layer_indices(num_llm_layers))
    rfm = RegionFocusModule.from_llm(
        adapter, layer_indices, base_model=_base_model_name(config.model)
    ).float()
    pairs = resolve_pairs(rfm.rfm_config.layer_indices, num_llm_layers, config.pairs)
    rfm.rfm_config.distill_pairs = [list(pair) for pair in pairs]
    return rfm, pairs


def _conversations(config: DistillConfig) -> tuple[list[Conversation], list[Conversation]]:
    """Training and held-out dialogues, read and checked before the model loads."""
    train = load_conversations(config.data, config.image_root)
    if config.eval_size == 0 or config.eval_data is None:
        return train, train
    return train, load_conversations(config.eval_data, config.image_root)


def _datasets(
    adapter: LlavaAdapter,
    config: DistillConfig,
    conversations: tuple[list[Conversation], list[Conversation]],
) -> tuple[ConversationDataset, ConversationDataset | None]:
    """Training set and the agreement set (held-out, or the first training dialogues).

    Both are validated up front so bad data fails before any training.
    """

    def dataset(conversations: list[Conversation]) -> ConversationDataset:
        return ConversationDataset(
            conversations,
            adapter.processor,
            adapter.tile_size,
            adapter.tokens_per_side,
            config.min_short_side,
            config.dip_rule,
        )

    train, held_out = conversations
    if config.eval_size == 0:
        return dataset(train), None
    return dataset(train), dataset(held_out[: config.eval_size])


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_agreement(
    adapter: LlavaAdapter,
    rfm: RegionFocusModule,
    dataset: ConversationDataset,
    pairs: Sequence[tuple[int, int]],
    *,
    weights: LossWeights | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Agreement:
    """Measure student-teacher agreement dialogue by dialogue.

    Args:
        adapter: The frozen model (teacher).
        rfm: The student.
        dataset: Dialogues to measure on.
        pairs: ``(rfm_layer, llm_layer)`` pairs.
        weights: Loss weights for the reported loss (default: the paper's).
        alpha: Top-alpha share for the overlap.
    """
    weights = weights or LossWeights()
    student = StudentAttention(rfm, [r for r, _ in pairs])
    was_training = rfm.training
    rfm.eval()
    totals = torch.zeros(6, dtype=torch.float64)
    for index in range(len(dataset)):
        batch = embed_batch(adapter, [dataset[index]])
        teacher = teacher_attention(
            adapter,
            batch.inputs_embeds,
            batch.query_positions,
            batch.attention_mask,
            [m for _, m in pairs],
            batch.position_ids,
        )
        rows = student(
            batch.inputs_embeds, batch.query_positions, batch.attention_mask, batch.position_ids
        )
        terms = distillation_loss(
            rows, teacher, batch.vision_mask, batch.hr_mask, batch.turn_mask, weights
        )
        overlaps = [
            top_overlap(rows[k], teacher[k], batch.hr_mask, batch.turn_mask, alpha).mean()
            for k in range(len(pairs))
        ]
        totals += torch.tensor(
            [
                terms.loss.item(),
                terms.kl.item(),
                terms.kl_hr.item(),
                terms.mse.item(),
                float(sum(overlaps) / len(overlaps)),
                float(overlaps[-1]),
            ],
            dtype=torch.float64,
        )
    rfm.train(was_training)
    means = (totals / max(len(dataset), 1)).tolist()
    return Agreement(*means, conversations=len(dataset))


# ---------------------------------------------------------------------- export
def _training_record(
    config: DistillConfig, num_processes: int, records: list[dict]
) -> dict[str, object]:
    """Data, recipe and losses of the run, kept in the RFM's config for its model card."""
    data = config.data
    return {
        "data": str(Path(data).resolve())
        if isinstance(data, str | Path)
        else f"{len(data)} conversations",
        "steps": config.steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "processes": num_processes,
        "lr": config.lr,
        "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "mixed_precision": config.mixed_precision,
        "loss_weights": asdict(config.weights),
        "min_short_side": config.min_short_side,
        "dip_rule": config.dip_rule,
        "hr_pool": config.hr_pool,
        "seed": config.seed,
        "final_losses": {k: v for k, v in records[-1].items() if k != "lr"} if records else None,
    }


def _export(
    accelerator: Accelerator,
    student: torch.nn.Module,
    adapter: LlavaAdapter,
    rfm_config: RFMConfig,
    out_dir: Path,
) -> RegionFocusModule | None:
    """Save the distilled RFM in the inference format; the main process gets it back.

    The full state dict is gathered (needed under ZeRO-3/FSDP, where parameters are
    sharded) and loaded into a fresh RFM, so this works whatever wraps the student.
    """
    state = accelerator.get_state_dict(student)
    if not accelerator.is_main_process:
        return None
    rfm = RegionFocusModule.from_llm(
        adapter,
        rfm_config.layer_indices,
        base_model=rfm_config.base_model,
        structure=SELECTED_STRUCTURE,  # the recorded layers are the copied ones already
    )
    rfm.rfm_config = rfm_config
    rfm.layers.load_state_dict({k.removeprefix("rfm.layers."): v for k, v in state.items()})
    rfm.save(out_dir)
    return rfm


# ---------------------------------------------------------------------- training
def _distill_phase(
    accelerator: Accelerator,
    adapter: LlavaAdapter,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pairs: list[tuple[int, int]],
    config: DistillConfig,
) -> Phase:
    """The loop's phase: teacher and student on a micro-batch, the loss of eq. 6."""
    llm_layers = [m for _, m in pairs]

    def loss(samples: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with accelerator.autocast():
            with torch.no_grad():  # the encoder is frozen
                batch = embed_batch(adapter, samples)
            teacher = teacher_attention(
                adapter,
                batch.inputs_embeds,
                batch.query_positions,
                batch.attention_mask,
                llm_layers,
                batch.position_ids,
            )
            rows = student(
                batch.inputs_embeds, batch.query_positions, batch.attention_mask, batch.position_ids
            )
        terms = distillation_loss(
            rows, teacher, batch.vision_mask, batch.hr_mask, batch.turn_mask, config.weights
        )
        logged = {"loss": terms.loss, "kl": terms.kl, "kl_hr": terms.kl_hr, "mse": terms.mse}
        return terms.loss, logged

    params = list(student.parameters())
    return Phase("distill", config.steps, loss, optimizer, params, scheduler, models=(student,))


def distill(config: DistillConfig) -> DistillReport:
    """Distil an RFM from the frozen LLM and save it where inference loads it.

    Args:
        config: The run's configuration.

    Returns:
        The report (agreement before/after on the main process only).

    Raises:
        CheckpointError: The checkpoint to resume from holds a pickle-format file or
            is not one this module wrote, there is none to resume from, or a fresh run
            would overwrite existing checkpoints (checked before the model loads).
    """
    out_dir = Path(config.out_dir)
    resume_from = resume_point(out_dir, out_dir / CHECKPOINTS_DIR, config.resume)
    if resume_from is not None:
        check_folder(resume_from)  # fail before loading the model, and unpickle nothing
    conversations = _conversations(config)  # bad data, too, fails before the model loads
    accelerator = _accelerator(config)
    set_seed(config.seed)
    adapter = _load_adapter(
        config.model, config.model_dtype, accelerator.device, config.attn_implementation
    ).with_options(hr_pool=config.hr_pool, pool_mode=config.pool_mode, newline=config.newline)
    rfm, pairs = _initial_rfm(adapter, config)
    trainable = mark_trainable(rfm)
    dataset, eval_dataset = _datasets(adapter, config, conversations)
    before = None
    if eval_dataset is not None and accelerator.is_main_process:
        before = evaluate_agreement(
            adapter, rfm, eval_dataset, pairs, weights=config.weights, alpha=config.alpha
        )

    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=config.num_workers,
    )
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    # Stepped once per optimizer step by the loop, not by accelerate (which would step
    # it once per process), so it is not prepared.
    warmup = math.ceil(config.warmup_ratio * config.steps)
    scheduler = warmup_cosine(optimizer, warmup, config.steps)
    student = StudentAttention(rfm, [r for r, _ in pairs])
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    loop = TrainingLoop(
        accelerator,
        [_distill_phase(accelerator, adapter, student, optimizer, scheduler, pairs, config)],
        LoaderSource(accelerator, loader),
        LoopConfig(
            max_grad_norm=config.max_grad_norm,
            log_every=config.log_every,
            save_every=config.save_every,
            save_total_limit=config.save_total_limit,
            stop_after=config.stop_after,
            progress=config.progress,
        ),
        {"rfm": student},
        checkpoint_dir=out_dir / CHECKPOINTS_DIR,
        log_path=out_dir / LOG_NAME,
    )
    if resume_from is not None:
        loop.resume(resume_from)
    student.train()
    result = loop.run()
    records = result.records
    rfm.rfm_config.training = _training_record(config, accelerator.num_processes, records)
    distilled = _export(accelerator, student, adapter, rfm.rfm_config, out_dir)
    after = None
    if eval_dataset is not None and distilled is not None:
        after = evaluate_agreement(
            adapter, distilled, eval_dataset, pairs, weights=config.weights, alpha=config.alpha
        )
        agreement = {"before": before and asdict(before), "after": asdict(after)}
        distilled.rfm_config.training = {**(distilled.rfm_config.training or {}), **agreement}
        distilled.rfm_config.save(out_dir / CONFIG_NAME)
        distilled.generate_model_card().save(out_dir / MODEL_CARD_NAME)
    report = DistillReport(
        out_dir=out_dir,
        steps=result.step,
        start_step=result.start_step,
        num_processes=accelerator.num_processes,
        layer_indices=list(rfm.rfm_config.layer_indices),
        pairs=[list(pair) for pair in pairs],
        first_loss=records[0]["loss"] if records else None,
        last_loss=records[-1]["loss"] if records else None,
        before=before,
        after=after,
        is_main_process=accelerator.is_main_process,
    )
    if accelerator.is_main_process:
        (out_dir / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    accelerator.wait_for_everyone()
    return report
