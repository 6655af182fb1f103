"""The acceptance check ``GraphedCausalLM`` runs on a model before it serves it.

Two short runs of the decode step, eagerly (graphs are not involved, so the
verdict does not depend on the backend and nothing counts in the registry's
statistics), on 2 seeded prompts in the model's own slots:

* *Rows*: one decode step over 2 rows, run twice with row 0 the same and
  row 1's token changed; row 0's logits must be bitwise equal (same row
  count, same deterministic kernels). Graphs pad every batch with extra rows,
  so a model whose rows interact would give tokens that depend on the padding
  and on the neighbours.
* *Cache*: 2-3 greedy decode steps through ``StaticCache``, each row's
  last-position logits compared with the model's own full recompute of the
  sequence (no cache), within a tolerance scaled to the logits' magnitude.

The rows run first: a model whose rows interact would also fail the cache
comparison (a 2-row decode against a 1-row recompute), for the wrong reason.

The check leaves no trace: every registry buffer it may write (the staged
inputs, the seeds) and the cache slots it uses are copied before and written
back in place after, so addresses and contents are as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import numpy as np
import paddle

from graphcap.errors import ConfigError
from graphcap.trust import tolerance

if TYPE_CHECKING:
    from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM

logger = logging.getLogger("graphcap")

__all__ = ["check_decoding", "logits_tolerance"]

_T = TypeVar("_T")

#: Prompt lengths of the check's two requests (clipped to fit ``max_len``).
PROMPT_LENGTHS = (3, 5)
#: Greedy decode steps compared with the full recompute, per request.
DECODE_STEPS = 3
#: The prompts' token ids are drawn with this numpy seed, so every run checks the same sequences.
PROMPT_SEED = 0

def logits_tolerance(dtype: Any, logits: np.ndarray) -> float:
    """The cache check's absolute tolerance for ``logits`` computed in ``dtype``: ``tolerance.bound``.

    The project's one table (``graphcap.trust.tolerance.RELATIVE``) times
    max(1, max|logits|). The cached and recomputed paths differ in row count
    and in sequence length, so their reductions round differently and bitwise
    equality is not possible; the tiny Llama at scale 4 and 16 differs by
    about 1e-6 of its largest logit, a broken cache by 1e-2 and more. A dtype
    outside the table is compared as float32.
    """
    name = str(dtype).replace("paddle.", "")
    return tolerance.bound(logits, name if name in tolerance.RELATIVE else "float32")


@attrs.frozen
class _Request:
    prompt: list[int]
    slot: int


def check_decoding(lm: GraphedCausalLM) -> None:
    """Refuse, with ``ConfigError``, a model whose rows interact or whose cached decode differs from its recompute.

    Runs ``lm``'s own decode step eagerly on 2 seeded prompts (see the module
    docstring); restores every buffer and cache slot it wrote before
    returning or raising.
    """
    started = time.perf_counter()
    requests, steps = _plan(lm)
    slots = sorted({request.slot for request in requests})
    with _restored(lm, slots), paddle.no_grad():
        # Prefill is one row per request, so it is comparable whatever the rows do.
        firsts = [_run(lm, "prefill", lambda r=r: lm.prefill(r.slot, r.prompt, greedy=True)) for r in requests]
        if lm.max_batch >= 2:
            _check_rows(lm, requests, firsts)
        _check_cache(lm, requests, firsts, steps)
    logger.debug("acceptance check of %s took %.3f s", type(lm.model).__name__, time.perf_counter() - started)


def _plan(lm: GraphedCausalLM) -> tuple[list[_Request], int]:
    """The check's requests (seeded prompts, their slots) and decode steps, sized to fit ``max_len``."""
    steps = min(DECODE_STEPS, lm.max_len - 1)
    rng = np.random.default_rng(PROMPT_SEED)
    prompts = [rng.integers(0, lm.vocab_size, size=min(length, lm.max_len - steps)).tolist()
               for length in PROMPT_LENGTHS]
    # With a single request slot the second request uses the scratch slot: the
    # check decodes it alone there, and the slot is restored afterwards anyway.
    slots = [0, 1] if lm.max_batch >= 2 else [0, lm.scratch_slot]
    return [_Request(prompt=prompt, slot=slot) for prompt, slot in zip(prompts, slots)], steps


