"""The two sides of distillation: frozen-LLM teacher rows and the trainable RFM student.

Both report, per head, the attention of each turn's last prompt token over the whole
sequence, computed with :func:`layer_attention_rows` so that no n x n attention matrix
is ever built (n is thousands of vision tokens) and any attention backend
(sdpa, flash) can run the layers themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.attention import layer_attention_rows
from lrsvqa.models.deepstack import language_model_inputs, layer_inputs_from_hidden_states
from lrsvqa.models.rfm import RegionFocusModule

# Parameters of a decoder layer that its attention *rows* depend on (see attention.py):
# everything else in the last distilled layer (values, output projection, MLP) cannot
# receive a gradient from the distillation loss.
SCORE_PARAMETER_PREFIXES = (
    "input_layernorm.",
    "self_attn.q_proj.",
    "self_attn.k_proj.",
    "self_attn.q_norm.",
    "self_attn.k_norm.",
)


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """Parse ``"0:1,3:14"`` (RFM layer index : LLM layer) into pairs."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        student, sep, teacher = part.partition(":")
        if not sep or not student.strip().isdigit() or not teacher.strip().isdigit():
            raise ValueError(f"expected RFM:LLM layer pairs like 0:1,3:14, got {text!r}")
        pairs.append((int(student), int(teacher)))
    return pairs


def resolve_pairs(
    layer_indices: Sequence[int],
    num_llm_layers: int,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[int, int]]:
    """Validate student-teacher pairs ``(r_k, m_k)``: RFM layer index -> LLM layer.

    The default is the paper's: the first and last RFM layers, each paired with the LLM
    layer it was initialised from. The last RFM layer must be distilled because
    inference reads its attention.

    Args:
        layer_indices: LLM layers the RFM layers were initialised from.
        num_llm_layers: Depth M of the LLM.
        pairs: Explicit pairs, or None for the default.
    """
    last = len(layer_indices) - 1
    if pairs is None:
        chosen = sorted({(0, layer_indices[0]), (last, layer_indices[-1])})
    else:
        chosen = sorted({(int(r), int(m)) for r, m in pairs})
    for r, m in chosen:
        if not (0 <= r <= last and 0 <= m < num_llm_layers):
            raise ValueError(
                f"pair {r}:{m} is out of range: RFM layers are 0..{last}, "
                f"LLM layers 0..{num_llm_layers - 1}"
            )
    if not chosen or chosen[-1][0] != last:
        raise ValueError(
            f"pairs {chosen} must include the last RFM layer {last}: inference ranks tokens "
            "with its attention, so it has to be distilled"
        )
    if len({r for r, _ in chosen}) != len(chosen):
        raise ValueError(f"pairs {chosen} give one RFM layer several teachers")
    return chosen


@torch.no_grad()
def teacher_attention(
    adapter: LlavaAdapter,
    inputs_embeds: torch.Tensor,
    query_positions: torch.Tensor,
    attention_mask: torch.Tensor,
    llm_layers: Sequence[int],
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head rows of the frozen LLM at the given layers, stacked (K, B, H, J, n).

    ``position_ids`` are a Qwen-VL batch's M-RoPE positions (None: the sequence index);
    Qwen3-VL's wide rows bring their deepstack features (:mod:`lrsvqa.models.deepstack`).
    """
    outputs = adapter.language_model(
        **language_model_inputs(inputs_embeds, adapter.hidden_size),
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
        use_cache=False,
    )
    return rows_from_hidden_states(
        adapter,
        outputs.hidden_states,
        query_positions,
        attention_mask,
        llm_layers,
        position_ids,
        inputs_embeds=inputs_embeds,
    )


def rows_from_hidden_states(
    adapter: LlavaAdapter,
    hidden_states: Sequence[torch.Tensor],
    query_positions: torch.Tensor,
    attention_mask: torch.Tensor,
    llm_layers: Sequence[int],
    position_ids: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head rows (K, B, H, J, n) at the given layers, from a forward pass's hidden states.

    ``hidden_states[m]`` of the language model is the input of layer m, so layer m's
    rows are recomputed from it with the layer's own projections and rotary embedding
    (differentiably: the SFT grounding loss trains through them). Given the (wide)
    ``inputs_embeds`` of a Qwen3-VL pass, the deepstack features the model added after
    the recorded outputs are added back first.
    """
    hidden_states = layer_inputs_from_hidden_states(
        hidden_states, inputs_embeds, adapter.hidden_size
    )
    embeds = hidden_states[0]
    batch, n = embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(n, device=embeds.device)[None].expand(batch, -1)
    position_embeddings = adapter.language_model.rotary_emb(embeds, position_ids)
    key_mask = attention_mask.bool()
    return torch.stack(
        [
            layer_attention_rows(
                adapter.decoder_layers[m],
                hidden_states[m],
                query_positions,
                position_embeddings,
                key_mask,
            )
            for m in llm_layers
        ]
    )


class StudentAttention(nn.Module):
    """Holds the RFM as the only trainable module (what DDP/FSDP/DeepSpeed wrap).

    Args:
        rfm: The Region Focus Module being distilled.
        rfm_layers: RFM layer index of each pair, in pair order.
    """

    def __init__(self, rfm: RegionFocusModule, rfm_layers: Sequence[int]) -> None:
        super().__init__()
        self.rfm = rfm
        self.rfm_layers = list(rfm_layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        query_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-head student rows at the paired RFM layers, stacked (K, B, H, J, n)."""
        dtype = next(self.parameters()).dtype
        rows = self.rfm.attention_rows(
            inputs_embeds.to(dtype), query_positions, self.rfm_layers, attention_mask, position_ids
        )
        return torch.stack([rows[r] for r in self.rfm_layers])


def mark_trainable(rfm: RegionFocusModule) -> list[nn.Parameter]:
    """Make exactly the RFM parameters that affect the loss trainable; return them.

    Every layer before the last is fully used; of the last layer only its attention
    *scores* are read, so its values, output projection and MLP are frozen. Leaving
    them trainable would hand distributed wrappers parameters that never get a
    gradient (DDP then needs ``find_unused_parameters``).
    """
    rfm.requires_grad_(False)
    trainable = []
    last = len(rfm.layers) - 1
    for index, layer in enumerate(rfm.layers):
        for name, parameter in layer.named_parameters():
            if index < last or name.startswith(SCORE_PARAMETER_PREFIXES):
                parameter.requires_grad_(True)
                trainable.append(parameter)
    return trainable
