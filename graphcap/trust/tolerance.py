"""How two runs of a function are compared: bitwise, or within a bound scaled to the dtype and the values.

Two comparisons exist, and they ask different questions:

* **Same inputs, same shapes** (warmup against warmup, padding rows filled
  two ways, the captured graph against its warmup): on a deterministic
  backend (CPU kernels) the runs must agree *bit for bit*; any difference is a
  real one. Device kernels with atomics are not bitwise run to run, so there
  the bound below applies instead (``GraphConfig.run_comparison``).
* **Across row counts** (a padded bucket against the real rows alone, a
  replay against an eager call in production): a GEMM or reduction over
  another row count rounds differently, and a deep network amplifies that.
  Measured on a PaddleFormers Llama with 2-D weights x4-x16 (|logit| 10-40),
  float32: up to 2e-5 of the largest logit. So the bound is relative to the
  output's largest magnitude, never to each element (a logit near zero next to
  one of 40 differs by as much as the large one does).

The bound for an output with largest magnitude ``m`` (floored at 1, so outputs
near zero get an absolute bound) is ``RELATIVE[dtype] * max(1, m) * scale``:

========  ==========  =====================================================
dtype     RELATIVE    why
========  ==========  =====================================================
float64   1e-9        accumulation differences, far below any real error
float32   1e-4        5x the 2e-5 measured at |logit| 40 (about 840 ulps)
float16   1e-2        about 10 ulps at ``m`` (2^-10 spacing): fp32 accumulation
                      rounded once to fp16, differing in the last bits
bfloat16  6.25e-2     8 ulps at ``m`` (2^-7 spacing), the same reasoning
========  ==========  =====================================================

A real error is far larger: a padding row leaking into a mean moves a real row
by a share of its magnitude (0.04-0.49 on unit data), a stale scale by all of
it. ``scale`` is ``GraphConfig.tolerance_scale``. Integer and boolean outputs
(tokens, indices) are compared exactly where runs are bitwise and skipped
across row counts, where an argmax may flip on a near tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

__all__ = ["RELATIVE", "Difference", "as_float64", "bound", "compare", "first_mismatch"]

RELATIVE: dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 6.25e-2}
_FLOATING = frozenset(RELATIVE)


@attrs.frozen
class Difference:
    """Where two runs differ: the output's index and path, the largest difference and the bound it broke."""

    index: int
    path: str
    difference: float
    bound: float  # 0.0 when the comparison was bitwise

    def describe(self) -> str:
        """``path`` with its measured difference against the bound, in one phrase."""
        if self.bound == 0.0:
            return f"{self.path} (max difference {self.difference:.3g}, compared bitwise)"
        return f"{self.path} (max difference {self.difference:.3g} > tolerance {self.bound:.3g})"


def runs_are_bitwise(run_comparison: str, backend_name: str) -> bool:
    """Whether two runs on the same inputs must agree bit for bit: ``run_comparison``, with ``auto`` resolved.

    ``auto`` is bitwise on CPU kernels (deterministic) and the bound below on
    the device backend or a device place, whose kernels use atomics.
    """
    if run_comparison != "auto":
        return run_comparison == "bitwise"
    import paddle

    return backend_name != "device" and paddle.get_device().startswith("cpu")


def as_float64(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as float64; a bfloat16 tensor's host copy (uint16 bit patterns) is decoded first."""
    if dtype == "bfloat16" and values.dtype == np.uint16:
        return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(np.float64)


def bound(reference: np.ndarray, dtype: str, scale: float = 1.0) -> float:
    """The largest difference rounding explains for an output like ``reference`` (see the module table)."""
    finite = reference[np.isfinite(reference)]
    magnitude = float(np.abs(finite).max()) if finite.size else 0.0
    return RELATIVE[dtype] * max(1.0, magnitude) * scale


def compare(a: np.ndarray, b: np.ndarray, dtype: str, *, bitwise: bool, scale: float = 1.0) -> tuple[float, float] | None:
    """``None`` when ``a`` and ``b`` agree, else ``(max difference, bound)`` (bound 0.0 for bitwise).

    ``bitwise``: every bit must agree (shape and dtype too). Otherwise
    floating outputs must agree within ``bound`` of ``a`` (NaN where both are
    NaN, infinities where both are the same infinity) and other dtypes are not
    compared, only their shapes.
    """
    if a.shape != b.shape:
        return float("inf"), 0.0
    if bitwise:
        if a.dtype == b.dtype and a.tobytes() == b.tobytes():
            return None
        if dtype not in _FLOATING or a.size == 0:
            return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0)) or 1.0, 0.0
        x, y = as_float64(a, dtype), as_float64(b, dtype)
        return _largest(x, y) or float("nan"), 0.0  # a NaN payload or a -0.0 differs in bits only
    if dtype not in _FLOATING or a.size == 0:
        return None
    x, y = as_float64(a, dtype), as_float64(b, dtype)
    limit = bound(x, dtype, scale)
    largest = _largest(x, y)
    return None if largest <= limit else (largest, limit)


def _largest(x: np.ndarray, y: np.ndarray) -> float:
    """The largest |x - y|, with matching NaNs and matching infinities counting as equal."""
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    if same.all():
        return 0.0
    with np.errstate(invalid="ignore"):
        gaps = np.abs(x[~same] - y[~same])
    return float(np.nan_to_num(gaps, nan=np.inf).max())


def first_mismatch(
    first: Sequence[np.ndarray], other: Sequence[np.ndarray], dtypes: Sequence[str], paths: Sequence[str], *,
    bitwise: bool, scale: float = 1.0,
) -> Difference | None:
    """The first output on which two runs disagree (see ``compare``), or None."""
    for index, (a, b, dtype, path) in enumerate(zip(first, other, dtypes, paths)):
        found = compare(a, b, dtype, bitwise=bitwise, scale=scale)
        if found is not None:
            return Difference(index, path, *found)
    if len(first) != len(other):
        index = min(len(first), len(other))
        return Difference(index, paths[index] if index < len(paths) else f"output {index}", float("inf"), 0.0)
    return None
