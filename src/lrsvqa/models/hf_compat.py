"""The one transformers shim: the cache keyword, renamed in 5.24.

transformers 5.24 renamed ``past_key_values`` to ``cache`` throughout (decoder layers,
model forwards, ``create_causal_mask``). Before 5.24 an unknown ``cache=`` is swallowed
by ``**kwargs``: no error, and generation silently runs without its cache. Every call
that hands a cache to transformers therefore spells it ``**{CACHE_KEYWORD: cache}``.
Below 5.19 other internals differ (see the floor in ``pyproject.toml``).
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedConfig
from transformers.masking_utils import create_causal_mask

CACHE_KEYWORD = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)


def causal_mask(
    config: PreTrainedConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
) -> torch.Tensor | None:
    """The model's own causal mask for a whole sequence (no cache), as its attention takes it."""
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **{CACHE_KEYWORD: None},
    )
