"""Timing modes side by side: each round runs every mode once, in an order that alternates.

The machines graphcap is measured on are shared and noisy; two modes timed
one after the other see different machines. Rounds that alternate the order
(forward, then reversed) spread drift over every mode alike, and medians
over rounds discard a round that a neighbour disturbed. The demos use this.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from graphcap.errors import ConfigError

__all__ = ["TimedRun", "interleaved_runs", "median_seconds"]


@attrs.frozen
class TimedRun:
    """One run of one mode: its wall seconds and what it returned."""

    seconds: float
    result: Any


def interleaved_runs(run: Callable[[str], Any], modes: Sequence[str], rounds: int) -> dict[str, list[TimedRun]]:
    """Call ``run(mode)`` for every mode in each of ``rounds`` rounds; even rounds in order, odd rounds reversed.

    Returns each mode's runs in round order. ``rounds`` must be at least 1.
    """
    if rounds < 1:
        raise ConfigError(f"rounds={rounds} is not allowed; time at least 1 round")
    runs: dict[str, list[TimedRun]] = {mode: [] for mode in modes}
    for index in range(rounds):
        order = list(modes) if index % 2 == 0 else list(reversed(modes))
        for mode in order:
            started = time.perf_counter()
            result = run(mode)
            runs[mode].append(TimedRun(seconds=time.perf_counter() - started, result=result))
    return runs


def median_seconds(runs: Sequence[TimedRun]) -> float:
    """The median wall seconds of ``runs``."""
    return statistics.median(timed.seconds for timed in runs)
