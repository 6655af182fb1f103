"""Multi-rank agreement: every rank of a group takes the same graph decision in the same step.

A graph that contains a collective (a TP all-reduce, an EP all-to-all) must be
replayed by every rank of the group in the same step with the same shapes,
and captured in lockstep: a capture runs the function several times (warmups,
the capture, its verification), a replay once, an eager call once on other
shapes. So before staging, the ranks agree, with one small all-reduce (MAX)
of an int64 vector, on:

* the row count: the largest over the ranks. Every rank pads its own rows to
  the bucket of that count (a rank with no rows replays padding rows only);
  above the largest bucket every rank runs eagerly.
* the state of each bucket for the key each rank would use there:
  ``READY`` (0) replay, ``MISSING`` (1) capture, ``EAGER`` (2) run eagerly
  (its capture failed, or graphs are off for that function). The maximum
  wins: one rank missing a graph makes every rank capture (a rank that had
  it captures again), one rank's failed capture makes every rank eager.

Capture outcomes are agreed too (``agree_failed``), so a bucket that failed
anywhere is marked failed everywhere and the next step's vectors agree.

``registry.step(rows=n)`` agrees once for every graphed call inside it; the
states in its vector come from each function's last key (its prediction).
A call whose actual key differs from the prediction runs its bucket eagerly
on the padded inputs (one execution with the agreed shapes, as a replay
would be) and is captured at the next agreement.

A world of one rank exchanges nothing and costs nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.errors import ConfigError
from graphcap.stats import RegistryStats

__all__ = ["EAGER", "MISSING", "READY", "RankAgreement", "StepAgreement"]

READY, MISSING, EAGER = 0, 1, 2


class RankAgreement:
    """One all-reduce (MAX) of an int64 vector over ``group``; counted in ``stats["collectives"]``."""

    def __init__(self, group: Any, stats: RegistryStats) -> None:
        """``group`` is a ``paddle.distributed`` group, or None for the default (world) group."""
        import paddle.distributed as dist

        # paddle.distributed.launch with one rank sets up no parallel environment at all:
        # a world of one, which needs no agreement.
        launched_alone = os.environ.get("PADDLE_TRAINERS_NUM") == "1"
        if not dist.is_initialized() and not launched_alone:
            raise ConfigError(
                "sync_ranks=True needs an initialized parallel environment: call "
                "paddle.distributed.init_parallel_env() in every rank (started with python -m "
                "paddle.distributed.launch) before building the CaptureRegistry, or set sync_ranks=False"
            )
        self._dist = dist
        self.group = group
        self.world_size = 1 if launched_alone else group.nranks if group is not None else dist.get_world_size()
        self.stats = stats
        self._tensors: dict[int, paddle.Tensor] = {}

    def exchange(self, vector: Sequence[int]) -> list[int]:
        """The element-wise maximum of ``vector`` over every rank of the group (no collective for one rank)."""
        if self.world_size == 1:
            return list(vector)
        # One tensor per vector length, reused: a collective on a tensor it has seen
        # before skips registering new memory (about a third of its cost on gloo).
        # It lives where collectives run: CPU on CPU builds, the current GPU/XPU otherwise.
        tensor = self._tensors.get(len(vector))
        if tensor is None:
            tensor = self._tensors[len(vector)] = paddle.zeros([len(vector)], dtype="int64")
        tensor.set_value(np.asarray(vector, dtype=np.int64))
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.MAX, group=self.group)
        self.stats.count("collectives")
        return tensor.numpy().tolist()

    def agree_failed(self, failed: bool) -> bool:
        """True when the capture just attempted failed on any rank."""
        return bool(self.exchange([int(failed)])[0])


@attrs.frozen
class StepAgreement:
    """What the ranks agreed for one step: the largest rows, whether any rank is busy, bucket states."""

    rows: int
    busy: bool
    states: dict[str, list[int]]  # graph name -> state per bucket (graphcap.decide.agreement)
    rows_per_request: int

    def rows_for(self, graphed_fn: Any) -> int:
        """The agreed rows in ``graphed_fn``'s own rows per request."""
        return math.ceil(self.rows * graphed_fn.rows_per_request / self.rows_per_request)
