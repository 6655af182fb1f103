"""CUDA / XPU graphs through Paddle's ``CUDAGraph`` class (the same class serves XPU builds).

Protocol, in the order a device needs it: the registry runs the eager warmups
first (so lazy allocations and autotuning happen outside capture); then
``capture_begin`` / run / ``capture_end`` in ``try/finally`` so an exception
never leaves a capture open; every graph of one registry shares one memory
pool (``pool_id``), and the registry captures the largest bucket first so the
smaller ones reuse its blocks. ``reset()`` releases every graph.

Nothing here runs on the CPU build of Paddle (constructing ``CUDAGraph``
raises there); the call protocol is tested with a test double and the real
hardware tests in ``tests/device/`` skip when ``is_cuda_graph_supported()`` is
False.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs


def _paddle_graph_factory(pool_id: Any) -> Any:
    from paddle.device.cuda.graphs import CUDAGraph

    return CUDAGraph(mode="thread_local", pool_id=pool_id)


def _paddle_new_pool_id() -> Any:
    from paddle.base import core

    return core.CUDAGraph.gen_new_memory_pool_id()


@attrs.define
class DeviceGraph:
    """One captured device graph."""

    graph: Any

    def replay(self) -> None:
        """Launch the captured kernels on the current buffer contents."""
        if self.graph is None:
            raise RuntimeError("this device graph was reset; the registry recaptures before replaying")
        self.graph.replay()

    def reset(self) -> None:
        """Release the graph's executable and its hold on the pool."""
        if self.graph is not None:
            self.graph.reset()
            self.graph = None

    def captured_tensors(self) -> None:
        """Unknown: a device graph records addresses, not tensors."""
        return None


class DeviceBackend:
    """Captures closures into CUDA / XPU graphs sharing one memory pool."""

    name = "device"
    capture_executes = False  # kernels are recorded during capture, run on replay

    def __init__(
        self,
        graph_factory: Callable[[Any], Any] = _paddle_graph_factory,
        new_pool_id: Callable[[], Any] = _paddle_new_pool_id,
    ) -> None:
        """``graph_factory(pool_id)`` builds a ``CUDAGraph``; tests pass a double."""
        self._graph_factory = graph_factory
        self._new_pool_id = new_pool_id
        self._pool_id: Any = None
        self._graphs: list[DeviceGraph] = []

    @property
    def pool_id(self) -> Any:
        """The memory pool shared by every graph of this backend (made on first capture)."""
        if self._pool_id is None:
            self._pool_id = self._new_pool_id()
        return self._pool_id

    def forms(self, fn: Callable[..., Any]) -> list[Callable[..., Any]]:
        """Python runs as written: ``fn`` itself."""
        return [fn]

    def capture(self, run: Callable[[], None], label: str, reachable: Any = None) -> DeviceGraph:
        """Record ``run`` into a new graph in the shared pool; capture always ends."""
        graph = self._graph_factory(self.pool_id)
        graph.capture_begin()
        completed = False
        try:
            run()
            completed = True
        finally:
            # A capture left open would poison every later launch on the stream,
            # so it ends whatever happened; a half-recorded graph is then released.
            graph.capture_end()
            if not completed:
                with contextlib.suppress(Exception):
                    graph.reset()
        captured = DeviceGraph(graph)
        self._graphs.append(captured)
        return captured

    def reset(self) -> None:
        """Reset every graph and forget the pool (the next capture makes a new one)."""
        for captured in self._graphs:
            captured.reset()
        self._graphs.clear()
        self._pool_id = None
