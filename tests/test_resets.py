"""Reset + recapture on the static backend releases what Paddle builds per traced program.

Before the fix, each traced program left its executor (a PIR interpreter and
about five host threads) in Paddle's process-wide cache: 15 reset + recapture
cycles of a two-Linear Layer over three buckets took a process from 7 to 157
threads. The soak here is ``benchmarks/bench_resets.py``'s Layer workload
(each cycle reloads the weights, resets, recaptures three buckets and checks
the replay bitwise against the Layer's own forward).
"""

from __future__ import annotations

import gc
import importlib
import sys
import traceback
from pathlib import Path

import numpy as np
import paddle

from graphcap import CaptureRegistry, GraphConfig
from graphcap.execute.backends.static import EXECUTORS

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_resets():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module("bench_resets")
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_fifteen_resets_add_at_most_four_threads_and_64_mib():
    result = _bench_resets().layer_workload(15)
    assert result["captures"] == 3 * 16  # the warm-up cycle and 15 more, three buckets each
    assert result["threads_added"] <= 4, result["trail"]
    assert result["rss_added_mib"] <= 64, result["trail"]


def test_a_live_graph_replays_right_after_another_registry_resets():
    paddle.seed(3)
    weight = paddle.randn([8, 8])
    live = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=(4,)))
    other = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=(4,)))

    @live.graphed("live", batch_arg="x")
    def live_step(x):
        return paddle.matmul(x, weight) + 1.0

    @other.graphed("other", batch_arg="x")
    def other_step(x):
        return paddle.matmul(x, weight) * 2.0

    x = paddle.randn([3, 8])
    before = live_step(x).numpy().copy()
    other_step(x)
    clears = EXECUTORS.clears
    other.reset()  # drops other's program: Paddle's executor cache is cleared, live's executor with it
    assert EXECUTORS.clears == clears + 1
    other.reset()  # nothing dropped this time: no clear
    assert EXECUTORS.clears == clears + 1
    after = live_step(x)  # live rebuilds its executor on this run, over the same tensors
    np.testing.assert_array_equal(after.numpy(), before)
    np.testing.assert_array_equal(after.numpy(), (paddle.matmul(x, weight) + 1.0).numpy())
    assert live.stats()["replays"] >= 1 and live.stats()["captures"] == 1


def _live_stack_summaries() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is traceback.StackSummary)


def test_recaptures_do_not_keep_a_python_stack_per_traced_op():
    # Paddle 3.3.1 records every op a PIR trace builds with traceback.extract_stack()
    # and never releases it (one StackSummary of ~50 frames per op, ~20 MiB per
    # reset of a two-layer Llama). Here a Layer of four ops is recaptured five
    # times: without the shared stack that is 20+ StackSummary objects left alive.
    paddle.seed(5)
    model = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 8))
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=(4,)))

    @reg.graphed("stacks", batch_arg="x")
    def step(x):
        return model(x)

    x = paddle.randn([4, 8])
    step(x)
    original = traceback.extract_stack
    before = _live_stack_summaries()
    for _ in range(5):
        reg.reset()
        got = step(x)
    assert reg.stats()["captures"] == 6
    np.testing.assert_array_equal(got.numpy(), model(x).numpy())
    assert _live_stack_summaries() - before <= 2
    assert traceback.extract_stack is original  # restored after each capture
    assert traceback.extract_stack()[-1].name == "test_recaptures_do_not_keep_a_python_stack_per_traced_op"
