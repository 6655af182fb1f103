"""The portable ``build_sampling_params``: the C++ op's semantics from standard Paddle ops.

For places the custom kernel was not built for (XPU, custom devices), and
selectable everywhere with ``impl="paddle"``. Bit-identical to the C++ op on
well-formed inputs: same rows, same padding (1.0, 0, 0), same seeds, same
in-place advance of the first B rows of ``infer_seed``.

Graph-safe by construction:

* Static shapes only. Every shape comes from the inputs' shapes (B rows of
  ``seq_lens_this_time``, the capacity N of the outputs), never from values.
  The request that owns output row ``r`` is the number of requests whose last
  row ends at or before ``r``: a scatter-add of ones at each request's end
  offset and a cumulative sum over the N rows (no ``repeat_interleave`` with
  tensor repeats, no ``nonzero``, no mask indexing).
* No host reads: the real row count stays on the device; rows past it are
  padding, rows past the capacity are dropped (as the CUDA kernel does; the
  C++ CPU kernel raises instead). Values are not checked (that would be a
  host read); malformed lengths give unspecified rows but never an
  out-of-bounds write.
* In-place writes with ``paddle.assign(value, output=tensor)`` at the same
  shape: ``Tensor.add_()``-style methods are dropped inside
  ``paddle.jit.to_static``, and ``assign`` with another shape would
  reallocate a static buffer.

Exact int64 modular arithmetic, without ``remainder`` (Kunlun's modulo is
int32-only) and without overflow near 2**63: ``(a + b) mod m`` for a, b in
[0, m) is ``where(a >= m - b, a - (m - b), a + b)``; reducing an arbitrary
int64 seed into [0, m) subtracts ``m << k`` for k from the largest that fits
down to 0 (1 step for ``MAX_INFER_SEED``, 33 for the Kunlun modulus: about 100
small ops on [B], once per call). Every operand of that arithmetic is an int64
tensor: Python ints near 2**63 in tensor ops are rounded through float inside
``paddle.jit.to_static`` (and ``full_like`` rounds through float32 there), so
large constants are built from exact pieces (``hi * 2**32 + lo`` with
``paddle.full``) and, in eager mode, cached per place and value.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import paddle

from graphcap.errors import OpInputError

__all__ = ["sampling_params", "sampling_params_into"]

_INT64_MAX = (1 << 63) - 1
_EXACT_FULL = 1 << 53  # paddle.full keeps int64 values below this exactly (float64 attribute)

# Eager-mode constants (int64 [1] values, padding rows, row indices), keyed by
# place and value/size: built on first use with device fill kernels (no
# host-to-device copy, so also safe during a capture), never written, reused.
# Inside to_static they are ops of the program instead. Least recently used
# entries go first, so eager calls with ever-new row counts stay bounded.
_CACHE: OrderedDict[tuple[Any, ...], paddle.Tensor] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


# ---------------------------------------------------------------- checks
# Static metadata only (dtype, shape); the messages match the C++ op's.


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("paddle.", "").lower()


def _check_dtype(t: Any, name: str, want: str) -> None:
    if _dtype_name(t.dtype) != want:
        raise OpInputError(
            f"{name} must be {want} (got {_dtype_name(t.dtype)}); cast it before calling build_sampling_params"
        )


def _num_rows(t: Any, name: str) -> int:
    shape = list(t.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        trailing = f" with trailing dim {shape[1]}" if len(shape) == 2 else ""
        raise OpInputError(f"{name} must have shape [n] or [n, 1] (got rank {len(shape)}{trailing})")
    if shape[0] < 0:
        raise OpInputError(
            f"{name} has a dynamic first dimension; the portable kernel needs static shapes "
            "(trace with concrete tensors, not an InputSpec with -1)"
        )
    return int(shape[0])


def _check_at_least(t: Any, name: str, batch: int, extra: int) -> None:
    got = _num_rows(t, name)
    if got < batch + extra:
        need = f"B + 1 = {batch + 1}" if extra else f"B = {batch}"
        raise OpInputError(
            f"{name} has {got} rows but seq_lens_this_time has B = {batch} requests; "
            f"pass at least {need} rows of {name} (rows past them are ignored)"
        )


def _check(
    top_p: Any, top_k: Any, infer_seed: Any, seq_lens_this_time: Any, lengths: Any, cu_layout: bool,
    out_top_p: Any, out_top_k: Any, out_seed: Any, max_seed: int,
) -> tuple[int, int]:
    """Dtype and shape checks, in the C++ op's order; returns ``(B, capacity)``."""
    lengths_name = "cu_seqlens_q_output" if cu_layout else "seq_lens_encoder"
    for t, name, want in (
        (top_p, "top_p", "float32"), (top_k, "top_k", "int64"), (infer_seed, "infer_seed", "int64"),
        (seq_lens_this_time, "seq_lens_this_time", "int32"), (lengths, lengths_name, "int32"),
    ):
        _check_dtype(t, name, want)
    batch = _num_rows(seq_lens_this_time, "seq_lens_this_time")
    for t, name in ((top_p, "top_p"), (top_k, "top_k"), (infer_seed, "infer_seed")):
        _check_at_least(t, name, batch, 0)
    _check_at_least(lengths, lengths_name, batch, 1 if cu_layout else 0)
    if max_seed <= 0:
        raise OpInputError(f"max_seed must be positive (got {max_seed})")
    for t, name, want in (
        (out_top_p, "out_top_p", "float32"), (out_top_k, "out_top_k", "int64"), (out_seed, "out_seed", "int64"),
    ):
        _check_dtype(t, name, want)
    capacity = _num_rows(out_top_p, "out_top_p")
    for t, name in ((out_top_k, "out_top_k"), (out_seed, "out_seed")):
        got = _num_rows(t, name)
        if got != capacity:
            raise OpInputError(
                f"{name} must have {capacity} rows (rows_capacity, like out_top_p), got {got}"
            )
    if paddle.in_dynamic_mode():  # a traced value has no place; the program has one
        for t, name in (
            (top_k, "top_k"), (infer_seed, "infer_seed"), (seq_lens_this_time, "seq_lens_this_time"),
            (lengths, lengths_name), (out_top_p, "out_top_p"), (out_top_k, "out_top_k"), (out_seed, "out_seed"),
        ):
            if t.place != top_p.place:
                raise OpInputError(
                    f"{name} is on {t.place} but top_p is on {top_p.place}; move all inputs to one device"
                )
    return batch, capacity


