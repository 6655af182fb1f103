"""MTP speculative decoding over the built-in tiny LM: requests, slots, eager prefill, and the graphed step.

The decode step is graphcap's one speculative step
(``graphcap.mtp.speculative_step``: stage, target verify with
``build_sampling_params``, accept, draft step 0, draft substeps), over the
tiny LM and its MTP head (``graphcap.mtp.tiny_pair``); ``GraphedCausalLM``
runs the same step over PaddleFormers models. This module owns what is
particular to this engine: request admission over ``max_batch`` slots, one
batched eager prefill of the admitted prompts (the target, then the head
over every prompt position), stop conditions, and per-run stats.

Prefill and any step whose rows exceed the largest bucket run eagerly, and
the draft replays graphs only when the target step did. The graphs' names,
capture sizes and rows per request are set in one place,
``graphcap.mtp.graph_specs``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.config import GraphConfig
from graphcap.errors import ConfigError
from graphcap.models.tiny_lm import TinyLMBundle, load_tiny_lm
from graphcap.mtp.preprocess import SlotRows, write_step_inputs
from graphcap.mtp.speculative_step import SpeculativeStep
from graphcap.mtp.tiny_pair import TinyLMPair
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
    slot: int
    tokens: list[int]
    generated: list[int] = attrs.Factory(list)
    drafts: list[int] = attrs.Factory(list)
    done: bool = False

    @property
    def length(self) -> int:
        """Positions in the target's cache: every committed token but the last."""
        return len(self.tokens) - 1

    @property
    def last_token(self) -> int:
        return self.tokens[-1]


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
        bufs.declare("infer_seed", [max_batch], "int64", pad="keep")
        bufs.declare("top_p", [max_batch], "float32", pad="keep")
        bufs.declare("top_k", [max_batch], "int64", pad="keep")
        # The KV caches are owned by the model; adopting them makes their
        # addresses and shapes checked on replay. They are not restored around
        # capture: warmups rewrite the same positions with the same values, and
        # capture_all's dummy rows write only the trash slot.
        for name, tensor in (
            ("target_k", self.bundle.cache.k), ("target_v", self.bundle.cache.v),
            ("draft_k", self.bundle.draft_cache.k), ("draft_v", self.bundle.draft_cache.v),
        ):
            bufs.adopt(name, tensor)
        # Row buffers hold a decode step (max_batch * (k+1) rows) and also an
        # eager prefill of whole prompts, hence max_seq_len rows per slot.
        self.step = SpeculativeStep(
            self.registry, TinyLMPair(self.bundle), max_batch=max_batch, slots=max_batch,
            max_rows=max_batch * max(1 + k, self.max_seq_len), draft_steps=self.num_model_steps or None,
            max_seed=self.sampling.max_seed,
        )
        self.target = self.step.target
        self.draft = self.step.draft_first
        self.draft_next = self.step.draft_next

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
        lockstep = self.registry.agreement is not None
        while True:
            free = [index for index in range(self.max_batch) if index not in slots]
            admitted = []
            while waiting and free:
                request_index, request = waiting.pop(0)
                slot = _Slot(request=request, slot=free.pop(0), tokens=list(request.prompt))
                slots[slot.slot] = (request_index, slot)
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
                if live or (lockstep and step.rows):
                    started = time.perf_counter()
                    self._decode(live, stats, agreed_rows=step.rows if lockstep else None)
                    stats.decode_seconds += time.perf_counter() - started
                    stats.decode_steps += bool(live)
            stats.steps += 1
            for index in [index for index, (_, slot) in slots.items() if slot.done]:
                request_index, slot = slots.pop(index)
                results[request_index] = slot.generated
        return results, stats

    def capture_all(self, *, freeze_gc: bool = True) -> int:
        """Capture every bucket of every graph up front (start-up capture), in this engine's sampling mode.

        The dummy batches are padding rows only (``SpeculativeStep.capture_all``):
        they write the trash slot of each cache, so this is safe while requests
        are in flight, and ``infer_seed`` is restored after. ``freeze_gc`` as in
        ``CaptureRegistry.capture_all``. Returns the number of graphs captured.
        """
        if not self.config.use_graph:
            return 0
        return self.step.capture_all((self.sampling.greedy,), freeze_gc=freeze_gc)

    def infer_seed(self) -> list[int]:
        """The per-slot seeds as they stand now (host copy)."""
        return self.registry.buffers.infer_seed.numpy().tolist()

    # Prefill (eager) --------------------------------------------------------
    def _prefill(self, admitted: list[_Slot]) -> None:
        """Seed the admitted slots and run their prompts eagerly, together; then propose their first drafts."""
        bufs = self.registry.buffers
        seeds = bufs.infer_seed.numpy()
        top_p = bufs.top_p.numpy()
        top_k = bufs.top_k.numpy()
        for slot in admitted:
            seeds[slot.slot] = slot.request.seed % self.sampling.max_seed
            top_p[slot.slot] = slot.request.top_p
            top_k[slot.slot] = slot.request.top_k
        bufs.write("infer_seed", seeds)
        bufs.write("top_p", top_p)
        bufs.write("top_k", top_k)
        rows = [SlotRows(slot=slot.slot, tokens=tuple(slot.tokens), start=0, prefill=True) for slot in admitted]
        layout = write_step_inputs(bufs, rows, max_batch=self.max_batch)
        count = layout.rows
        ids, positions, slot_ids = bufs.input_ids[:count], bufs.positions[:count], bufs.batch_id_per_token_output[:count]
        logits, hidden = self.step.pair.verify(ids, positions, slot_ids, per=1)
        ordered = sorted(admitted, key=lambda s: s.slot)
        last = paddle.to_tensor(
            [layout.row_start[slot.slot] + len(slot.request.prompt) - 1 for slot in ordered], dtype="int64"
        )
        first = self.step.sample(paddle.gather(logits, last), greedy=self.sampling.greedy).numpy()
        for slot, token in zip(ordered, first.tolist()):
            self._append(slot, [token])
        if not self.k:
            return
        # The draft cache needs (target hidden at p, token at p+1) for every
        # prompt position; the prompt's last position pairs with the first
        # sampled token and proposes d_1.
        next_ids = np.asarray(
            [tok for slot in ordered for tok in slot.tokens[1 : len(slot.request.prompt) + 1]], dtype=np.int64
        )
        draft_logits, draft_hidden = self.step.pair.draft(
            paddle.to_tensor(next_ids), positions, slot_ids, hidden, per=1, layer=0
        )
        proposals = paddle.gather(paddle.argmax(draft_logits, axis=-1), last).astype("int64").numpy().tolist()
        self.step.propose(ordered, proposals, paddle.gather(draft_hidden, last), graphed=False)

    # Decode (graphs) --------------------------------------------------------
    def _decode(self, active: list[_Slot], stats: RunStats, *, agreed_rows: int | None) -> None:
        """One speculative step of ``active`` (empty on an idle rank in lockstep), committed into ``stats``."""
        live = [slot for slot in active if not slot.done]
        before = self.step.acceptance()

        def commit(slot: _Slot, token: int) -> None:
            stats.tokens += self._append(slot, [token])

        self.step.run(live, greedy=self.sampling.greedy, commit=commit, agreed_rows=agreed_rows)
        after = self.step.acceptance()
        stats.proposed_drafts += after["proposed_drafts"] - before["proposed_drafts"]
        stats.accepted_drafts += after["accepted_drafts"] - before["accepted_drafts"]

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
