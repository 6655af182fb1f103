"""One speculative decode step under graphs, for any target and draft behind ``SpeculativePair``.

Every speculative engine in graphcap (``MTPEngine`` over the built-in model,
``GraphedCausalLM`` over PaddleFormers models) runs its decode steps through
``SpeculativeStep``. For every active request with ``length`` positions in
the target's cache, its last token x (not yet in the cache) and drafts
d_1..d_k:

1. *Stage* (host -> registry buffers, in place, ``graphcap.mtp.preprocess``):
   rows [x, d_1..d_k] at positions length..length+k, ``seq_lens_this_time``,
   ``cu_seqlens_q_output``, ``batch_id_per_token_output`` (padding rows -1).
2. *Target verify* (graph ``target``, bucketed on rows, multiples of 1+k):
   ``pair.verify``, then ``build_sampling_params`` gives row j of a request
   the seed ``infer_seed + 4j`` and advances ``infer_seed`` in place by
   (1+k)*4; the rows are sampled (or argmax) into t_0..t_k.
3. *Accept* (host, ``graphcap.mtp.accept``): the longest prefix with
   d_{j+1} == t_j, plus the bonus token, committed one by one.
4. *Draft step 0* (graph ``draft``, the same rows): ``pair.draft`` reads
   t_0..t_k (and the target's hidden states where the draft needs them),
   refilling its cache over the committed positions; the row of the bonus
   token proposes d'_1.
5. *Draft substeps* (graph ``draft_next``, one row per request): d'_2..d'_s,
   s = ``draft_steps``; drafts past s are filler the target rejects.

The draft replays its graphs only when the target step did (a draft deciding
on its own once hung a multi-rank engine); ``config.draft_use_graph``
switches the draft graphs off alone, with identical results. Graph names,
capture sizes and rows per request come from ``graphcap.mtp.graph_specs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paddle

from graphcap.decide.capture_plan import GraphSpec
from graphcap.graphed_function import call_in_place
from graphcap.mtp.accept import accepted_prefix
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, declare_step_buffers, write_step_inputs
from graphcap.ops.sampler import sample_speculative
from graphcap.ops.sampling_params import MAX_INFER_SEED
from graphcap.registry import CaptureRegistry, frozen_gc

__all__ = ["DecodingRequest", "SpeculativePair", "SpeculativeStep"]


class SpeculativePair(Protocol):
    """A target and its draft as the step calls them, over flat rows of ``per`` rows to a request.

    ``slot_ids`` are int32 with -1 for padding rows; an implementation maps
    those to a slot no request reads. Both calls run inside graphs and in
    eager prefill alike, so they must be graph-safe (no host reads).
    """

    #: Whether the draft reads the target's hidden states (an MTP head does, a draft model does not).
    needs_hidden: bool
    #: Where the draft's row for the target's row at position p sits: p + ``position_offset``.
    position_offset: int
    hidden_size: int
    hidden_dtype: str

    def verify(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor, *,
               per: int) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """The target over ``[R]`` rows: ``(float32 logits [R, vocab], hidden [R, h] or None)``."""
        ...

    def draft(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
              hidden: paddle.Tensor | None, *, per: int, layer: int) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """Draft layer ``layer`` over ``[R]`` rows: ``(logits [R, vocab], its hidden [R, h] or None)``."""
        ...

    def layer_for(self, substep: int) -> int:
        """The draft layer that proposes draft ``substep + 1`` (the last one chained past its count)."""
        ...


class DecodingRequest(Protocol):
    """What the step reads and writes of one request."""

    slot: int
    #: Positions written into the target's cache; the last token sits at this position, not yet written.
    length: int
    drafts: list[int]
    done: bool

    @property
    def last_token(self) -> int:
        """The request's last committed token."""
        ...


