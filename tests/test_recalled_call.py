"""The decorated call's steady state: a remembered decision, recalled in one lookup.

A recalled decision must be the one ``Dispatcher.decide`` would make for the
same call: each test changes one thing a leaf's role rests on (an address, a
static tensor, a dtype, a scalar, the registry's buffers) and checks that the
recall misses and the call then does what a fresh decision does. Every
replayed result is compared bitwise with the original function called
directly on the same tensors (CPU, eager backend: the same kernels over the
same rows).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import CaptureRegistry, GraphConfig
from graphcap.errors import AddressStabilityError


class Scale:
    """A value held on an object, read by the function: the replay's value guard watches it."""

    def __init__(self) -> None:
        self.factor = 2.0


def _setup(**config):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2, 4, 8), **config))
    # 16 rows: a strided view buf[0:2n:2] of n rows fits for every n <= 8.
    registry.buffers.declare("x", [16, 4], "float32")
    layer = paddle.nn.Linear(4, 4)
    table = paddle.randn([10, 4])  # 10 rows, never the batch's here: a static leaf
    scale = Scale()

    @registry.graphed("f", batch_arg="x")
    def f(x, y, table, shift):
        return layer(x) * scale.factor + y + table.sum() + shift, x.sum(axis=1)

    return registry, f, table, scale


