"""Online re-planning: ``CaptureRegistry.replan`` follows the traffic a registry saw, with hysteresis.

Every replay is compared bitwise with the function called directly on the
same rows (CPU eager backend: same kernels, same row count after slicing the
Layer's output, so the maths is the same).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import CaptureError, CaptureRegistry, ConfigError, GraphConfig
from graphcap.decide.replan import decide_sizes, fold_traffic, padded_rows
from graphcap.decide.size_planner import plan_capture_sizes

SIZES = (1, 2, 4, 8, 16)


class TwoHeads(paddle.nn.Layer):
    """A Layer with parameters returning a tuple, as user models do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = paddle.nn.Linear(8, 8)
        self.head = paddle.nn.Linear(8, 3)

    def forward(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        hidden = paddle.tanh(self.proj(x))
        return hidden, self.head(hidden)


def _setup(**config):
    paddle.seed(0)
    model = TwoHeads()
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=SIZES, **config))

    @reg.graphed("heads", batch_arg="x")
    def step(x):
        return model(x)

    return reg, model, step, paddle.randn([16, 8])


def _run(step, model, inputs, trace):
    for rows in trace:
        got = step(inputs[:rows])
        want = model(inputs[:rows])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_replan_adopts_the_exact_plan_of_the_traffic_and_replays_right_at_every_rows():
    reg, model, step, inputs = _setup()
    trace = [3, 3, 5, 5, 5, 7, 12, 12, 3, 5]
    _run(step, model, inputs, trace)
    assert step.graphs == 3  # buckets 4 (3 rows), 8 (5 and 7) and 16 (12)
    sizes = reg.replan(max_graphs=3)["heads"]
    assert sizes == plan_capture_sizes(trace, 3, max_size=16) == (5, 12, 16)
    assert step.buckets.sizes == sizes
    assert step.graphs == 1  # only the graph at 16 was kept: 4 and 8 are no longer planned
    assert reg.stats()["replans"] == 1
    _run(step, model, inputs, range(1, 17))  # every rows-to-bucket pair under the new sizes
    assert step.graphs == 3
    # Padded rows of this traffic (3 x3, 5 x4, 7, 12 x2) before and after, by hand.
    assert padded_rows({3: 3, 5: 4, 7: 1, 12: 2}, SIZES) == 3 * 1 + 4 * 3 + 1 + 2 * 4
    assert padded_rows({3: 3, 5: 4, 7: 1, 12: 2}, sizes) == 3 * 2 + 5


def test_a_stable_workload_never_recaptures():
    reg, model, step, inputs = _setup()
    trace = [3, 5, 5, 12] * 4
    _run(step, model, inputs, trace)
    first = reg.replan(max_graphs=3, min_gain=0.1)["heads"]
    _run(step, model, inputs, trace)
    captures = reg.stats()["captures"]
    for _ in range(5):
        assert reg.replan(max_graphs=3, min_gain=0.1)["heads"] == first
        _run(step, model, inputs, trace)
    assert reg.stats()["captures"] == captures and reg.stats()["replans"] == 1


def test_recent_traffic_wins_and_an_old_shape_fades():
    reg, model, step, inputs = _setup()
    _run(step, model, inputs, [2] * 40)
    assert reg.replan(max_graphs=2)["heads"] == (2, 16)
    for _ in range(4):  # the traffic moved to 9 rows; the 2-row history halves each re-plan
        _run(step, model, inputs, [9] * 20)
        sizes = reg.replan(max_graphs=2)["heads"]
    assert sizes == (9, 16)


def test_hysteresis_keeps_sizes_whose_gain_is_too_small():
    counts = {3: 10, 4: 1}  # at (8, 16): 10 * 5 + 4 = 54 padded rows; the optimum (4, 16) pads 10, 81% fewer
    kept = decide_sizes(counts, (8, 16), max_graphs=2, multiple_of=1, min_gain=0.9)
    assert (kept.sizes, kept.adopted, kept.padded_before, kept.padded_after) == ((8, 16), False, 54, 54)
    taken = decide_sizes(counts, (8, 16), max_graphs=2, multiple_of=1, min_gain=0.5)
    assert (taken.sizes, taken.adopted, taken.padded_before, taken.padded_after) == ((4, 16), True, 54, 10)


def test_fold_traffic_halves_the_history_and_adds_the_window():
    assert fold_traffic({2: 8, 5: 1}, {5: 3, 9: 1}) == {2: 4, 5: 3, 9: 1}


def test_sizes_stay_multiples_of_rows_per_request():
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2, 3, 4)))
    lin = paddle.nn.Linear(4, 4)

    @reg.graphed("verify", batch_arg="x", rows_per_request=4)
    def verify(x):
        return lin(x)

    assert verify.buckets.sizes == (4, 8, 12, 16)  # capture sizes count requests; 4 rows each

    inputs = paddle.randn([16, 4])
    for rows in (4, 5, 9, 16):  # 5 and 9 are no multiple of 4: the planner rounds them up to 8 and 12
        np.testing.assert_array_equal(verify(inputs[:rows]).numpy(), lin(inputs[:rows]).numpy())
    # Two graphs keeping 16: (8, 16) pads 4 + 3 + 7 rows; (4, 16) 18 and (12, 16) 18.
    sizes = reg.replan(max_graphs=2)["verify"]
    assert sizes == (8, 16)


