"""The pure-function check at capture: a graph is right only for a function of its inputs.

A graph replays what one run did. If the function keeps state of its own (a
Python-held tensor it replaces each call, as PaddleFormers' ``DynamicCache``
does; a counter passed as an argument and advanced in place; a value read on
the host inside ``allow_host_reads``), the graph freezes one run's state and
every replay is silently wrong. At capture graphcap runs the function at
least twice on the same staged inputs, with the declared state (restorable
registry buffers) put back before each run, and compares bitwise:

* the outputs of every warmup and of the captured graph's own run;
* each static tensor argument before and after the warmups (registry
  buffers are declared state and are exempt);
* each staged batched input before and after: a function that writes into
  its batched input writes into graphcap's staging copy, and the caller
  never sees it.

These helpers copy tensors to the host and find the first difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle

__all__ = ["first_difference", "host_copies", "same_constant"]


def host_copies(tensors: Sequence[paddle.Tensor]) -> list[np.ndarray]:
    """A host copy of each tensor (taken now; later writes to the tensor do not reach it)."""
    return [np.array(tensor.numpy(), copy=True) for tensor in tensors]


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def first_difference(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> int | None:
    """Index of the first pair that differs in any bit (shape and dtype included), or None."""
    for index, (a, b) in enumerate(zip(before, after)):
        if not _bitwise_equal(a, b):
            return index
    return None


def same_constant(a: object, b: object) -> bool:
    """True when two non-tensor results are the same object or compare equal."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False