# ------------------------------------------------------------- constants


def _exact_full(value: int) -> paddle.Tensor:
    """int64 [1] holding ``value`` exactly, from ``paddle.full`` pieces below 2**53."""
    if -_EXACT_FULL < value < _EXACT_FULL:
        return paddle.full([1], value, dtype="int64")
    if value < 0:
        raise OpInputError(f"only non-negative large constants are built here (got {value}); this is a graphcap bug")
    high, low = divmod(value, 1 << 32)  # high < 2**31: high * 2**32 fits int64
    return (
        paddle.full([1], high, dtype="int64") * paddle.full([1], 1 << 32, dtype="int64")
        + paddle.full([1], low, dtype="int64")
    )


def _cached(key: tuple[Any, ...], make: Callable[[], paddle.Tensor]) -> paddle.Tensor:
    """``make()`` once per key in eager mode (LRU-bounded); every time under to_static (an op of the program)."""
    if not paddle.in_dynamic_mode():
        return make()
    with _CACHE_LOCK:
        tensor = _CACHE.get(key)
        if tensor is not None:
            _CACHE.move_to_end(key)
            return tensor
    tensor = make()
    with _CACHE_LOCK:
        _CACHE[key] = tensor
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return tensor


def _const(value: int, place: Any) -> paddle.Tensor:
    """int64 [1] constant ``value``, exact for every int64."""
    return _cached(("const", str(place), value), lambda: _exact_full(value))


def _filled(rows: int, value: float | int, dtype: str, place: Any) -> paddle.Tensor:
    """``[rows]`` of the small constant ``value`` (padding, zeros); read-only."""
    return _cached(("fill", str(place), rows, value, dtype), lambda: paddle.full([rows], value, dtype=dtype))


def _row_index(rows: int, place: Any) -> paddle.Tensor:
    """``arange(rows)`` as int64; read-only."""
    return _cached(("arange", str(place), rows), lambda: paddle.arange(rows, dtype="int64"))


