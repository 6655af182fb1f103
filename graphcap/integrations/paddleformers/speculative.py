"""Speculative decoding for ``GraphedCausalLM``: graphs around the target verify step and the draft steps.

One decode step, for every active request with ``length`` positions in the
target's cache, its last token x (not yet in the cache) and drafts d_1..d_k:

1. *Stage* (host -> registry buffers, in place, ``graphcap.mtp.preprocess``):
   rows [x, d_1..d_k] at positions length..length+k, ``seq_lens_this_time``,
   ``cu_seqlens_q_output``, ``batch_id_per_token_output`` (padding rows -1,
   mapped to the scratch slot inside the graph).
2. *Target verify* (graph ``target``, bucketed on rows, multiples of 1+k):
   the model's own forward over ``[R, 1+k]`` through its ``StaticCache``,
   then ``build_sampling_params`` gives row j of a request the seed
   ``infer_seed + 4j`` and advances ``infer_seed`` in place by (1+k)·4; the
   rows are sampled (or argmax) into t_0..t_k.
3. *Accept* (host): the longest prefix with d_{j+1} == t_j, plus the bonus.
4. *Draft step 0* (graph ``draft``, the same rows): the draft reads t_0..t_k
   (and, for MTP, the target's pre-norm hidden states), refilling its cache
   over the committed positions; the row of the bonus token proposes d'_1.
5. *Draft substeps* (graph ``draft_next``, one row per request): d'_2..d'_k.

Cache positions past what a request committed hold rows of rejected drafts;
every later step rewrites them (step 0 starts at the first uncommitted
position) before any mask admits them. The draft replays its graphs only when
the target step did (``config.draft_use_graph`` switches them off alone);
prefill is eager. Graph names, capture sizes and rows per request come from
``graphcap.mtp.graph_specs``, as for ``MTPEngine``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import paddle

from graphcap.buckets import capped_sizes
from graphcap.integrations.paddleformers.drafts import ModelDraft, MTPDraft
from graphcap.mtp.accept import accepted_prefix
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, declare_step_buffers, write_step_inputs
from graphcap.ops.sampler import sample_speculative

if TYPE_CHECKING:
    from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM, _Request

__all__ = ["SpeculativeDecoder"]

#: Names of this engine's step buffers start with it; GraphedCausalLM's plain decode owns the bare names.
PREFIX = "spec_"


class SpeculativeDecoder:
    """The speculative step loop of one ``GraphedCausalLM`` and its draft (``MTPDraft`` or ``ModelDraft``)."""

    def __init__(self, lm: GraphedCausalLM, draft: MTPDraft | ModelDraft) -> None:
        """Declare the step buffers, adopt the draft's cache and wrap the three step functions in graphs."""
        self.lm = lm
        self.draft = draft
        config = lm.config
        self.k = config.num_speculative_tokens
        # Host bookkeeping under private names: the capture scan watches the public
        # Python values the step functions can reach (self is one), not these.
        self._proposed = 0
        self._accepted = 0
        bufs = lm.registry.buffers
        # Slots include the scratch slot, so the sampler's per-slot arrays are
        # whole buffers ([max_batch + 1]), never views (to_static refuses an
        # in-place write into a view); the scratch slot never has rows.
        declare_step_buffers(bufs, max_batch=lm.max_batch + 1, max_rows=lm.max_batch * (1 + self.k), prefix=PREFIX)
        for name, tensor in draft.cache.tensors():
            bufs.adopt(f"draft_cache.{name}", tensor)
        specs = {spec.name: spec for spec in mtp_graph_specs(config)}
        drafts_on = bool(config.use_graph and config.draft_use_graph)
        self.target = self._graphed(specs["target"].name, specs["target"].sizes, 1 + self.k, None)(self._verify)
        self.draft_first = self._graphed("draft", specs["draft"].sizes, 1 + self.k, drafts_on)(self._draft_first)
        self.draft_next = self._graphed("draft_next", specs["draft_next"].sizes, 1, drafts_on)(self._draft_next)

    def _graphed(self, name: str, sizes: Sequence[int], rows_per_request: int, enabled: bool | None) -> Any:
        """The registry's decorator for one graph, its sizes capped at ``max_batch`` requests."""
        return self.lm.registry.graphed(name, batch_arg="token_ids", rows_per_request=rows_per_request,
                                        capture_sizes=capped_sizes(sizes, self.lm.max_batch * rows_per_request),
                                        padding={"slot_ids": -1}, enabled=enabled)

    # The captured regions --------------------------------------------------------
    def _slots(self, batch_ids: paddle.Tensor) -> paddle.Tensor:
        """Slot per request, int64; padding rows' -1 become the scratch slot."""
        slots = batch_ids.astype("int64")
        return paddle.where(slots < 0, paddle.full_like(slots, self.lm.scratch_slot), slots)

    def _verify(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor, greedy: bool,
    ) -> tuple[paddle.Tensor, ...]:
        """Target forward over ``[R, 1+k]`` rows and sampling: ``(tokens [R(1+k)],)`` plus pre-norm hidden for MTP."""
        per = 1 + self.k
        ids, rows_positions = token_ids.reshape([-1, per]), positions.reshape([-1, per])
        slots = self._slots(slot_ids.reshape([-1, per])[:, 0])
        logits, hidden = self.lm.forward_rows(ids, rows_positions, slots, record_hidden=self.draft.needs_hidden)
        bufs = self.lm.registry.buffers
        tokens = sample_speculative(
            logits.reshape([-1, logits.shape[-1]]).astype("float32"),
            top_p=bufs.top_p, top_k=bufs.top_k, infer_seed=bufs.infer_seed,
            seq_lens_this_time=bufs[f"{PREFIX}seq_lens_this_time"],
            cu_seqlens_q_output=bufs[f"{PREFIX}cu_seqlens_q_output"],
            num_speculative_tokens=self.k, greedy=greedy,
        )
        if hidden is None:
            return (tokens,)
        return tokens, hidden.reshape([-1, hidden.shape[-1]])

    def _draft_rows(
        self, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None, *, per: int, layer: int,
    ) -> tuple[paddle.Tensor, ...]:
        """The draft over flat rows, ``per`` to a request: ``(argmax tokens [rows],)`` plus its hidden for MTP."""
        ids, rows_positions = token_ids.reshape([-1, per]), positions.reshape([-1, per])
        slots = self._slots(slot_ids.reshape([-1, per])[:, 0])
        states = None if hidden is None else hidden.reshape([-1, per, hidden.shape[-1]])
        logits, out = self.draft.forward(ids, rows_positions, slots, states, layer)
        tokens = paddle.argmax(logits.reshape([-1, logits.shape[-1]]), axis=-1).astype("int64")
        if out is None:
            return (tokens,)
        return tokens, out.reshape([-1, out.shape[-1]])

    def _draft_first(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None = None,
    ) -> tuple[paddle.Tensor, ...]:
        """Draft step 0 over the verify rows: the target's tokens at its positions + the draft's offset."""
        return self._draft_rows(token_ids, positions + self.draft.position_offset, slot_ids, hidden,
                                per=1 + self.k, layer=0)

    def _draft_next(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None = None, layer: int = 0,
    ) -> tuple[paddle.Tensor, ...]:
        """One draft substep, one row per request at the given positions."""
        return self._draft_rows(token_ids, positions, slot_ids, hidden, per=1, layer=layer)

    # Host side ----------------------------------------------------------------------
    def prefill(self, request: _Request, *, greedy: bool) -> int:
        """Prefill the target and the draft eagerly for ``request``; set its drafts; return its first token."""
        first, hidden = self.lm.prefill_with_hidden(request.slot, request.prompt, greedy=greedy,
                                                    record_hidden=self.draft.needs_hidden)
        # The draft's rows: the sequence shifted by its offset, so the last row
        # pairs with the first sampled token and proposes d'_1.
        sequence = [*request.prompt, first][1 - self.draft.position_offset:]
        ids = paddle.to_tensor([sequence], dtype="int64")
        positions = paddle.arange(len(sequence), dtype="int64").reshape([1, -1])
        slots = paddle.to_tensor([request.slot], dtype="int64")
        logits, out = self.draft.forward(ids, positions, slots, hidden, 0)
        proposal = int(paddle.argmax(logits[0, -1]).numpy())
        states = None if out is None else out[:, -1]
        request.length = len(request.prompt)
        request.drafts = self._chain([request], [proposal], states, graphed=False)[0]
        return first

    def step(
        self, active: list[_Request], *, greedy: bool, commit: Callable[[_Request, int], None],
        agreed_rows: int | None = None,
    ) -> None:
        """One verify + draft step for ``active`` (sorted by slot).

        Each request's accepted drafts and bonus token go to ``commit`` one by
        one until it is done; the requests still going get their next drafts.
        ``agreed_rows`` (with ``sync_ranks``: the step's agreed target rows)
        makes the step's calls the same on every rank: the draft follows the
        agreed decision, every substep runs even with no request going on, and
        a rank with no requests replays padding rows only, its seeds put back.
        """
        if agreed_rows is not None and not active:
            seeds = self.lm.registry.buffers.infer_seed.clone()
            try:
                self._step(active, greedy=greedy, commit=commit, agreed_rows=agreed_rows)
            finally:
                self.lm.registry.buffers.write("infer_seed", seeds)
            return
        self._step(active, greedy=greedy, commit=commit, agreed_rows=agreed_rows)

    def _step(
        self, active: list[_Request], *, greedy: bool, commit: Callable[[_Request, int], None],
        agreed_rows: int | None,
    ) -> None:
        bufs = self.lm.registry.buffers
        rows = [SlotRows(slot=r.slot, tokens=(r.generated[-1], *r.drafts), start=r.length) for r in active]
        layout = write_step_inputs(bufs, rows, max_batch=self.lm.max_batch + 1, prefix=PREFIX)
        count = layout.rows
        staged = {"token_ids": bufs[f"{PREFIX}input_ids"][:count], "positions": bufs[f"{PREFIX}positions"][:count],
                  "slot_ids": bufs[f"{PREFIX}batch_id_per_token_output"][:count]}
        replays = getattr(self.target, "graph_calls", 0)
        outputs = self.target(**staged, greedy=greedy)
        # The draft follows the target's decision, never one of its own: what served
        # the target here, or with several ranks what the step agreed (the same everywhere).
        if agreed_rows is None:
            graphed = getattr(self.target, "graph_calls", 0) > replays
        else:
            buckets = getattr(self.target, "buckets", None)
            graphed = bool(self.lm.config.use_graph) and buckets is not None and agreed_rows <= buckets.largest
        sampled = outputs[0].numpy()
        bonus_rows = []
        for request in active:
            start = layout.row_start[request.slot]
            verified = sampled[start : start + 1 + self.k].tolist()
            accepted = accepted_prefix(request.drafts, verified)
            self._proposed += self.k
            self._accepted += accepted
            # The last token and the accepted drafts are now in the cache; the bonus is not yet.
            request.length += accepted + 1
            for token in verified[: accepted + 1]:
                if not request.done:
                    commit(request, token)
            bonus_rows.append(start + accepted)
        first = self.draft_first if graphed else self.draft_first.__wrapped__
        hidden = {"hidden": outputs[1]} if self.draft.needs_hidden else {}
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
        requests = [active[index] for index in going]
        for request, drafts in zip(requests, self._chain(requests, proposals, states, graphed=graphed)):
            request.drafts = drafts

    def _chain(
        self, requests: list[_Request], proposals: list[int], states: paddle.Tensor | None, *, graphed: bool,
    ) -> list[list[int]]:
        """d'_1 given; substeps propose d'_2..d'_k after each request's committed tokens."""
        drafts = [[token] for token in proposals]
        step = self.draft_next if graphed else self.draft_next.__wrapped__
        slot_ids = paddle.to_tensor([request.slot for request in requests], dtype="int32")
        previous = paddle.to_tensor(proposals, dtype="int64")
        for substep in range(1, self.k):
            # Draft i (1-based) sits at position length - 1 + i on the draft's own axis
            # (``length``: the request's positions in the target cache, its last token next).
            positions = paddle.to_tensor(
                [request.length - 1 + substep + self.draft.position_offset for request in requests], dtype="int64")
            hidden = {"hidden": states} if states is not None else {}
            out = step(token_ids=previous, positions=positions, slot_ids=slot_ids,
                       layer=self.draft.layer_for(substep), **hidden)
            # Copies: the graph's outputs are overwritten by its next replay.
            previous = out[0].clone()
            states = out[1].clone() if len(out) > 1 else None
            for proposal, token in zip(drafts, previous.numpy().tolist()):
                proposal.append(token)
        return drafts

    def capture_all(self) -> int:
        """Capture every bucket of the three graphs up front, greedy and sampled; returns graphs captured.

        The dummy rows are all padding (slot -1, so the scratch slot; position
        0; no slot has rows, so the sampler samples none of them): they write
        only the scratch slot of each cache. ``infer_seed``, which every
        sampler run advances, is put back afterwards.
        """
        bufs = self.lm.registry.buffers
        seeds = bufs.infer_seed.clone()
        hidden_size = self.lm.model.config.hidden_size

        def rows_of(rows: int) -> dict[str, Any]:
            write_step_inputs(bufs, [], max_batch=self.lm.max_batch + 1, prefix=PREFIX)  # every row padding
            return {"token_ids": bufs[f"{PREFIX}input_ids"][:rows], "positions": bufs[f"{PREFIX}positions"][:rows],
                    "slot_ids": bufs[f"{PREFIX}batch_id_per_token_output"][:rows]}

        def drafted(rows: int, **extra: Any) -> dict[str, Any]:
            # At run time the draft's inputs are the target graph's outputs: fresh tensors, not buffer views.
            batch = {**rows_of(rows), "token_ids": paddle.zeros([rows], dtype="int64"), **extra}
            if self.draft.needs_hidden:
                batch["hidden"] = paddle.zeros([rows, hidden_size], dtype=self.lm.cache.layers[0].keys.dtype)
            return batch

        def substep(rows: int, layer: int) -> dict[str, Any]:
            return {**drafted(rows, layer=layer), "slot_ids": paddle.full([rows], -1, dtype="int32"),
                    "positions": paddle.zeros([rows], dtype="int64")}

        captured = 0
        try:
            for greedy in (True, False):
                captured += self.target.capture_all(lambda rows, g=greedy: {**rows_of(rows), "greedy": g})
            if getattr(self.draft_first, "enabled", False):  # draft graphs on
                captured += self.draft_first.capture_all(drafted)
                for layer in sorted({self.draft.layer_for(step) for step in range(1, self.k)}):
                    captured += self.draft_next.capture_all(lambda rows, n=layer: substep(rows, n))
        finally:
            bufs.write("infer_seed", seeds)
        return captured

    def stats(self) -> dict[str, Any]:
        """``acceptance_rate``, ``proposed_drafts`` and ``accepted_drafts`` so far."""
        rate = self._accepted / self._proposed if self._proposed else None
        return {"acceptance_rate": rate, "proposed_drafts": self._proposed, "accepted_drafts": self._accepted}

