"""Where and in what precision a model loads: ``auto`` picks what the machine does best.

A 7B LLaVA in float32 on the CPU takes minutes per answer, so the defaults of every
command that loads a model are :data:`DEFAULT_DEVICE` and :data:`DEFAULT_DTYPE`
(``auto``): the device is CUDA, then Apple's MPS, then the CPU; the dtype is the
checkpoint's own on a GPU (bfloat16 when its config states none) and float32 on the
CPU, where half precision is slow and some kernels are missing. Torch is imported
only to resolve, so the command line can declare these defaults without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrsvqa.errors import OptionError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
#: Default ``--device`` of ask, eval, distill and sft.
DEFAULT_DEVICE = AUTO
#: Default ``--dtype`` of ask, eval, distill and sft.
DEFAULT_DTYPE = AUTO
#: Dtype of a GPU load when the checkpoint states none.
GPU_DTYPE = "bfloat16"
#: Accepted dtype names, each to its torch attribute.
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """The torch device ``device`` names; ``auto`` is CUDA, then MPS, then the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device != AUTO:
        try:
            return torch.device(device)
        except RuntimeError as error:
            raise OptionError("--device", f"unknown device {device!r} ({error})") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype a transformers config states (``dtype``, formerly ``torch_dtype``)."""
    import torch

    stated = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stated, torch.dtype):
        return stated
    name = DTYPES.get(str(stated).removeprefix("torch.")) if stated else None
    return getattr(torch, name) if name else None


def resolve_dtype(
    dtype: str | torch.dtype = DEFAULT_DTYPE,
    device: torch.device | None = None,
    stated: torch.dtype | None = None,
) -> torch.dtype:
    """The torch dtype ``dtype`` names; ``auto`` depends on the device and the checkpoint.

    Args:
        dtype: A name of :data:`DTYPES`, a torch dtype, or ``auto``.
        device: Where the model goes (None: :func:`resolve_device`'s choice).
        stated: The checkpoint's own dtype (:func:`checkpoint_dtype`), if any.

    Raises:
        OptionError: An unknown dtype name.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != AUTO:
        if dtype not in DTYPES:
            known = ", ".join([*DTYPES, AUTO])
            raise OptionError("--dtype", f"unknown dtype {dtype!r}; use one of {known}")
        return getattr(torch, DTYPES[dtype])
    if (device or resolve_device()).type == "cpu":
        return torch.float32
    return stated or getattr(torch, GPU_DTYPE)


def load_kwargs(
    config: Any,
    dtype: str | torch.dtype,
    device: torch.device,
    attn_implementation: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained`` for a checkpoint of ``config`` on ``device``.

    Raises:
        OptionError: An unknown dtype name.
    """
    kwargs: dict[str, Any] = {
        "config": config,
        "dtype": resolve_dtype(dtype, device, checkpoint_dtype(config)),
        "trust_remote_code": False,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs
