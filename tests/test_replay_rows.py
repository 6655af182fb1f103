"""``GraphedFunction.replay(rows)``: the replay path for engines that write registry buffers in place.

Every replayed result is compared bitwise with the original function called
directly on the same buffers' prefix views (CPU, eager backend: the same
kernels over the same rows).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import CaptureRegistry, GraphConfig
from graphcap.errors import CaptureError


class Scale:
    """A value held on an object, read by the function: the replay's value guard watches it."""

    def __init__(self) -> None:
        self.factor = 2.0


def _setup(**config):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2, 4, 8), **config))
    # Buffers hold 16 rows, the largest bucket is 8: rows 9..16 run eagerly.
    registry.buffers.declare("x", [16, 4], "float32")
    registry.buffers.declare("ids", [16], "int64", pad="value", pad_value=-1)
    layer = paddle.nn.Linear(4, 4)
    scale = Scale()

    @registry.graphed("f", batch_arg="x")
    def f(x, ids, shift):
        return layer(x) * scale.factor + ids.astype("float32").unsqueeze(1) + shift, x.sum(axis=1)

    return registry, f, scale


def _write(registry, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    registry.buffers.write("x", rng.standard_normal([rows, 4]).astype("float32"))
    registry.buffers.write("ids", np.arange(rows, dtype=np.int64))


def _direct(registry, f, rows: int, shift: float):
    return f.__wrapped__(registry.buffers.x[:rows], registry.buffers.ids[:rows], shift)


def test_replay_rows_equals_the_direct_call_for_every_row_count_and_bucket():
    registry, f, _ = _setup()
    _write(registry, 3, 0)
    f(x=registry.buffers.x[:3], ids=registry.buffers.ids[:3], shift=0.5)  # the call replay(rows) learns from
    assert f.can_replay(shift=0.5) and not f.can_replay(shift=1.0)
    for step, rows in enumerate([1, 2, 3, 4, 5, 7, 8, 6, 1]):
        _write(registry, rows, step + 1)
        got = f.replay(rows, shift=0.5)
        want = _direct(registry, f, rows, 0.5)
        assert [tuple(t.shape) for t in got] == [(rows, 4), (rows,)]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    stats = registry.stats()
    assert stats["graphs"] == 3 and stats["eager_fallbacks"] == 0
    assert f.graph_calls == 10 and f.eager_calls == 0  # the first call plus nine replays, all from graphs


def test_a_buffer_not_padded_for_these_rows_is_padded_by_rule_before_the_replay():
    registry, f, _ = _setup()
    _write(registry, 6, 0)
    f(x=registry.buffers.x[:6], ids=registry.buffers.ids[:6], shift=0.0)
    _write(registry, 6, 1)  # six rows written, but the engine replays three: rows 3..5 must become padding
    assert registry.buffers.padded_from("ids") == 6
    got = f.replay(3, shift=0.0)
    assert registry.buffers.ids.numpy()[3:].tolist() == [-1] * 13
    np.testing.assert_array_equal(got[0].numpy(), _direct(registry, f, 3, 0.0)[0].numpy())


def test_a_changed_value_on_an_object_recaptures_through_replay_rows():
    registry, f, scale = _setup()
    _write(registry, 4, 0)
    f(x=registry.buffers.x[:4], ids=registry.buffers.ids[:4], shift=0.0)
    scale.factor = 3.0  # the graph read 2.0 at capture
    got = f.replay(4, shift=0.0)
    np.testing.assert_array_equal(got[0].numpy(), _direct(registry, f, 4, 0.0)[0].numpy())
    assert registry.stats()["recaptures"] == 1


def test_a_value_change_after_steady_replays_recaptures_and_the_one_lookup_path_follows_it():
    registry, f, scale = _setup()
    _write(registry, 3, 0)
    f(x=registry.buffers.x[:3], ids=registry.buffers.ids[:3], shift=0.0)
    for step in range(3):  # replays 2 and 3 take the one-lookup path for 3 rows
        _write(registry, 3, step + 1)
        np.testing.assert_array_equal(f.replay(3, shift=0.0)[0].numpy(), _direct(registry, f, 3, 0.0)[0].numpy())
    scale.factor = 5.0  # the remembered entry must not replay the graph that baked in 2.0
    for step in range(3):
        _write(registry, 3, step + 10)
        np.testing.assert_array_equal(f.replay(3, shift=0.0)[0].numpy(), _direct(registry, f, 3, 0.0)[0].numpy())
    assert registry.stats()["recaptures"] == 1 and f.eager_calls == 0


def test_what_the_decorated_call_runs_eagerly_replay_rows_runs_eagerly_and_counts():
    registry, f, _ = _setup()
    _write(registry, 2, 0)
    f(x=registry.buffers.x[:2], ids=registry.buffers.ids[:2], shift=0.0)
    # Zero rows: the decorated call's answer (no graph, counted in neither share).
    assert tuple(f.replay(0, shift=0.0)[0].shape) == (0, 4)
    assert f.eager_calls == 0
    # More rows than the largest bucket: eager, with the reason, as the decorated call.
    _write(registry, 12, 1)
    got = f.replay(12, shift=0.0)
    np.testing.assert_array_equal(got[0].numpy(), _direct(registry, f, 12, 0.0)[0].numpy())
    assert f.eager_calls == 1 and registry.stats()["eager_fallbacks"] == 1
    assert "more rows than the largest capture size 8" in registry.stats()["fallbacks"][0]["reason"]


def test_bad_rows_and_a_replay_before_any_in_place_call_are_refused_naming_them():
    registry, f, _ = _setup()
    with pytest.raises(CaptureError, match=r"f\.replay\(3, shift=0\.0\): no captured call"):
        f.replay(3, shift=0.0)
    _write(registry, 2, 0)
    f(x=registry.buffers.x[:2], ids=registry.buffers.ids[:2], shift=0.0)
    for rows in (-1, 17, 2.0, True):
        with pytest.raises(CaptureError, match=rf"rows={rows!r}\): rows must be an int in 0\.\.16.*\(x, ids\)"):
            f.replay(rows, shift=0.0)


def test_a_call_with_a_copied_input_is_not_learned_for_replay_rows():
    registry, f, _ = _setup()
    f(x=paddle.randn([2, 4]), ids=paddle.arange(2, dtype="int64"), shift=0.0)  # fresh tensors: staged copies
    assert not f.can_replay(shift=0.0)


def test_reset_forgets_the_in_place_calls():
    registry, f, _ = _setup()
    _write(registry, 2, 0)
    f(x=registry.buffers.x[:2], ids=registry.buffers.ids[:2], shift=0.0)
    f.reset()
    assert not f.can_replay(shift=0.0)
