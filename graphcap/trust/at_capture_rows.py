"""At capture: padding rows never change a real row, and outputs are cut back along the rows.

The runner runs the function several times while capturing (the warmups, a
run with fewer rows, a run with poisoned padding rows, the captured graph's own
run) and records each (``RunRecord``). This module decides what the runs must
show, and compares them (``graphcap.trust.tolerance`` says how):

* ``compare_runs``: two runs on the same inputs must agree (bitwise on CPU),
  else the function keeps state of its own;
* ``row_outputs``: a run with fewer rows tells which outputs follow the rows
  (cut to the real rows on replay) and which do not, and, when it ran the real
  rows of a padded call, whether the padded run agrees with them within the
  rounding another row count explains;
* ``padding_leak``: the same bucket run with its padding rows filled two ways
  (the padding rule, and ``poison_rows``) must leave every real row the same.
  This is the question that decides whether padding is safe, and it is asked
  on every capture, full or padded: a full capture treats its last row as
  padding. Rows that differ mean the rows interact (``x - x.mean(0)``,
  a batch-dependent model): a padded replay would be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.decide import pytree
from graphcap.errors import CaptureSafetyError
from graphcap.failures import CaptureFailed
from graphcap.trust import tolerance
from graphcap.trust.at_capture_purity import first_difference, host_copies, same_constant

__all__ = ["RunRecord", "compare_runs", "padding_leak", "poison_rows", "row_interaction", "row_outputs"]


@attrs.frozen
class RunRecord:
    """What one run of the function left: host copies of its tensor outputs (with shapes and dtypes),
    its non-tensor results, its result's structure and the declared state (restorable buffers)."""

    values: list[Any]
    specs: list[tuple[list[int], Any]]
    dtypes: list[str]
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
            dtypes=[str(leaf.dtype).rsplit(".", 1)[-1] for leaf in leaves],
            constants=pytree.output_constants(result),
            state=host_copies(state),
            structure=pytree.output_structure(result),
        )


def compare_runs(
    label: str, tree: pytree.OutputTree, first: RunRecord, other: RunRecord, what: str, state_names: Sequence[str],
    *, bitwise: bool = True, scale: float = 1.0,
) -> None:
    """Two runs on the same inputs must agree: outputs (bitwise, or within the tolerance where kernels are not
    bitwise run to run), structure, constants and the declared state they leave (always bitwise); else
    ``CaptureSafetyError`` (the function keeps state of its own)."""
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
    changed = tolerance.first_mismatch(first.values, other.values, first.dtypes, tree.paths, bitwise=bitwise,
                                       scale=scale)
    if changed is not None:
        raise CaptureSafetyError(
            f"{label}: {changed.describe()} of warmup 1 and {what} differ on the same inputs, "
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
    tree: pytree.OutputTree, bucket: int, full: RunRecord, probe: tuple[int, RunRecord] | None, real_rows: int,
    scale: float = 1.0,
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
    for path, (shape, _), (small_shape, _), value, small_value, dtype in zip(
        tree.paths, full.specs, small.specs, full.values, small.values, full.dtypes
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
        # output must agree, within the rounding another row count explains. One row less
        # than a full bucket is another batch, and an output may rightly depend on every
        # row (x + x.sum()), so there only shapes are compared.
        if probe_rows == real_rows:
            found = tolerance.compare(value, small_value, dtype, bitwise=False, scale=scale)
            if found is not None:
                difference, limit = found
                raise CaptureFailed(
                    f"{path} differs between the padded batch of {bucket} rows and {probe_rows} rows of the same "
                    f"inputs by {difference:.3g}, beyond the {limit:.3g} that rounding over another row count "
                    f"explains: padding changes the result. An argument taken as batched (first dimension = "
                    f"rows) may not be per-row: name it in static_args; or padding rows need another value: "
                    f"padding={{...}}"
                )
    return tuple(sliced)


def poison_rows(real: paddle.Tensor, count: int) -> paddle.Tensor:
    """``count`` padding rows unlike the padding rule's zeros: the real rows repeated (plus 1 if floating).

    Repeated real rows are valid inputs (token ids and indices stay in range);
    the +1 keeps them apart from zero padding even when the real rows are zero.
    """
    index = paddle.to_tensor(np.arange(count, dtype=np.int64) % real.shape[0])
    rows = paddle.gather(real, index)
    return rows + 1 if rows.dtype in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64) else rows


def padding_leak(
    tree: pytree.OutputTree, sliced: Sequence[bool], by_rule: RunRecord, poisoned: RunRecord, real_rows: int,
    *, bitwise: bool, scale: float = 1.0,
) -> tolerance.Difference | None:
    """The first output whose real rows (all of it, for an output that does not follow the rows) differ
    between a run with padding rows by the rule and one with poisoned padding rows, or None."""
    def real(record: RunRecord) -> list[np.ndarray]:
        return [value[:real_rows] if cut else value for value, cut in zip(record.values, sliced)]

    return tolerance.first_mismatch(real(by_rule), real(poisoned), by_rule.dtypes, tree.paths, bitwise=bitwise,
                                    scale=scale)


def row_interaction(difference: tolerance.Difference, bucket: int, real_rows: int) -> str:
    """The reason a bucket's padded calls cannot replay: its rows interact."""
    return (
        f"rows interact: {difference.describe()} of the {real_rows} real rows changed when the "
        f"{bucket - real_rows} padding rows of bucket {bucket} held other values, so a padded replay would "
        f"differ from the call on its rows alone (a reduction over the batch, a batch-dependent model); "
        f"padded calls of this graph run eagerly. If an argument taken as batched (first dimension = rows) "
        f"is not per-row, name it in static_args"
    )
