"""Coarse-to-fine that records what it hands to generation, for the LLaVA and Qwen-VL tests."""

from __future__ import annotations

from lrsvqa.strategies.c2f import CoarseToFine


class CapturingC2F(CoarseToFine):
    """Records the first generation call's embeddings (``fed``) and positions.

    ``fed_positions`` is None where the adapter places tokens by sequence index (LLaVA).
    """

    def run(self, source, question):
        fed = []
        original = self.adapter.generate

        def capture(embeds, max_new_tokens, position_ids=None):
            fed.append((embeds, position_ids))
            return original(embeds, max_new_tokens, position_ids=position_ids)

        self.adapter.generate = capture
        try:
            result = super().run(source, question)
        finally:
            del self.adapter.generate
        self.fed, self.fed_positions = fed[0]
        return result
