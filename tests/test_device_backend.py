"""The device backend's call protocol, against a test double of Paddle's CUDAGraph."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import CaptureRegistry, GraphConfig
from graphcap.backends.device import DeviceBackend


class FakeCUDAGraph:
    """Records calls in the order a device would see them; replay re-runs the captured closure."""

    def __init__(self, log: list, pool_id: object) -> None:
        self.log, self.pool_id, self.recording, self.closure = log, pool_id, False, None
        log.append(("new", pool_id))

    def capture_begin(self) -> None:
        assert not self.recording, "capture_begin twice"
        self.recording = True
        self.log.append(("begin", self.pool_id))

    def capture_end(self) -> None:
        assert self.recording, "capture_end without capture_begin"
        self.recording = False
        self.log.append(("end", self.pool_id))

    def replay(self) -> None:
        self.log.append(("replay", self.pool_id))

    def reset(self) -> None:
        self.log.append(("reset", self.pool_id))


def make_backend(log: list) -> DeviceBackend:
    pools = iter(range(100, 200))
    return DeviceBackend(graph_factory=lambda pool: FakeCUDAGraph(log, pool), new_pool_id=lambda: next(pools))


def test_one_shared_pool_largest_first_and_reset():
    log: list = []
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2, 4)),
                          backend=make_backend(log))
    runs: list[int] = []

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        runs.append(x.shape[0])
        return x + 1

    assert reg.capture_all({"t": {"x": paddle.ones([1, 3])}}) == 3
    news = [entry for entry in log if entry[0] == "new"]
    assert news == [("new", 100)] * 3  # every graph of the registry in one pool
    # Each bucket: 2 warmups run eagerly, then one run inside begin/end; largest first.
    assert runs == [4, 4, 4, 2, 2, 2, 1, 1, 1]
    # After each capture one replay checks the graph reproduces the warmup's outputs.
    assert [kind for kind, _ in log] == ["new", "begin", "end", "replay"] * 3
    out = fwd(x=paddle.ones([3, 3]))
    assert log[-1] == ("replay", 100)
    assert out.shape == [3, 3]
    reg.reset()
    assert [kind for kind, _ in log[-3:]] == ["reset"] * 3
    fwd(x=paddle.ones([1, 3]))
    assert ("new", 101) in log  # a fresh pool after reset


def test_an_exception_inside_capture_still_ends_capture_and_falls_back_to_eager():
    log: list = []
    backend = make_backend(log)
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2,), num_warmups=1),
                          backend=backend)
    calls = {"n": 0}

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        calls["n"] += 1
        if calls["n"] == 2:  # the run inside capture_begin/capture_end
            raise RuntimeError("cudaErrorStreamCaptureUnsupported (simulated)")
        return x * 3

    np.testing.assert_array_equal(fwd(x=paddle.ones([2, 1])).numpy(), 3.0)
    assert [kind for kind, _ in log] == ["new", "begin", "end", "reset"]
    assert reg.stats()["capture_failures"] == 1 and reg.stats()["eager_fallbacks"] == 1


def test_the_real_class_is_refused_on_the_cpu_build():
    from graphcap.backends import device_graphs_supported

    if device_graphs_supported():
        pytest.skip("a device is present; tests/device covers it")
    with pytest.raises((AssertionError, RuntimeError, AttributeError)):
        DeviceBackend().capture(lambda: None, "t[1]")
