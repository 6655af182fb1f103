"""MTP speculative decoding with graphs around the target verify step and the draft steps.

One decode step, for every decoding slot b with committed tokens x_0..x_{L-1}
(the target's KV cache holds positions 0..L-2) and drafts d_1..d_k:

1. *Pre-process* (host -> static buffers, in place): rows
   [x_{L-1}, d_1..d_k] at positions L-1..L-1+k, ``seq_lens_this_time``,
   ``cu_seqlens_q_output``, ``batch_id_per_token_output``.
2. *Target verify* (graph ``target``): the row forward writes the KV cache,
   ``build_sampling_params`` gives every row its own seed (advancing
   ``infer_seed`` once, by (k+1)*4), the sampler returns t_0..t_k.
3. *Accept* (host): the longest prefix with d_{j+1} == t_j, a drafts, plus
   the bonus token: t_0..t_a are appended; stop on the end token or
   ``max_new_tokens``.
4. *Draft step 0* (graph ``draft``): the MTP head over the same rows, fed the
   target's hidden states and tokens t_0..t_k, fills its own KV cache; the
   row at a proposes d'_1.
5. *Draft substeps* (graph ``draft_next``, one row per request): chain the
   head's hidden state to propose d'_2..d'_steps.

Prefill and any step whose rows exceed the largest bucket run eagerly, and
the draft replays graphs only when the target step did (a draft deciding on
its own once hung a multi-rank engine). The graphs' names, capture sizes and
rows per request are set in one place, ``graphcap.mtp.graph_specs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.capture_plan import GraphSpec
from graphcap.config import GraphConfig
from graphcap.errors import ConfigError
from graphcap.models.tiny_lm import TinyLMBundle, load_tiny_lm
from graphcap.mtp.accept import accepted_prefix
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, declare_step_buffers, write_step_inputs
from graphcap.ops.sampler import sample_speculative
from graphcap.ops.sampling_params import MAX_INFER_SEED
from graphcap.registry import CaptureRegistry

END_TOKEN = 2


@attrs.frozen(kw_only=True)
class Request:
    """One generation request: prompt ids, limits and sampling parameters."""

    prompt: tuple[int, ...] = attrs.field(converter=tuple)
    max_new_tokens: int = 32
    seed: int = 0
    top_p: float = 1.0
    top_k: int = 0


@attrs.frozen(kw_only=True)
class SamplingOptions:
    """Engine-wide decoding choices."""

    greedy: bool = True
    end_token: int | None = END_TOKEN
    max_seed: int = MAX_INFER_SEED


@attrs.define
class _Slot:
    request: Request
    index: int
    tokens: list[int]
    generated: list[int] = attrs.Factory(list)
    drafts: list[int] = attrs.Factory(list)
    done: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


@attrs.define
class RunStats:
    """What one ``generate`` call did."""

    steps: int = 0
    decode_steps: int = 0
    tokens: int = 0
    proposed_drafts: int = 0
    accepted_drafts: int = 0
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts."""
        return self.accepted_drafts / self.proposed_drafts if self.proposed_drafts else 0.0