def _check_rows(lm: GraphedCausalLM, requests: list[_Request], firsts: list[int]) -> None:
    """Row 0's logits must not move when only row 1's token changes (same row count: bitwise)."""
    slots = [request.slot for request in requests]
    positions = [len(request.prompt) for request in requests]
    other = (firsts[1] + 1) % lm.vocab_size
    # Both runs write the same (slot, position) pairs, which the cache check's
    # first decode step then overwrites with the real tokens.
    first = _decode(lm, slots, firsts, positions)[0]
    second = _decode(lm, slots, [firsts[0], other], positions)[0]
    if not np.array_equal(first, second):
        diff = float(np.abs(first.astype(np.float64) - second.astype(np.float64)).max())
        raise ConfigError(
            f"{type(lm.model).__name__}'s batch rows interact: row 0's logits changed by up to {diff:.3g} when "
            f"only row 1's token changed (expected bitwise equal), and graphs pad every batch with extra rows, so "
            f"its tokens would depend on the padding and on other requests; serve it with max_batch=1 (one row "
            f"per step, no padding) or fix the model's forward so each row depends only on itself"
        )


def _check_cache(lm: GraphedCausalLM, requests: list[_Request], firsts: list[int], steps: int) -> None:
    """Each decode step's logits must match the model's own full recompute of the sequence."""
    sequences = [request.prompt + [first] for request, first in zip(requests, firsts)]
    # Rows decode together when the slots allow it (the multi-row, multi-length
    # case graphs serve); with max_batch=1 each request decodes alone.
    groups = [list(range(len(requests)))] if lm.max_batch >= 2 else [[index] for index in range(len(requests))]
    dtype = lm.cache.layers[0].keys.dtype
    for group in groups:
        for step in range(steps):
            slots = [requests[index].slot for index in group]
            tokens = [sequences[index][-1] for index in group]
            positions = [len(sequences[index]) - 1 for index in group]
            logits = _decode(lm, slots, tokens, positions)
            for row, index in enumerate(group):
                want = _recompute(lm, sequences[index])
                got = logits[row]
                diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
                allowed = logits_tolerance(dtype, want)
                if not diff <= allowed:  # `not <=` also refuses NaN
                    raise ConfigError(
                        f"{type(lm.model).__name__} decodes differently through StaticCache than its own full "
                        f"recompute: check request {index} (a {len(requests[index].prompt)}-token prompt), decode "
                        f"step {step}, its last-position logits differ by up to {diff:.3g}, above the tolerance "
                        f"{allowed:.3g} (1e-4 x max(1, max|logits|) in float32); its attention must write and "
                        f"read past_key_values at the given position_ids and honour the 4-D attention_mask as its "
                        f"no-cache forward does (check_model=False skips this check, for debugging only)"
                    )
                sequences[index].append(int(np.argmax(got)))


def _decode(lm: GraphedCausalLM, slots: list[int], tokens: list[int], positions: list[int]) -> np.ndarray:
    """One eager decode step through ``lm``'s own staging and step function; the rows' logits ``[R, vocab]``."""
    def step() -> np.ndarray:
        _, logits = lm._step(**lm.stage(slots, tokens, positions), greedy=True)
        return logits.astype("float32").numpy()

    return _run(lm, "decode step", step)


def _recompute(lm: GraphedCausalLM, sequence: list[int]) -> np.ndarray:
    """The model's own last-position logits for ``sequence``, recomputed whole without a cache."""
    def forward() -> np.ndarray:
        out = lm.model(input_ids=paddle.to_tensor([sequence], dtype="int64"), use_cache=False, return_dict=True)
        return out.logits[0, -1].astype("float32").numpy()

    return _run(lm, "full recompute", forward)


def _run(lm: GraphedCausalLM, phase: str, call: Callable[[], _T]) -> _T:
    """``call()``, a failure inside the model turned into a refusal at construction instead of mid-generate."""
    try:
        return call()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{type(lm.model).__name__} raised {type(exc).__name__} in the acceptance check's {phase} "
            f"({str(exc).strip()}), so it cannot run the way GraphedCausalLM runs it (StaticCache, explicit "
            f"position_ids, a 4-D attention_mask) and is refused now rather than failing mid-generate; fix the "
            f"cause above or serve it without GraphedCausalLM"
        ) from exc


@contextmanager
def _restored(lm: GraphedCausalLM, slots: list[int]) -> Iterator[None]:
    """Copy the registry's non-cache buffers and ``slots`` of every cache layer; write them back in place on exit."""
    buffers = lm.registry.buffers
    cache_names = {f"cache.{name}" for name, _ in lm.cache.tensors()}
    saved = {name: buffers[name].clone() for name in buffers if name not in cache_names}
    saved_slots = [(tensor, slot, tensor[slot].clone()) for _, tensor in lm.cache.tensors() for slot in slots]
    try:
        yield
    finally:
        # Item writes keep every address: replays check them, and the cache
        # tensors are the registry's adopted buffers.
        with paddle.no_grad():
            for name, value in saved.items():
                buffers[name][:] = value
            for tensor, slot, value in saved_slots:
                tensor[slot] = value
