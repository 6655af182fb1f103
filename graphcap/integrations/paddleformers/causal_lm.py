"""``GraphedCausalLM``: a PaddleFormers causal LM decoding through graphcap's graphs, with a static cache.

The model's own ``forward`` runs in every step; graphcap only owns the
buffers around it. One decode step, for ``R`` active slots:

1. *Stage* (host -> registry buffers, in place): each row's last token,
   position (its length so far), slot, and a 4-D boolean attention mask
   ``[R, 1, 1, max_len]`` that admits positions ``<= position``.
2. *Graph* (``decode``, bucketed on rows): the model writes the rows' keys
   and values into the ``StaticCache`` at (slot, position) and attends over
   the whole slot, masked; the last position's logits give the token (argmax,
   or top-p/top-k sampling through ``build_sampling_params`` with each
   request's own seed stream, advanced in place). Padding rows point at the
   cache's scratch slot and attend position 0 of it, so they write nothing a
   request reads.
3. *Commit* (host): tokens appended, finished requests free their slot.

Prefill is eager and per request (prompts have their own lengths), into the
request's slot. ``generate`` runs continuous batching over ``max_batch``
slots: requests beyond that wait, and a slot freed by a finished request is
refilled before the next decode step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.config import GraphConfig
from graphcap.decide.buckets import capped_sizes
from graphcap.errors import ConfigError
from graphcap.graphed_function import call_in_place
from graphcap.integrations.paddleformers.cache import StaticCache
from graphcap.integrations.paddleformers.drafts import (
    ModelDraft,
    MTPDraft,
    causal_mask,
    final_norm_input,
    mtp_layer_count,
)
from graphcap.integrations.paddleformers.model_check import check_decoding
from graphcap.integrations.paddleformers.prefill import PrefillGraphs
from graphcap.integrations.paddleformers.speculative import PaddleFormersPair, prefill_with_draft
from graphcap.mtp.speculative_step import SpeculativeStep
from graphcap.ops.sampler import sample_plain
from graphcap.ops.sampling_params import MAX_INFER_SEED
from graphcap.registry import CaptureRegistry

logger = logging.getLogger("graphcap")

__all__ = ["GraphedCausalLM"]

# Request i's seed stream starts 2^32 after request i-1's, so streams that
# advance by 4 per token never meet within a generation.
_SEED_STRIDE = 1 << 32


@attrs.define
class _Request:
    index: int
    prompt: list[int]
    slot: int = -1
    length: int = 0  # positions written into the cache
    generated: list[int] = attrs.Factory(list)
    done: bool = False
    drafts: list[int] = attrs.Factory(list)  # speculative decoding: the next step's k drafts

    @property
    def last_token(self) -> int:
        return self.generated[-1]


class GraphedCausalLM:
    """Greedy or sampled generation for a PaddleFormers causal LM, its decode steps graphed.

    ``config.use_graph`` turns graphs on (off: the same step runs eagerly);
    the capture sizes are ``config``'s, rows per request 1, capped at
    ``max_batch``. ``registry`` holds the buffers, the graphs and ``stats()``.
    """

    def __init__(self, model: paddle.nn.Layer, config: GraphConfig, *, max_batch: int, max_len: int,
                 draft: str | paddle.nn.Layer | None = None, check_model: bool = True) -> None:
        """Check the model fits static decoding, allocate the cache and buffers, wrap the decode step.

        ``draft`` turns on speculative decoding with
        ``config.num_speculative_tokens = k`` drafts per step: ``"mtp"`` for
        the model's own MTP layers (ERNIE-4.5), or a PaddleFormers causal LM
        sharing the vocabulary (see ``speculative``). ``check_model`` (on by
        default) then runs the acceptance check of
        ``model_check.check_decoding``: a few eager decode steps compared with
        the model's own full recompute, and a test that batch rows do not
        interact; a model failing either is refused with ``ConfigError`` (a
        draft model is checked the same way).
        """
        _check_model(model, max_batch=max_batch, max_len=max_len)
        _check_speculation(model, config, draft)
        _check_prefill(config)
        self.model = model
        self.config = config
        self.max_batch = max_batch
        self.max_len = max_len
        self.vocab_size = model.config.vocab_size
        self.scratch_slot = max_batch
        self.registry = CaptureRegistry(config)
        bufs = self.registry.buffers
        bufs.declare("input_ids", [max_batch, 1], "int64")
        bufs.declare("position_ids", [max_batch, 1], "int64")
        bufs.declare("slot_ids", [max_batch], "int64", pad="value", pad_value=self.scratch_slot)
        # Padding rows repeat row 0's mask: a valid pattern over the scratch slot, never all-masked.
        bufs.declare("attention_mask", [max_batch, 1, 1, max_len], "bool", pad="copy_row0")
        # Per slot, the scratch slot included (the speculative sampler indexes them by slot).
        bufs.declare("top_p", [max_batch + 1], "float32", pad="keep")
        bufs.declare("top_k", [max_batch + 1], "int64", pad="keep")
        # One seed per slot, the scratch slot included (padding rows advance it).
        bufs.declare("infer_seed", [max_batch + 1], "int64", pad="keep")
        self.cache = StaticCache.for_model(model, slots=max_batch + 1, max_len=max_len)
        for name, tensor in self.cache.tensors():
            bufs.adopt(f"cache.{name}", tensor)
        self.decode_step = self.registry.graphed("decode", batch_arg="input_ids", rows_per_request=1,
                                                 capture_sizes=capped_sizes(config.sizes_for(1), max_batch))(self._step)
        self.speculative = None if draft is None else self._speculative_step(
            _build_draft(self, draft, check_model=check_model))
        sizes = config.prefill_capture_sizes
        self.prefill_graphs = None if sizes is None else PrefillGraphs(self, sizes)
        # Last: it runs the very staging, cache and step function generate() uses, and restores what it wrote.
        if check_model:
            check_decoding(self)

    def _speculative_step(self, draft: MTPDraft | ModelDraft) -> SpeculativeStep:
        """graphcap's speculative step over this model and ``draft``, its buffers named ``spec_*``."""
        for name, tensor in draft.cache.tensors():
            self.registry.buffers.adopt(f"draft_cache.{name}", tensor)
        # Slots include the scratch slot, so the sampler's per-slot arrays are
        # whole buffers ([max_batch + 1]), never views (to_static refuses an
        # in-place write into a view); the scratch slot never has rows.
        k = self.config.num_speculative_tokens
        return SpeculativeStep(self.registry, PaddleFormersPair(self, draft), max_batch=self.max_batch,
                               slots=self.max_batch + 1, max_rows=self.max_batch * (1 + k), prefix="spec_")

    # The captured region -------------------------------------------------------
    def _step(
        self, *, input_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor,
        attention_mask: paddle.Tensor, greedy: bool,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """One token for each row: ``(tokens int64 [R], last-position logits [R, vocab])``."""
        logits, _ = self.forward_rows(input_ids, position_ids, slot_ids, attention_mask=attention_mask)
        logits = logits[:, -1, :]
        return self._sample(logits, slot_ids, greedy=greedy), logits

    def forward_rows(
        self, input_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor, *,
        attention_mask: paddle.Tensor | None = None, record_hidden: bool = False,
    ) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """The model over rows ``[R, S]`` through the static cache: ``(logits [R, S, vocab], hidden or None)``.

        ``attention_mask`` defaults to the causal mask of ``position_ids``;
        ``record_hidden`` also returns the last hidden state before the final
        norm ``[R, S, hidden]`` (what an MTP draft reads).
        """
        mask = causal_mask(position_ids, self.max_len) if attention_mask is None else attention_mask
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask,
                  "past_key_values": self.cache, "use_cache": True, "return_dict": True}
        if not record_hidden:
            with self.cache.bind(slot_ids, position_ids):
                return self.model(**inputs).logits, None
        with self.cache.bind(slot_ids, position_ids), final_norm_input(self.model) as recorded:
            out = self.model(**inputs)
        return out.logits, recorded[-1]

    def _sample(self, logits: paddle.Tensor, slot_ids: paddle.Tensor, *, greedy: bool) -> paddle.Tensor:
        """Tokens for ``logits`` rows: argmax, or sampled with the rows' slots' seeds (advanced in place)."""
        if greedy:
            return paddle.argmax(logits, axis=-1).astype("int64")
        bufs = self.registry.buffers
        rows = logits.shape[0]
        # The rows' seeds, gathered by slot; the op samples with them and advances
        # this copy in place by 4 modulo MAX_INFER_SEED (exact in int64, which
        # Paddle's scalar constants near 2^63 are not), then it is scattered back.
        seeds = paddle.gather(bufs.infer_seed, slot_ids)
        tokens = sample_plain(logits.astype("float32"), top_p=bufs.top_p[:rows], top_k=bufs.top_k[:rows],
                              infer_seed=seeds)
        bufs.infer_seed[slot_ids] = seeds
        return tokens

    # Prefill and decode ----------------------------------------------------------
    def prefill(self, slot: int, prompt: Sequence[int], *, greedy: bool = True) -> int:
        """Run ``prompt`` eagerly into ``slot``'s cache; returns the first generated token."""
        return self.prefill_with_hidden(slot, prompt, greedy=greedy)[0]

    def prefill_with_hidden(
        self, slot: int, prompt: Sequence[int], *, greedy: bool = True, record_hidden: bool = False,
    ) -> tuple[int, paddle.Tensor | None]:
        """``prefill``, also returning the prompt's pre-norm hidden states ``[1, len, hidden]`` if asked."""
        ids = paddle.to_tensor([list(prompt)], dtype="int64")
        positions = paddle.arange(len(prompt), dtype="int64").reshape([1, -1])
        slot_ids = paddle.to_tensor([slot], dtype="int64")
        logits, hidden = self.forward_rows(ids, positions, slot_ids, record_hidden=record_hidden)
        return int(self._sample(logits[:, -1, :], slot_ids, greedy=greedy).numpy()[0]), hidden

    def stage(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> dict[str, Any]:
        """Write one decode step's inputs into the registry buffers; returns the step's arguments.

        The arguments are prefix views of the buffers (``rows = len(slots)``),
        so graphcap reads them in place; they stay valid until the next
        ``stage``, which overwrites the same memory.
        """
        return self._views(self._write_inputs(slots, tokens, positions))

    def _views(self, rows: int) -> dict[str, Any]:
        """The decode step's arguments: prefix views of its buffers, ``rows`` long."""
        bufs = self.registry.buffers
        return {"input_ids": bufs.input_ids[:rows], "position_ids": bufs.position_ids[:rows],
                "slot_ids": bufs.slot_ids[:rows], "attention_mask": bufs.attention_mask[:rows]}

    def _write_inputs(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> int:
        """Write one decode step's inputs into the registry buffers with ``write`` (padded); returns the rows."""
        rows = len(slots)
        bufs = self.registry.buffers
        bufs.write("input_ids", np.asarray(tokens, dtype=np.int64).reshape([rows, 1]))
        bufs.write("position_ids", np.asarray(positions, dtype=np.int64).reshape([rows, 1]))
        bufs.write("slot_ids", np.asarray(slots, dtype=np.int64))
        mask = np.arange(self.max_len)[None, :] <= np.asarray(positions)[:, None]
        bufs.write("attention_mask", mask.reshape([rows, 1, 1, self.max_len]))
        return rows

    def decode(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int], *,
               greedy: bool = True) -> list[int]:
        """One graphed step: ``tokens[i]`` at ``positions[i]`` of slot ``slots[i]``; returns the next tokens."""
        # The buffers are written in place: once captured, replay(rows) skips binding and classifying the call.
        rows = self._write_inputs(slots, tokens, positions)
        next_tokens, _ = call_in_place(self.decode_step, rows, lambda: self._views(rows), greedy=greedy)
        return next_tokens.numpy().tolist()

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        *,
        greedy: bool = True,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> list[list[int]]:
        """Generate up to ``max_new_tokens`` for every prompt with continuous batching over the slots.

        ``greedy=False`` (or any of ``top_p`` / ``top_k``) samples with
        per-request seeds: request i starts its stream at ``seed + i * 2^32``.
        A request stops at ``eos_token_id`` (kept in its output) or at
        ``max_new_tokens``; its slot then takes the next waiting prompt.
        """
        self._check_prompts(prompts, max_new_tokens)
        sampled = not greedy or top_p is not None or top_k is not None
        if sampled:
            self._set_sampling(top_p=1.0 if top_p is None else top_p, top_k=0 if top_k is None else top_k)
        requests = [_Request(index=index, prompt=list(prompt)) for index, prompt in enumerate(prompts)]
        waiting = list(requests)
        active: dict[int, _Request] = {}
        base_seed = 0 if seed is None else seed
        # Until no rank has work: the step's agreement says (alone, this rank's own work does).
        while True:
            admitted = []
            for slot in [slot for slot in range(self.max_batch) if slot not in active]:
                if not waiting:
                    break
                request = waiting.pop(0)
                request.slot = slot
                if sampled:
                    self._seed_slot(slot, (base_seed + request.index * _SEED_STRIDE) % MAX_INFER_SEED)
                admitted.append(request)
            for request, first in zip(admitted, self._prefill_admitted(admitted, greedy=not sampled)):
                request.length = len(request.prompt)
                self._commit(request, first, max_new_tokens, eos_token_id)
                if not request.done:
                    active[request.slot] = request
            rows = [active[slot] for slot in sorted(active)]
            # One agreement per step with sync_ranks (free without): every rank steps until
            # none has work, and a rank without rows replays padding rows for the others.
            per_request = 1 + self.config.num_speculative_tokens if self.speculative is not None else 1
            with self.registry.step(rows=len(rows) * per_request, busy=bool(waiting or active)) as step:
                if not step.busy:
                    break
                lockstep = self.registry.agreement is not None
                if not rows and not (lockstep and step.rows):
                    continue
                self._decode_step(rows, sampled=sampled, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                  agreed_rows=step.rows if lockstep else None)
            for request in rows:
                if request.done:
                    del active[request.slot]
        return [request.generated for request in requests]

    def _prefill_admitted(self, admitted: list[_Request], *, greedy: bool) -> list[int]:
        """The first token of each request admitted this step: prefilled together in token buckets, or one by one."""
        if self.prefill_graphs is not None:
            return self.prefill_graphs.run([r.slot for r in admitted], [r.prompt for r in admitted], greedy=greedy,
                                           requests=admitted)
        if self.speculative is not None:
            return [prefill_with_draft(self, self.speculative, request, greedy=greedy) for request in admitted]
        return [self.prefill(request.slot, request.prompt, greedy=greedy) for request in admitted]

    def _decode_step(self, rows: list[_Request], *, sampled: bool, max_new_tokens: int, eos_token_id: int | None,
                     agreed_rows: int | None) -> None:
        """One decode step of ``rows`` (sorted by slot; empty on an idle rank in lockstep), committed."""
        def commit(request: _Request, token: int) -> None:
            # The token before this one is now in the cache.
            request.length += 1
            self._commit(request, token, max_new_tokens, eos_token_id)

        if self.speculative is not None:
            self.speculative.run(rows, greedy=not sampled, commit=commit, agreed_rows=agreed_rows)
            return
        seeds = self.registry.buffers.infer_seed.clone() if not rows else None
        tokens = self.decode([r.slot for r in rows], [r.generated[-1] for r in rows], [r.length for r in rows],
                             greedy=not sampled)
        if seeds is not None:
            # An idle rank's padding rows advanced the scratch slot's seed; its own stay as they were.
            self.registry.buffers.write("infer_seed", seeds)
        for request, token in zip(rows, tokens):
            commit(request, token)

    def capture_all(self) -> int:
        """Capture every decode bucket up front with dummy rows in the scratch slot; returns graphs captured.

        The dummies write only the scratch slot, so requests in flight keep
        their caches. Both greedy and sampled steps are captured. With a
        draft, the speculative graphs (target, draft, draft_next) instead.
        """
        if not self.config.use_graph:
            return 0
        if self.speculative is not None:
            return self.speculative.capture_all()
        bufs = self.registry.buffers

        def dummy(rows: int, greedy: bool) -> dict[str, Any]:
            bufs.write("slot_ids", np.full([rows], self.scratch_slot, dtype=np.int64))
            bufs.write("position_ids", np.zeros([rows, 1], dtype=np.int64))
            bufs.write("input_ids", np.zeros([rows, 1], dtype=np.int64))
            mask = np.zeros([rows, 1, 1, self.max_len], dtype=bool)
            mask[..., 0] = True
            bufs.write("attention_mask", mask)
            return {"input_ids": bufs.input_ids[:rows], "position_ids": bufs.position_ids[:rows],
                    "slot_ids": bufs.slot_ids[:rows], "attention_mask": bufs.attention_mask[:rows], "greedy": greedy}

        captured = self.decode_step.capture_all(lambda rows: dummy(rows, True))
        return captured + self.decode_step.capture_all(lambda rows: dummy(rows, False))

    def stats(self) -> dict[str, Any]:
        """The registry's statistics (captures, replays, eager fallbacks with reasons, padding, coverage).

        With a draft, also ``acceptance_rate`` (accepted / proposed drafts,
        None before the first step), ``proposed_drafts`` and ``accepted_drafts``.
        """
        stats = self.registry.stats()
        if self.speculative is not None:
            stats.update(self.speculative.acceptance())
        if self.prefill_graphs is not None:
            stats["prefill"] = self.prefill_graphs.stats()
        return stats

    # Host bookkeeping -------------------------------------------------------------
    def _commit(self, request: _Request, token: int, max_new_tokens: int, eos_token_id: int | None) -> None:
        request.generated.append(token)
        if len(request.generated) >= max_new_tokens or (eos_token_id is not None and token == eos_token_id):
            request.done = True

    def _set_sampling(self, *, top_p: float, top_k: int) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"top_p={top_p} must be in (0, 1]; use 1.0 for no nucleus cut")
        if top_k < 0:
            raise ConfigError(f"top_k={top_k} must be >= 0; use 0 for no top-k cut")
        bufs = self.registry.buffers
        bufs.write("top_p", np.full([self.max_batch + 1], top_p, dtype=np.float32))
        bufs.write("top_k", np.full([self.max_batch + 1], top_k, dtype=np.int64))

    def _seed_slot(self, slot: int, seed: int) -> None:
        seeds = self.registry.buffers.infer_seed
        seeds[slot] = seed

    def _check_prompts(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ConfigError(f"prompt {index} is empty; give every prompt at least one token")
            # A speculative step writes k drafts past the last token, the draft model one more.
            extra = 0 if self.speculative is None else self.config.num_speculative_tokens + 1
            need = len(prompt) + max_new_tokens + extra
            if need > self.max_len:
                drafts = f" + k+1={extra} for the drafts" if extra else ""
                raise ConfigError(
                    f"prompt {index} has {len(prompt)} tokens and max_new_tokens={max_new_tokens}{drafts}, which "
                    f"needs {need} cache positions but max_len={self.max_len}; shorten it or build "
                    f"GraphedCausalLM with a larger max_len"
                )
            bad = [token for token in prompt if not 0 <= int(token) < self.vocab_size]
            if bad:
                raise ConfigError(
                    f"prompt {index} holds token id {bad[0]} outside the vocabulary [0, {self.vocab_size}); "
                    f"check the tokenizer matches the model"
                )


def _check_model(model: paddle.nn.Layer, *, max_batch: int, max_len: int) -> None:
    """Refuse, with the fix, a model or size that static-cache decoding cannot serve."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise ConfigError(f"{type(model).__name__} has no PaddleFormers config; pass a PaddleFormers causal LM")
    if max_batch < 1 or max_len < 2:
        raise ConfigError(f"max_batch={max_batch} must be >= 1 and max_len={max_len} >= 2")
    # PaddleFormers' Norm reads config.get("fuse_rms_norm", True): a config without the field fuses.
    fused = getattr(config, "fuse_rms_norm", None)
    if (fused is None or fused) and not paddle.is_compiled_with_cuda():
        setting = "fuse_rms_norm=True" if fused else "no fuse_rms_norm (PaddleFormers then fuses)"
        raise ConfigError(
            f"the model's config has {setting}, whose fused kernel runs only on GPU builds of Paddle; build its "
            f"config with fuse_rms_norm=False on this machine"
        )
    implementation = getattr(config, "_attn_implementation", "eager")
    if implementation != "eager":
        raise ConfigError(
            f"the model uses _attn_implementation={implementation!r}, whose mask preparation reads the mask on "
            f"the host every step; build it with _attn_implementation='eager' (a 4-D mask is passed each step)"
        )
    window = getattr(config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(config, "layer_types", None) or []) and window < max_len:
        raise ConfigError(
            f"the model has sliding-window layers (sliding_window={window}) but the static cache's mask is a "
            f"full causal one; use max_len <= {window}"
        )
    positions = getattr(config, "max_position_embeddings", max_len)
    if max_len > positions:
        raise ConfigError(
            f"max_len={max_len} exceeds the model's max_position_embeddings={positions}; use max_len <= {positions}"
        )
    if all(getattr(config, name, None) for name in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")):
        key_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        raise ConfigError(
            f"{type(model).__name__} uses multi-head latent attention, whose key head dim "
            f"qk_nope_head_dim + qk_rope_head_dim = {key_dim} and value head dim v_head_dim = {config.v_head_dim} "
            f"are separate (and whose cache update takes [batch, seq, heads, dim] states), but StaticCache holds "
            f"one head dim in [batch, heads, seq, dim]; and PaddleFormers' DeepseekV3 rotary embedding fails on a "
            f"one-position forward, which every decode step is; this model is not supported yet, serve it "
            f"without GraphedCausalLM"
        )
    if model.training:
        raise ConfigError(f"{type(model).__name__} is in training mode (dropout); call model.eval() first")


def _check_prefill(config: GraphConfig) -> None:
    """Refuse, with the fix, prefill graphs where this version cannot serve them yet."""
    if config.prefill_capture_sizes is None:
        return
    if config.sync_ranks:
        raise ConfigError(
            f"prefill_capture_sizes={list(config.prefill_capture_sizes)} with sync_ranks=True: ranks admit "
            f"different prompts, and prefill graphs are not agreed across ranks yet; leave "
            f"prefill_capture_sizes None with sync_ranks"
        )


def _check_speculation(model: paddle.nn.Layer, config: GraphConfig, draft: str | paddle.nn.Layer | None) -> None:
    """Refuse a draft without draft tokens, draft tokens without a draft, and a draft that is neither kind."""
    k = config.num_speculative_tokens
    if draft is None:
        if k:
            raise ConfigError(
                f"num_speculative_tokens={k} but no draft was given; pass draft='mtp' (the model's own MTP "
                f"layers) or draft=<a PaddleFormers causal LM>, or set num_speculative_tokens=0 for plain decoding"
            )
        return
    if k < 1:
        raise ConfigError(
            f"a draft was given but num_speculative_tokens={k}; set GraphConfig(num_speculative_tokens=k) with "
            f"k >= 1 (the drafts per step), or drop draft= for plain decoding"
        )
    if isinstance(draft, str):
        if draft != "mtp":
            raise ConfigError(f"draft={draft!r} is not a draft kind; use draft='mtp' or pass a draft model")
        if not mtp_layer_count(model) and getattr(model.config, "num_nextn_predict_layers", 0):
            raise ConfigError(
                f"draft='mtp': {type(model).__name__} has num_nextn_predict_layers="
                f"{model.config.num_nextn_predict_layers} but not in ERNIE-4.5's layout (model.mtp_block), the "
                f"only MTP layout supported; pass a draft model instead"
            )
        return
    if not isinstance(draft, paddle.nn.Layer) or getattr(draft, "config", None) is None:
        raise ConfigError(
            f"draft={type(draft).__name__} is neither 'mtp' nor a PaddleFormers causal LM; pass draft='mtp' or "
            f"draft=<a PaddleFormers causal LM sharing the vocabulary>"
        )


def _build_draft(lm: GraphedCausalLM, draft: str | paddle.nn.Layer, *, check_model: bool) -> MTPDraft | ModelDraft:
    """The draft ``lm`` speculates with; a draft model passes the checks the target does."""
    slots = lm.max_batch + 1
    if isinstance(draft, str):
        return MTPDraft(lm.model, slots=slots, max_len=lm.max_len)
    _check_model(draft, max_batch=lm.max_batch, max_len=lm.max_len)
    built = ModelDraft(draft, target=lm.model, slots=slots, max_len=lm.max_len)
    if check_model:
        # The draft's own acceptance check, run through a plain GraphedCausalLM of its own (eager, 2 slots).
        GraphedCausalLM(draft, GraphConfig(use_graph=False), max_batch=min(2, lm.max_batch), max_len=lm.max_len)
    return built