class MTPEngine:
    """A small MTP decoding engine over the built-in model, graphed by one ``GraphConfig``.

    ``config.use_graph`` turns graphs on for the target verify step;
    ``config.draft_use_graph`` for the draft steps, independently. Results
    (tokens and the final ``infer_seed``) are identical either way. Without
    draft tokens (k = 0) there is no draft step: ``draft`` and ``draft_next``
    are None and only ``target`` is captured.
    """

    def __init__(
        self,
        config: GraphConfig,
        *,
        max_batch: int = 8,
        num_model_steps: int | None = None,
        sampling: SamplingOptions | None = None,
        bundle: TinyLMBundle | None = None,
    ) -> None:
        """Load the model, declare the static buffers and wrap the step functions in graphs."""
        k = config.num_speculative_tokens
        steps = k if num_model_steps is None else num_model_steps
        if k and not 1 <= steps <= k:
            raise ConfigError(f"num_model_steps={steps} must be in 1..num_speculative_tokens={k}")
        self.config = config
        self.k = k
        self.num_model_steps = steps if k else 0
        self.max_batch = max_batch
        self.sampling = sampling or SamplingOptions()
        self.bundle = bundle if bundle is not None else load_tiny_lm(max_batch)
        if self.bundle.cache.max_batch < max_batch:
            raise ConfigError(
                f"the model's KV cache has {self.bundle.cache.max_batch} slots but max_batch={max_batch}"
            )
        self.max_seq_len = self.bundle.config.max_seq_len
        self.registry = CaptureRegistry(config)
        bufs = self.registry.buffers
        # Row buffers hold a decode step (max_batch * (k+1) rows) and also an
        # eager prefill of whole prompts, hence max_seq_len rows per slot.
        declare_step_buffers(bufs, max_batch=max_batch, max_rows=max_batch * max(1 + k, self.max_seq_len))
        bufs.declare("infer_seed", [max_batch], "int64", pad="keep")
        bufs.declare("top_p", [max_batch], "float32", pad="keep")
        bufs.declare("top_k", [max_batch], "int64", pad="keep")
        # The KV caches are owned by the model; adopting them makes their
        # addresses and shapes checked on replay. They are not restored around
        # capture: warmups rewrite the same positions with the same values, and
        # capture_all's dummy rows land in positions every request rewrites
        # before it reads them.
        for name, tensor in (
            ("target_k", self.bundle.cache.k), ("target_v", self.bundle.cache.v),
            ("draft_k", self.bundle.draft_cache.k), ("draft_v", self.bundle.draft_cache.v),
        ):
            bufs.adopt(name, tensor)
        # The graphs, with names, sizes and rows per request from mtp_graph_specs (which
        # `python -m graphcap plan` reads too); without draft tokens there are no draft steps.
        specs = {spec.name: spec for spec in mtp_graph_specs(config)}
        self.target = self._graphed(specs["target"])(self._target_step)
        self.draft = self.draft_next = None
        if "draft" in specs:
            drafts_on = config.draft_use_graph
            self.draft = self._graphed(specs["draft"], enabled=drafts_on)(self._draft_step)
            self.draft_next = self._graphed(specs["draft_next"], enabled=drafts_on)(self._draft_step)

    def _graphed(
        self, spec: GraphSpec, *, enabled: bool | None = None
    ) -> Callable[[Callable[..., Any]], Any]:
        """The registry's decorator for one of the engine's graphs; ``enabled=None`` follows ``use_graph``."""
        return self.registry.graphed(
            spec.name, batch_arg="token_ids", capture_sizes=spec.sizes,
            rows_per_request=spec.rows_per_request, padding={"slot_ids": -1}, enabled=enabled,
        )

    # Step functions (the captured regions) ----------------------------------
    def _target_step(
        self, *, token_ids: paddle.Tensor, positions: paddle.Tensor, slot_ids: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Verify forward + sampling over R rows -> (tokens int64 [R], hidden float32 [R, C])."""
        bufs = self.registry.buffers
        logits, hidden = self.bundle.model.forward_rows(token_ids, positions, slot_ids, self.bundle.cache)
        tokens = sample_speculative(
            logits,
            top_p=bufs.top_p,
            top_k=bufs.top_k,
            infer_seed=bufs.infer_seed,
            seq_lens_this_time=bufs.seq_lens_this_time,
            cu_seqlens_q_output=bufs.cu_seqlens_q_output,
            num_speculative_tokens=self.k,
            max_seed=self.sampling.max_seed,
            greedy=self.sampling.greedy,
        )
        return tokens, hidden

    def _draft_step(
        self,
        *,
        token_ids: paddle.Tensor,
        hidden: paddle.Tensor,
        positions: paddle.Tensor,
        slot_ids: paddle.Tensor,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """One MTP head forward with argmax -> (proposed tokens int64 [R], head hidden [R, C])."""
        logits, head_hidden = self.bundle.mtp_head.forward_rows(
            hidden, token_ids, positions, slot_ids, self.bundle.draft_cache
        )
        return paddle.argmax(logits, axis=-1).astype("int64"), head_hidden

    # Driving loop --------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> tuple[list[list[int]], RunStats]:
        """Decode every request to completion; returns the generated ids per request and stats.

        Requests beyond ``max_batch`` wait for a free slot. Prompts must fit the
        model's context: ``len(prompt) + max_new_tokens + k + 1 <= max_seq_len``.
        """
        for index, request in enumerate(requests):
            need = len(request.prompt) + request.max_new_tokens + self.k + 1
            if not request.prompt or need > self.max_seq_len:
                raise ConfigError(
                    f"request {index}: prompt of {len(request.prompt)} tokens + max_new_tokens="
                    f"{request.max_new_tokens} + k+1={self.k + 1} needs {need} positions but the model "
                    f"has {self.max_seq_len}; shorten it"
                )
        stats = RunStats()
        results: list[list[int]] = [[] for _ in requests]
        waiting = list(enumerate(requests))
        slots: dict[int, tuple[int, _Slot]] = {}
        while True:
            free = [index for index in range(self.max_batch) if index not in slots]
            admitted = []
            while waiting and free:
                request_index, request = waiting.pop(0)
                slot = _Slot(request=request, index=free.pop(0), tokens=list(request.prompt))
                slots[slot.index] = (request_index, slot)
                admitted.append(slot)
            if admitted:
                started = time.perf_counter()
                self._prefill(admitted)
                stats.prefill_seconds += time.perf_counter() - started
                stats.tokens += len(admitted)
            # Prefill steps decode nothing; with sync_ranks every rank still takes part in
            # each step's agreement (and replays padding rows while another rank decodes),
            # and the loop runs until no rank has work left.
            live = [] if admitted else [slot for _, slot in slots.values() if not slot.done]
            with self.registry.step(rows=len(live) * (self.k + 1), busy=bool(waiting or slots)) as step:
                if not step.busy:
                    break
                if live or step.rows:
                    started = time.perf_counter()
                    self._decode(live, stats, agreed_rows=step.rows)
                    stats.decode_seconds += time.perf_counter() - started
                    stats.decode_steps += bool(live)
            stats.steps += 1
            for index in [index for index, (_, slot) in slots.items() if slot.done]:
                request_index, slot = slots.pop(index)
                results[request_index] = slot.generated
        return results, stats

    def capture_all(self, *, freeze_gc: bool = True) -> int:
        """Capture every bucket of every graph up front (start-up capture), largest first.

        Dummy decode batches (every slot verifying k+1 rows at the start of
        its cache) give each bucket its shapes; ``infer_seed`` is restored
        after each capture, and the dummy KV entries sit at positions every
        request writes before it reads them. Meant for start-up: called while
        requests are in flight it would overwrite their cache. ``freeze_gc`` as in
        ``CaptureRegistry.capture_all``. Returns the number of graphs captured.
        """
        if not self.config.use_graph:
            return 0
        bufs = self.registry.buffers
        hidden_size = self.bundle.config.hidden_size
        rows_per_request = self.k + 1

        def verify_batch(rows: int) -> dict[str, Any]:
            # A dummy decode batch of rows/(k+1) requests that fills the bucket
            # exactly, with consistent cu_seqlens_q_output and seq_lens_this_time.
            requests = rows // rows_per_request
            layout = write_step_inputs(
                bufs,
                [SlotRows(slot=i, tokens=(0,) * rows_per_request, start=0) for i in range(requests)],
                max_batch=self.max_batch,
            )
            return {
                "token_ids": bufs.input_ids[: layout.rows],
                "positions": bufs.positions[: layout.rows],
                "slot_ids": bufs.batch_id_per_token_output[: layout.rows],
            }

        def draft_batch(rows: int) -> dict[str, Any]:
            # At run time the draft's tokens and hidden states are the target
            # graph's outputs, staged by the draft graph itself; the dummy
            # mirrors that (a fresh tensor, not a view of input_ids).
            batch = verify_batch(rows)
            batch["token_ids"] = batch["token_ids"].clone()
            return {**batch, "hidden": paddle.zeros([rows, hidden_size], dtype="float32")}

        def draft_next_batch(rows: int) -> dict[str, Any]:
            return {
                "token_ids": paddle.zeros([rows], dtype="int64"),
                "hidden": paddle.zeros([rows, hidden_size], dtype="float32"),
                "positions": paddle.zeros([rows], dtype="int64"),
                "slot_ids": paddle.arange(rows, dtype="int32"),
            }

        examples = {"target": verify_batch, "draft": draft_batch, "draft_next": draft_next_batch}
        return self.registry.capture_all(examples, freeze_gc=freeze_gc)

    def infer_seed(self) -> list[int]:
        """The per-slot seeds as they stand now (host copy)."""
        return self.registry.buffers.infer_seed.numpy().tolist()

    # Prefill (eager) --------------------------------------------------------
    def _prefill(self, admitted: list[_Slot]) -> None:
        bufs = self.registry.buffers
        seeds = bufs.infer_seed.numpy()
        top_p = bufs.top_p.numpy()
        top_k = bufs.top_k.numpy()
        for slot in admitted:
            seeds[slot.index] = slot.request.seed % self.sampling.max_seed
            top_p[slot.index] = slot.request.top_p
            top_k[slot.index] = slot.request.top_k
        bufs.write("infer_seed", seeds)
        bufs.write("top_p", top_p)
        bufs.write("top_k", top_k)
        rows = [SlotRows(slot=slot.index, tokens=tuple(slot.tokens), start=0, prefill=True) for slot in admitted]
        layout = write_step_inputs(bufs, rows, max_batch=self.max_batch)
        count = layout.rows
        ids, positions, slot_ids = bufs.input_ids[:count], bufs.positions[:count], bufs.batch_id_per_token_output[:count]
        logits, hidden = self.bundle.model.forward_rows(ids, positions, slot_ids, self.bundle.cache)
        last = paddle.to_tensor(
            [layout.row_start[slot.index] + slot.length - 1 for slot in sorted(admitted, key=lambda s: s.index)],
            dtype="int64",
        )
        first = sample_speculative(
            paddle.gather(logits, last),
            top_p=bufs.top_p, top_k=bufs.top_k, infer_seed=bufs.infer_seed,
            seq_lens_this_time=bufs.seq_lens_this_time, cu_seqlens_q_output=bufs.cu_seqlens_q_output,
            num_speculative_tokens=self.k, max_seed=self.sampling.max_seed, greedy=self.sampling.greedy,
        ).numpy()
        ordered = sorted(admitted, key=lambda s: s.index)
        for slot, token in zip(ordered, first.tolist()):
            self._append(slot, [token])
        if not self.k:
            return
        # The draft cache needs (target hidden at p, token at p+1) for every
        # prompt position; the prompt's last position pairs with the first
        # sampled token and proposes d_1.
        next_ids = np.asarray(
            [tok for slot in ordered for tok in slot.tokens[1 : slot.length]], dtype=np.int64
        )
        draft_tokens, draft_hidden = self._draft_step(
            token_ids=paddle.to_tensor(next_ids), hidden=hidden, positions=positions, slot_ids=slot_ids
        )
        self._propose(ordered, last, draft_tokens, draft_hidden, graphed=False)

    # Decode (graphs) --------------------------------------------------------
    def _decode(self, active: list[_Slot], stats: RunStats, *, agreed_rows: int) -> None:
        bufs = self.registry.buffers
        live = [slot for slot in active if not slot.done]
        if not live:
            # Another rank decodes: replay the step on padding rows only, for its collectives.
            # The sampling op advances every slot's seed, so this rank's are put back after.
            seeds = bufs.infer_seed.clone()
            try:
                self._decode_rows(live, stats, agreed_rows)
            finally:
                bufs.write("infer_seed", seeds)
            return
        self._decode_rows(live, stats, agreed_rows)

    def _decode_rows(self, live: list[_Slot], stats: RunStats, agreed_rows: int) -> None:
        bufs = self.registry.buffers
        rows = [
            SlotRows(slot=slot.index, tokens=(slot.tokens[-1], *slot.drafts), start=slot.length - 1) for slot in live
        ]
        layout = write_step_inputs(bufs, rows, max_batch=self.max_batch)
        count = layout.rows
        ids = bufs.input_ids[:count]
        positions = bufs.positions[:count]
        slot_ids = bufs.batch_id_per_token_output[:count]
        tokens, hidden = self.target(token_ids=ids, positions=positions, slot_ids=slot_ids)
        sampled = tokens.numpy()
        ordered = sorted(live, key=lambda s: s.index)
        accepted_rows = []
        for slot in ordered:
            start = layout.row_start[slot.index]
            row_tokens = sampled[start : start + self.k + 1].tolist()
            accepted = accepted_prefix(slot.drafts, row_tokens)
            stats.proposed_drafts += self.k
            stats.accepted_drafts += accepted
            stats.tokens += self._append(slot, row_tokens[: accepted + 1])
            accepted_rows.append(start + accepted)
        if not self.k:
            return
        # The draft follows the target's decision; with sync_ranks, the one every rank agreed on.
        graphed = self._target_graphed(max(count, agreed_rows))
        draft = self.draft if graphed else self.draft.__wrapped__
        # tokens/hidden are views of the target graph's static outputs; the
        # draft graph stages them (a copy) before its replay, so they are read
        # before anything overwrites them.
        draft_tokens, draft_hidden = draft(token_ids=tokens, hidden=hidden, positions=positions, slot_ids=slot_ids)
        self._propose(ordered, paddle.to_tensor(accepted_rows, dtype="int64"), draft_tokens, draft_hidden,
                      graphed=graphed)

    def _propose(
        self,
        ordered: list[_Slot],
        rows: paddle.Tensor,
        draft_tokens: paddle.Tensor,
        draft_hidden: paddle.Tensor,
        *,
        graphed: bool,
    ) -> None:
        """Take d'_1 from the picked rows, then chain substeps for d'_2..d'_steps."""
        first = paddle.gather(draft_tokens, rows).numpy().tolist()
        hidden = paddle.gather(draft_hidden, rows)
        proposals = [[token] for token in first]
        slot_ids = paddle.to_tensor([slot.index for slot in ordered], dtype="int32")
        step = self.draft_next if graphed else self.draft_next.__wrapped__
        previous = paddle.to_tensor(first, dtype="int64")
        for substep in range(1, self.num_model_steps):
            # Substep i feeds d'_i at position L'-1+i-1 (L' = the new length).
            positions = paddle.to_tensor([slot.length - 2 + substep for slot in ordered], dtype="int64")
            next_tokens, hidden = step(token_ids=previous, hidden=hidden, positions=positions, slot_ids=slot_ids)
            previous = next_tokens.clone()
            hidden = hidden.clone()
            for proposal, token in zip(proposals, previous.numpy().tolist()):
                proposal.append(token)
        for slot, proposal in zip(ordered, proposals):
            # Drafts past num_model_steps are filler; verification rejects any
            # that the target does not produce itself.
            slot.drafts = (proposal + [0] * self.k)[: self.k]

    def _target_graphed(self, rows: int) -> bool:
        return bool(self.config.use_graph) and getattr(self.target, "buckets", None) is not None and (
            rows <= self.target.buckets.largest
        )

    def _append(self, slot: _Slot, new_tokens: list[int]) -> int:
        """Commit ``new_tokens`` to ``slot`` up to its stop conditions; returns how many were kept."""
        kept = 0
        for token in new_tokens:
            if slot.done:
                break
            slot.tokens.append(token)
            slot.generated.append(token)
            kept += 1
            end = self.sampling.end_token
            if (end is not None and token == end) or len(slot.generated) >= slot.request.max_new_tokens:
                slot.done = True
        return kept

    def stats(self) -> dict[str, Any]:
        """The registry's statistics (captures, replays, eager fallbacks, padding ...)."""
        return self.registry.stats()
