"""Training checkpoints in safetensors and JSON only: nothing in them is ever unpickled.

accelerate's ``save_state`` pickles the optimizer, scheduler, sampler and RNG states
and ``load_state`` unpickles them (``custom_checkpoint_*.pkl`` with
``weights_only=False``), so a planted file in a checkpoint folder runs code on resume.
Here every tensor (weights, optimizer moments, torch RNG) goes to safetensors and
everything else (progress, data position, schedule, Python/NumPy RNG, loss history)
to JSON. Loading refuses a folder that holds a pickle-format file, since this module
never writes one.

A checkpoint folder ``step_NNNNNNN`` holds:

* ``state.json``: format tag, progress, optimizer structure, scheduler and data state;
* ``<name>.safetensors``: each trained module's weights;
* ``optimizer.safetensors``: the optimizer's tensors;
* ``rng_<process>.safetensors`` and ``rng_<process>.json``: each process's RNG states.

It is written to ``step_NNNNNNN.partial`` and renamed when complete, so a run killed
while saving leaves no half checkpoint behind.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from lrsvqa.errors import InputFileError

FORMAT = "lrsvqa-checkpoint-1"
STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
PARTIAL_SUFFIX = ".partial"
# Files this module never writes and refuses to sit next to: all of them are pickles
# (torch.save, accelerate's save_state) that a loader elsewhere might execute.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(InputFileError):
    """A checkpoint folder cannot be resumed from (or would be overwritten); names the file.

    One of the project's input errors, so the CLI reports it in one line (exit 2).
    """


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(PARTIAL_SUFFIX)
    )


def resume_point(out_dir: Path, root: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint a run starts from, refusing to silently restart over existing ones.

    Args:
        out_dir: The run's output folder (named in errors).
        root: Its checkpoint folder.
        resume: True for the newest checkpoint in ``root``, a path for that
            checkpoint, False for a fresh run.

    Raises:
        CheckpointError: Nothing to resume from, or a fresh run over existing checkpoints.
    """
    existing = list_checkpoints(root)
    if resume is True:
        if not existing:
            raise CheckpointError(out_dir, "no checkpoint to resume from")
        return existing[-1]
    if resume:
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(path, "checkpoint folder does not exist")
        return path
    if existing:
        raise CheckpointError(
            out_dir,
            f"already holds checkpoints ({existing[-1].name}); resume from them (--resume) "
            "or use another output directory",
        )
    return None


def _json_ready(value: Any) -> Any:
    """Tuples to lists, recursively (JSON has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's ``state_dict`` into its tensors and a JSON structure."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        entry: dict[str, Any] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": f"{index}.{key}"}
            else:
                entry[key] = _json_ready(value)
        structure[str(index)] = entry
    return tensors, {"state": structure, "param_groups": _json_ready(state["param_groups"])}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], structure: dict
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state = {
        int(index): {
            key: tensors[value["tensor"]] if isinstance(value, dict) else value
            for key, value in entry.items()
        }
        for index, entry in structure["state"].items()
    }
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in structure["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's torch (CPU and CUDA) RNG tensors, and Python and NumPy states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy = {
        "kind": kind,
        "keys": keys.tolist(),
        "pos": position,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }
    return tensors, {"python": _json_ready(random.getstate()), "numpy": numpy}


def restore_rng(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    keys = np.array(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))


def save_modules(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Each module's weights as ``<name>.safetensors`` (shared tensors stored once)."""
    for name, module in modules.items():
        save_model(module, str(folder / f"{name}.safetensors"))


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """``state.json`` with the format tag."""
    (folder / STATE_NAME).write_text(json.dumps({"format": FORMAT, **state}) + "\n")


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's tensors to ``optimizer.safetensors``; returns the JSON structure."""
    tensors, structure = optimizer_state(optimizer)
    save_file(tensors, str(folder / OPTIMIZER_NAME))
    return structure


def save_rng(folder: Path, process: int) -> None:
    """This process's RNG states."""
    tensors, state = rng_state()
    save_file(tensors, str(folder / f"rng_{process}.safetensors"))
    (folder / f"rng_{process}.json").write_text(json.dumps(state) + "\n")


def check_folder(folder: Path) -> dict[str, Any]:
    """Refuse anything that is not a complete checkpoint of this module; return its state.

    Raises:
        CheckpointError: The folder holds a pickle-format file, or no valid ``state.json``.
    """
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                path,
                "pickle-format file in a checkpoint folder; lrsvqa never writes these and "
                "will not resume next to one, nor load it (remove it, or use another checkpoint)",
            )
    state_path = folder / STATE_NAME
    try:
        state = json.loads(state_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(state_path, f"not a readable lrsvqa checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(state_path, f"not an lrsvqa checkpoint (format {FORMAT} expected)")
    return state


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(path, f"cannot read ({error})") from None


def load_modules(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load each module's weights back (strict: every key must match)."""
    for name, module in modules.items():
        path = folder / f"{name}.safetensors"
        try:
            load_model(module, str(path), strict=True, device=str(_device(module)))
        except (OSError, SafetensorError, RuntimeError) as error:
            raise CheckpointError(path, f"cannot load into {name} ({error})") from None


def _device(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, structure: dict) -> None:
    """Restore the optimizer saved by :func:`save_optimizer`."""
    restore_optimizer(optimizer, _tensors(folder / OPTIMIZER_NAME), structure)


def load_rng(folder: Path, process: int) -> None:
    """Restore this process's RNG states (a run resumed on more processes seeds the rest)."""
    tensors_path, json_path = folder / f"rng_{process}.safetensors", folder / f"rng_{process}.json"
    if not tensors_path.is_file():
        return
    try:
        state = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(json_path, f"cannot read ({error})") from None
    restore_rng(_tensors(tensors_path), state)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and partial ones a kill left."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    for partial in root.glob(f"step_*{PARTIAL_SUFFIX}"):
        shutil.rmtree(partial, ignore_errors=True)
