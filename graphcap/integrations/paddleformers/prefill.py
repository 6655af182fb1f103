"""Prefill under graphs: the prompts admitted in one step, padded to a (rows, tokens) bucket, in one graph.

Each prefill capture size ``T`` (``GraphConfig.prefill_capture_sizes``, in
tokens) is one graphed function over registry buffers ``[max_batch, T]``
(token ids and positions), ``[max_batch, 1, T, max_len]`` (the mask) and
``[max_batch]`` (slots, last real position); graphcap buckets it on rows as
every graphed function, so each (rows bucket, ``T``) pair has its own graph.
A prompt of ``n`` tokens goes to the smallest ``T >= n``; prompts of one
step that share a ``T`` are prefilled together, in slot order; a prompt
longer than the largest ``T`` is prefilled eagerly on its own, counted as an
eager fallback with the reason.

Padding, and why it never changes a token:

* *Positions past a prompt's end* (``n..T-1`` of a real row) hold token 0 at
  positions ``n..T-1``. They are written into the row's slot of the static
  cache, at those positions, and a real position never attends them (the
  causal mask: position ``t`` attends ``0..t``, and ``t < n``). Decoding then
  writes position ``n`` before it attends it, then ``n + 1``, and so on: every
  padding entry is overwritten before any query reads it
  (``tests/test_prefill_graphs.py`` checks both).
* *Padding rows* (past the step's prompts, up to the rows bucket) point at
  the scratch slot, which no request reads.

The first token of each prompt comes from its last real position's logits,
sampled (or argmaxed) with the row's slot seed, as the eager prefill does.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle

from graphcap.decide.buckets import capped_sizes
from graphcap.errors import ConfigError
from graphcap.graphed_function import call_in_place
from graphcap.integrations.paddleformers.draft_prefill import DraftPrefillGraphs
from graphcap.integrations.paddleformers.drafts import at_positions
from graphcap.integrations.paddleformers.speculative import prefill_with_draft

if TYPE_CHECKING:
    from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM, _Request

__all__ = ["PrefillGraphs", "prefill_step"]


def prefill_step(lm: GraphedCausalLM, *, record_hidden: bool = False) -> Callable[..., tuple[paddle.Tensor, ...]]:
    """The captured region: each row's prompt through ``lm``'s model into its slot.

    ``record_hidden`` (an MTP draft follows) also returns the pre-norm hidden
    states ``[R, T, hidden]`` the draft reads.

    A closure over ``lm`` only, never over ``PrefillGraphs``: the value guard
    watches every plain value the step can reach, and the host-side counters
    there change on every call (a method of that object recaptured each time).
    """

    def step(
        *, input_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor,
        attention_mask: paddle.Tensor, last_index: paddle.Tensor, greedy: bool,
    ) -> tuple[paddle.Tensor, ...]:
        """``(first tokens [R], last real logits [R, vocab])`` of the ``R`` prompts, plus the hidden states if asked."""
        logits, hidden = lm.forward_rows(input_ids, position_ids, slot_ids, attention_mask=attention_mask,
                                         record_hidden=record_hidden)
        last = at_positions(logits, last_index)
        tokens = lm._sample(last, slot_ids, greedy=greedy)
        return (tokens, last) if hidden is None else (tokens, last, hidden)

    return step


class PrefillGraphs:
    """The prefill graphs of one ``GraphedCausalLM``: buffers and one graphed function per token size."""

    def __init__(self, lm: GraphedCausalLM, sizes: Sequence[int]) -> None:
        """Declare the prefill buffers of every token size in ``sizes`` and graph the prefill step for each."""
        if sizes[-1] > lm.max_len:
            raise ConfigError(
                f"prefill_capture_sizes={list(sizes)} holds {sizes[-1]} tokens, more than max_len={lm.max_len} "
                f"cache positions; keep every prefill size at most max_len"
            )
        self.lm = lm
        self.sizes = tuple(sizes)
        registry, batch = lm.registry, lm.max_batch
        bufs = registry.buffers
        bufs.declare("prefill_slots", [batch], "int64", pad="value", pad_value=lm.scratch_slot)
        bufs.declare("prefill_last", [batch], "int64")
        rows = capped_sizes(lm.config.sizes_for(1), batch)
        step = lm.speculative
        self.draft = None if step is None else DraftPrefillGraphs(lm, step, self.sizes)
        record_hidden = step is not None and step.pair.needs_hidden
        self.steps = {}
        for size in self.sizes:
            bufs.declare(f"prefill_ids_{size}", [batch, size], "int64")
            # Padding rows repeat row 0's positions and mask: a valid causal pattern over the scratch slot.
            bufs.declare(f"prefill_positions_{size}", [batch, size], "int64", pad="copy_row0")
            bufs.declare(f"prefill_mask_{size}", [batch, 1, size, lm.max_len], "bool", pad="copy_row0")
            self.steps[size] = registry.graphed(f"prefill_{size}", batch_arg="input_ids", rows_per_request=1,
                                                capture_sizes=rows)(prefill_step(lm, record_hidden=record_hidden))
        # Host-side counters, changed by every call. Underscored so the value guard does not watch them: every
        # graphed step of the engine (decode and prefill alike) reaches this object through lm.prefill_graphs,
        # and a watched counter would recapture each graph after every prefill.
        self._counts = {"bucketed_prompts": 0, "too_long_prompts": 0, "tokens": 0, "padded_tokens": 0}

    # Host side ---------------------------------------------------------------------
    def size_for(self, tokens: int) -> int | None:
        """The smallest prefill size holding ``tokens`` tokens, or None above the largest."""
        index = bisect.bisect_left(self.sizes, tokens)
        return self.sizes[index] if index < len(self.sizes) else None

    def run(self, slots: Sequence[int], prompts: Sequence[Sequence[int]], *, greedy: bool,
            requests: Sequence[_Request] | None = None) -> list[int]:
        """Prefill ``prompts[i]`` into slot ``slots[i]``; returns each prompt's first generated token, in order.

        With a draft, ``requests`` (the admitted requests, ``requests[i]`` for
        ``prompts[i]``) also get their first drafts, from the draft pass in the
        same token sizes (``DraftPrefillGraphs``).
        """
        if self.draft is not None and requests is None:
            raise TypeError("PrefillGraphs.run with a draft needs requests=: the requests whose drafts it sets")
        firsts: list[int | None] = [None] * len(prompts)
        groups: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            size = self.size_for(len(prompt))
            if size is None:
                reason = (f"a prompt of {len(prompt)} tokens is longer than the largest prefill capture size "
                          f"{self.sizes[-1]}; it was prefilled eagerly")
                self.lm.registry.stats_counters.fallback("prefill", None, reason)
                self._counts["too_long_prompts"] += 1
                if self.draft is None:
                    firsts[index] = self.lm.prefill(slots[index], prompts[index], greedy=greedy)
                else:
                    firsts[index] = prefill_with_draft(self.lm, self.draft.step, requests[index], greedy=greedy)
            else:
                groups.setdefault(size, []).append(index)
        for size, members in groups.items():
            tokens, hidden = self._prefill_group(size, [slots[i] for i in members], [prompts[i] for i in members],
                                                 greedy)
            for index, token in zip(members, tokens):
                firsts[index] = token
            if self.draft is not None:
                # Before the next group's replay overwrites the hidden states this one returned.
                self.draft.propose([requests[i] for i in members], tokens, hidden)
        return [int(token) for token in firsts]  # type: ignore[arg-type]

    def _prefill_group(self, size: int, slots: list[int], prompts: list[Sequence[int]],
                       greedy: bool) -> tuple[list[int], paddle.Tensor | None]:
        """One graphed call: the prompts padded to ``size`` tokens, written into the buffers, replayed.

        Returns the first tokens and, when an MTP draft follows, the graph's hidden-state output ``[R, size, h]``.
        """
        rows = len(slots)
        lengths = np.asarray([len(prompt) for prompt in prompts], dtype=np.int64)
        ids = np.zeros([rows, size], dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        positions = np.broadcast_to(np.arange(size, dtype=np.int64), (rows, size))
        # Causal over the prompt's own positions: query t attends keys 0..t; keys past `size` never.
        causal = np.arange(self.lm.max_len)[None, :] <= np.arange(size)[:, None]
        mask = np.broadcast_to(causal, (rows, 1, size, self.lm.max_len))
        bufs = self.lm.registry.buffers
        bufs.write(f"prefill_ids_{size}", ids)
        bufs.write(f"prefill_positions_{size}", np.ascontiguousarray(positions))
        bufs.write(f"prefill_mask_{size}", np.ascontiguousarray(mask))
        bufs.write("prefill_slots", np.asarray(slots, dtype=np.int64))
        bufs.write("prefill_last", lengths - 1)
        out = call_in_place(self.steps[size], rows, lambda: self._views(size, rows), greedy=greedy)
        self._counts["bucketed_prompts"] += rows
        self._counts["tokens"] += int(lengths.sum())
        self._counts["padded_tokens"] += rows * size - int(lengths.sum())
        return out[0].numpy().tolist(), out[2] if len(out) > 2 else None

    def _views(self, size: int, rows: int) -> dict[str, Any]:
        """The prefill step's arguments for ``rows`` prompts of token size ``size``: prefix views of its buffers."""
        bufs = self.lm.registry.buffers
        return {"input_ids": bufs[f"prefill_ids_{size}"][:rows],
                "position_ids": bufs[f"prefill_positions_{size}"][:rows],
                "slot_ids": bufs.prefill_slots[:rows], "attention_mask": bufs[f"prefill_mask_{size}"][:rows],
                "last_index": bufs.prefill_last[:rows]}

    def stats(self) -> dict[str, int]:
        """Prompts prefilled in a token bucket, prompts too long for any (eager), and the buckets' real and padding tokens.

        Whether a graph served the bucketed ones is the registry's coverage
        of the ``prefill_<size>`` functions.
        """
        return {**self._counts, **({} if self.draft is None else self.draft.stats())}
