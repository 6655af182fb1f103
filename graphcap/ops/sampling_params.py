"""``build_sampling_params``: per-row top_p / top_k / seed for a batch, as one C++ op.

A request produces one or more output rows (tokens to sample). Row ``j`` of
request ``b`` samples with ``top_p[b]``, ``top_k[b]`` and seed
``(infer_seed[b] + 4*j) mod max_seed``; afterwards every ``infer_seed[b]``
advances by ``increment_value`` (mod ``max_seed``) in place, at the same
address. Two layouts say which rows belong to which request:

* GPU layout, ``cu_seqlens_q_output`` (int32 [B+1]): rows ``[cu[b], cu[b+1])``.
* encoder (XPU) layout, ``seq_lens_encoder`` (int32 [B]): ``seq_lens_this_time[b]``
  rows for a decoding request (``seq_lens_encoder[b] == 0``), 1 row for a
  prefill request, rows in request order.

Three builders of the same rows live here:

* ``build_sampling_params`` (eager form) and ``build_sampling_params_into``
  (capture form, graph-safe) call the C++ op (``graphcap/ops/csrc/build_sampling_params.cc``).
* ``build_sampling_params_reference``: numpy with Python ints, the ground truth.
* ``padding_sampling_params``: the legacy builder from Paddle ops
  (``repeat_interleave`` with tensor repeats: a host sync, not capturable),
  kept as a benchmark baseline.

Padding rule of the op: rows past the real row count (up to the output's row
count) hold ``top_p 1.0, top_k 0, seed 0`` (``PAD_TOP_P`` / ``PAD_TOP_K`` /
``PAD_SEED``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle

from graphcap.errors import OpInputError
from graphcap.ops._loader import load_ops
from graphcap.safety import register_graph_safe_op

__all__ = [
    "KUNLUN_MAX_INFER_SEED",
    "MAX_INFER_SEED",
    "PAD_SEED",
    "PAD_TOP_K",
    "PAD_TOP_P",
    "build_sampling_params",
    "build_sampling_params_into",
    "build_sampling_params_reference",
    "padding_sampling_params",
]

MAX_INFER_SEED = 9223372036854775806
"""Seed modulus of GPU engines (2**63 - 2)."""
KUNLUN_MAX_INFER_SEED = 2147483646
"""Seed modulus of Kunlun (XPU) engines (2**31 - 2)."""
PAD_TOP_P = 1.0
PAD_TOP_K = 0
PAD_SEED = 0

# The public functions carry @paddle.jit.not_to_static: they have no
# tensor-dependent Python control flow, so under to_static they run as written
# and emit static ops; AST conversion would only break them (it re-creates the
# function and loses module globals used as keyword defaults).

# Malformed inputs raise OpInputError (a StaticBufferError), naming the input.
_InputError = OpInputError


def _pick_layout(cu_seqlens_q_output: Any, seq_lens_encoder: Any) -> tuple[bool, Any]:
    """(is GPU layout, the lengths tensor); exactly one of the two must be given."""
    if (cu_seqlens_q_output is None) == (seq_lens_encoder is None):
        given = "both" if cu_seqlens_q_output is not None else "neither"
        raise _InputError(
            f"pass exactly one of cu_seqlens_q_output (GPU layout) or seq_lens_encoder "
            f"(encoder/XPU layout); got {given}"
        )
    if cu_seqlens_q_output is not None:
        return True, cu_seqlens_q_output
    return False, seq_lens_encoder


def _host_int(value: Any, name: str) -> int:
    # Attributes are baked into the op at call time; a Tensor here would need a
    # host read (and inside a graph would freeze the capture-time value).
    if isinstance(value, paddle.Tensor):
        raise _InputError(
            f"{name} must be a Python int, not a Tensor; pass int(...) computed outside the graph"
        )
    try:
        return operator.index(value)
    except TypeError as exc:
        raise _InputError(f"{name} must be an int (got {type(value).__name__})") from exc


def _run(op: Callable[..., Any], *args: Any) -> Any:
    # The C++ PD_CHECKs raise OSError whose first line names the tensor; re-raise
    # it as graphcap's typed error with that line only (the second is the C++ file).
    try:
        return op(*args)
    except OSError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise _InputError(message) from exc


@paddle.jit.not_to_static
def build_sampling_params(
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    cu_seqlens_q_output: paddle.Tensor | None = None,
    seq_lens_encoder: paddle.Tensor | None = None,
    token_num_output: int,
    increment_value: int,
    max_seed: int = MAX_INFER_SEED,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Per-row sampling params for ``token_num_output`` rows (eager form); advances ``infer_seed`` in place.

    Inputs: ``top_p`` float32 [B] (or [B, 1]), ``top_k`` int64 [B],
    ``infer_seed`` int64 [B], ``seq_lens_this_time`` int32 [B], and exactly one
    of ``cu_seqlens_q_output`` int32 [B+1] (GPU layout) or ``seq_lens_encoder``
    int32 [B] (encoder layout). Returns ``(top_p_padding, top_k_padding,
    topp_seed)``, each ``[token_num_output, 1]`` (float32, int64, int64); rows
    past the real count are padding (1.0, 0, 0). ``infer_seed`` keeps its
    ``data_ptr()`` and holds ``(seed + increment_value) mod max_seed`` after.

    Constraints: ``token_num_output`` is a host int and becomes the output
    shape, so inside a captured graph it would be frozen at its capture-time
    value; graphs use ``build_sampling_params_into`` instead. Bad dtypes,
    shapes, decreasing ``cu`` or too few rows raise ``OpInputError``
    naming the input.
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    ops = load_ops()
    op = ops.graphcap_sampling_params_cu if cu_layout else ops.graphcap_sampling_params_enc
    outs = _run(
        op,
        top_p,
        top_k,
        infer_seed,
        seq_lens_this_time,
        lengths,
        _host_int(token_num_output, "token_num_output"),
        _host_int(increment_value, "increment_value"),
        _host_int(max_seed, "max_seed"),
    )
    # outs[3] is infer_seed itself (in-place output), already updated.
    return outs[0], outs[1], outs[2]


@paddle.jit.not_to_static
@register_graph_safe_op(
    "build_sampling_params",
    inplace=("infer_seed", "out_top_p", "out_top_k", "out_seed"),
    note="row count read from cu_seqlens_q_output[B] / seq_lens_encoder on the device; "
    "writes caller-owned static outputs; rows past the count are padding (1.0, 0, 0)",
)
def build_sampling_params_into(
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    cu_seqlens_q_output: paddle.Tensor | None = None,
    seq_lens_encoder: paddle.Tensor | None = None,
    increment_value: int,
    max_seed: int = MAX_INFER_SEED,
    out_top_p: paddle.Tensor,
    out_top_k: paddle.Tensor,
    out_seed: paddle.Tensor,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Capture form: write per-row params into caller-owned static outputs; graph-safe.

    Same inputs and row semantics as ``build_sampling_params``. The outputs
    ``out_top_p`` (float32), ``out_top_k`` and ``out_seed`` (int64), each
    ``[rows_capacity, 1]`` (or ``[rows_capacity]``), are written in place:
    their addresses never change, and rows from the real row count up to
    ``rows_capacity`` are set to padding (top_p 1.0, top_k 0, seed 0) on every
    call, so no padding row keeps a previous step's data. The real row count
    is read only from device tensors (``cu_seqlens_q_output[B]`` or the sum
    of rows per request), never from the host, so one captured graph serves
    every batch of the bucket. ``infer_seed`` advances in place.

    Returns the three outputs as the op hands them back; in eager mode they
    are the caller's tensors, inside ``paddle.jit.to_static`` they are the
    values that carry the write, so later ops must read these, not the
    arguments. Raises ``OpInputError`` (naming the input) when the real
    row count exceeds ``rows_capacity`` or an input is malformed (on CPU; the
    CUDA kernel drops rows past the capacity instead of raising).
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    ops = load_ops()
    op = ops.graphcap_sampling_params_cu_into if cu_layout else ops.graphcap_sampling_params_enc_into
    outs = _run(
        op,
        top_p,
        top_k,
        infer_seed,
        seq_lens_this_time,
        lengths,
        out_top_p,
        out_top_k,
        out_seed,
        _host_int(increment_value, "increment_value"),
        _host_int(max_seed, "max_seed"),
    )
    # outs = [infer_seed_out, out_top_p_out, out_top_k_out, out_seed_out].
    return outs[1], outs[2], outs[3]


def _rows_per_request(
    seq_lens_this_time: np.ndarray,
    cu_seqlens_q_output: np.ndarray | None,
    seq_lens_encoder: np.ndarray | None,
) -> np.ndarray:
    slt = np.asarray(seq_lens_this_time).reshape(-1).astype(np.int64)
    if np.any(slt < 0):
        raise _InputError(f"seq_lens_this_time must be non-negative (got min {slt.min()})")
    if cu_seqlens_q_output is not None:
        cu = np.asarray(cu_seqlens_q_output).reshape(-1).astype(np.int64)
        if cu.shape[0] != slt.shape[0] + 1:
            raise _InputError(
                f"cu_seqlens_q_output must have B + 1 = {slt.shape[0] + 1} rows (got {cu.shape[0]})"
            )
        if cu[0] != 0:
            raise _InputError(f"cu_seqlens_q_output[0] must be 0 (got {cu[0]})")
        rows = np.diff(cu)
        if np.any(rows < 0):
            raise _InputError("cu_seqlens_q_output must be non-decreasing")
        return rows
    enc = np.asarray(seq_lens_encoder).reshape(-1).astype(np.int64)
    if enc.shape[0] != slt.shape[0]:
        raise _InputError(f"seq_lens_encoder must have B = {slt.shape[0]} rows (got {enc.shape[0]})")
    if np.any(enc < 0):
        raise _InputError(f"seq_lens_encoder must be non-negative (got min {enc.min()})")
    return np.where(enc > 0, 1, slt)


def build_sampling_params_reference(
    *,
    top_p: np.ndarray,
    top_k: np.ndarray,
    infer_seed: np.ndarray,
    seq_lens_this_time: np.ndarray,
    cu_seqlens_q_output: np.ndarray | None = None,
    seq_lens_encoder: np.ndarray | None = None,
    token_num_output: int,
    increment_value: int,
    max_seed: int = MAX_INFER_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numpy ground truth of the op; exact modular arithmetic with Python ints.

    Same keywords as ``build_sampling_params`` with numpy arrays. Returns
    ``(top_p_padding [N,1] float32, top_k_padding [N,1] int64, topp_seed [N,1]
    int64, new_infer_seed [B] int64)`` with ``N = token_num_output``; rows past
    the real count are padding (1.0, 0, 0). Inputs are not modified. Used for
    the capture form too: pass ``token_num_output = rows_capacity``.
    """
    cu_layout, _ = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    rows = _rows_per_request(seq_lens_this_time, cu_seqlens_q_output if cu_layout else None, seq_lens_encoder)
    p = np.asarray(top_p, dtype=np.float32).reshape(-1)
    k = np.asarray(top_k, dtype=np.int64).reshape(-1)
    seeds = [int(s) for s in np.asarray(infer_seed, dtype=np.int64).reshape(-1)]
    total = int(rows.sum())
    if total > token_num_output:
        raise _InputError(f"the batch needs {total} rows but token_num_output is {token_num_output}")
    out_p = np.full((token_num_output, 1), PAD_TOP_P, dtype=np.float32)
    out_k = np.full((token_num_output, 1), PAD_TOP_K, dtype=np.int64)
    out_s = np.full((token_num_output, 1), PAD_SEED, dtype=np.int64)
    row = 0
    for b, count in enumerate(rows.tolist()):
        for j in range(count):
            out_p[row, 0] = p[b]
            out_k[row, 0] = k[b]
            out_s[row, 0] = (seeds[b] + 4 * j) % max_seed
            row += 1
    new_seed = np.array([(s + increment_value) % max_seed for s in seeds], dtype=np.int64)
    return out_p, out_k, out_s, new_seed


