"""FastV and PyramidDrop: vision tokens dropped inside the LLM, on stock decoder layers.

Both rank the vision tokens by the attention the *last* token of the prompt pays them
and drop the least attended ones for all later layers:

* FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2"): one cut
  before layer ``K`` (default 2) removing ``R`` (default 50 %) of the vision tokens,
  ranked by layer ``K - 1``'s attention.
* PyramidDrop (Xing et al., 2024, "PyramidDrop: Accelerating Your Large
  Vision-Language Models via Pyramid Visual Redundancy Reduction"): the LLM is split
  into four stages and, at each stage boundary, ``lambda`` (default 0.5) of the
  remaining vision tokens are dropped, ranked by the last layer of the ending stage.
  The boundaries are 7, 14, 21 for the 28-layer Qwen2-7B (the LRS-VQA paper's
  setting) and are scaled to other depths (:func:`budgets.pdrop_layers`).

A cut "before layer L" keeps ``n - floor(ratio * n)`` of the current vision tokens
(every token of the vision slice, image_newline entries included), ranked by the
head-averaged attention row of the last token in layer ``L - 1``, recomputed from
that layer's input with :func:`lrsvqa.models.attention.layer_attention_rows` (no
n x n matrix; the model may keep sdpa or flash attention). Survivors keep their
original position ids, as if the dropped tokens were still there but invisible.

Implementation choice: the prefill runs the stock decoder layers stage by stage on
``inputs_embeds``, filling a ``DynamicCache`` whose layers hold as many keys as
tokens they saw; generation then decodes greedily one token at a time through all
layers with that cache, so later layers never see dropped tokens and no prefill is
repeated. With no cut (or ratio 0) this is exactly the model's own greedy decoding.
On Qwen3-VL the vision tokens' deepstack features (:mod:`lrsvqa.models.deepstack`) are
added after their layers and cut with their tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lrsvqa.budgets import DEFAULT_MAX_NEW_TOKENS, check_drops, kept_after_drop
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.attention import layer_attention_rows
from lrsvqa.models.deepstack import add_deepstack, split_deepstack
from lrsvqa.models.hf_compat import CACHE_KEYWORD, causal_mask


@dataclass
class PrunedGeneration:
    """Answer of a generation with in-LLM drops, and what each layer saw.

    Attributes:
        answer: Decoded text.
        vision_tokens_per_layer: Vision tokens entering each decoder layer in prefill.
        tokens_per_layer: All tokens (system, vision, text) entering each layer.
        kept_positions: Original positions of the vision tokens left after the last cut.
    """

    answer: str
    vision_tokens_per_layer: list[int]
    tokens_per_layer: list[int]
    kept_positions: list[int] = field(default_factory=list)


def _layer_output(output: torch.Tensor | tuple) -> torch.Tensor:
    """Decoder layers return a tensor (or a tuple starting with one in older releases)."""
    return output[0] if isinstance(output, tuple) else output


class StagedDecoder:
    """Prefill with vision-token cuts, then greedy decoding with the pruned KV cache.

    Args:
        adapter: The LLaVA-family model (Llama / Qwen2 / Mistral-style decoder).
    """

    def __init__(self, adapter: LlavaAdapter) -> None:
        self.adapter = adapter
        self.text_config = adapter.config.text_config
        self.layers = adapter.decoder_layers
        self.rotary = adapter.language_model.rotary_emb
        self.eos = adapter.eos_token_ids

    def _mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Causal mask over the current (possibly pruned) sequence, in index order."""
        order = torch.arange(hidden.shape[1], device=hidden.device)[None]
        return causal_mask(self.text_config, hidden, None, order)

    @staticmethod
    def _cut(rows: torch.Tensor, is_vision: torch.Tensor, ratio: float) -> torch.Tensor:
        """Sorted indices of the tokens kept when ``ratio`` of the vision tokens go."""
        scores = rows[0, :, 0].mean(dim=0)
        vision = torch.nonzero(is_vision).flatten()
        keep_count = kept_after_drop(vision.numel(), ratio)
        ranked = vision[torch.argsort(-scores[vision], stable=True)]
        keep = torch.cat([torch.nonzero(~is_vision).flatten(), ranked[:keep_count]])
        return torch.sort(keep).values

    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        vision_slice: slice,
        drops: Mapping[int, float],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        position_ids: torch.Tensor | None = None,
    ) -> PrunedGeneration:
        """Answer from assembled ``[prefix, vision, suffix]`` embeddings with in-LLM cuts.

        Args:
            inputs_embeds: (1, n, hidden) embedded sequence ending with the question.
            vision_slice: Where the vision tokens sit in it.
            drops: ``{layer: ratio}``: before ``layer``, drop ``ratio`` of the vision
                tokens still present (:func:`budgets.check_drops` rules).
            max_new_tokens: Generation budget.
            position_ids: Rotary positions where they are not the sequence index
                (Qwen-VL's M-RoPE, ``(3, 1, n)``); survivors keep theirs.
        """
        check_drops(drops, len(self.layers))
        inputs_embeds, deepstack = split_deepstack(inputs_embeds, self.text_config.hidden_size)
        n = inputs_embeds.shape[1]
        device = inputs_embeds.device
        positions = torch.arange(n, device=device)[None]
        is_vision = torch.zeros(n, dtype=torch.bool, device=device)
        is_vision[vision_slice] = True
        rope = positions if position_ids is None else position_ids
        cache = DynamicCache(config=self.text_config)
        hidden = inputs_embeds
        embeddings = self.rotary(hidden, rope)
        mask = self._mask(hidden)
        last = torch.tensor([[n - 1]], device=device)
        previous = (hidden, embeddings)
        vision_counts, token_counts = [], []
        for index, layer in enumerate(self.layers):
            if index in drops:
                rows = layer_attention_rows(self.layers[index - 1], previous[0], last, previous[1])
                keep = self._cut(rows, is_vision, drops[index])
                hidden, positions, is_vision = hidden[:, keep], positions[:, keep], is_vision[keep]
                deepstack = [features[:, keep] for features in deepstack]
                rope = rope[..., keep]
                embeddings = self.rotary(hidden, rope)
                mask = self._mask(hidden)
                last = torch.tensor([[hidden.shape[1] - 1]], device=device)
            vision_counts.append(int(is_vision.sum()))
            token_counts.append(int(hidden.shape[1]))
            previous = (hidden, embeddings)
            hidden = _layer_output(
                layer(
                    hidden,
                    attention_mask=mask,
                    position_ids=positions,
                    **{CACHE_KEYWORD: cache},
                    use_cache=True,
                    position_embeddings=embeddings,
                )
            )
            hidden = add_deepstack(hidden, deepstack, index)
        answer = self._decode(hidden, cache, int(rope[..., -1].max()) + 1, max_new_tokens)
        kept = positions[0, is_vision].tolist()
        return PrunedGeneration(answer, vision_counts, token_counts, kept)

    def _next_token(self, hidden: torch.Tensor) -> torch.Tensor:
        """Greedy choice from the last position's hidden state: (1, 1) token id."""
        normed = self.adapter.language_model.norm(hidden[:, -1:])
        return self.adapter.lm_head(normed).argmax(dim=-1)

    def _decode(
        self, hidden: torch.Tensor, cache: DynamicCache, start: int, max_new_tokens: int
    ) -> str:
        """Greedy decoding through all layers with the pruned cache.

        New tokens are text: they take positions ``start, start + 1, ...`` after the
        last prompt token's (on every M-RoPE axis alike).
        """
        generated: list[int] = []
        for step in range(max_new_tokens):
            token = self._next_token(hidden)
            generated.append(int(token))
            if int(token) in self.eos or step + 1 == max_new_tokens:
                break
            hidden = self.adapter.embed_tokens(token)
            position = torch.full((1, 1), start + step, device=hidden.device)
            embeddings = self.rotary(hidden, position)
            for layer in self.layers:
                hidden = _layer_output(
                    layer(
                        hidden,
                        attention_mask=None,
                        position_ids=position,
                        **{CACHE_KEYWORD: cache},
                        use_cache=True,
                        position_embeddings=embeddings,
                    )
                )
        return self.adapter.tokenizer.decode(generated, skip_special_tokens=True).strip()
