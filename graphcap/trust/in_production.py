"""In production: every N-th replay of a graph is checked against an eager run of the same call (shadow check).

The checks at capture and at replay cover what graphcap can see: tensors,
addresses, Python values on the paths it walked. A graph can still go wrong
through what it cannot see (a value read from a NumPy array with ``float()``
and changed in place, a kernel that misbehaves only under capture). With
``GraphConfig(shadow_check_interval=N)`` every N-th replay of each graph also
runs the function eagerly on the same call and compares the two with the
tolerance of another row count (``graphcap.trust.tolerance``: the replay ran
the padded bucket, the eager run the real rows). On a mismatch the call
returns the eager result and the graph is disabled; the caller records it.

Ordering: the declared state (``infer_seed``) is snapshotted before the
replay and put back before the eager run, so both runs start from the same
state and the step advances it once; after the eager run the state is the
eager run's, which the comparison checks equals the replay's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from graphcap.decide import pytree
from graphcap.trust import tolerance
from graphcap.trust.at_capture_purity import first_difference, host_copies

__all__ = ["ShadowResult", "compare_with_eager", "is_due"]


def is_due(interval: int, replays: int) -> bool:
    """True when the ``replays``-th replay of a graph (counted from 1) is a shadow-checked one."""
    return interval > 0 and replays % interval == 0


@attrs.frozen
class ShadowResult:
    """A mismatch found by a shadow check: what differs, by how much, against which bound."""

    path: str
    difference: float
    bound: float

    def reason(self) -> str:
        """The fallback reason recorded for the disabled graph."""
        measured = (f"max difference {self.difference:.3g} > tolerance {self.bound:.3g}" if self.bound
                    else "differs")
        return (f"shadow check: the replay's {self.path} differs from an eager run of the same call "
                f"({measured}); the graph is disabled and its calls run eagerly")


def compare_with_eager(
    replayed: Sequence[np.ndarray], dtypes: Sequence[str], paths: Sequence[str], eager_result: Any,
    state_after_replay: Sequence[np.ndarray], state_after_eager: Sequence[np.ndarray], state_names: Sequence[str],
    *, scale: float,
) -> ShadowResult | None:
    """Compare a replay's outputs (host copies, cut to the real rows) with the eager result of the same call."""
    eager = host_copies(pytree.output_leaves(eager_result))
    found = tolerance.first_mismatch(replayed, eager, dtypes, paths, bitwise=False, scale=scale)
    if found is not None:
        return ShadowResult(found.path, found.difference, found.bound)
    written = first_difference(state_after_replay, state_after_eager)
    if written is not None:
        return ShadowResult(f"write into registry buffer {state_names[written]!r}", 0.0, 0.0)
    return None
