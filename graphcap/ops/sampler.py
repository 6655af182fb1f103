"""Top-k / top-p sampling with per-row seeds, written to be captured.

Everything here has static shapes and reads no tensor value on the host, so it
runs unchanged inside a captured graph or ``paddle.jit.to_static(full_graph=True)``
and gives the same tokens there as in eager mode.

Two entry points, both taking their per-row params and seeds from the
graph-safe op ``build_sampling_params_into`` with ``impl="auto"`` (the C++
kernel on CPU and CUDA, the portable Paddle-ops kernel on XPU and custom
devices; it also advances ``infer_seed`` in place):

* ``sample_plain``: non-speculative decoding, one logits row per request;
  seeds advance by 4 per step.
* ``sample_speculative``: MTP verify, ``cu_seqlens_q_output`` rows per request
  (a decode request verifies ``k + 1`` tokens); seeds advance by ``(k + 1) * 4``.

Per row: ``top_k == 0`` means no top-k limit, ``top_p`` keeps the smallest
prefix of the descending probabilities whose mass reaches ``top_p`` (the top
token is always kept), and the draw uses a uniform number derived from the
row's int64 seed by splitmix64 (``seeded_uniform``), so a seed fully decides
the token. ``greedy=True`` takes the argmax of the logits instead (seeds still
advance, so switching modes does not shift later seeds).
"""

from __future__ import annotations

import numpy as np
import paddle

from graphcap.ops import portable
from graphcap.ops._loader import load_ops
from graphcap.ops.sampling_params import MAX_INFER_SEED, build_sampling_params_into, resolve_impl
from graphcap.trust.graph_safe_ops import register_graph_safe_op

__all__ = [
    "sample_plain",
    "sample_rows",
    "sample_speculative",
    "seeded_uniform",
    "seeded_uniform_reference",
    "speculative_increment",
]

_MASK64 = (1 << 64) - 1

# @paddle.jit.not_to_static on the entry points: they have no tensor-dependent
# Python control flow, so to_static runs them as written (emitting static ops)
# instead of AST-converting them, which would lose module-level defaults.


# Graph-safe: float32 [R] from int64 seeds via splitmix64; static shape, reads nothing on the host.
@paddle.jit.not_to_static
@register_graph_safe_op("seeded_uniform")
def seeded_uniform(seed: paddle.Tensor, *, impl: str = "auto") -> paddle.Tensor:
    """Deterministic uniform in [0, 1) per row: splitmix64(seed) top 24 bits; ``seed`` int64 [R] or [R, 1] -> float32 [R].

    ``impl`` as for ``build_sampling_params``: the C++ op where it was built
    for the seeds' place, the portable Paddle-ops form elsewhere (XPU); both
    give the same bits.
    """
    if resolve_impl(impl, seed) == "paddle":
        return portable.seeded_uniform(seed)
    return load_ops().graphcap_seeded_uniform(seed)


