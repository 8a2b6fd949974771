"""Distil the Region Focus Module from the frozen LLM (paper sec. 4.1.2), on accelerate.

The loop is a plain accelerate loop, so the same code runs on one CPU, several GPUs
(DDP), several nodes, DeepSpeed ZeRO or FSDP, chosen by ``accelerate launch`` /
``torchrun`` configuration. Only :class:`StudentAttention` (holding the RFM) is handed
to ``accelerator.prepare``: the vision tower, projector and LLM stay frozen outside the
wrapped module, and the teacher's attention is computed under ``no_grad``.

Outputs in ``out_dir``:

* ``rfm.safetensors`` + ``rfm_config.json``: what :meth:`RegionFocusModule.load` reads
  (the config records ``distill_pairs``);
* ``log.jsonl``: one line per logging window (step, loss, kl, kl_hr, mse, lr);
* ``checkpoints/step_NNNNNNN``: ``accelerator.save_state`` folders (RFM, optimizer,
  scheduler, RNG, progress) that ``resume`` continues from;
* ``report.json``: the :class:`DistillReport`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DEFAULT_MIN_SHORT_SIDE
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import (
    SELECTED_STRUCTURE,
    RegionFocusModule,
    RFMConfig,
    default_layer_indices,
)
from lrsvqa.strategies.c2f import DEFAULT_ALPHA
from lrsvqa.train.batch import embed_batch
from lrsvqa.train.data import (
    Conversation,
    ConversationData,
    ConversationDataset,
    collate,
    load_conversations,
)
from lrsvqa.train.losses import LossTerms, LossWeights, distillation_loss, top_overlap
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
        model_dtype: Dtype to load a model path in (the RFM always trains in float32).
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
    model_dtype: str = "float32"
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


@dataclass
class TrainingProgress:
    """Counters saved with every checkpoint so a resumed run continues where it stopped.

    Attributes:
        step: Optimizer steps done.
        micro_batches: Micro-batches consumed by this process (data position).
    """

    step: int = 0
    micro_batches: int = 0

    def state_dict(self) -> dict[str, int]:
        """For ``accelerator.register_for_checkpointing``."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore from a checkpoint."""
        self.step, self.micro_batches = int(state["step"]), int(state["micro_batches"])


