"""What a capture must reproduce: runs of the function compared with each other.

The runner runs the function several times while capturing (the warmups, a
run with fewer rows, the captured graph's own run) and records each
(``RunRecord``). This module compares the records:

* ``compare_runs``: two runs on the same inputs must agree bit for bit (else
  the function keeps state of its own);
* ``row_outputs``: a run with fewer rows tells which outputs follow the rows
  (cut to the real rows on replay) and which do not, and, when it ran the
  real rows of a padded call, whether the padding changed any result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap import pytree
from graphcap.errors import CaptureSafetyError
from graphcap.failures import CaptureFailed
from graphcap.trust.at_capture_purity import first_difference, host_copies, same_constant

__all__ = ["RunRecord", "close", "compare_runs", "row_outputs"]


@attrs.frozen
class RunRecord:
    """What one run of the function left: host copies of its tensor outputs (with shapes and dtypes),
    its non-tensor results, its result's structure and the declared state (restorable buffers)."""

    values: list[Any]
    specs: list[tuple[list[int], Any]]
    constants: tuple[tuple[str, Any], ...]
    state: list[Any]  # the restorable registry buffers after the run
    structure: Any

    @classmethod
    def of(cls, result: Any, state: Sequence[paddle.Tensor]) -> RunRecord:
        """Copy ``result``'s tensors and the declared state the run left to the host, before the next run."""
        leaves = pytree.output_leaves(result)
        return cls(
            values=host_copies(leaves),
            specs=[(list(leaf.shape), leaf.dtype) for leaf in leaves],
            constants=pytree.output_constants(result),
            state=host_copies(state),
            structure=pytree.output_structure(result),
        )


def compare_runs(
    label: str, tree: pytree.OutputTree, first: RunRecord, other: RunRecord, what: str, state_names: Sequence[str]
) -> None:
    """Two runs on the same inputs must agree bitwise: outputs, structure, constants and the declared state
    they leave; else ``CaptureSafetyError`` (the function keeps state of its own)."""
    if first.structure != other.structure:
        raise CaptureSafetyError(
            f"{label}: warmup 1 and {what} return results of different structure on the same inputs, "
            f"so the function keeps state of its own (a list it appends to?); a graph returns one structure"
        )
    written = first_difference(first.state, other.state)
    if written is not None:
        raise CaptureSafetyError(
            f"{label}: warmup 1 and {what} leave registry buffer {state_names[written]!r} different "
            f"from the same starting state, so the function's writes depend on something it keeps itself; "
            f"random numbers must be seeded from an argument or a registry buffer"
        )
    changed = first_difference(first.values, other.values)
    if changed is not None:
        raise CaptureSafetyError(
            f"{label}: {tree.paths[changed]} of warmup 1 and {what} differ on the same inputs, "
            f"so the function keeps state of its own and a graph would freeze one call's value; a tensor "
            f"the function replaces or advances between calls (a Python-held cache, a counter) must live in "
            f"a registry buffer declared restorable, or be passed in as an argument; random numbers must be "
            f"seeded from an argument or a registry buffer"
        )
    for (path, a), (_, b) in zip(first.constants, other.constants):
        if not same_constant(a, b):
            raise CaptureSafetyError(
                f"{label}: the non-tensor result {path} was {a!r} in warmup 1 and {b!r} in {what}; "
                f"a graph would return the first value forever; return it as a tensor or compute it outside"
            )


def row_outputs(
    tree: pytree.OutputTree, bucket: int, full: RunRecord, probe: tuple[int, RunRecord] | None, real_rows: int
) -> tuple[bool, ...]:
    """Which outputs are cut to the call's rows on replay: those whose first dimension follows the rows.

    ``full`` is a run on the bucket; ``probe`` a run with fewer rows (the real
    rows of a padded call, or one less than a full bucket), or None. Raises
    ``CaptureFailed`` for a result that no cut along the first dimension can
    serve, or (when the probe ran the real rows) one the padding changes.
    """
    if probe is None:
        return tuple(bool(shape) and shape[0] == bucket for shape, _ in full.specs)
    probe_rows, small = probe
    if small.structure != full.structure:
        raise CaptureFailed(
            f"the result's structure differs between {probe_rows} and {bucket} rows; graphcap rebuilds one "
            f"structure per graph"
        )
    for (path, a), (_, b) in zip(full.constants, small.constants):
        if not same_constant(a, b):
            raise CaptureFailed(
                f"{path} is {b!r} for {probe_rows} rows and {a!r} for {bucket}: a non-tensor result that "
                f"depends on the batch size would be frozen at the bucket's value; return it as a tensor"
            )
    sliced = []
    for path, (shape, _), (small_shape, _), value, small_value in zip(
        tree.paths, full.specs, small.specs, full.values, small.values
    ):
        if shape == small_shape:
            sliced.append(False)
        elif shape and small_shape and shape[0] == bucket and small_shape[0] == probe_rows \
                and shape[1:] == small_shape[1:]:
            sliced.append(True)
            value = value[:probe_rows]
        else:
            raise CaptureFailed(
                f"{path} has shape {small_shape} for {probe_rows} rows and {shape} for {bucket}: its rows are "
                f"not its first dimension, and graphcap cuts outputs to the real rows along the first; "
                f"return it with the rows first"
            )
        # Only a probe with the real rows (a padded call) is the call itself: then every
        # output must agree. One row less than a full bucket is another batch, and an output
        # may rightly depend on every row (x + x.sum()), so there only shapes are compared.
        if probe_rows == real_rows and not close(value, small_value):
            raise CaptureFailed(
                f"{path} differs between the padded batch of {bucket} rows and {probe_rows} rows of the same "
                f"inputs, beyond rounding: padding changes the result. An argument taken as batched (first "
                f"dimension = rows) may not be per-row: name it in static_args; or padding rows need another "
                f"value: padding={{...}}"
            )
    return tuple(sliced)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Floating outputs agree up to the rounding a different row count causes (Paddle's reductions
    round by tensor size); other dtypes are not compared (a token argmax may flip on a near-tie)."""
    if a.shape != b.shape or not np.issubdtype(a.dtype, np.floating) or a.size == 0:
        return a.shape == b.shape
    loose = a.dtype.itemsize <= 2  # float16 / bfloat16
    return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-2 if loose else 1e-4,
                            atol=2e-2 if loose else 1e-5, equal_nan=True))