def _ladder_values(max_seed: int) -> list[int]:
    """``[m << K, ..., m << 1, m]`` with K the largest shift that fits int64 (so ``m << K >= 2**62``)."""
    shift = 0
    while (max_seed << (shift + 1)) <= _INT64_MAX:
        shift += 1
    return [max_seed << k for k in range(shift, -1, -1)]


def _ladder(max_seed: int, place: Any) -> list[paddle.Tensor]:
    """The ladder as int64 [1] tensors: cached per place in eager mode; in-program, ``m`` then doublings."""
    values = _ladder_values(max_seed)
    if paddle.in_dynamic_mode():
        return [_const(value, place) for value in values]
    steps = [_exact_full(max_seed)]
    for _ in values[1:]:
        steps.append(steps[-1] + steps[-1])  # exact: every m << k fits int64
    return steps[::-1]


@contextlib.contextmanager
def _on_place(place: Any) -> Iterator[None]:
    # Eager temporaries (paddle.full / zeros / arange) go to the inputs' place,
    # not to paddle.get_device(); under to_static the program's place rules.
    guard = getattr(paddle.base.framework, "_dygraph_place_guard", None)
    if place is None or guard is None or not paddle.in_dynamic_mode():
        yield
        return
    with guard(place):
        yield


# ------------------------------------------------------ modular arithmetic


def _reduce_mod(x: paddle.Tensor, ladder: list[paddle.Tensor], *, non_negative: bool = False) -> paddle.Tensor:
    """``x mod m`` in [0, m) for any int64 ``x`` (the C++ ``ReduceMod``), by compare and subtract."""
    top = ladder[0]
    if not non_negative:
        # x in [-2**63, 0): two additions of top (>= 2**62) land in [0, top) without overflow.
        zero = top - top
        x = paddle.where(x < zero, x + top, x)
        x = paddle.where(x < zero, x + top, x)
    for step in ladder:  # x < 2 * step before each step, x < step after it
        x = paddle.where(x >= step, x - step, x)
    return x


def _add_mod(a: paddle.Tensor, b: paddle.Tensor, modulus: paddle.Tensor) -> paddle.Tensor:
    """``(a + b) mod m`` for a, b in [0, m), never forming an overflowing ``a + b`` (the C++ ``AddMod``)."""
    gap = modulus - b
    return paddle.where(a >= gap, a - gap, a + b)


# ------------------------------------------------------------------ kernel