def _add_mod(a: paddle.Tensor, b: paddle.Tensor, m: int) -> paddle.Tensor:
    """(a + b) mod m for int64 a, b in [0, m) without forming an overflowing a + b."""
    # m as a tensor: ``m - b`` with a Python int goes through a float scale op
    # and loses the low bits of values near 2**63.
    gap = paddle.full(b.shape, m, dtype="int64") - b
    return paddle.where(a >= gap, a - gap, a + b)


@paddle.jit.not_to_static
def padding_sampling_params(
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    cu_seqlens_q_output: paddle.Tensor | None = None,
    seq_lens_encoder: paddle.Tensor | None = None,
    increment_value: int = 0,
    max_seed: int = MAX_INFER_SEED,
    advance_seed: bool = False,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Legacy builder from Paddle ops: a benchmark baseline, NOT graph-safe.

    Builds the same real rows as the op (no padding rows: the output has
    exactly as many rows as the batch needs, a value-dependent shape) with
    ``repeat_interleave`` over tensor repeats, which syncs with the host and
    cannot be captured. Returns ``(top_p_padding, top_k_padding, topp_seed)``,
    each ``[rows, 1]``.

    Seeds: the engines' original builder never advanced ``infer_seed`` (the
    bug this op fixes), so by default neither does this one; pass
    ``advance_seed=True`` to add ``increment_value`` mod ``max_seed`` in place
    (``paddle.assign(..., output=infer_seed)``, same address) and do the same
    work as the op. Unlike the original, the seed arithmetic here is exact
    near 2**63 (no ``seed + 4*j`` overflow), so its rows match the op's.
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    if cu_layout:
        repeats = lengths[1:] - lengths[:-1]
    else:
        repeats = paddle.where(lengths > 0, paddle.ones_like(seq_lens_this_time), seq_lens_this_time)
    repeats = repeats.reshape([-1])
    top_p_padding = paddle.repeat_interleave(top_p.reshape([-1]), repeats).unsqueeze(1)
    top_k_padding = paddle.repeat_interleave(top_k.reshape([-1]), repeats).unsqueeze(1)
    base = paddle.remainder(infer_seed.reshape([-1]), paddle.to_tensor(max_seed, dtype="int64"))
    seed_rows = paddle.repeat_interleave(base, repeats)
    # Offset of each row within its request: row index minus the request's first row.
    repeats64 = repeats.astype("int64")
    starts = paddle.cumsum(repeats64) - repeats64
    request_of_row = paddle.repeat_interleave(paddle.arange(repeats.shape[0], dtype="int64"), repeats)
    offsets = paddle.arange(seed_rows.shape[0], dtype="int64") - paddle.gather(starts, request_of_row)
    step = paddle.remainder(offsets * 4, paddle.to_tensor(max_seed, dtype="int64"))
    topp_seed = _add_mod(seed_rows, step, max_seed).unsqueeze(1)
    if advance_seed:
        inc = paddle.full(base.shape, increment_value % max_seed, dtype="int64")
        paddle.assign(_add_mod(base, inc, max_seed).reshape(infer_seed.shape), output=infer_seed)
    return top_p_padding, top_k_padding, topp_seed
