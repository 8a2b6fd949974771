"""The one training loop of SFT and distillation, on accelerate, with losses plugged in.

A run is a list of :class:`Phase` (SFT: token heads alone, then the full loss;
distillation: one phase), each with its own loss, optimizer and schedule, fed by one
:class:`BatchSource` of micro-batches. The loop does what both stages share: gradient
accumulation, clipping, the learning-rate schedule, windowed logging (means over the
window and over processes), per-step loss history, and checkpoints in safetensors and
JSON (:mod:`lrsvqa.train.checkpoint`) that a stopped run resumes from exactly: the
weights, optimizer moments, schedule, data position, RNG states and history all come
back, so a resumed run ends with the weights an uninterrupted one ends with.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from lrsvqa.train import checkpoint as ckpt

LossFunction = Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def _warmup_cosine_factor(
    step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float, warmup_offset: int
) -> float:
    if step < warmup_steps:
        return float(step + warmup_offset) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    warmup_offset: int = 0,
) -> LambdaLR:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak rate.

    With the defaults this is ``transformers.get_cosine_schedule_with_warmup``
    (the first step runs at rate 0); ``warmup_offset=1`` starts the warm-up one step
    later in the ramp, so the first step already trains (the SFT recipe's choice).
    """
    return LambdaLR(
        optimizer,
        partial(
            _warmup_cosine_factor,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
            warmup_offset=warmup_offset,
        ),
    )


