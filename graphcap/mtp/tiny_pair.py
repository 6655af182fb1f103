"""The built-in tiny LM and its MTP head as a ``SpeculativePair``: the speculative step's easy case."""

from __future__ import annotations

import paddle

from graphcap.models.tiny_lm import TinyLMBundle

__all__ = ["TinyLMPair"]


class TinyLMPair:
    """``bundle.model`` verifies over its ``cache``, ``bundle.mtp_head`` drafts over its ``draft_cache``.

    Both take the step's flat rows as they are (the tiny LM is a row model:
    it maps padding rows' slot -1 to its trash slot itself), so ``per`` is
    unused. The head is one layer, chained for every substep.
    """

    needs_hidden = True
    position_offset = 0
    hidden_dtype = "float32"

    def __init__(self, bundle: TinyLMBundle) -> None:
        """Pair the bundle's target and head; their caches stay the bundle's."""
        self.bundle = bundle
        self.hidden_size = bundle.config.hidden_size

    def verify(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor, *,
               per: int) -> tuple[paddle.Tensor, paddle.Tensor]:
        """``TinyLM.forward_rows``: ``(logits float32 [R, vocab], hidden before the final norm [R, h])``."""
        return self.bundle.model.forward_rows(token_ids, positions, slot_ids, self.bundle.cache)

    def draft(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
              hidden: paddle.Tensor | None, *, per: int, layer: int) -> tuple[paddle.Tensor, paddle.Tensor]:
        """``MTPHead.forward_rows`` over (hidden at p, token at p+1) rows: ``(logits [R, vocab], hidden [R, h])``."""
        return self.bundle.mtp_head.forward_rows(hidden, token_ids, positions, slot_ids, self.bundle.draft_cache)

    def layer_for(self, substep: int) -> int:
        """0: the one head proposes every draft."""
        return 0
