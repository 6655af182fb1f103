"""The device backend's protocol, against ``ReplayingGraph``, a CPU test double with device semantics.

The double records graphcap's closure at capture and re-runs it at replay, so
results are compared with eager; every call it sees is logged with its pool.
"""

from __future__ import annotations

import itertools

import numpy as np
import paddle
import pytest

from graphcap import AddressStabilityError, CaptureRegistry, ConfigError, GraphConfig
from graphcap.execute.backends import device_graphs_supported
from graphcap.execute.backends.device import DeviceBackend
from graphcap.execute.backends.device_double import ReplayingGraph, double_backend


def registry(log: list, sizes=(1, 2, 4), **options) -> CaptureRegistry:
    config = GraphConfig(use_graph=True, capture_sizes=sizes, **options)
    return CaptureRegistry(config, backend=double_backend(log))


def kinds(log: list) -> list[str]:
    return [kind for kind, _ in log]


def test_one_shared_pool_largest_first_synchronized_and_reset():
    log: list = []
    reg = registry(log)
    runs: list[int] = []

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        runs.append(x.shape[0])
        return x + 1

    assert reg.capture_all({"t": {"x": paddle.ones([1, 3])}}) == 3
    assert [pool for kind, pool in log if kind == "new"] == [100] * 3  # every graph in one pool
    # Per bucket, largest first: 2 eager warmups, the row probe (one row less), the padding check
    # (the last row padded by rule, then poisoned), the run inside begin/end, the verifying
    # replay; bucket 1 has no smaller row count to probe and no row to pad.
    assert runs == [4, 4, 3, 4, 4, 4, 4, 2, 2, 1, 2, 2, 2, 2, 1, 1, 1, 1]
    # The device is synchronized before recording starts and after it ends.
    assert kinds(log) == ["new", "sync", "begin", "end", "sync", "replay"] * 3
    x = paddle.ones([3, 3])
    np.testing.assert_array_equal(fwd(x=x).numpy(), (x + 1).numpy())
    assert log[-1] == ("replay", 100)
    reg.reset()
    assert kinds(log)[-3:] == ["reset"] * 3
    fwd(x=paddle.ones([1, 3]))
    assert ("new", 101) in log  # a fresh pool after reset


def test_graphs_are_built_on_the_current_place():
    places: list = []
    backend = DeviceBackend(
        graph_factory=lambda place, pool: (places.append((place, pool)), ReplayingGraph([], place, pool))[1],
        new_pool_id=lambda place: f"pool@{place}", synchronize=lambda: None, place=lambda: "xpu:1",
    )
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(2,)), backend=backend)
    reg.graphed("t", batch_arg="x")(lambda x: x * 2)(x=paddle.ones([2]))
    assert places == [("xpu:1", "pool@xpu:1")]


def test_no_shared_pool_where_the_device_has_none():
    log: list = []
    backend = double_backend(log, pools=False)  # XPU: its graph class takes no pool
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(2, 4)), backend=backend)
    reg.graphed("t", batch_arg="x")(lambda x: x * 2).capture_all({"x": paddle.ones([2])})
    assert [pool for kind, pool in log if kind == "new"] == [None, None]


def test_outputs_are_shared_across_buckets():
    log: list = []
    reg = registry(log, sizes=(2, 4, 8))
    graphed = reg.graphed("t", batch_arg="x")(lambda x: (x * 2, x.sum()))
    for rows in (8, 3, 1):
        x = paddle.randn([rows, 16])
        doubled, total = graphed(x=x)
        np.testing.assert_array_equal(doubled.numpy(), (x * 2).numpy())
        np.testing.assert_allclose(total.numpy(), x.sum().numpy(), rtol=1e-6)
    entries = list(graphed._entries.values())
    assert len({entry.outputs[0].data_ptr() for entry in entries}) == 1  # one [8, 16] tensor, prefixes of it
    # Output memory is the largest bucket's rows plus one scalar per graph, not the sum over buckets.
    assert reg.stats()["output_bytes"] == 8 * 16 * 4 + 3 * 4


def test_static_backend_keeps_outputs_per_bucket():
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=(2, 4)))
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    for rows in (4, 2):
        graphed(x=paddle.ones([rows, 16]))
    assert reg.stats()["output_bytes"] == (4 + 2) * 16 * 4


def test_an_exception_inside_capture_still_ends_capture_and_falls_back_to_eager():
    log: list = []
    reg = registry(log, sizes=(2,), num_warmups=1)
    calls = itertools.count(1)

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        if next(calls) == 5:  # after the warmup, the row probe and the padding check: inside begin/end
            raise RuntimeError("cudaErrorStreamCaptureUnsupported (simulated)")
        return x * 3

    np.testing.assert_array_equal(fwd(x=paddle.ones([2, 1])).numpy(), 3.0)
    assert kinds(log) == ["new", "sync", "begin", "end", "reset"]  # ended, then the half-made graph released
    assert reg.stats()["capture_failures"] == 1 and reg.stats()["eager_fallbacks"] == 1
    assert "cudaErrorStreamCaptureUnsupported" in reg.stats()["fallbacks"][0]["reason"]


class FailingEnd(ReplayingGraph):
    def capture_end(self) -> None:
        super().capture_end()
        raise RuntimeError("capture_end: operation failed due to a previous error")


def failing_end_backend(log: list) -> DeviceBackend:
    return DeviceBackend(graph_factory=lambda place, pool: FailingEnd(log, place, pool),
                         new_pool_id=lambda place: 7, synchronize=lambda: None, place=lambda: "gpu:0")


def test_capture_end_never_hides_the_original_error():
    log: list = []
    backend = failing_end_backend(log)

    def run():
        raise ValueError("the real problem")

    with pytest.raises(ValueError, match="the real problem"):
        backend.capture(run, "t[2]")
    assert kinds(log) == ["new", "begin", "end", "reset"]


def test_a_failing_capture_end_alone_is_reported_and_released():
    log: list = []
    with pytest.raises(RuntimeError, match="capture_end"):
        failing_end_backend(log).capture(lambda: None, "t[2]")
    assert kinds(log) == ["new", "begin", "end", "reset"]


def test_rebinding_fails_on_the_device_backend_too():
    log: list = []
    reg = registry(log, sizes=(4,))
    layer = paddle.nn.Linear(3, 3)
    graphed = reg.graphed("t", batch_arg="x")(lambda x: layer(x))
    x = paddle.randn([4, 3])
    np.testing.assert_array_equal(graphed(x=x).numpy(), layer(x).numpy())
    layer.weight = paddle.create_parameter([3, 3], "float32")
    with pytest.raises(AddressStabilityError, match=r"layer\.weight"):
        graphed(x=x)


def test_auto_needs_a_present_device_and_the_real_class_is_refused_here():
    if device_graphs_supported():
        pytest.skip("a device is present; tests/device covers it")
    assert GraphConfig(use_graph=True).resolved_backend() == "static"
    with pytest.raises(ConfigError, match=r"the current device is 'cpu'; device graphs need a GPU or XPU"):
        DeviceBackend().capture(lambda: None, "t[1]")