class LossWindow:
    """Running sums of the loss terms between two log lines."""

    def __init__(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)
        self.count = 0

    def add(self, terms: LossTerms) -> None:
        """Add one micro-batch's (detached) terms."""
        values = torch.stack([terms.loss, terms.kl, terms.kl_hr, terms.mse]).detach()
        self.sums += values.double().cpu()
        self.count += 1

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and over processes; resets the window."""
        means = (self.sums / max(self.count, 1)).to(accelerator.device)
        means = accelerator.reduce(means, reduction="mean").cpu()
        self.sums.zero_()
        self.count = 0
        return dict(zip(("loss", "kl", "kl_hr", "mse"), means.tolist(), strict=True))


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


def _load_adapter(model: LlavaAdapter | str | Path, dtype: str, device) -> LlavaAdapter:
    """Load (or take) the model, move it to the device and freeze it."""
    adapter = (
        model
        if isinstance(model, LlavaAdapter)
        else LlavaAdapter.from_pretrained(model, dtype=dtype, device=device)
    )
    adapter.model.to(device)
    adapter.model.requires_grad_(False)
    adapter.model.eval()
    return adapter


def _base_model_name(model: LlavaAdapter | str | Path) -> str:
    if isinstance(model, LlavaAdapter):
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


def _datasets(
    adapter: LlavaAdapter, config: DistillConfig
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

    train = load_conversations(config.data, config.image_root)
    if config.eval_size == 0:
        return dataset(train), None
    held_out = (
        train
        if config.eval_data is None
        else load_conversations(config.eval_data, config.image_root)
    )
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
        )
        rows = student(batch.inputs_embeds, batch.query_positions, batch.attention_mask)
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


# ---------------------------------------------------------------------- checkpoints
def _checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def _resume_dir(config: DistillConfig, out_dir: Path) -> Path | None:
    """Checkpoint to resume from, refusing to silently restart over existing checkpoints."""
    existing = _checkpoints(out_dir)
    if config.resume is True:
        if not existing:
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from")
        return existing[-1]
    if config.resume:
        path = Path(config.resume)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: checkpoint folder does not exist")
        return path
    if existing:
        raise FileExistsError(
            f"{out_dir} already holds checkpoints ({existing[-1].name}); "
            "resume from them or use another output directory"
        )
    return None


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, keep: int) -> None:
    accelerator.save_state(str(out_dir / CHECKPOINTS_DIR / f"step_{step:07d}"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in _checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _open_log(path: Path, keep_until: int) -> None:
    """Start the log, keeping the lines a resumed run has already produced."""
    lines = path.read_text().splitlines() if path.is_file() and keep_until > 0 else []
    kept = [line for line in lines if line and json.loads(line)["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))


def _append_log(accelerator: Accelerator, path: Path, record: dict) -> None:
    """One JSON line per logging window, written by the main process only."""
    if accelerator.is_main_process:
        with path.open("a") as log:
            log.write(json.dumps(record) + "\n")


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
def _micro_step(
    accelerator: Accelerator,
    adapter: LlavaAdapter,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    samples: list,
    llm_layers: list[int],
    config: DistillConfig,
) -> LossTerms:
    """Forward teacher and student on one micro-batch, backward, maybe step."""
    with accelerator.accumulate(student):
        with accelerator.autocast():
            batch = embed_batch(adapter, samples)
            teacher = teacher_attention(
                adapter,
                batch.inputs_embeds,
                batch.query_positions,
                batch.attention_mask,
                llm_layers,
            )
            rows = student(batch.inputs_embeds, batch.query_positions, batch.attention_mask)
        terms = distillation_loss(
            rows, teacher, batch.vision_mask, batch.hr_mask, batch.turn_mask, config.weights
        )
        accelerator.backward(terms.loss)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return terms


def distill(config: DistillConfig) -> DistillReport:
    """Distil an RFM from the frozen LLM and save it where inference loads it.

    Args:
        config: The run's configuration.

    Returns:
        The report (agreement before/after on the main process only).
    """
    out_dir = Path(config.out_dir)
    accelerator = _accelerator(config)
    set_seed(config.seed)
    adapter = _load_adapter(config.model, config.model_dtype, accelerator.device).with_options(
        hr_pool=config.hr_pool, pool_mode=config.pool_mode, newline=config.newline
    )
    rfm, pairs = _initial_rfm(adapter, config)
    trainable = mark_trainable(rfm)
    dataset, eval_dataset = _datasets(adapter, config)
    resume_from = _resume_dir(config, out_dir)
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
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * config.steps), config.steps
    )
    student = StudentAttention(rfm, [r for r, _ in pairs])
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    progress = TrainingProgress()
    # The scheduler is stepped once per optimizer step by us, not by accelerate (which
    # would step it once per process), so it is registered rather than prepared.
    accelerator.register_for_checkpointing(scheduler, progress)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
    start_step = progress.step
    log_path = out_dir / LOG_NAME
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _open_log(log_path, start_step)
    records = _train(
        accelerator, adapter, student, optimizer, scheduler, loader, progress, pairs, config
    )
    if config.save_every and progress.step > start_step:
        _save_checkpoint(accelerator, out_dir, progress.step, config.save_total_limit)
    distilled = _export(accelerator, student, adapter, rfm.rfm_config, out_dir)
    after = None
    if eval_dataset is not None and distilled is not None:
        after = evaluate_agreement(
            adapter, distilled, eval_dataset, pairs, weights=config.weights, alpha=config.alpha
        )
    report = DistillReport(
        out_dir=out_dir,
        steps=progress.step,
        start_step=start_step,
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


def _train(
    accelerator: Accelerator,
    adapter: LlavaAdapter,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    progress: TrainingProgress,
    pairs: list[tuple[int, int]],
    config: DistillConfig,
) -> list[dict]:
    """Run optimizer steps up to ``config.steps`` (or ``stop_after``); returns the log records."""
    out_dir = Path(config.out_dir)
    target = min(config.steps, config.stop_after or config.steps)
    llm_layers = [m for _, m in pairs]
    window, records = LossWindow(), []
    bar = tqdm(
        total=config.steps,
        initial=progress.step,
        desc="distill",
        disable=not (config.progress and accelerator.is_main_process),
    )
    student.train()
    while progress.step < target:
        epoch, skip = divmod(progress.micro_batches, len(loader))
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for samples in batches:
            terms = _micro_step(
                accelerator, adapter, student, optimizer, samples, llm_layers, config
            )
            progress.micro_batches += 1
            window.add(terms)
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            scheduler.step()
            bar.update(1)
            if progress.step % config.log_every == 0 or progress.step == target:
                record = {
                    "step": progress.step,
                    "epoch": round(progress.micro_batches / len(loader), 4),
                    **window.flush(accelerator),
                    "lr": scheduler.get_last_lr()[0],
                }
                records.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}")
                _append_log(accelerator, out_dir / LOG_NAME, record)
            if (
                config.save_every
                and progress.step % config.save_every == 0
                and progress.step < target
            ):
                _save_checkpoint(accelerator, out_dir, progress.step, config.save_total_limit)
            if progress.step >= target:
                break
    bar.close()
    return records