def test_a_largest_size_off_the_multiple_is_kept():
    decision = decide_sizes({3: 5, 6: 5}, (3, 6, 10), max_graphs=2, multiple_of=3, min_gain=0.0)
    assert decision.sizes == (6, 10) and decision.adopted
    assert decide_sizes({1: 4}, (2,), max_graphs=3, multiple_of=3, min_gain=0.0).sizes == (2,)


def test_replan_inside_a_step_is_refused_and_changes_nothing():
    reg, model, step, inputs = _setup()
    _run(step, model, inputs, [3, 3])
    with reg.step(rows=3):
        with pytest.raises(CaptureError, match="between two steps"):
            reg.replan(max_graphs=2)
    assert step.buckets.sizes == SIZES and step.padding.rows_seen == {3: 2}


def test_the_default_graph_count_is_the_starting_one_so_sizes_can_grow_back():
    reg, model, step, inputs = _setup()
    _run(step, model, inputs, [3] * 8)
    assert reg.replan()["heads"] == (3, 16)  # only two row counts seen: two graphs
    _run(step, model, inputs, list(range(1, 16)) * 4)
    assert len(reg.replan()["heads"]) == len(SIZES)  # back to five, the count it started with


def test_replay_rows_still_serves_after_a_replan():
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=SIZES))
    reg.buffers.declare("hidden", [16, 8], "float32")
    lin = paddle.nn.Linear(8, 8)

    @reg.graphed("in_place", batch_arg="hidden")
    def in_place(hidden):
        return lin(hidden)

    values = paddle.randn([16, 8])
    for rows in (3, 3, 6):
        reg.buffers.write("hidden", values[:rows])
        in_place(hidden=reg.buffers["hidden"][:rows])
    # Two graphs for 3, 3 and 6 rows: (6, 16) pads 3 + 3 rows, (3, 16) would pad 10.
    assert reg.replan(max_graphs=2)["in_place"] == (6, 16)
    for rows in (2, 3, 7, 16):
        reg.buffers.write("hidden", values[:rows])
        np.testing.assert_array_equal(in_place.replay(rows).numpy(), lin(values[:rows]).numpy())
    assert in_place.graphs == 2 and reg.stats()["eager_fallbacks"] == 0


def test_memory_budget_caps_the_graphs():
    reg, model, step, inputs = _setup()
    _run(step, model, inputs, [1, 3, 5, 7, 9, 12])
    per_graph = step.output_bytes
    sizes = reg.replan(memory_budget=2 * per_graph)["heads"]
    assert len(sizes) == 2 and sizes[-1] == 16


def test_automatic_replan_every_n_steps():
    reg, model, step, inputs = _setup(replan_every=5, replan_min_gain=0.1)
    for _ in range(10):
        with reg.step(rows=3):
            _run(step, model, inputs, [3])
    assert reg.stats()["replans"] == 1 and step.buckets.sizes == (3, 16)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_graphs": 0}, "max_graphs=0 is not allowed; pass an integer >= 1"),
    ({"memory_budget": 1}, "memory_budget=1 bytes holds less than one graph per function"),
    ({"min_gain": 1.0}, "min_gain=1.0 must be a fraction in [0, 1)"),
])
def test_bad_replan_arguments_raise_config_errors(kwargs, message):
    reg, model, step, inputs = _setup()
    _run(step, model, inputs, [3])
    sizes = step.buckets.sizes
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        reg.replan(**kwargs)
    assert step.buckets.sizes == sizes and step.graphs == 1  # nothing changed


def test_a_budget_before_any_capture_says_capture_first():
    reg, _, _, _ = _setup()
    with pytest.raises(ConfigError, match="capture first"):
        reg.replan(memory_budget=1 << 20)


def test_the_shift_benchmark_recovers_from_a_stale_plan():
    import importlib
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench_dir)
    try:
        result = importlib.import_module("bench_replan").run(8, 250)
    finally:
        sys.path.remove(bench_dir)
    bursty = result["phases"]["bursty"]
    # Padding is deterministic (fixed traces, no timing): the stale steady plan wastes more on bursty
    # than the re-planned sizes do, and the re-planned sizes beat FastDeploy's list cut to 8.
    assert bursty["online_second_half"] < bursty["online_first_window"]
    assert bursty["online_second_half"] < bursty["fastdeploy_default_cut"]
    assert bursty["offline_optimum_second_half"] <= bursty["online_second_half"]
    assert result["replans"] >= 2 and all(len(sizes) <= 8 for sizes in result["sizes_over_time"])
