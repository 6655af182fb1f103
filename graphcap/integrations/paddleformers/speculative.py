"""A ``GraphedCausalLM`` and its draft as a ``SpeculativePair``, and the eager prefill that starts its drafts.

The speculative step itself (staging, target verify, accept, draft steps,
graphs) is graphcap's one ``graphcap.mtp.speculative_step.SpeculativeStep``,
as for ``MTPEngine``. This module only says how a PaddleFormers target and
draft run over the step's flat rows: the rows are reshaped to ``[R, 1+k]``
(a verify step) or ``[R, 1]`` (a draft substep), so the model's own
``forward`` sees a batch of short sequences through its ``StaticCache``, and
padding rows (slot -1) go to the cache's scratch slot.

Cache positions past what a request committed hold rows of rejected drafts;
every later step rewrites them (step 0 starts at the first uncommitted
position) before any mask admits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import paddle

from graphcap.integrations.paddleformers.drafts import ModelDraft, MTPDraft

if TYPE_CHECKING:
    from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM, _Request
    from graphcap.mtp.speculative_step import SpeculativeStep

__all__ = ["PaddleFormersPair", "draft_after_prefill", "draft_sequence", "prefill_with_draft"]


class PaddleFormersPair:
    """``lm``'s model as the target and ``draft`` (``MTPDraft`` or ``ModelDraft``) as the draft, over flat rows."""

    def __init__(self, lm: GraphedCausalLM, draft: MTPDraft | ModelDraft) -> None:
        """Pair the two; the draft's cache is ``draft.cache`` (adopted into the registry by the caller)."""
        self.lm = lm
        self.draft_model = draft
        self.needs_hidden = draft.needs_hidden
        self.position_offset = draft.position_offset
        self.hidden_size = lm.model.config.hidden_size
        self.hidden_dtype = lm.cache.layers[0].keys.dtype

    def _slots(self, slot_ids: paddle.Tensor, per: int) -> paddle.Tensor:
        """Slot per request (``[R / per]``, int64), padding rows' -1 mapped to the scratch slot."""
        slots = slot_ids.reshape([-1, per])[:, 0].astype("int64")
        return paddle.where(slots < 0, paddle.full_like(slots, self.lm.scratch_slot), slots)

    def verify(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor, *,
               per: int) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """The target over ``[R / per, per]``: ``(float32 logits [R, vocab], pre-norm hidden [R, h] or None)``."""
        logits, hidden = self.lm.forward_rows(token_ids.reshape([-1, per]), positions.reshape([-1, per]),
                                              self._slots(slot_ids, per), record_hidden=self.needs_hidden)
        flat = logits.reshape([-1, logits.shape[-1]]).astype("float32")
        return flat, None if hidden is None else hidden.reshape([-1, hidden.shape[-1]])

    def draft(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
              hidden: paddle.Tensor | None, *, per: int, layer: int) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """Draft layer ``layer`` over ``[R / per, per]``: ``(logits [R, vocab], its hidden [R, h] or None)``."""
        states = None if hidden is None else hidden.reshape([-1, per, hidden.shape[-1]])
        logits, out = self.draft_model.forward(token_ids.reshape([-1, per]), positions.reshape([-1, per]),
                                               self._slots(slot_ids, per), states, layer)
        return logits.reshape([-1, logits.shape[-1]]), None if out is None else out.reshape([-1, out.shape[-1]])

    def layer_for(self, substep: int) -> int:
        """The draft's layer for draft ``substep + 1``."""
        return self.draft_model.layer_for(substep)


def prefill_with_draft(lm: GraphedCausalLM, step: SpeculativeStep, request: _Request, *, greedy: bool) -> int:
    """Prefill the target and the draft eagerly for ``request``; set its drafts; return its first token.

    Leaves ``request.length`` at the prompt's length (its positions in the
    target's cache), as ``step.run`` expects.
    """
    first, hidden = lm.prefill_with_hidden(request.slot, request.prompt, greedy=greedy,
                                           record_hidden=step.pair.needs_hidden)
    draft_after_prefill(step, request, first, hidden)
    return first


def draft_sequence(pair: PaddleFormersPair, prompt: Sequence[int], first: int) -> list[int]:
    """The draft's rows after a prefill: the prompt and its first token, shifted by the draft's position offset.

    The last row pairs with ``first`` and proposes d'_1; an MTP draft
    (offset 0) drops the prompt's first token so that row ``t`` reads the
    target's hidden state at ``t``.
    """
    return [*prompt, first][1 - pair.position_offset:]


def draft_after_prefill(step: SpeculativeStep, request: _Request, first: int, hidden: paddle.Tensor | None) -> None:
    """Run the draft eagerly over ``request``'s prompt (``hidden``: the target's ``[1, len, h]``) and set its drafts."""
    pair = step.pair
    sequence = draft_sequence(pair, request.prompt, first)
    ids = paddle.to_tensor([sequence], dtype="int64")
    positions = paddle.arange(len(sequence), dtype="int64").reshape([1, -1])
    slots = paddle.to_tensor([request.slot], dtype="int64")
    logits, out = pair.draft_model.forward(ids, positions, slots, hidden, 0)
    proposal = int(paddle.argmax(logits[0, -1]).numpy())
    request.length = len(request.prompt)
    step.propose([request], [proposal], None if out is None else out[:, -1], graphed=False)
