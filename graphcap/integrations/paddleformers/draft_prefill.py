"""The draft's first step after a bucketed prefill, in the same token sizes as the target's prefill.

After ``PrefillGraphs`` prefills a group of prompts into the target, each
request needs its first k drafts before its first speculative step: the
draft runs over the prompt and the first sampled token (shifted by its
position offset, ``speculative.draft_sequence``), its last real row proposes
d'_1, and ``SpeculativeStep.propose`` proposes the rest. Here that draft
pass is one graphed function ``draft_prefill_<T>`` per prefill size ``T``
over registry buffers ``[max_batch, T]`` (ids, positions), ``[max_batch, T,
hidden]`` (an MTP draft's target hidden states) and ``[max_batch]`` (slots,
last real row), bucketed on rows as every graphed function. It follows
``draft_use_graph``, as the draft's decode graphs do.

Which size: an MTP draft's sequence is as long as the prompt (the same size
as the target's group, its hidden states the target graph's output rows); a
draft model's is one longer, so a prompt that fills its size goes to the
next one, or, above the largest, to the eager draft pass, counted with the
reason. Padding positions hold token 0 and, for MTP, stale hidden rows: no
real row attends them (causal by position), and every later draft step
writes its cache position before a mask admits it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle

from graphcap.decide.buckets import capped_sizes
from graphcap.graphed_function import call_in_place
from graphcap.integrations.paddleformers.drafts import at_positions
from graphcap.integrations.paddleformers.speculative import draft_after_prefill, draft_sequence

if TYPE_CHECKING:
    from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM, _Request
    from graphcap.integrations.paddleformers.speculative import PaddleFormersPair
    from graphcap.mtp.speculative_step import SpeculativeStep

__all__ = ["DraftPrefillGraphs", "draft_prefill_step"]


def draft_prefill_step(pair: PaddleFormersPair) -> Callable[..., tuple[paddle.Tensor, ...]]:
    """The captured region: the draft over each row's sequence; ``(d'_1 [R],)`` plus its hidden ``[R, h]`` for MTP.

    A closure over the pair only (see ``prefill.prefill_step`` on why not a
    method of the object that holds the host counters). The draft's proposal
    is its argmax, as in the eager pass and in every draft step.
    """

    def step(*, input_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor,
             last_index: paddle.Tensor, hidden: paddle.Tensor | None = None) -> tuple[paddle.Tensor, ...]:
        """d'_1 of each row from its last real position, and (MTP) the draft's hidden state there."""
        logits, states = pair.draft_model.forward(input_ids, position_ids, slot_ids, hidden, 0)
        proposals = paddle.argmax(at_positions(logits, last_index), axis=-1).astype("int64")
        return (proposals,) if states is None else (proposals, at_positions(states, last_index))

    return step


class DraftPrefillGraphs:
    """The draft-prefill graphs of one speculative ``GraphedCausalLM``: buffers and one graphed function per size."""

    def __init__(self, lm: GraphedCausalLM, step: SpeculativeStep, sizes: Sequence[int]) -> None:
        """Declare the draft-prefill buffers of every token size in ``sizes`` and graph the draft pass for each."""
        self.lm = lm
        self.step = step
        self.pair = step.pair
        self.sizes = tuple(sizes)
        registry, batch = lm.registry, lm.max_batch
        config = registry.config
        bufs = registry.buffers
        bufs.declare("draft_prefill_slots", [batch], "int64", pad="value", pad_value=lm.scratch_slot)
        bufs.declare("draft_prefill_last", [batch], "int64")
        rows = capped_sizes(config.sizes_for(1), batch)
        enabled = bool(config.use_graph and config.draft_use_graph)
        self.steps = {}
        for size in self.sizes:
            bufs.declare(f"draft_prefill_ids_{size}", [batch, size], "int64")
            # Padding rows repeat row 0's positions: a valid causal pattern over the scratch slot.
            bufs.declare(f"draft_prefill_positions_{size}", [batch, size], "int64", pad="copy_row0")
            if self.pair.needs_hidden:
                bufs.declare(f"draft_prefill_hidden_{size}", [batch, size, self.pair.hidden_size],
                             str(self.pair.hidden_dtype).split(".")[-1])
            self.steps[size] = registry.graphed(f"draft_prefill_{size}", batch_arg="input_ids", rows_per_request=1,
                                                capture_sizes=rows, enabled=enabled)(draft_prefill_step(self.pair))
        # Host counters, unwatched by the value guard (see PrefillGraphs._counts).
        self._counts = {"bucketed_drafts": 0, "too_long_drafts": 0}

    def propose(self, requests: Sequence[_Request], firsts: Sequence[int], hidden: paddle.Tensor | None) -> None:
        """Set the drafts of ``requests``, just prefilled together; ``hidden``: the target's ``[R, T, h]`` or None.

        ``hidden`` is the target graph's output, overwritten by its next
        replay: it is copied into this size's buffer before anything else runs.
        """
        groups: dict[int, list[int]] = {}
        for index, (request, first) in enumerate(zip(requests, firsts)):
            request.length = len(request.prompt)
            length = len(draft_sequence(self.pair, request.prompt, first))
            position = bisect.bisect_left(self.sizes, length)
            if position == len(self.sizes):
                reason = (f"a draft sequence of {length} tokens (the prompt and its first token) is longer than the "
                          f"largest prefill capture size {self.sizes[-1]}; the draft's first pass ran eagerly")
                self.lm.registry.stats_counters.fallback("draft_prefill", None, reason)
                self._counts["too_long_drafts"] += 1
                draft_after_prefill(self.step, request, first, None)  # a draft model: it reads no hidden
            else:
                groups.setdefault(self.sizes[position], []).append(index)
        # With hidden (MTP) every sequence is as long as its prompt: one group, row for row the target's.
        for size, members in groups.items():
            self._propose_group(size, [requests[i] for i in members], [firsts[i] for i in members], hidden)

    def _propose_group(self, size: int, requests: list[_Request], firsts: list[int],
                       hidden: paddle.Tensor | None) -> None:
        """One graphed draft pass over ``requests`` padded to ``size`` tokens, then the later drafts eagerly."""
        rows = len(requests)
        sequences = [draft_sequence(self.pair, request.prompt, first) for request, first in zip(requests, firsts)]
        ids = np.zeros([rows, size], dtype=np.int64)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
        bufs = self.lm.registry.buffers
        bufs.write(f"draft_prefill_ids_{size}", ids)
        bufs.write(f"draft_prefill_positions_{size}",
                   np.ascontiguousarray(np.broadcast_to(np.arange(size, dtype=np.int64), (rows, size))))
        bufs.write("draft_prefill_slots", np.asarray([request.slot for request in requests], dtype=np.int64))
        bufs.write("draft_prefill_last", np.asarray([len(sequence) - 1 for sequence in sequences], dtype=np.int64))
        if hidden is not None:
            bufs.write(f"draft_prefill_hidden_{size}", hidden)
        out = call_in_place(self.steps[size], rows, lambda: self._views(size, rows))
        # Copies: the graph's outputs are overwritten by its next replay, and propose() replays draft_next.
        states = out[1].clone() if len(out) > 1 else None
        self._counts["bucketed_drafts"] += rows
        self.step.propose(requests, out[0].numpy().tolist(), states, graphed=False)

    def _views(self, size: int, rows: int) -> dict[str, Any]:
        """The draft pass's arguments for ``rows`` sequences of size ``size``: prefix views of its buffers."""
        bufs = self.lm.registry.buffers
        views = {"input_ids": bufs[f"draft_prefill_ids_{size}"][:rows],
                 "position_ids": bufs[f"draft_prefill_positions_{size}"][:rows],
                 "slot_ids": bufs.draft_prefill_slots[:rows], "last_index": bufs.draft_prefill_last[:rows]}
        if self.pair.needs_hidden:
            views["hidden"] = bufs[f"draft_prefill_hidden_{size}"][:rows]
        return views

    def stats(self) -> dict[str, int]:
        """Draft passes run in a token bucket, and those too long for any (eager)."""
        return dict(self._counts)