def _equal(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _call(f, **arguments):
    """The decorated call and the direct one on the same tensors; asserts them bitwise equal."""
    got = f(**arguments)
    _equal(got, f.__wrapped__(**arguments))
    return got


def _recalled(f, arguments) -> bool:
    return f._dispatcher.recall(arguments) is not None


def test_recalled_decision_is_decides_for_every_row_count():
    registry, f, table, _ = _setup()
    for rows in [1, 2, 3, 4, 5, 6, 7, 8]:
        registry.buffers.write("x", paddle.randn([rows, 4]))
        arguments = {"x": registry.buffers.x[:rows], "y": paddle.randn([rows, 4]), "table": table, "shift": 0.5}
        _call(f, **arguments)  # decided, then remembered
        for _ in range(2):
            arguments["y"] = paddle.randn([rows, 4])  # a fresh staged tensor each step
            recalled = f._dispatcher.recall(arguments)
            decided = f._dispatcher.decide(arguments)
            assert recalled is not None and recalled.key == decided.key and recalled.rows == rows
            assert all(a is b for a, b in zip(recalled.leaves, decided.leaves))
            _call(f, **arguments)
    assert f.graphs == 3 and registry.stats()["eager_fallbacks"] == 0
    # Every call came from a graph (a capturing call replays its new graph too).
    assert f.coverage == 1.0 and registry.stats()["replays"] == f.graph_calls == 24


def test_a_fresh_tensor_where_a_prefix_view_was_is_staged_and_never_written_into_the_registry_buffer():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    held = registry.buffers.x.numpy().copy()
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    _call(f, **arguments)
    fresh = {**arguments, "x": paddle.randn([3, 4])}
    assert not _recalled(f, fresh)
    _call(f, **fresh)
    assert f.graphs == 2  # the staged key is its own graph, as decide() makes it
    np.testing.assert_array_equal(registry.buffers.x.numpy()[:3], held[:3])


def test_a_strided_view_at_the_buffers_address_is_not_its_prefix():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([16, 4]))
    arguments = {"x": registry.buffers.x[:4], "y": paddle.randn([4, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    strided = {**arguments, "x": registry.buffers.x[0:8:2]}
    assert strided["x"].data_ptr() == arguments["x"].data_ptr() and strided["x"].shape == arguments["x"].shape
    assert not _recalled(f, strided)
    _call(f, **strided)


def test_another_static_tensor_misses_and_follows_on_rebind():
    registry, f, table, _ = _setup(on_rebind="raise")
    registry.buffers.write("x", paddle.randn([3, 4]))
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    other = {**arguments, "table": table.clone()}
    assert not _recalled(f, other)
    # decide() gives the same key (a static leaf enters it by shape), so the replay check finds the other tensor.
    with pytest.raises(AddressStabilityError, match="table"):
        f(**other)


def test_a_dtype_a_scalar_or_a_bool_for_an_int_change_the_decision():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    base = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 1}
    _call(f, **base)
    for changed in ({"y": paddle.randn([3, 4]).astype("float64")}, {"shift": 2}, {"shift": True}, {"shift": 1.0}):
        arguments = {**base, **changed}
        assert not _recalled(f, arguments), changed
        _call(f, **arguments)
        assert _recalled(f, arguments)  # and is remembered in its turn
    assert _recalled(f, {**base, "y": paddle.randn([3, 4])})


def test_a_staged_leaf_that_now_is_a_registry_view_or_buffer_misses():
    registry, f, table, _ = _setup()
    registry.buffers.declare("y", [8, 4], "float32")
    registry.buffers.write("x", paddle.randn([8, 4]))
    registry.buffers.write("y", paddle.randn([8, 4]))
    staged = {"x": registry.buffers.x[:8], "y": paddle.randn([8, 4]), "table": table, "shift": 0.5}
    _call(f, **staged)
    view = {**staged, "y": registry.buffers.y[:8]}
    assert not _recalled(f, view)
    _call(f, **view)
    # 8 rows is y's capacity: the whole buffer is static for decide(), where a fresh tensor was staged.
    whole = {**staged, "y": registry.buffers.y}
    assert not _recalled(f, whole)
    _call(f, **whole)
    assert f._dispatcher.decide(whole).key != f._dispatcher.decide(staged).key


def test_declaring_a_buffer_reset_and_new_sizes_forget_remembered_decisions():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    assert _recalled(f, arguments)
    registry.buffers.declare("z", [4, 2], "float32")
    assert not _recalled(f, arguments)
    _call(f, **arguments)
    assert _recalled(f, arguments)
    registry.reset()
    assert not _recalled(f, arguments)
    _call(f, **arguments)
    f.adopt_sizes((4, 8))
    assert not _recalled(f, arguments)
    _call(f, **arguments)
    assert f.graphs == 1 and f._dispatcher.decide(arguments).key.bucket == 4


def test_a_value_change_after_recalled_replays_recaptures():
    registry, f, table, scale = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    for _ in range(3):
        _call(f, **arguments)
    scale.factor = 3.0
    got = _call(f, **arguments)
    assert registry.stats()["recaptures"] == 1
    np.testing.assert_array_equal(got[1].numpy(), arguments["x"].sum(axis=1).numpy())


def test_a_failed_graph_is_not_recalled_into_a_replay():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    assert _recalled(f, arguments)
    entry = next(iter(f._entries.values()))
    entry.failure = "made to fail by the test"  # the graph itself is still live: only the failure says no
    _call(f, **arguments)
    assert registry.stats()["eager_fallbacks"] == 1 and entry.replays == 1
    assert [item["reason"] for item in registry.stats()["fallbacks"]] == ["made to fail by the test"]


def test_the_recalled_path_pads_staging_and_registry_buffers_as_staging_does():
    registry, f, table, _ = _setup()
    registry.buffers.write("x", paddle.randn([3, 4]))
    arguments = {"x": registry.buffers.x[:3], "y": paddle.randn([3, 4]), "table": table, "shift": 0.5}
    _call(f, **arguments)
    assert _recalled(f, arguments)
    staging = f.staging["y"]
    registry.buffers.x[3:] = 7.0  # dirty every padding row by hand
    staging[3:] = 7.0
    _call(f, **arguments)
    np.testing.assert_array_equal(registry.buffers.x.numpy()[3:], 0.0)
    np.testing.assert_array_equal(staging.numpy()[3:4], 0.0)  # a staging buffer is padded up to the bucket
    np.testing.assert_array_equal(staging.numpy()[:3], arguments["y"].numpy())


def test_a_moved_registry_buffer_is_staged_again_not_read_through_an_old_view():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(4, 8)))
    registry.buffers.declare("x", [8, 4], "float32")

    @registry.graphed("f", batch_arg="x")
    def f(x, y):
        return x * 2.0 + y

    registry.buffers.write("x", np.arange(12, dtype=np.float32).reshape(3, 4))
    view = registry.buffers.x[:3]
    arguments = {"x": view, "y": paddle.ones([3, 4])}
    _call(f, **arguments)
    _call(f, **arguments)
    # An assign of another dtype moves the buffer's storage in place; the old view keeps the old one,
    # at the address recorded for it, so only the buffer's own address tells that it moved.
    paddle.assign(paddle.full([8, 4], 5.0, "float64"), output=registry.buffers.x)
    np.testing.assert_array_equal(f(**arguments).numpy(), f.__wrapped__(**arguments).numpy())


