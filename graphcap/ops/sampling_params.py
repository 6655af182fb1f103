"""``build_sampling_params``: per-row top_p / top_k / seed for a batch, as one graph-safe kernel.

A request produces one or more output rows (tokens to sample). Row ``j`` of
request ``b`` samples with ``top_p[b]``, ``top_k[b]`` and seed
``(infer_seed[b] + 4*j) mod max_seed``; afterwards every ``infer_seed[b]``
advances by ``increment_value`` (mod ``max_seed``) in place, at the same
address. Two layouts say which rows belong to which request:

* GPU layout, ``cu_seqlens_q_output`` (int32 [B+1]): rows ``[cu[b], cu[b+1])``.
* encoder (XPU) layout, ``seq_lens_encoder`` (int32 [B]): ``seq_lens_this_time[b]``
  rows for a decoding request (``seq_lens_encoder[b] == 0``), 1 row for a
  prefill request, rows in request order.

Batch size (FastDeploy's calling convention): B = ``len(seq_lens_this_time)``.
``top_p``, ``top_k``, ``infer_seed`` (and ``seq_lens_encoder``) may have more
rows, ``cu_seqlens_q_output`` more than B + 1: FastDeploy sizes them to the
maximum batch. Only the first B (B + 1) rows are read, and only the first B
seeds advance; the rest are left untouched. Fewer rows raise ``OpInputError``.

Two kernels, one semantics, chosen with ``impl``:

* ``"custom"``: the C++ op (``graphcap/ops/csrc/build_sampling_params.cc``, CPU
  kernel, and ``.cu`` for CUDA on a CUDA build of Paddle).
* ``"paddle"``: the portable kernel (``graphcap/ops/portable.py``), a
  composition of standard Paddle ops, bit-identical, for XPU and custom
  devices (and anywhere else, e.g. to compare).
* ``"auto"`` (default): the custom kernel where it was built for the inputs'
  place (CPU; CUDA on a CUDA build), the portable one elsewhere; the choice is
  logged once per place kind at INFO on the ``graphcap.ops`` logger.

Four builders of the same rows live here:

* ``build_sampling_params`` (eager form) and ``build_sampling_params_into``
  (capture form, graph-safe), either kernel.
* ``build_sampling_params_reference``: numpy with Python ints, the ground truth.
* ``padding_sampling_params``: FastDeploy's legacy builder, operation for
  operation (``repeat_interleave`` with tensor repeats: a host sync, not
  capturable; its seed sum overflows near 2**63), kept as the benchmark
  baseline.

Padding rule of the op: rows past the real row count (up to the output's row
count) hold ``top_p 1.0, top_k 0, seed 0`` (``PAD_TOP_P`` / ``PAD_TOP_K`` /
``PAD_SEED``).
"""

from __future__ import annotations

import logging
import operator
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle

from graphcap.errors import OpBuildError, OpInputError
from graphcap.ops import portable
from graphcap.ops._loader import load_ops
from graphcap.trust.graph_safe_ops import register_graph_safe_op