def sampling_params_into(
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    lengths: paddle.Tensor,
    cu_layout: bool,
    increment_value: int,
    max_seed: int,
    out_top_p: paddle.Tensor,
    out_top_k: paddle.Tensor,
    out_seed: paddle.Tensor,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Capture form of the op from Paddle ops: write rows into the static outputs, advance ``infer_seed``.

    ``lengths`` is ``cu_seqlens_q_output`` (``cu_layout=True``, int32, at
    least B + 1 rows) or ``seq_lens_encoder`` (int32, at least B rows), with
    B = ``len(seq_lens_this_time)``; ``top_p`` / ``top_k`` / ``infer_seed``
    have at least B rows and only the first B are read (and advanced). The
    outputs (``[N]`` or ``[N, 1]``, float32 / int64 / int64) are written in
    place; rows from the real row count to N are padding (1.0, 0, 0).
    ``increment_value`` and ``max_seed`` are host ints. Returns the three
    outputs: eagerly the output tensors themselves, inside to_static the
    written values (later ops must read these, not the arguments).

    Raises ``OpInputError`` for a wrong dtype or shape; values are not
    checked (no host reads).
    """
    batch, capacity = _check(
        top_p, top_k, infer_seed, seq_lens_this_time, lengths, cu_layout, out_top_p, out_top_k, out_seed, max_seed
    )
    place = top_p.place if paddle.in_dynamic_mode() else None
    with _on_place(place):
        return _kernel(
            top_p, top_k, infer_seed, seq_lens_this_time, lengths, cu_layout, increment_value, max_seed,
            out_top_p, out_top_k, out_seed, batch, capacity, place,
        )


def sampling_params(
    *,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    infer_seed: paddle.Tensor,
    seq_lens_this_time: paddle.Tensor,
    lengths: paddle.Tensor,
    cu_layout: bool,
    token_num_output: int,
    increment_value: int,
    max_seed: int,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Eager form from Paddle ops: ``token_num_output`` new rows ``[N, 1]`` each; advances ``infer_seed``.

    Same inputs as ``sampling_params_into``. Rows the batch needs past
    ``token_num_output`` are dropped (no host read can tell; the C++ CPU
    kernel raises instead).
    """
    if token_num_output < 0:
        raise OpInputError(f"token_num_output must be non-negative (got {token_num_output})")
    with _on_place(top_p.place if paddle.in_dynamic_mode() else None):
        outputs = (
            paddle.empty([token_num_output, 1], dtype="float32"),
            paddle.empty([token_num_output, 1], dtype="int64"),
            paddle.empty([token_num_output, 1], dtype="int64"),
        )
    return sampling_params_into(
        top_p=top_p, top_k=top_k, infer_seed=infer_seed, seq_lens_this_time=seq_lens_this_time,
        lengths=lengths, cu_layout=cu_layout, increment_value=increment_value, max_seed=max_seed,
        out_top_p=outputs[0], out_top_k=outputs[1], out_seed=outputs[2],
    )


def _kernel(
    top_p: paddle.Tensor, top_k: paddle.Tensor, infer_seed: paddle.Tensor, seq_lens_this_time: paddle.Tensor,
    lengths: paddle.Tensor, cu_layout: bool, increment_value: int, max_seed: int,
    out_top_p: paddle.Tensor, out_top_k: paddle.Tensor, out_seed: paddle.Tensor,
    batch: int, capacity: int, place: Any,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    # Constants: the modulus, its ladder, the reduced increment and its gap.
    ladder = _ladder(max_seed, place)
    modulus = ladder[-1]
    increment = increment_value % max_seed  # Python ints: exact
    seed_rows = infer_seed.shape[0]

    pad_top_p = _filled(capacity, 1.0, "float32", place)
    pad_int = _filled(capacity, 0, "int64", place)
    if batch == 0:
        # No request: every row is padding and no seed moves.
        return _write_outputs((pad_top_p, pad_int, pad_int), (out_top_p, out_top_k, out_seed), capacity)

    # Per-request inputs: the first B rows (FastDeploy passes max-batch tensors).
    p = top_p.reshape([-1])[:batch]
    k = top_k.reshape([-1])[:batch]
    # Under to_static, read infer_seed through a copy: the program refuses the
    # in-place write below into a tensor it also reads through views.
    seeds = (infer_seed if paddle.in_dynamic_mode() else paddle.assign(infer_seed)).reshape([-1])
    base = _reduce_mod(seeds[:batch], ladder)  # the C++ ReduceMod(seed[b], m)

    # Row layout: ends[b] = one past request b's last row (non-decreasing).
    lens = lengths.reshape([-1])
    if cu_layout:
        first = lens[:1].astype("int64")
        starts = lens[:batch].astype("int64")
        ends = lens[1 : batch + 1].astype("int64")
    else:
        decode_rows = paddle.clip(seq_lens_this_time.reshape([-1]), min=0)  # negative counts as 0, as in CUDA
        rows = paddle.where(lens[:batch] > 0, _filled(batch, 1, "int32", place), decode_rows).astype("int64")
        ends = paddle.cumsum(rows)
        starts = ends - rows

    if capacity > 0:
        # Owner of row r = #requests ending at or before r: scatter-add a one at
        # each end (clamped into [0, N]; slot N collects the rest) and cumsum.
        zero = _const(0, place)
        cap = _const(capacity, place)
        slots = paddle.minimum(paddle.maximum(ends, zero), cap)
        marks = paddle.scatter(_filled(capacity + 1, 0, "int64", place), slots, _filled(batch, 1, "int64", place),
                               overwrite=False)
        owner = paddle.cumsum(marks[:capacity])
        row = _row_index(capacity, place)
        total = ends[batch - 1 :]
        valid = row < total
        if cu_layout:  # the CUDA kernel treats rows before cu[0] as padding too
            valid = paddle.logical_and(valid, row >= first)
        owner = paddle.minimum(owner, _const(batch - 1, place))
        offset = row - paddle.gather(starts, owner)  # j: the row's index within its request

        # Seed of row j: (base + 4j) mod m; 4j built as two exact doublings.
        if 4 * (capacity - 1) < max_seed:
            double = offset + offset
            step = double + double
        else:
            step = _reduce_mod(offset, ladder, non_negative=True)
            step = _add_mod(step, step, modulus)
            step = _add_mod(step, step, modulus)
        row_seed = _add_mod(paddle.gather(base, owner), step, modulus)

        values = (
            paddle.where(valid, paddle.gather(p, owner), pad_top_p),
            paddle.where(valid, paddle.gather(k, owner), pad_int),
            paddle.where(valid, row_seed, pad_int),
        )
        outputs = _write_outputs(values, (out_top_p, out_top_k, out_seed), capacity)
    else:
        outputs = (out_top_p, out_top_k, out_seed)

    # Advance the first B seeds (the rows above read them first); rows past B keep their values.
    new_seed = _add_mod(base, _const(increment, place), modulus)
    if seed_rows > batch:
        new_seed = paddle.concat([new_seed, seeds[batch:]])
    paddle.assign(new_seed.reshape(infer_seed.shape), output=infer_seed)
    return outputs


def _write_outputs(
    values: tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor],
    outputs: tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor],
    capacity: int,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Write ``values`` into ``outputs`` in place; returns what later ops should read.

    Eagerly that is the outputs themselves (same addresses). Under to_static
    it is the values: a program that returns the result of
    ``paddle.assign(x, output=t)`` hands back a new tensor and leaves ``t``
    unwritten after its first run (measured, Paddle 3.3), while an assign
    whose result is not returned writes ``t`` on every run.
    """
    if capacity == 0:
        return outputs
    shaped = tuple(value.reshape(out.shape) for value, out in zip(values, outputs, strict=True))
    for value, out in zip(shaped, outputs, strict=True):
        paddle.assign(value, output=out)
    if paddle.in_dynamic_mode():
        return outputs
    return shaped[0], shaped[1], shaped[2]


# ------------------------------------------------------------ seeded uniform

_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
_SPLITMIX_MUL2 = 0x94D049BB133111EB


def _u64_const(value: int, place: Any) -> paddle.Tensor:
    """int64 [1] with the bits of the unsigned 64-bit ``value`` (two's complement), exact."""
    if value < (1 << 63):
        return _const(value, place)
    magnitude = (1 << 64) - value  # the signed value is -magnitude, 0 < magnitude <= 2**63 - 1 here
    return _cached(("u64", str(place), value), lambda: paddle.full([1], 0, dtype="int64") - _exact_full(magnitude))


def _shift_right(x: paddle.Tensor, bits: int) -> paddle.Tensor:
    """Logical right shift of int64 bits (the sign bit shifts in as 0)."""
    return paddle.bitwise_right_shift(x, paddle.full([1], bits, dtype="int64"), is_arithmetic=False)


def seeded_uniform(seed: paddle.Tensor) -> paddle.Tensor:
    """splitmix64(seed), top 24 bits, as float32 in [0, 1): bit-identical to the C++ ``seeded_uniform``.

    Standard Paddle ops only: int64 additions and multiplications wrap modulo
    2^64 like the C++ ``uint64_t`` ones, shifts are logical, and the large
    constants are built exactly (never as Python ints near 2^63, which
    to_static rounds). ``seed`` int64 [R] or [R, 1] -> float32 [R].
    """
    place = seed.place if paddle.in_dynamic_mode() else None
    with _on_place(place):
        z = seed.reshape([-1]) + _u64_const(_SPLITMIX_GAMMA, place)
        z = paddle.bitwise_xor(z, _shift_right(z, 30)) * _u64_const(_SPLITMIX_MUL1, place)
        z = paddle.bitwise_xor(z, _shift_right(z, 27)) * _u64_const(_SPLITMIX_MUL2, place)
        z = paddle.bitwise_xor(z, _shift_right(z, 31))
        top = _shift_right(z, 40).astype("float32")
        return top * paddle.full([1], 1.0 / 16777216.0, dtype="float32")
