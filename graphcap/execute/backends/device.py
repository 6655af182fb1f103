"""CUDA / XPU graphs through Paddle's ``CUDAGraph`` class (the same class serves XPU builds).

Protocol, in the order a device needs it:

1. the registry runs the eager warmups first, so lazy allocations and
   autotuning happen outside capture;
2. ``capture``: synchronize the device (nothing of the warmups may still be
   in flight), build the graph on the *current* place (``paddle.get_device()``,
   not ``FLAGS_selected_gpus``), ``capture_begin`` / run / ``capture_end``,
   synchronize again. ``capture_end`` always runs; if it raises, the error
   that ended the capture is the one reported (the original one, when the
   function itself failed) and the half-made graph is always released;
3. one memory pool per registry where the device supports it (CUDA:
   ``gen_new_memory_pool_id``), none on XPU (its graph class takes no pool);
   the registry captures the largest bucket first so smaller ones reuse its
   blocks;
4. ``reset()`` releases every graph and forgets the pool.

Static outputs may be shared across buckets on this backend
(``shares_outputs``): graphcap allocates each output once at the largest
bucket and every bucket writes a prefix of it.

Nothing here runs on the CPU build of Paddle (constructing ``CUDAGraph``
raises there). The protocol is tested on CPU with ``ReplayingGraph``
(``graphcap.execute.backends.device_double``), a test double with device semantics,
and the real hardware tests in ``tests/device/`` skip without a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from graphcap.errors import CaptureError, ConfigError

logger = logging.getLogger("graphcap")


def current_place() -> Any:
    """The place graphs are captured on: the current device as ``paddle.get_device()`` names it."""
    import paddle

    device = paddle.get_device()
    kind, _, index = device.partition(":")
    if kind == "gpu":
        return paddle.CUDAPlace(int(index or 0))
    if kind == "xpu":
        return paddle.XPUPlace(int(index or 0))
    raise ConfigError(
        f"the current device is {device!r}; device graphs need a GPU or XPU: paddle.set_device('gpu') or 'xpu', "
        f"or choose the static backend"
    )


def _paddle_graph_factory(place: Any, pool_id: Any) -> Any:
    from paddle.device.cuda.graphs import CUDAGraph

    return CUDAGraph(place=place, mode="thread_local", pool_id=pool_id)


def _paddle_new_pool_id(place: Any) -> Any:
    """A fresh shared memory pool on CUDA; None (no shared pool) on XPU, whose graphs take none."""
    import paddle
    from paddle.base import core

    if isinstance(place, paddle.XPUPlace):
        return None
    return core.CUDAGraph.gen_new_memory_pool_id()


def _paddle_synchronize() -> None:
    import paddle

    paddle.device.synchronize()


@attrs.define
class DeviceGraph:
    """One captured device graph."""

    graph: Any

    def replay(self) -> None:
        """Launch the captured kernels on the current buffer contents."""
        if self.graph is None:
            raise CaptureError("this device graph was reset; the registry recaptures before replaying, so a caller "
                               "replayed a graph it released")
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
    shares_outputs = True  # a view of a larger output is an address like any other

    def __init__(
        self,
        graph_factory: Callable[[Any, Any], Any] = _paddle_graph_factory,
        new_pool_id: Callable[[Any], Any] = _paddle_new_pool_id,
        synchronize: Callable[[], None] = _paddle_synchronize,
        place: Callable[[], Any] = current_place,
    ) -> None:
        """``graph_factory(place, pool_id)`` builds a ``CUDAGraph``; tests pass a double and its helpers."""
        self._graph_factory = graph_factory
        self._new_pool_id = new_pool_id
        self._synchronize = synchronize
        self._place = place
        self._pools: dict[str, Any] = {}
        self._graphs: list[DeviceGraph] = []

    def pool_id(self, place: Any) -> Any:
        """The memory pool shared by every graph of this backend on ``place`` (made on first capture)."""
        key = str(place)
        if key not in self._pools:
            self._pools[key] = self._new_pool_id(place)
        return self._pools[key]

    def forms(self, fn: Callable[..., Any], reachable: Any = None) -> list[Callable[..., Any]]:
        """Python runs as written: ``fn`` itself."""
        return [fn]

    def capture(self, run: Callable[[], None], label: str, reachable: Any = None) -> DeviceGraph:
        """Record ``run`` into a new graph on the current place, in the shared pool; capture always ends."""
        place = self._place()
        graph = self._graph_factory(place, self.pool_id(place))
        bind = getattr(graph, "bind_closure", None)
        if bind is not None:  # the CPU test double replays the closure itself; Paddle's class has no such method
            bind(run)
        # Nothing of the warmups may still run when recording starts.
        self._synchronize()
        graph.capture_begin()
        failure: BaseException | None = None
        try:
            run()
        except BaseException as exc:
            failure = exc
        finally:
            # A capture left open would poison every later launch on the stream, so it ends
            # whatever happened; an error from ending it never hides the one that came first.
            try:
                graph.capture_end()
            except BaseException as exc:
                if failure is None:
                    failure = exc
                else:
                    logger.debug("%s: capture_end also failed after the capture failed", label, exc_info=exc)
        if failure is not None:
            try:
                graph.reset()  # the half-made graph is always released
            except BaseException as exc:
                logger.debug("%s: releasing the half-made graph failed", label, exc_info=exc)
            raise failure
        self._synchronize()
        captured = DeviceGraph(graph)
        self._graphs.append(captured)
        return captured

    def reset(self) -> None:
        """Reset every graph and forget the pools (the next capture makes new ones)."""
        for captured in self._graphs:
            captured.reset()
        self._graphs.clear()
        self._pools.clear()
