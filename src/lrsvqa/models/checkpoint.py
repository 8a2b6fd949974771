"""Find a checkpoint before loading it, check its weight files, and fingerprint it.

``--model`` is a local folder or a Hugging Face hub id. Loading a wrong value through
``transformers`` either retries the network for minutes or fails deep inside it, so
:func:`resolve_checkpoint` settles the question first: an existing folder is used; a
value that looks like a path but does not exist fails at once; a hub id is taken from
the local cache when it is there, and otherwise fails fast when offline.

:func:`fingerprint` identifies a checkpoint for run records: the hash of its config
files and a sampled hash of its weight files (size, safetensors header and 64
evenly spaced 64 KiB blocks), which changes when any retraining or edit of the
weights does, for a few MiB read per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from lrsvqa.errors import ModelLoadError

#: Files whose full hash identifies a checkpoint's configuration.
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "chat_template.json",
    "chat_template.jinja",
    "rfm_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE_BLOCKS = 64
_SAMPLE_BYTES = 64 * 1024
_OFFLINE_VALUES = ("1", "on", "yes", "true")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads."""
    return any(
        os.environ.get(name, "").strip().lower() in _OFFLINE_VALUES
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def resolve_checkpoint(name: str | Path) -> str:
    """The local folder (or reachable hub id) to load ``name`` from.

    Raises:
        ModelLoadError: A missing path, a file instead of a folder, or a hub id that
            is neither cached nor downloadable (offline, unreachable hub, unknown id).
    """
    text = str(name)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(text, "not a folder (a checkpoint is a folder with config.json)")
        return str(local)
    if looks_like_path(text):
        raise ModelLoadError(text, "no such folder")
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        return str(snapshot_download(text, local_files_only=True))
    except HFValidationError:
        raise ModelLoadError(text, "no such folder, and not a valid hub id") from None
    except Exception:  # noqa: BLE001 - any cache miss means: look on the hub
        pass
    if is_offline():
        raise ModelLoadError(
            text,
            "no such folder and not in the Hugging Face cache; HF_HUB_OFFLINE=1 forbids "
            "downloading it (unset it, or give a local checkpoint folder)",
        )
    try:
        model_info(text, timeout=10)
    except RepositoryNotFoundError:
        raise ModelLoadError(text, "no such folder, and no such model on the hub") from None
    except Exception as error:  # noqa: BLE001 - network failures come in many types
        raise ModelLoadError(
            text,
            f"no such folder, not in the Hugging Face cache, and the hub cannot be reached "
            f"({type(error).__name__}); check the name, or download it while online",
        ) from None
    return text


def model_identity(name: str | Path) -> str:
    """How to name a checkpoint in files that outlive the process (RFM configs, model cards).

    A hub id stays a hub id, also when given as its snapshot in the Hugging Face cache
    (``.../models--org--name/snapshots/<commit>`` -> ``org/name``); a local folder
    becomes its absolute path, which, unlike ``./model``, still names it elsewhere.
    """
    text = str(name)
    local = Path(text).expanduser()
    if not local.exists():
        return text
    parts = local.resolve().parts
    for index, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[index + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/")
    return str(local.resolve())


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt ``.safetensors`` file by reading its header only.

    Raises:
        ModelLoadError: Naming the file: too short, bad header, or data past its end.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelLoadError(path, f"truncated safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ModelLoadError(path, "truncated safetensors file (header runs past the end)")
        try:
            header = json.loads(handle.read(length))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise ModelLoadError(path, f"corrupt safetensors header ({error})") from None
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise ModelLoadError(
            path, f"truncated safetensors file ({size:,} bytes, its header needs {needed:,})"
        )


def check_weight_files(folder: Path) -> None:
    """Check every ``.safetensors`` file of a local checkpoint folder (see above)."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(path)


def _sampled_hash(path: Path) -> str:
    """SHA-256 of a file's size, its first block and evenly spaced blocks."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        step = max(size // _SAMPLE_BLOCKS, 1)
        for offset in range(0, size, step):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def fingerprint(location: str | Path) -> dict[str, Any]:
    """Identity of a checkpoint folder (or RFM folder, or single weight file).

    Returns:
        ``{"path", "config_sha256", "weights_sha256"}``: the hashes are ``None`` when
        ``location`` is not local (a hub id that is not cached).
    """
    text = str(location)
    path = Path(text).expanduser()
    if not path.exists() and not looks_like_path(text):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(text, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: identified by its id only
            pass
    if not path.exists():
        return {"path": text, "config_sha256": None, "weights_sha256": None}
    if path.is_file():
        files, weights = [], [path]
    else:
        files = [path / name for name in CONFIG_FILES if (path / name).is_file()]
        weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    config = hashlib.sha256()
    for file in files:
        config.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    combined = hashlib.sha256()
    for file in weights:
        combined.update(file.name.encode() + b"\0" + _sampled_hash(file).encode())
    return {
        "path": text,
        "config_sha256": config.hexdigest() if files else None,
        "weights_sha256": combined.hexdigest() if weights else None,
    }