def seeded_uniform_reference(seed: np.ndarray) -> np.ndarray:
    """Numpy/Python-int twin of ``seeded_uniform`` (bit-identical)."""
    values = []
    for s in np.asarray(seed, dtype=np.int64).reshape(-1).tolist():
        z = (s + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        values.append(np.float32(z >> 40) * np.float32(1.0 / 16777216.0))
    return np.asarray(values, dtype=np.float32)


@paddle.jit.not_to_static
def sample_rows(
    logits: paddle.Tensor,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    seed: paddle.Tensor,
    *,
    greedy: bool = False,
) -> paddle.Tensor:
    """Sample one token per row; returns int64 [rows].

    ``logits`` float32 [rows, vocab]; ``top_p`` float32, ``top_k`` int64 and
    ``seed`` int64, each [rows] or [rows, 1] (the op's outputs fit as they
    are). ``top_k <= 0`` means no limit; a row always keeps its most probable
    token. ``greedy=True`` returns ``argmax(logits)`` and ignores the params.
    """
    if greedy:
        return paddle.argmax(logits, axis=-1).astype("int64")
    vocab = logits.shape[-1]
    # Unnormalised softmax weights (the largest is 1): top_p compares against
    # p * total instead of dividing (division under to_static warns in PIR).
    logits32 = logits.astype("float32")
    weights = paddle.exp(logits32 - paddle.max(logits32, axis=-1, keepdim=True))
    total = paddle.sum(weights, axis=-1, keepdim=True)
    # topk over the whole vocab: values and indices sorted together, so ties
    # pair up the same way every run.
    sorted_w, sorted_ids = paddle.topk(weights, k=vocab, axis=-1, largest=True, sorted=True)
    rank = paddle.arange(vocab, dtype="int64").unsqueeze(0)
    k = top_k.reshape([-1, 1]).astype("int64")
    p = top_p.reshape([-1, 1]).astype("float32")
    mass_before = paddle.cumsum(sorted_w, axis=-1) - sorted_w
    # Both conditions keep a prefix of the sorted row, so "keep" is a prefix too.
    keep = paddle.logical_or(
        paddle.logical_and(paddle.logical_or(k <= 0, rank < k), mass_before < p * total),
        rank == 0,
    )
    kept_cum = paddle.cumsum(sorted_w * keep.astype("float32"), axis=-1)
    threshold = seeded_uniform(seed).reshape([-1, 1]) * kept_cum[:, -1:]
    # First position whose cumulative kept mass exceeds the threshold; clamp
    # to the last kept position against float rounding at the top end.
    choice = paddle.sum((kept_cum <= threshold).astype("int64"), axis=-1, keepdim=True)
    last_kept = paddle.sum(keep.astype("int64"), axis=-1, keepdim=True) - 1
    choice = paddle.minimum(choice, last_kept)
    return paddle.take_along_axis(sorted_ids, choice, axis=-1).reshape([-1]).astype("int64")


def _static_outputs(rows: int) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    return (
        paddle.ones([rows, 1], dtype="float32"),
        paddle.zeros([rows, 1], dtype="int64"),
        paddle.zeros([rows, 1], dtype="int64"),
    )


@paddle.jit.not_to_static
def sample_plain(
    logits: paddle.Tensor,
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    max_seed: int = MAX_INFER_SEED,
    greedy: bool = False,
    out: tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor] | None = None,
) -> paddle.Tensor:
    """Plain (non-speculative) path: one row per request; returns int64 token ids [B].

    ``logits`` float32 [B, vocab]; ``top_p`` float32 [B], ``top_k`` int64 [B],
    ``infer_seed`` int64 [B] (the engine's per-request state, advanced in place
    by 4 mod ``max_seed``). Row b samples with seed ``infer_seed[b]`` as it was
    before the call. ``out`` optionally supplies the op's static outputs
    (``[B, 1]`` float32, int64, int64) so their addresses stay fixed across
    replays; by default they are allocated per call (fine inside a graph,
    whose allocations are part of the capture).

    Graph-safe: static shapes, no host reads; runs inside
    ``paddle.jit.to_static(full_graph=True)`` with the same tokens as eager.
    """
    rows = logits.shape[0]
    # Every request owns exactly one row: cu = [0, 1, ..., B] and one token
    # this step, built on the device from the static batch size. That is the
    # speculative path with k = 0 (seeds advance by 4).
    return sample_speculative(
        logits,
        top_p=top_p,
        top_k=top_k,
        infer_seed=infer_seed,
        seq_lens_this_time=paddle.ones([rows], dtype="int32"),
        cu_seqlens_q_output=paddle.arange(rows + 1, dtype="int32"),
        num_speculative_tokens=0,
        max_seed=max_seed,
        greedy=greedy,
        out=out,
    )


def speculative_increment(num_speculative_tokens: int) -> int:
    """Seed advance per MTP step: ``(k + 1) * 4`` for ``k`` draft tokens."""
    return (num_speculative_tokens + 1) * 4


@paddle.jit.not_to_static
def sample_speculative(
    logits: paddle.Tensor,
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    cu_seqlens_q_output: paddle.Tensor,
    num_speculative_tokens: int,
    max_seed: int = MAX_INFER_SEED,
    greedy: bool = False,
    out: tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor] | None = None,
) -> paddle.Tensor:
    """Speculative (MTP verify) path; returns int64 token ids [rows_capacity].

    ``logits`` float32 [rows_capacity, vocab], where rows_capacity is the
    bucket's maximum output rows; rows ``[cu[b], cu[b+1])`` belong to request
    b, and row j of a request samples with seed ``infer_seed[b] + 4*j``.
    ``top_p`` / ``top_k`` / ``infer_seed`` / ``seq_lens_this_time`` are [B],
    ``cu_seqlens_q_output`` int32 [B+1] with ``cu[B] <= rows_capacity``.
    ``infer_seed`` advances in place by ``(num_speculative_tokens + 1) * 4``.
    Rows at or past ``cu[B]`` are padding (top_p 1.0, top_k 0, seed 0): they
    get a token, which the caller ignores. ``out`` as in ``sample_plain``
    (``[rows_capacity, 1]`` each).

    Graph-safe: the real row count is read from ``cu_seqlens_q_output`` on the
    device; shapes depend only on ``logits.shape``.
    """
    rows = logits.shape[0]
    out_top_p, out_top_k, out_seed = out if out is not None else _static_outputs(rows)
    row_top_p, row_top_k, row_seed = build_sampling_params_into(
        top_p=top_p,
        top_k=top_k,
        infer_seed=infer_seed,
        seq_lens_this_time=seq_lens_this_time,
        cu_seqlens_q_output=cu_seqlens_q_output,
        increment_value=speculative_increment(num_speculative_tokens),
        max_seed=max_seed,
        out_top_p=out_top_p,
        out_top_k=out_top_k,
        out_seed=out_seed,
        impl="auto",  # the C++ kernel where built for the place (CPU, CUDA), the portable one elsewhere
    )
    return sample_rows(logits, row_top_p, row_top_k, row_seed, greedy=greedy)
