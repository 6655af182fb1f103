"""A CPU test double of Paddle's ``CUDAGraph`` with device semantics, for the ``device`` backend's protocol.

``ReplayingGraph`` records the closure it is bound to at capture (graphcap's
closure, which holds the very tensors the graph was captured over: the
static buffers, the static leaves, the static outputs) and replays by running
it again against those recorded tensors, not against whatever the Python
names point to later. Every call (new, begin, end, replay, reset, and the
backend's synchronizations) is appended to a log with the graph's place and
pool, so tests can check the protocol: one shared pool, largest bucket
first, capture always ended, half-made graphs released, a device
synchronization before and after each capture.

``double_backend(log)`` is a ``DeviceBackend`` wired to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphcap.execute.backends.device import DeviceBackend

__all__ = ["ReplayingGraph", "double_backend"]


class ReplayingGraph:
    """Records a closure at capture, re-runs it at replay; logs every call."""

    def __init__(self, log: list[tuple[str, Any]], place: Any, pool_id: Any) -> None:
        """A new graph on ``place`` in ``pool_id`` (logged as ``("new", pool_id)``)."""
        self.log, self.place, self.pool_id = log, place, pool_id
        self.recording = False
        self.closure: Callable[[], None] | None = None
        log.append(("new", pool_id))

    def bind_closure(self, run: Callable[[], None]) -> None:
        """What a device records as kernels: the closure, with the tensors it holds."""
        self.closure = run

    def capture_begin(self) -> None:
        """Start recording."""
        assert not self.recording, "capture_begin twice"
        self.recording = True
        self.log.append(("begin", self.pool_id))

    def capture_end(self) -> None:
        """Stop recording (always called, even when the captured run failed)."""
        assert self.recording, "capture_end without capture_begin"
        self.recording = False
        self.log.append(("end", self.pool_id))

    def replay(self) -> None:
        """Run the recorded closure again on the tensors it was bound to."""
        assert self.closure is not None, "replay of a graph that was reset or never captured"
        self.log.append(("replay", self.pool_id))
        self.closure()

    def reset(self) -> None:
        """Release the recording."""
        self.closure = None
        self.log.append(("reset", self.pool_id))


def double_backend(log: list[tuple[str, Any]], *, place: str = "gpu:0", pools: bool = True) -> DeviceBackend:
    """A ``DeviceBackend`` over ``ReplayingGraph``; ``pools=False`` behaves like XPU (no shared pool)."""
    counter = iter(range(100, 10_000))
    return DeviceBackend(
        graph_factory=lambda graph_place, pool_id: ReplayingGraph(log, graph_place, pool_id),
        new_pool_id=lambda graph_place: next(counter) if pools else None,
        synchronize=lambda: log.append(("sync", None)),
        place=lambda: place,
    )
