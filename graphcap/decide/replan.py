"""Online re-planning, the deciding half: which capture sizes the observed traffic wants now.

``CaptureRegistry.replan`` executes it (exchanges the histograms between
ranks, adopts the sizes, releases graphs). Traffic is a histogram per graphed
function (rows -> steps, ``PaddingStats.rows_seen``). Each re-plan folds the
steps seen since the last one into a history whose older counts are halved
first, so a step counts 1 in the window it ran in, 1/2 in the next, 1/4 in the
one after: recent traffic weighs most, and an old shape fades within a few
re-plans instead of pinning buckets forever.

Hysteresis: a new plan is adopted only when it pads at least ``min_gain`` (a
fraction) fewer rows than the current sizes on the same weighted traffic. A
stable workload whose sizes are already optimal then never recaptures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from graphcap.decide.buckets import BucketMap
from graphcap.decide.size_planner import plan_capture_sizes_from_counts
from graphcap.errors import ConfigError

__all__ = ["ReplanDecision", "decide_sizes", "fold_traffic", "graphs_in_budget", "padded_rows"]


def fold_traffic(history: Mapping[int, int], recent: Mapping[int, int]) -> dict[int, int]:
    """The history after one more window: every older count halved (integer), the window's steps added."""
    folded = {rows: count // 2 for rows, count in history.items() if count // 2}
    for rows, count in recent.items():
        folded[rows] = folded.get(rows, 0) + count
    return folded


def padded_rows(counts: Mapping[int, int], sizes: Sequence[int]) -> int:
    """Rows of padding that ``sizes`` add to the steps in ``counts`` (steps above the largest size pad none)."""
    buckets = BucketMap(sizes)
    return sum(steps * (buckets.bucket(rows) - rows) for rows, steps in counts.items()  # type: ignore[operator]
               if 0 < rows <= buckets.largest)


@attrs.frozen
class ReplanDecision:
    """One function's re-plan: the sizes it keeps or adopts, and the padding of both plans on its traffic."""

    sizes: tuple[int, ...]
    adopted: bool
    padded_before: int  # current sizes, on the weighted traffic
    padded_after: int  # the sizes returned, on the same traffic


def decide_sizes(counts: Mapping[int, int], current: Sequence[int], *, max_graphs: int, multiple_of: int,
                 min_gain: float) -> ReplanDecision:
    """The exact plan for ``counts`` within ``max_graphs``, keeping ``current``'s largest size (always).

    Kept as it is when the traffic has no step a graph serves, or when the
    plan pads less than ``min_gain`` of the current padding fewer rows
    (unless ``current`` has more sizes than ``max_graphs`` allows).
    """
    current = tuple(sorted(current))
    largest = current[-1]
    before = padded_rows(counts, current)
    served = {rows: steps for rows, steps in counts.items() if 0 < rows <= largest and steps}
    if not served:
        return ReplanDecision(current, False, before, before)
    # The largest size stays even when it is not a multiple of multiple_of (the buffers were
    # allocated at it): plan one graph fewer up to the largest multiple below it, then add it.
    aligned = largest % multiple_of == 0
    below = {rows: steps for rows, steps in served.items() if rows <= largest // multiple_of * multiple_of}
    if aligned:
        planned = plan_capture_sizes_from_counts(served, max_graphs, multiple_of=multiple_of, max_size=largest)
    elif max_graphs > 1 and below:
        # Steps above the last multiple go to the largest size; the rest get the other graphs.
        planned = (*plan_capture_sizes_from_counts(below, max_graphs - 1, multiple_of=multiple_of), largest)
    else:
        planned = (largest,)
    after = padded_rows(counts, planned)
    over_budget = len(current) > max_graphs  # more graphs than allowed now: the plan is taken whatever it gains
    if planned == current or (not over_budget and (after > before * (1.0 - min_gain) or before == after)):
        return ReplanDecision(current, False, before, before)
    return ReplanDecision(planned, True, before, after)


def graphs_in_budget(memory_budget: int | float, bytes_per_graph: int, functions: int) -> int:
    """Graphs per function that ``memory_budget`` bytes hold, at ``bytes_per_graph`` each, shared evenly.

    Raises ``ConfigError`` when the budget holds less than one graph per function.
    """
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or memory_budget <= 0:
        raise ConfigError(f"memory_budget={memory_budget!r} must be a positive number of bytes")
    per_function = int(memory_budget // max(bytes_per_graph, 1)) // max(functions, 1)
    if per_function < 1:
        raise ConfigError(
            f"memory_budget={memory_budget!r} bytes holds less than one graph per function: a graph holds about "
            f"{bytes_per_graph} bytes of outputs and {functions} functions replan; pass at least "
            f"{bytes_per_graph * functions} bytes"
        )
    return per_function