def test_the_batch_tensor_under_a_second_name_then_a_registry_buffer_there_is_decided_again():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2, 4, 8)))
    registry.buffers.declare("small", [4, 4], "float32")

    @registry.graphed("f", batch_arg="x")
    def f(x, y):
        return x * 2.0 + y

    twice = paddle.randn([4, 4])
    _call(f, x=twice, y=twice)
    _call(f, x=twice, y=twice)
    # y is the whole registry buffer now: static for decide(), where the batch tensor was batched.
    other = {"x": paddle.randn([4, 4]), "y": registry.buffers.small}
    assert not _recalled(f, other)
    _call(f, **other)
    assert f.graphs == 2


def test_positional_calls_kwargs_functions_and_static_args_are_recalled():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(4, 8)))
    weight = paddle.randn([4, 4])

    @registry.graphed("positional", batch_arg="x", static_args=["w"])
    def positional(x, w, scale=1.0):
        return paddle.matmul(x, w) * scale

    @registry.graphed("keywords", batch_arg="x")
    def keywords(**inputs):
        return inputs["x"] + inputs["y"]

    for rows in (3, 4, 3):
        x = paddle.randn([rows, 4])
        # w has the batch's 4 rows at rows=4: static_args keeps it static, so it is the very tensor each call.
        want = positional.__wrapped__(x, weight, 2.0)
        np.testing.assert_array_equal(positional(x, weight, 2.0).numpy(), want.numpy())
        assert _recalled(positional, positional.binder.bind((x, weight, 2.0), {}))
        y = paddle.randn([rows, 4])
        np.testing.assert_array_equal(keywords(x=x, y=y).numpy(), (x + y).numpy())
        assert _recalled(keywords, {"x": x, "y": y})
    assert positional.graphs == 1 and keywords.graphs == 1 and registry.stats()["eager_fallbacks"] == 0
    assert not _recalled(positional, positional.binder.bind((paddle.randn([3, 4]), weight.clone(), 2.0), {}))


@pytest.mark.parametrize("held", ["tuple", "layer"])
def test_calls_holding_tensors_in_containers_or_objects_are_decided_every_time(held):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(4,)))
    layer = paddle.nn.Linear(4, 4)

    @registry.graphed("g", batch_arg="x")
    def g(x, other):
        return layer(x) + (other[0] * other[1] if isinstance(other, tuple) else other(x))

    other = (paddle.randn([3, 4]), paddle.randn([3, 4])) if held == "tuple" else paddle.nn.Linear(4, 4)
    arguments = {"x": paddle.randn([3, 4]), "other": other}
    decided = []
    decide = g._dispatcher.decide
    g._dispatcher.decide = lambda bound, bucket=None: decided.append(1) or decide(bound, bucket)
    for _ in range(3):
        np.testing.assert_array_equal(g(**arguments).numpy(), g.__wrapped__(**arguments).numpy())
    assert len(decided) == 3 and not _recalled(g, arguments) and g.graph_calls == 3
