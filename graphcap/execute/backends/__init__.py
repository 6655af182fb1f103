"""Backends: one small interface over three ways of turning a step into a graph.

A backend's ``capture(run, label)`` takes a zero-argument callable that reads
the static input buffers and writes the static output buffers (closures
only: no arguments, no return value that matters) and returns a ``Graph``
whose ``replay()`` repeats that work on whatever the buffers hold then.
``reset()`` releases everything the backend captured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from graphcap.errors import ConfigError


class Graph(Protocol):
    """A replayable capture of one bucket."""

    def replay(self) -> None:
        """Run the captured work again on the current buffer contents."""

    def reset(self) -> None:
        """Release the capture; the graph must not be replayed afterwards."""

    def captured_tensors(self) -> list[Any] | None:
        """The tensors the graph reads, where the backend knows them (``static``), else None."""


class Backend(Protocol):
    """Turns a closure over static buffers into a ``Graph``."""

    name: str
    # True when capture() itself runs the closure once (its outputs are then written).
    capture_executes: bool
    # True when a graph may write its outputs into a prefix view of a larger tensor, so a
    # function's buckets share one set of outputs (allocated at the largest bucket).
    shares_outputs: bool

    def forms(self, fn: Callable[..., Any], reachable: Any = None) -> list[Any]:
        """The forms of ``fn`` a capture may call, to try in order (``[fn]`` but for ``static``).

        A form may be a ``Refused`` marker (``graphcap.execute.backends.static``) carrying the
        reason the backend will not trace ``fn`` that way.
        """

    def capture(self, run: Callable[[], None], label: str, reachable: Any = None) -> Graph:
        """Capture ``run`` (which may execute once while doing so) and return its graph.

        ``reachable`` (a ``graphcap.trust.reachable.Reachable``) tells the backend
        what the function reaches; the static backend uses it to keep
        dy2static away from library helpers it cannot convert.
        """

    def reset(self) -> None:
        """Release every graph this backend captured and any shared memory pool."""


def device_graphs_supported() -> bool:
    """True where Paddle was built with CUDA (or XPU) graph support *and* a device is present.

    ``is_cuda_graph_supported()`` reads compile flags only: a CUDA build on a
    machine without a GPU says True, so the device count is checked too.
    """
    try:
        import paddle
        from paddle.device.cuda.graphs import is_cuda_graph_supported
    except ImportError:
        return False
    try:
        if not is_cuda_graph_supported():
            return False
        if paddle.is_compiled_with_cuda():
            return paddle.device.cuda.device_count() > 0
        if paddle.is_compiled_with_xpu():
            return paddle.device.xpu.device_count() > 0
        return False
    except Exception:
        return False


def make_backend(name: str) -> Backend:
    """The backend called ``name`` (``eager``, ``static`` or ``device``)."""
    if name == "eager":
        from graphcap.execute.backends.eager import EagerBackend

        return EagerBackend()
    if name == "static":
        from graphcap.execute.backends.static import StaticBackend

        return StaticBackend()
    if name == "device":
        from graphcap.execute.backends.device import DeviceBackend

        return DeviceBackend()
    raise ConfigError(f"'backend' must be one of eager, static, device (got {name!r})")