class SpeculativeStep:
    """Buffers, graphs and host logic of one speculative decode step, over ``pair``.

    ``registry`` must already hold per-slot ``infer_seed`` int64, ``top_p``
    float32 and ``top_k`` int64 buffers of ``slots`` entries; this class
    declares the step buffers (names starting with ``prefix``) and registers
    the graphs ``target``, ``draft`` and ``draft_next`` with sizes capped at
    ``max_batch`` requests. ``draft_steps`` (1..k) draft tokens are proposed
    by the draft per step, the rest are filler. With k = 0 there is no draft
    step: ``draft_first`` and ``draft_next`` are None, the step only verifies.
    """

    def __init__(
        self, registry: CaptureRegistry, pair: SpeculativePair, *, max_batch: int, slots: int, max_rows: int,
        prefix: str = "", draft_steps: int | None = None, max_seed: int = MAX_INFER_SEED,
    ) -> None:
        """Declare the step buffers and wrap the three step functions in the registry's graphs."""
        config = registry.config
        self.registry = registry
        self.pair = pair
        self.k = config.num_speculative_tokens
        self.draft_steps = self.k if draft_steps is None else draft_steps
        self.max_batch = max_batch
        self.slots = slots
        self.prefix = prefix
        self.max_seed = max_seed
        # Host counters under private names: the capture scan watches the public
        # Python values the step functions can reach (self is one), not these.
        self._proposed = 0
        self._accepted = 0
        declare_step_buffers(registry.buffers, max_batch=slots, max_rows=max_rows, prefix=prefix)
        specs = {spec.name: spec for spec in mtp_graph_specs(config, max_batch=max_batch)}
        drafts_on = bool(config.use_graph and config.draft_use_graph)
        self.target = self._graphed(specs["target"], None)(self._verify)
        self.draft_first = self.draft_next = None
        if "draft" in specs:
            self.draft_first = self._graphed(specs["draft"], drafts_on)(self._draft_first)
            self.draft_next = self._graphed(specs["draft_next"], drafts_on)(self._draft_next)

    def _graphed(self, spec: GraphSpec, enabled: bool | None) -> Any:
        """The registry's decorator for one graph of ``mtp_graph_specs``; ``enabled=None`` follows ``use_graph``."""
        return self.registry.graphed(spec.name, batch_arg="token_ids", rows_per_request=spec.rows_per_request,
                                     capture_sizes=spec.sizes, padding={"slot_ids": -1}, enabled=enabled)

    def buffer(self, name: str) -> paddle.Tensor:
        """One of this step's buffers by its unprefixed name (``input_ids``, ``cu_seqlens_q_output`` ...)."""
        return self.registry.buffers[f"{self.prefix}{name}"]

    # The captured regions --------------------------------------------------------
    def _verify(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor, greedy: bool,
    ) -> tuple[paddle.Tensor, ...]:
        """Target verify and sampling over ``[R]`` rows: ``(tokens [R],)``, plus hidden ``[R, h]`` for the draft."""
        logits, hidden = self.pair.verify(token_ids, positions, slot_ids, per=1 + self.k)
        tokens = self.sample(logits, greedy=greedy)
        return (tokens,) if hidden is None else (tokens, hidden)

    def sample(self, logits: paddle.Tensor, *, greedy: bool) -> paddle.Tensor:
        """``build_sampling_params`` + sampling (or argmax) of output rows laid out by the step buffers.

        Rows follow ``cu_seqlens_q_output``; each slot's ``infer_seed`` advances
        in place. The verify graph and an engine's eager prefill sample here.
        """
        bufs = self.registry.buffers
        return sample_speculative(
            logits, top_p=bufs.top_p, top_k=bufs.top_k, infer_seed=bufs.infer_seed,
            seq_lens_this_time=self.buffer("seq_lens_this_time"),
            cu_seqlens_q_output=self.buffer("cu_seqlens_q_output"),
            num_speculative_tokens=self.k, max_seed=self.max_seed, greedy=greedy,
        )

    def _draft_rows(self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
                    hidden: paddle.Tensor | None, *, per: int, layer: int) -> tuple[paddle.Tensor, ...]:
        """The draft with argmax: ``(tokens [R],)``, plus its hidden ``[R, h]`` to chain."""
        logits, out = self.pair.draft(token_ids, positions, slot_ids, hidden, per=per, layer=layer)
        tokens = paddle.argmax(logits, axis=-1).astype("int64")
        return (tokens,) if out is None else (tokens, out)

    def _draft_first(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None = None,
    ) -> tuple[paddle.Tensor, ...]:
        """Draft step 0 over the verify rows: the target's tokens at its positions + the draft's offset."""
        return self._draft_rows(token_ids, positions + self.pair.position_offset, slot_ids, hidden,
                                per=1 + self.k, layer=0)

    def _draft_next(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None = None, layer: int = 0,
    ) -> tuple[paddle.Tensor, ...]:
        """One draft substep, one row per request at the given positions."""
        return self._draft_rows(token_ids, positions, slot_ids, hidden, per=1, layer=layer)

    # Host side ----------------------------------------------------------------------
    def run(
        self, active: Sequence[DecodingRequest], *, greedy: bool, commit: Callable[[Any, int], None],
        agreed_rows: int | None = None,
    ) -> None:
        """One verify + draft step for ``active`` (any order).

        Each request's accepted drafts and bonus token go to ``commit`` one by
        one until it is done (``commit`` advances ``length`` and sets
        ``done``); the requests still going get their next drafts.
        ``agreed_rows`` (with ``sync_ranks``: the step's agreed target rows)
        makes the step's calls the same on every rank: the draft follows the
        agreed decision, every substep runs even with no request going on, and
        a rank with no requests replays padding rows only, its seeds put back.
        """
        ordered = sorted(active, key=lambda request: request.slot)
        if agreed_rows is not None and not ordered:
            seeds = self.registry.buffers.infer_seed.clone()
            try:
                self._run(ordered, greedy=greedy, commit=commit, agreed_rows=agreed_rows)
            finally:
                self.registry.buffers.write("infer_seed", seeds)
            return
        self._run(ordered, greedy=greedy, commit=commit, agreed_rows=agreed_rows)

    def _run(
        self, active: list[DecodingRequest], *, greedy: bool, commit: Callable[[Any, int], None],
        agreed_rows: int | None,
    ) -> None:
        rows = [SlotRows(slot=r.slot, tokens=(r.last_token, *r.drafts), start=r.length) for r in active]
        layout = write_step_inputs(self.registry.buffers, rows, max_batch=self.slots, prefix=self.prefix)
        staged = self._staged(layout.rows)
        replays = getattr(self.target, "graph_calls", 0)
        # The buffers were just written in place, so once a graph exists replay(rows) serves
        # the call without binding or classifying it (and is the decorated call where it must be).
        outputs = call_in_place(self.target, layout.rows, lambda: staged, greedy=greedy)
        # The draft follows the target's decision, never one of its own: what served
        # the target here, or with several ranks what the step agreed (the same everywhere).
        if agreed_rows is None:
            graphed = getattr(self.target, "graph_calls", 0) > replays
        else:
            buckets = getattr(self.target, "buckets", None)
            graphed = bool(self.registry.config.use_graph) and buckets is not None and agreed_rows <= buckets.largest
        sampled = outputs[0].numpy()
        bonus_rows = []
        for request in active:
            start = layout.row_start[request.slot]
            verified = sampled[start : start + 1 + self.k].tolist()
            accepted = accepted_prefix(request.drafts, verified)
            self._proposed += self.k
            self._accepted += accepted
            for token in verified[: accepted + 1]:
                if not request.done:
                    commit(request, token)
            bonus_rows.append(start + accepted)
        if self.draft_first is None:
            return
        first = self.draft_first if graphed else self.draft_first.__wrapped__
        hidden = {"hidden": outputs[1]} if self.pair.needs_hidden else {}
        # outputs are views of the target graph's static outputs; the draft
        # graph stages them (a copy) before it replays, so nothing overwrites
        # them first.
        drafted = first(token_ids=outputs[0], positions=staged["positions"], slot_ids=staged["slot_ids"], **hidden)
        going = [index for index, request in enumerate(active) if not request.done]
        if not going and agreed_rows is None:
            return
        if going:
            picks = paddle.to_tensor([bonus_rows[index] for index in going], dtype="int64")
            proposals = paddle.gather(drafted[0], picks).numpy().tolist()
            states = paddle.gather(drafted[1], picks) if len(drafted) > 1 else None
        else:
            # No request goes on here, but another rank's do: the substeps run on padding rows only.
            proposals = []
            states = paddle.zeros([0, drafted[1].shape[-1]], dtype=drafted[1].dtype) if len(drafted) > 1 else None
        self.propose([active[index] for index in going], proposals, states, graphed=graphed)

    def _staged(self, rows: int) -> dict[str, paddle.Tensor]:
        """The verify step's arguments: prefix views of the step buffers, ``rows`` long."""
        return {"token_ids": self.buffer("input_ids")[:rows], "positions": self.buffer("positions")[:rows],
                "slot_ids": self.buffer("batch_id_per_token_output")[:rows]}

    def propose(
        self, requests: Sequence[DecodingRequest], proposals: list[int], states: paddle.Tensor | None, *,
        graphed: bool,
    ) -> None:
        """Set each request's k drafts: d'_1 given (with the draft's hidden for it), substeps for d'_2..d'_s.

        Called after each step and after an engine's own prefill (with
        ``graphed=False``). With no requests (an idle rank in lockstep) the
        substeps still run, on padding rows only.
        """
        drafts = [[token] for token in proposals]
        step = self.draft_next if graphed else self.draft_next.__wrapped__
        slot_ids = paddle.to_tensor([request.slot for request in requests], dtype="int32")
        previous = paddle.to_tensor(proposals, dtype="int64")
        for substep in range(1, self.draft_steps):
            # Draft i (1-based) sits at position length - 1 + i on the draft's own axis.
            positions = paddle.to_tensor(
                [request.length - 1 + substep + self.pair.position_offset for request in requests], dtype="int64")
            hidden = {"hidden": states} if states is not None else {}
            out = step(token_ids=previous, positions=positions, slot_ids=slot_ids,
                       layer=self.pair.layer_for(substep), **hidden)
            # Copies: the graph's outputs are overwritten by its next replay.
            previous = out[0].clone()
            states = out[1].clone() if len(out) > 1 else None
            for proposal, token in zip(drafts, previous.numpy().tolist()):
                proposal.append(token)
        for request, proposal in zip(requests, drafts):
            # Drafts past draft_steps are filler; verification rejects any the target does not produce itself.
            request.drafts = (proposal + [0] * self.k)[: self.k]

    def capture_all(self, greedy_modes: Sequence[bool] = (True, False), *, freeze_gc: bool = True) -> int:
        """Capture every bucket of the three graphs up front, per sampling mode; returns graphs captured.

        The dummy rows are all padding (slot -1; position 0; no slot has rows,
        so the sampler samples none of them): they write only the slot the
        pair maps padding to, so requests in flight keep their caches.
        ``infer_seed``, which every sampler run advances, is put back afterwards.
        ``freeze_gc`` as in ``CaptureRegistry.capture_all``.
        """
        bufs = self.registry.buffers
        seeds = bufs.infer_seed.clone()

        def rows_of(rows: int) -> dict[str, Any]:
            write_step_inputs(bufs, [], max_batch=self.slots, prefix=self.prefix)  # every row padding
            return self._staged(rows)

        def drafted(rows: int, **extra: Any) -> dict[str, Any]:
            # At run time the draft's inputs are the target graph's outputs: fresh tensors, not buffer views.
            batch = {**rows_of(rows), "token_ids": paddle.zeros([rows], dtype="int64"), **extra}
            if self.pair.needs_hidden:
                batch["hidden"] = paddle.zeros([rows, self.pair.hidden_size], dtype=self.pair.hidden_dtype)
            return batch

        def substep(rows: int, layer: int) -> dict[str, Any]:
            return {**drafted(rows, layer=layer), "slot_ids": paddle.full([rows], -1, dtype="int32"),
                    "positions": paddle.zeros([rows], dtype="int64")}

        captured = 0
        try:
            with frozen_gc(freeze_gc):
                for greedy in greedy_modes:
                    captured += self.target.capture_all(lambda rows, g=greedy: {**rows_of(rows), "greedy": g})
                if getattr(self.draft_first, "enabled", False):  # draft graphs on
                    captured += self.draft_first.capture_all(drafted)
                    for layer in sorted({self.pair.layer_for(step) for step in range(1, self.draft_steps)}):
                        captured += self.draft_next.capture_all(lambda rows, n=layer: substep(rows, n))
        finally:
            bufs.write("infer_seed", seeds)
        return captured

    def acceptance(self) -> dict[str, Any]:
        """``acceptance_rate`` (None before the first step), ``proposed_drafts`` and ``accepted_drafts`` so far."""
        rate = self._accepted / self._proposed if self._proposed else None
        return {"acceptance_rate": rate, "proposed_drafts": self._proposed, "accepted_drafts": self._accepted}
