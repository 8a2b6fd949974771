"""The embedded default as shipped inside the package: export, verify, load.

Training the default takes over an hour on 2 cores, so its result ships as package data
(safetensors weights, JSON configs and tokenizer files only; nothing that is unpickled)
next to a manifest naming the recipe that made it. Loading checks that recipe against
the code's :class:`~lrsvqa.app.default_model.DefaultModelConfig`: when they differ, the
shipped weights are stale and the default is rebuilt from the recipe instead of being
used silently.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from lrsvqa.app.default_model import (
    READY_NAME,
    DefaultModel,
    DefaultModelConfig,
    build_default_model,
)
from lrsvqa.synthetic.world import GENERATOR_VERSION

SHIPPED_DIR = Path(__file__).with_name("shipped_default")
MANIFEST_NAME = "manifest.json"
MAX_SHIPPED_BYTES = 30 * 1024 * 1024
# The same code path in about a minute: what CI and ``lrsvqa build-default --smoke`` run.
SMOKE_RECIPE = DefaultModelConfig(
    train_scenes=2,
    min_side=2048,
    max_side=2304,
    questions_per_scene=1,
    hidden_size=32,
    vision_hidden_size=32,
    num_layers=4,
    vision_steps=2,
    placements_per_scene=20,
    grounding_layers=(1, 3),
    sft_steps=4,
    batch_size=2,
    rfm_layers=(0, 3),
    distill_pairs=((0, 0), (1, 3)),
    distill_steps=2,
)
# What a shipped folder may hold: weights as safetensors, configs and tokenizers as text.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")


class StaleDefaultError(RuntimeError):
    """The shipped default was trained by another recipe than the code's."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit(cwd: Path) -> str | None:
    """The commit of the checkout the training code came from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _shippable(folder: Path) -> list[Path]:
    """Files of a model or RFM folder worth shipping (no checkpoints, logs or pickles)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in ALLOWED_SUFFIXES and not p.name.endswith(".jsonl")
    )


def export_default(
    trained: DefaultModel, config: DefaultModelConfig, out: Path, commit: str | None = None
) -> Path:
    """Write ``trained`` to ``out`` in the shipped layout and return the manifest path.

    The layout mirrors the build cache (``model/``, ``rfm-<key>/``, their reports), so
    :class:`DefaultModel` reads either; ``manifest.json`` adds the recipe, its hashes,
    the world generator version, the commit that trained it, timings, final losses and
    a SHA-256 per file.

    Raises:
        ValueError: When the export would exceed :data:`MAX_SHIPPED_BYTES`.
    """
    if config.sft_key() not in trained.root.name or config.distill_key() != trained.distill_key:
        raise ValueError(f"{trained.root}: not built by this recipe ({config.sft_key()})")
    out.mkdir(parents=True, exist_ok=True)
    target = DefaultModel(out, trained.distill_key)
    copied: list[Path] = [out / READY_NAME]
    for source, destination in (
        (trained.model_dir, target.model_dir),
        (trained.rfm_dir, target.rfm_dir),
    ):
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        for path in _shippable(source):
            shutil.copy2(path, destination / path.name)
            copied.append(destination / path.name)
    shutil.copy2(trained.root / READY_NAME, out / READY_NAME)
    files = {path.relative_to(out).as_posix(): _sha256(path) for path in sorted(copied)}
    size = sum((out / name).stat().st_size for name in files)
    if size > MAX_SHIPPED_BYTES:
        raise ValueError(
            f"{out}: {size / 2**20:.1f} MiB exceeds the {MAX_SHIPPED_BYTES >> 20} MiB cap"
        )
    report = trained.report
    manifest = {
        "recipe": config.recipe(),
        "sft_key": config.sft_key(),
        "distill_key": config.distill_key(),
        "world_generator_version": GENERATOR_VERSION,
        "commit": commit or _git_commit(Path(__file__).parent),
        "training_seconds": {
            "sft": report["sft"].get("sft_seconds"),
            "distill": report["distill"].get("seconds"),
        },
        "final_losses": {
            "sft_loss_last": report["sft"].get("sft_loss_last"),
            "rfm_overlap_last": (report["distill"].get("after") or {}).get("overlap_last"),
        },
        "versions": {
            "lrsvqa": metadata.version("lrsvqa"),
            "torch": metadata.version("torch"),
            "transformers": metadata.version("transformers"),
            "python": platform.python_version(),
        },
        "bytes": size,
        "files": files,
    }
    path = out / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read_manifest(root: Path = SHIPPED_DIR) -> dict[str, Any] | None:
    """The manifest of a shipped folder, or None when nothing is shipped there."""
    path = root / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_default(
    config: DefaultModelConfig | None = None, root: Path = SHIPPED_DIR
) -> DefaultModel | None:
    """The shipped default, if one is shipped and was trained by ``config``'s recipe.

    Raises:
        StaleDefaultError: When one is shipped but by another recipe or world version,
            or a file does not match its checksum.
    """
    manifest = read_manifest(root)
    if manifest is None:
        return None
    config = config or DefaultModelConfig()
    wanted = {"sft_key": config.sft_key(), "distill_key": config.distill_key()}
    differs = [key for key, value in wanted.items() if manifest.get(key) != value]
    if differs:
        raise StaleDefaultError(
            f"{root / MANIFEST_NAME}: shipped weights were trained by another recipe "
            f"({', '.join(differs)} differ); rebuild with `lrsvqa build-default`"
        )
    for name, digest in manifest["files"].items():
        path = root / name
        if not path.is_file() or _sha256(path) != digest:
            raise StaleDefaultError(f"{path}: missing or altered (checksum differs)")
    return DefaultModel(root, manifest["distill_key"])


def resolve_default_model(
    home: Path | None = None,
    config: DefaultModelConfig | None = None,
    log: Callable[[str], None] = print,
) -> DefaultModel:
    """The shipped default when it matches the recipe, else one built (and cached) from it.

    A recipe other than the code's default is always built: the shipped weights are
    only ever the default recipe's.
    """
    if config is not None and config != DefaultModelConfig():
        return build_default_model(home, config, log=log)
    try:
        shipped = shipped_default(config)
    except StaleDefaultError as error:
        log(f"not using the shipped default: {error}")
        shipped = None
    if shipped is not None:
        return shipped
    return build_default_model(home, config, log=log)