class BatchSource(Protocol):
    """Micro-batches of a run, resumable from a micro-batch count."""

    def batches(self, start: int) -> Iterator[Any]:
        """Micro-batches from the ``start``-th of the run on (endless)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state beyond the position (e.g. a sampler's RNG)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def log_fields(self, consumed: int) -> dict[str, float]:
        """Extra fields of a log line after ``consumed`` micro-batches."""


class Stateful(Protocol):
    """Something with a JSON-ready ``state_dict`` (e.g. :class:`TrainingSampler`)."""

    def state_dict(self) -> dict[str, Any]:
        """The state, JSON-ready."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class StepSampler:
    """Micro-batch ``k`` of the run is ``sample(k, batch_size)``.

    Args:
        sample: The sampling callback.
        batch_size: Examples per micro-batch.
        state: Where ``sample`` keeps its randomness, checkpointed with the run; without
            it a resumed run is exact only when ``sample`` depends on ``k`` alone.
    """

    def __init__(
        self, sample: Callable[[int, int], Any], batch_size: int, state: Stateful | None = None
    ) -> None:
        self.sample, self.batch_size, self.state = sample, batch_size, state

    def batches(self, start: int) -> Iterator[Any]:
        """Calls ``sample`` lazily, once per micro-batch actually used."""
        for index in count(start):
            yield self.sample(index, self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state, if it has one."""
        return {"sampler": self.state.state_dict()} if self.state is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sampler's state."""
        if self.state is not None and "sampler" in state:
            self.state.load_state_dict(state["sampler"])

    def log_fields(self, consumed: int) -> dict[str, float]:
        """Nothing beyond the step."""
        return {}


class LoaderSource:
    """Epochs of a prepared (seedable) ``DataLoader``; the position is a micro-batch count.

    The order of epoch ``e`` depends on the data seed and ``e`` alone, so skipping the
    consumed micro-batches of the current epoch restores the data order exactly.
    """

    def __init__(self, accelerator: Accelerator, loader) -> None:
        self.accelerator, self.loader = accelerator, loader

    def batches(self, start: int) -> Iterator[Any]:
        """Epoch after epoch, the first from where ``start`` left it."""
        epoch, skip = divmod(start, len(self.loader))
        while True:
            self.loader.set_epoch(epoch)
            yield from (
                self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            )
            epoch, skip = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the position."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing beyond the position."""

    def log_fields(self, consumed: int) -> dict[str, float]:
        """Epochs done, fractional."""
        return {"epoch": round(consumed / len(self.loader), 4)}


@dataclass
class Phase:
    """One optimisation phase.

    Attributes:
        name: Shown in logs and checkpoints (``"vision"``, ``"sft"``, ``"distill"``).
        steps: Optimizer steps of the phase.
        loss: ``loss(micro_batch) -> (objective, terms)``; the objective is
            back-propagated, the terms (0-d tensors) are logged and kept per step.
        optimizer: The phase's optimizer (already ``accelerator.prepare``-d).
        params: Parameters whose gradient norm is clipped.
        scheduler: Stepped once per optimizer step (None: constant rate).
        models: Prepared models to accumulate gradients on (DDP ``no_sync``).
    """

    name: str
    steps: int
    loss: LossFunction
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    models: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class LoopConfig:
    """What the loop itself does besides optimising.

    Attributes:
        max_grad_norm: Gradient clipping norm (0 disables).
        log_every: Steps per log line (and at the end of every phase).
        save_every: Steps between checkpoints (0: none); the last step reached is
            always checkpointed when checkpoints are on.
        save_total_limit: Checkpoints kept (oldest deleted first).
        stop_after: Stop at this step of the run (counted over all phases).
        progress: Show a progress bar on the main process.
    """

    max_grad_norm: float
    log_every: int
    save_every: int
    save_total_limit: int
    stop_after: int | None
    progress: bool


@dataclass
class LoopResult:
    """What a run did.

    Attributes:
        start_step: Step (over all phases) the run started from; non-zero when resumed.
        step: Step reached.
        history: Per phase and term, the value of every step of the run so far
            (mean over the step's micro-batches), including steps before a resume.
        records: The log lines written by this invocation.
    """

    start_step: int
    step: int
    history: dict[str, dict[str, list[float]]]
    records: list[dict[str, Any]] = field(default_factory=list)


class _Window:
    """Sums of the logged terms since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().double().cpu()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:
            return {}
        means = torch.stack([self.sums[n] for n in names]) / max(self.count, 1)
        means = accelerator.reduce(means.to(accelerator.device), reduction="mean").cpu()
        self.sums, self.count = {}, 0
        return dict(zip(names, means.tolist(), strict=True))


def _keep_log(path: Path, until: int) -> None:
    """Start the log, keeping the lines a resumed run already produced."""
    lines = path.read_text().splitlines() if path.is_file() and until > 0 else []
    kept = [line for line in lines if line and json.loads(line)["step"] <= until]
    path.write_text("".join(line + "\n" for line in kept))


class TrainingLoop:
    """Runs phases over a batch source, logging and checkpointing as configured.

    Args:
        accelerator: The run's accelerator (its gradient accumulation is the loop's).
        phases: The phases, in order.
        source: Micro-batches of the whole run.
        config: Logging, clipping, checkpoint and stopping settings.
        modules: What a checkpoint saves besides optimizer and schedule: every module
            whose weights change (the prepared or the bare module).
        checkpoint_dir: Folder of ``step_NNNNNNN`` checkpoints (needed with ``save_every``).
        log_path: JSONL log, one line per window (main process only).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        phases: list[Phase],
        source: BatchSource,
        config: LoopConfig,
        modules: dict[str, nn.Module],
        checkpoint_dir: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        if config.save_every and checkpoint_dir is None:
            raise ValueError("save_every needs a checkpoint folder")
        if config.save_every and accelerator.distributed_type in SHARDED:
            raise ckpt.CheckpointError(
                f"{checkpoint_dir}: checkpoints of sharded runs ({accelerator.distributed_type}) "
                "are not supported; use save_every=0"
            )
        self.accelerator, self.phases, self.source, self.config = (
            accelerator,
            phases,
            source,
            config,
        )
        self.modules, self.checkpoint_dir, self.log_path = modules, checkpoint_dir, log_path
        self.phase, self.step, self.micro_batches = 0, 0, 0
        self.history: dict[str, dict[str, list[float]]] = {p.name: {} for p in phases}
        self._saved_at = -1

    # ------------------------------------------------------------------ state
    def _offset(self, phase: int) -> int:
        return sum(p.steps for p in self.phases[:phase])

    @property
    def global_step(self) -> int:
        """Optimizer steps done over all phases."""
        return self._offset(self.phase) + self.step

    def _unwrapped(self) -> dict[str, nn.Module]:
        return {k: self.accelerator.unwrap_model(m) for k, m in self.modules.items()}

    def resume(self, folder: Path) -> None:
        """Restore everything a checkpoint holds; refuses pickle files and foreign folders."""
        state = ckpt.check_folder(folder)
        names = [p.name for p in self.phases]
        if state.get("phases") != names:
            raise ckpt.CheckpointError(
                f"{folder / ckpt.STATE_NAME}: checkpoint of phases {state.get('phases')}, "
                f"this run has {names}"
            )
        ckpt.load_modules(folder, self._unwrapped())
        self.phase, self.step = int(state["phase"]), int(state["step"])
        self.micro_batches = int(state["micro_batches"])
        self.history = state["history"]
        if self.phase < len(self.phases):
            current = self.phases[self.phase]
            ckpt.load_optimizer(folder, current.optimizer, state["optimizer"])
            if current.scheduler is not None:
                current.scheduler.load_state_dict(state["scheduler"])
        self.source.load_state_dict(state["data"])
        ckpt.load_rng(folder, self.accelerator.process_index)
        self._saved_at = self.global_step

    def save(self) -> Path:
        """Checkpoint the current step (written aside, renamed when complete)."""
        accelerator, root = self.accelerator, self.checkpoint_dir
        final = root / ckpt.checkpoint_name(self.global_step)
        partial_dir = final.with_name(final.name + ckpt.PARTIAL_SUFFIX)
        if accelerator.is_main_process:
            shutil.rmtree(partial_dir, ignore_errors=True)
            partial_dir.mkdir(parents=True)
        accelerator.wait_for_everyone()
        ckpt.save_rng(partial_dir, accelerator.process_index)
        if accelerator.is_main_process:
            ckpt.save_modules(partial_dir, self._unwrapped())
            current = self.phases[min(self.phase, len(self.phases) - 1)]
            structure = ckpt.save_optimizer(partial_dir, current.optimizer)
            scheduler = current.scheduler.state_dict() if current.scheduler is not None else None
            ckpt.write_state(
                partial_dir,
                {
                    "phases": [p.name for p in self.phases],
                    "phase": self.phase,
                    "step": self.step,
                    "global_step": self.global_step,
                    "micro_batches": self.micro_batches,
                    "optimizer": structure,
                    "scheduler": scheduler,
                    "data": self.source.state_dict(),
                    "history": self.history,
                },
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            partial_dir.rename(final)
            ckpt.prune(root, self.config.save_total_limit)
        accelerator.wait_for_everyone()
        self._saved_at = self.global_step
        return final

    # ------------------------------------------------------------------ training
    def run(self) -> LoopResult:
        """Train up to the end of the last phase (or ``stop_after``)."""
        config, accelerator = self.config, self.accelerator
        start = self.global_step
        end = self._offset(len(self.phases))
        target = min(end, config.stop_after) if config.stop_after else end
        if self.log_path is not None and accelerator.is_main_process:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            _keep_log(self.log_path, start)
        records: list[dict[str, Any]] = []
        while self.phase < len(self.phases) and self.global_step < target:
            phase = self.phases[self.phase]
            if self.step < phase.steps:
                records += self._run_phase(phase, target)
            if self.step >= phase.steps:
                self.phase, self.step = self.phase + 1, 0
        if config.save_every and self.global_step > start and self._saved_at != self.global_step:
            self.save()
        return LoopResult(start, self.global_step, self.history, records)

    def _run_phase(self, phase: Phase, target: int) -> list[dict[str, Any]]:
        config, accelerator = self.config, self.accelerator
        stop = min(phase.steps, target - self._offset(self.phase))
        window, records = _Window(), []
        history = self.history.setdefault(phase.name, {})
        step_sums: dict[str, float] = {}
        step_micro = 0
        bar = tqdm(
            total=phase.steps,
            initial=self.step,
            desc=phase.name,
            leave=False,
            disable=not (config.progress and accelerator.is_main_process),
        )
        for batch in self.source.batches(self.micro_batches):
            with accelerator.accumulate(*phase.models):
                objective, terms = phase.loss(batch)
                accelerator.backward(objective)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(phase.params, config.max_grad_norm)
                phase.optimizer.step()
                phase.optimizer.zero_grad()
            self.micro_batches += 1
            window.add(terms)
            for name, value in terms.items():
                step_sums[name] = step_sums.get(name, 0.0) + float(value.detach())
            step_micro += 1
            if not accelerator.sync_gradients:
                continue
            self.step += 1
            if phase.scheduler is not None:
                phase.scheduler.step()
            for name, total in step_sums.items():
                history.setdefault(name, []).append(total / step_micro)
            step_sums, step_micro = {}, 0
            bar.update(1)
            if self.step % config.log_every == 0 or self.step == stop:
                records.append(self._log(phase, window))
                bar.set_postfix({k: f"{v:.3f}" for k, v in records[-1].items() if k in terms})
            if (
                config.save_every
                and self.global_step % config.save_every == 0
                and self.global_step < target
            ):
                self.save()
            if self.step >= stop:
                break
        bar.close()
        return records

    def _log(self, phase: Phase, window: _Window) -> dict[str, Any]:
        rate = (
            phase.scheduler.get_last_lr()[0]
            if phase.scheduler is not None
            else phase.optimizer.param_groups[0]["lr"]
        )
        record = {
            "phase": phase.name,
            "step": self.global_step,
            **window.flush(self.accelerator),
            "lr": rate,
            **self.source.log_fields(self.micro_batches),
        }
        if self.log_path is not None and self.accelerator.is_main_process:
            with self.log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        return record