__all__ = [
    "KUNLUN_MAX_INFER_SEED",
    "MAX_INFER_SEED",
    "PAD_SEED",
    "PAD_TOP_K",
    "PAD_TOP_P",
    "SAMPLING_PARAMS_IMPLS",
    "build_sampling_params",
    "build_sampling_params_into",
    "build_sampling_params_reference",
    "padding_sampling_params",
    "resolve_impl",
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

logger = logging.getLogger("graphcap.ops")

SAMPLING_PARAMS_IMPLS = ("auto", "custom", "paddle")
"""Values of ``impl``: ``auto`` picks per place, ``custom`` is the C++ op, ``paddle`` the portable kernel."""

# impl="auto": place kind -> chosen impl, decided (and logged) once per kind.
_AUTO_CHOICES: dict[str, str] = {}
_AUTO_LOCK = threading.Lock()


def _place_kind(tensor: Any) -> str:
    """``cpu``, ``gpu``, ``xpu`` or ``custom:<type>`` for ``tensor``'s place.

    Under ``paddle.jit.to_static`` a traced value has no place; the program
    runs on ``paddle.get_device()``, so that decides.
    """
    place = getattr(tensor, "place", None) if paddle.in_dynamic_mode() else None
    if place is None:
        device = paddle.get_device()
        kind = device.split(":", 1)[0]
        return kind if kind in ("cpu", "gpu", "xpu") else f"custom:{kind}"
    if place.is_cpu_place():
        return "cpu"
    if place.is_gpu_place():
        return "gpu"
    if place.is_xpu_place():
        return "xpu"
    if place.is_custom_place():
        return f"custom:{place.get_device_type()}"
    return str(place)


def _auto_choice(kind: str) -> tuple[str, str]:
    """(impl, why) for ``impl="auto"`` on place kind ``kind``."""
    if kind == "cpu":
        where = "the C++ op's CPU kernel"
    elif kind == "gpu" and paddle.is_compiled_with_cuda():
        where = "the C++ op's CUDA kernel (this Paddle is a CUDA build)"
    else:
        return "paddle", f"the C++ op has no {kind} kernel"
    try:
        load_ops()
    except OpBuildError as exc:
        logger.warning("build_sampling_params: the C++ op is unavailable (%s); using the portable kernel", exc)
        return "paddle", "the C++ op could not be built or loaded"
    return "custom", f"{where} is built"


def resolve_impl(impl: str, tensor: Any) -> str:
    """The kernel (``"custom"`` or ``"paddle"``) that ``impl`` means for inputs like ``tensor``.

    ``"auto"`` picks the custom kernel where it was built for the tensor's
    place (CPU; CUDA on a CUDA build of Paddle) and the portable one
    elsewhere (XPU, custom devices), logging the choice once per place kind
    at INFO. An unknown ``impl`` raises ``OpInputError``.
    """
    if impl not in SAMPLING_PARAMS_IMPLS:
        raise _InputError(f"impl must be one of {SAMPLING_PARAMS_IMPLS} (got {impl!r}); use 'auto' to pick per place")
    if impl != "auto":
        return impl
    kind = _place_kind(tensor)
    choice = _AUTO_CHOICES.get(kind)
    if choice is not None:
        return choice
    with _AUTO_LOCK:
        choice = _AUTO_CHOICES.get(kind)
        if choice is None:
            choice, why = _auto_choice(kind)
            _AUTO_CHOICES[kind] = choice
            label = "custom C++" if choice == "custom" else "portable Paddle-ops"
            logger.info("build_sampling_params: impl='auto' uses the %s kernel on %s (%s)", label, kind, why)
    return choice


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
    impl: str = "auto",
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Per-row sampling params for ``token_num_output`` rows (eager form); advances ``infer_seed`` in place.

    Inputs: ``seq_lens_this_time`` int32 [B] (B is the batch), ``top_p``
    float32, ``top_k`` int64 and ``infer_seed`` int64, each [>= B] (or
    [>= B, 1]; rows past B are ignored and left untouched), and exactly one
    of ``cu_seqlens_q_output`` int32 [>= B+1] (GPU layout) or
    ``seq_lens_encoder`` int32 [>= B] (encoder layout). Returns
    ``(top_p_padding, top_k_padding, topp_seed)``, each
    ``[token_num_output, 1]`` (float32, int64, int64); rows past the real
    count are padding (1.0, 0, 0). ``infer_seed`` keeps its ``data_ptr()``
    and its first B rows hold ``(seed + increment_value) mod max_seed`` after.
    ``impl``: ``"auto"`` (default), ``"custom"`` (C++ op) or ``"paddle"``
    (portable kernel), see the module docstring.

    Constraints: ``token_num_output`` is a host int and becomes the output
    shape, so inside a captured graph it would be frozen at its capture-time
    value; graphs use ``build_sampling_params_into`` instead. Bad dtypes,
    shapes or too few rows raise ``OpInputError`` naming the input; the C++
    CPU kernel also rejects bad values (decreasing ``cu``, negative lengths,
    more rows than ``token_num_output``), which the portable and CUDA kernels
    cannot check without a host read (they drop rows past the output).
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    if resolve_impl(impl, top_p) == "paddle":
        return portable.sampling_params(
            top_p=top_p, top_k=top_k, infer_seed=infer_seed, seq_lens_this_time=seq_lens_this_time,
            lengths=lengths, cu_layout=cu_layout,
            token_num_output=_host_int(token_num_output, "token_num_output"),
            increment_value=_host_int(increment_value, "increment_value"),
            max_seed=_host_int(max_seed, "max_seed"),
        )
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


# Graph-safe: the row count is read from cu_seqlens_q_output[B] / seq_lens_encoder
# on the device; it writes caller-owned static outputs, rows past the count are
# padding (1.0, 0, 0).
@paddle.jit.not_to_static
@register_graph_safe_op("build_sampling_params", inplace=("infer_seed", "out_top_p", "out_top_k", "out_seed"))
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
    impl: str = "auto",
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Capture form: write per-row params into caller-owned static outputs; graph-safe.

    Same inputs, row semantics and ``impl`` as ``build_sampling_params``. The outputs
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
    arguments. Raises ``OpInputError`` (naming the input) when an input
    has a wrong dtype or shape, and, with the C++ CPU kernel, when the real
    row count exceeds ``rows_capacity`` or a length is malformed (the CUDA
    and portable kernels drop rows past the capacity instead of raising).
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    if resolve_impl(impl, top_p) == "paddle":
        return portable.sampling_params_into(
            top_p=top_p, top_k=top_k, infer_seed=infer_seed, seq_lens_this_time=seq_lens_this_time,
            lengths=lengths, cu_layout=cu_layout,
            increment_value=_host_int(increment_value, "increment_value"),
            max_seed=_host_int(max_seed, "max_seed"),
            out_top_p=out_top_p, out_top_k=out_top_k, out_seed=out_seed,
        )
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


def _at_least(values: np.ndarray, name: str, batch: int, extra: int = 0) -> np.ndarray:
    """The first ``batch + extra`` rows of ``values``; fewer raise like the op (FastDeploy's convention)."""
    if values.shape[0] < batch + extra:
        need = f"B + 1 = {batch + 1}" if extra else f"B = {batch}"
        raise _InputError(
            f"{name} has {values.shape[0]} rows but seq_lens_this_time has B = {batch} requests; "
            f"pass at least {need} rows of {name} (rows past them are ignored)"
        )
    return values[: batch + extra]


def _rows_per_request(
    seq_lens_this_time: np.ndarray,
    cu_seqlens_q_output: np.ndarray | None,
    seq_lens_encoder: np.ndarray | None,
) -> np.ndarray:
    slt = np.asarray(seq_lens_this_time).reshape(-1).astype(np.int64)
    batch = slt.shape[0]
    if np.any(slt < 0):
        raise _InputError(f"seq_lens_this_time must be non-negative (got min {slt.min()})")
    if cu_seqlens_q_output is not None:
        cu = _at_least(np.asarray(cu_seqlens_q_output).reshape(-1).astype(np.int64), "cu_seqlens_q_output", batch, 1)
        if cu[0] != 0:
            raise _InputError(f"cu_seqlens_q_output[0] must be 0 (got {cu[0]})")
        rows = np.diff(cu)
        if np.any(rows < 0):
            raise _InputError("cu_seqlens_q_output must be non-decreasing")
        return rows
    enc = _at_least(np.asarray(seq_lens_encoder).reshape(-1).astype(np.int64), "seq_lens_encoder", batch)
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

    Same keywords as ``build_sampling_params`` with numpy arrays, and the same
    batch convention (B = ``len(seq_lens_this_time)``; longer per-request
    inputs are read for their first B rows). Returns ``(top_p_padding [N,1]
    float32, top_k_padding [N,1] int64, topp_seed [N,1] int64,
    new_infer_seed)`` with ``N = token_num_output``; ``new_infer_seed`` has
    ``infer_seed``'s rows, the first B advanced, the rest as given. Rows past
    the real count are padding (1.0, 0, 0). Inputs are not modified. Used for
    the capture form too: pass ``token_num_output = rows_capacity``.
    """
    cu_layout, _ = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    rows = _rows_per_request(seq_lens_this_time, cu_seqlens_q_output if cu_layout else None, seq_lens_encoder)
    batch = rows.shape[0]
    p = _at_least(np.asarray(top_p, dtype=np.float32).reshape(-1), "top_p", batch)
    k = _at_least(np.asarray(top_k, dtype=np.int64).reshape(-1), "top_k", batch)
    all_seeds = np.asarray(infer_seed, dtype=np.int64).reshape(-1)
    seeds = [int(s) for s in _at_least(all_seeds, "infer_seed", batch)]
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
    new_seed = all_seeds.copy()
    new_seed[:batch] = [(s + increment_value) % max_seed for s in seeds]
    return out_p, out_k, out_s, new_seed


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
    """FastDeploy's legacy builder, operation for operation: the benchmark baseline, NOT graph-safe.

    Mirrors ``padding_sampling_params`` of FastDeploy's
    ``fastdeploy/model_executor/layers/sample/sampler.py`` (the seeded
    version the ``build_sampling_params`` op replaced), the same Paddle ops in
    the same order: the repeats ``where`` (computed twice, as there), three
    ``repeat_interleave`` with tensor repeats for the params and seeds, a
    fourth for the request id of each row, ``cumsum``, two ``arange``, two
    ``gather``, the decode-row ``where`` and ``(seed + offset) % max_seed``
    written into the seed column. The output has exactly as many rows as the
    batch needs (a value-dependent shape, no padding rows), each of
    ``(top_p_padding, top_k_padding, topp_seed)`` is ``[rows, 1]``, and
    ``repeat_interleave`` syncs with the host, so it cannot be captured.

    Layouts: FastDeploy's builder takes ``seq_lens_encoder``; with
    ``cu_seqlens_q_output`` the repeats are ``cu[1:B+1] - cu[:B]`` instead of
    the ``where`` and every row is a decode row (no decode-row ``where``).

    As in FastDeploy, B = ``len(seq_lens_this_time)`` and longer inputs are
    sliced. Its seed sum ``seed + 4*j`` is not reduced first, so for seeds
    within ``4*j`` of 2**63 it overflows int64 and the row seed is wrong (the
    op's arithmetic is exact); elsewhere the rows equal the op's.

    Seeds: the builder itself never advanced ``infer_seed`` (FastDeploy's
    runner did, apart), so by default neither does this one;
    ``advance_seed=True`` adds that runner step, ``(seed + increment_value)
    % max_seed`` written in place (``paddle.assign(..., output=infer_seed)``,
    same address, first B rows), with the same overflow near 2**63.
    """
    cu_layout, lengths = _pick_layout(cu_seqlens_q_output, seq_lens_encoder)
    real_bsz = seq_lens_this_time.shape[0]

    def rows_per_request() -> paddle.Tensor:
        if cu_layout:
            return lengths[1 : real_bsz + 1] - lengths[:real_bsz]
        return paddle.where(lengths[:real_bsz] == 0, seq_lens_this_time, paddle.ones_like(seq_lens_this_time))

    repeats = rows_per_request()
    top_p_padding = paddle.repeat_interleave(top_p[:real_bsz], repeats).unsqueeze(1)
    top_k_padding = paddle.repeat_interleave(top_k[:real_bsz], repeats).unsqueeze(1)
    topp_seed = paddle.repeat_interleave(infer_seed[:real_bsz], repeats).unsqueeze(1)
    token_lens = rows_per_request()  # FastDeploy computes the repeats a second time
    batch_start = (paddle.cumsum(token_lens, axis=0, dtype="int64") - token_lens.astype("int64")).reshape([-1])
    token_batch_ids = paddle.repeat_interleave(paddle.arange(token_lens.shape[0], dtype="int64"), token_lens)
    token_pos = paddle.arange(topp_seed.shape[0], dtype="int64")
    local_pos = token_pos - paddle.gather(batch_start, token_batch_ids)
    if cu_layout:
        offsets = local_pos * 4
    else:
        is_decoder = paddle.gather(lengths[:real_bsz] == 0, token_batch_ids).reshape([-1])
        offsets = paddle.where(is_decoder, local_pos * 4, paddle.zeros_like(local_pos))
    topp_seed[:, 0] = (topp_seed[:, 0] + offsets) % max_seed
    if advance_seed:
        seeds = infer_seed.reshape([-1])
        advanced = (seeds[:real_bsz] + increment_value) % max_seed
        if seeds.shape[0] > real_bsz:
            advanced = paddle.concat([advanced, seeds[real_bsz:]])
        paddle.assign(advanced.reshape(infer_seed.shape), output=infer_seed)
    return top_p_padding, top_k_padding, topp_seed
