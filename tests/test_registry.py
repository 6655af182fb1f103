"""Replay against eager on the same inputs, on the eager and static backends."""

from __future__ import annotations

import itertools

import numpy as np
import paddle
import pytest

import graphcap
from graphcap import AddressStabilityError, CaptureRegistry, GraphConfig

BACKENDS = ["eager", "static"]
SIZES = (1, 2, 4, 8)


def make_layers() -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    return paddle.randn([16, 32]), paddle.randn([32, 32]), paddle.randn([32, 8])


def forward(*, x, layers, scale):
    """A few layers: matmul, norm, activation; a tuple output with a per-row reduction."""
    w1, w2, w3 = layers
    h = paddle.nn.functional.layer_norm(paddle.matmul(x, w1), [32])
    h = paddle.nn.functional.gelu(paddle.matmul(h, w2)) * scale
    return paddle.matmul(h, w3), h.sum(axis=-1)


def registry(backend: str, **overrides) -> CaptureRegistry:
    options = {"use_graph": True, "backend": backend, "capture_sizes": SIZES} | overrides
    return CaptureRegistry(GraphConfig(**options))


def assert_same(got, want):
    got, want = paddle.utils.flatten(got), paddle.utils.flatten(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_equals_eager_bit_exactly_for_every_batch_size(backend):
    reg = registry(backend)
    layers = make_layers()
    graphed = reg.graphed("target", batch_arg="x")(forward)
    for rows in [*range(1, 9), *range(8, 0, -1)]:
        x = paddle.randn([rows, 16])
        assert_same(graphed(x=x, layers=layers, scale=0.5), forward(x=x, layers=layers, scale=0.5))
    stats = reg.stats()
    assert stats["captures"] == 4 and stats["graphs"] == 4
    assert stats["replays"] == 16 and stats["eager_fallbacks"] == 0
    # rows 3 -> 4, 5..7 -> 8, each seen twice
    assert stats["padded_rows"] == 2 * (1 + 3 + 2 + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dict_outputs_and_positional_arguments(backend):
    reg = registry(backend)
    w = paddle.randn([4, 4])

    @reg.graphed("dict", batch_arg="x")
    def fwd(x, bias):
        return {"logits": paddle.matmul(x, w) + bias, "norm": paddle.sqrt((x * x).sum(-1))}

    bias = paddle.randn([4])
    x = paddle.randn([3, 4])
    out = fwd(x, bias)
    assert set(out) == {"logits", "norm"}
    assert_same(out, fwd.__wrapped__(x, bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_static_views_overwritten_by_the_next_replay(backend):
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    first = graphed(x=paddle.ones([4, 2]))
    kept = first.clone()
    graphed(x=paddle.full([4, 2], 5.0))
    np.testing.assert_array_equal(first.numpy(), 10.0)
    np.testing.assert_array_equal(kept.numpy(), 2.0)


def test_flag_off_returns_the_original_function_unchanged():
    reg = CaptureRegistry(GraphConfig(use_graph=False))
    calls = []

    def fwd(*, x):
        calls.append(x)
        return x + 1

    wrapped = reg.graphed("t", batch_arg="x")(fwd)
    assert wrapped.__wrapped__ is fwd
    x = paddle.ones([3, 2])
    out = wrapped(x=x)
    assert calls == [x]  # the very tensor, no staging copy
    np.testing.assert_array_equal(out.numpy(), 2.0)
    assert reg.stats()["captures"] == 0 and reg.stats()["replays"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_above_the_largest_bucket_runs_eagerly_and_is_counted(backend):
    reg = registry(backend)
    layers = make_layers()
    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = paddle.randn([11, 16])
    assert_same(graphed(x=x, layers=layers, scale=1.0), forward(x=x, layers=layers, scale=1.0))
    stats = reg.stats()
    assert stats["eager_fallbacks"] == 1 and stats["captures"] == 0
    assert stats["per_graph"]["t"]["eager"] == {"steps": 1, "real_rows": 11, "padded_rows": 0}


def test_zero_rows_capture_nothing():
    reg = registry("eager")
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 3)
    assert graphed(x=paddle.ones([0, 2])).shape == [0, 2]
    assert reg.stats()["captures"] == 0 and reg.stats()["replays"] == 0


# The stale-buffer bug, reproduced ---------------------------------------------


def seed_bug_setup(backend: str, debug_checks: bool):
    reg = registry(backend, debug_checks=debug_checks, capture_sizes=(4,))
    reg.buffers.declare("cu_seqlens_q_output", [5], "int32", pad="keep")
    reg.buffers.write("cu_seqlens_q_output", paddle.to_tensor([0, 1, 2, 3, 4], dtype="int32"))

    @reg.graphed("target", batch_arg="x")
    def fwd(*, x):
        # Reads the registry's buffer, as a model reads its forward metadata.
        starts = paddle.cast(reg.buffers.cu_seqlens_q_output[:4], "float32")
        return x + starts.unsqueeze(-1)

    return reg, fwd


def test_rebinding_a_buffer_gives_stale_results_when_unchecked():
    reg, fwd = seed_bug_setup("static", debug_checks=False)
    x = paddle.zeros([4, 1])
    assert fwd(x=x).numpy().ravel().tolist() == [0, 1, 2, 3]
    reg.buffers._unsafe_rebind("cu_seqlens_q_output", paddle.to_tensor([0, 2, 4, 6, 8], dtype="int32"))
    assert fwd.__wrapped__(x=x).numpy().ravel().tolist() == [0, 2, 4, 6]  # what eager computes
    assert fwd(x=x).numpy().ravel().tolist() == [0, 1, 2, 3]  # the graph still reads the old tensor


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebinding_a_buffer_is_caught_on_replay(backend):
    reg, fwd = seed_bug_setup(backend, debug_checks=True)
    fwd(x=paddle.zeros([4, 1]))
    reg.buffers._unsafe_rebind("cu_seqlens_q_output", paddle.to_tensor([0, 2, 4, 6, 8], dtype="int32"))
    with pytest.raises(AddressStabilityError, match="cu_seqlens_q_output") as info:
        fwd(x=paddle.zeros([4, 1]))
    assert "bucket 4" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_updating_a_buffer_in_place_gives_correct_results(backend):
    reg, fwd = seed_bug_setup(backend, debug_checks=True)
    fwd(x=paddle.zeros([4, 1]))
    reg.buffers.write("cu_seqlens_q_output", paddle.to_tensor([0, 2, 4, 6, 8], dtype="int32"))
    assert fwd(x=paddle.zeros([4, 1])).numpy().ravel().tolist() == [0, 2, 4, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_tensor_arguments_must_stay_the_same_tensor(backend):
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(lambda x, w: paddle.matmul(x, w))
    w = paddle.randn([2, 2])
    graphed(x=paddle.ones([3, 2]), w=w)
    w[:] = paddle.ones([2, 2])  # in place: fine, and seen by the graph
    np.testing.assert_array_equal(graphed(x=paddle.ones([3, 2]), w=w).numpy(), 2.0)
    with pytest.raises(AddressStabilityError, match="static argument 'w'"):
        graphed(x=paddle.ones([3, 2]), w=paddle.ones([2, 2]))


# Capture failures, state, reset ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_in_a_warmup_propagates_unchanged_and_disables_nothing(backend):
    reg = registry(backend)
    raised = RuntimeError("device out of memory (simulated)")
    # An iterator, not a dict of ints: graphcap watches Python values a function changes.
    attempts = itertools.count(1)

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        if next(attempts) == 1:  # the first warmup: eager would raise this too
            raise raised
        return x * 2

    with pytest.raises(RuntimeError) as info:
        fwd(x=paddle.ones([4, 1]))  # the batch fills its bucket: the warmup ran the real call
    assert info.value is raised  # the very exception, not a wrapper
    np.testing.assert_array_equal(fwd(x=paddle.ones([4, 1])).numpy(), 2.0)  # the bucket still captures
    stats = reg.stats()
    assert stats["capture_failures"] == 0 and stats["eager_fallbacks"] == 0
    assert stats["captures"] == 1 and stats["replays"] == 1 and stats["fallbacks"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_function_that_refuses_its_padding_rows_runs_eagerly(backend):
    reg = registry(backend)

    @reg.graphed("t", batch_arg="x", static_args=["lengths"])
    def fwd(*, x, lengths):
        if x.shape[0] != lengths.shape[0]:  # a check eager passes and a padded batch fails
            raise ValueError(f"{x.shape[0]} rows but {lengths.shape[0]} lengths")
        return x * 2

    lengths = paddle.to_tensor([1, 2, 3])  # static: the graph would see 4 rows but 3 lengths
    x = paddle.ones([3, 1])
    np.testing.assert_array_equal(fwd(x=x, lengths=lengths).numpy(), 2.0)
    np.testing.assert_array_equal(fwd(x=x, lengths=lengths).numpy(), 2.0)
    [fallback] = reg.stats()["fallbacks"]
    assert fallback["bucket"] == 4 and fallback["calls"] == 2
    assert "raises on the padded batch of 4 rows" in fallback["reason"] and "3 lengths" in fallback["reason"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_warmups_and_capture_leave_mutable_state_untouched(backend):
    reg = registry(backend)
    seed = reg.buffers.declare("infer_seed", [4], "int64", pad="keep")

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x):
        # Advances the seed in place, as the sampling op does each step.
        paddle.assign(reg.buffers.infer_seed + 4, output=reg.buffers.infer_seed)
        return x + 1

    for _ in range(3):
        fwd(x=paddle.ones([2, 1]))
    assert seed.numpy().tolist() == [12, 12, 12, 12]
    assert reg.stats()["warmups"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_drops_graphs_and_the_next_call_recaptures(backend):
    reg = registry(backend)
    w = paddle.ones([2, 2])

    def forward(*, x):
        return paddle.matmul(x, w)

    graphed = reg.graphed("t", batch_arg="x")(forward)
    graphed(x=paddle.ones([2, 2]))
    reg.reset()
    assert reg.stats()["graphs"] == 0
    np.testing.assert_array_equal(graphed(x=paddle.ones([2, 2])).numpy(), 2.0)
    assert reg.stats()["captures"] == 2 and reg.stats()["graphs"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_all_captures_every_bucket_largest_first(backend):
    reg = registry(backend)
    layers = make_layers()
    seen = []

    @reg.graphed("t", batch_arg="x")
    def fwd(*, x, layers, scale):
        seen.append(x.shape[0])
        return forward(x=x, layers=layers, scale=scale)

    assert reg.capture_all({"t": {"x": paddle.randn([3, 16]), "layers": layers, "scale": 1.0}}) == 4
    # Largest first (each bucket's row probe runs one row less: 7, 3, 1).
    assert [rows for rows in dict.fromkeys(seen) if rows in (8, 4, 2, 1)] == [8, 4, 2, 1]
    assert reg.stats()["graphs"] == 4
    for rows in (1, 3, 8):
        x = paddle.randn([rows, 16])
        assert_same(fwd(x=x, layers=layers, scale=1.0), forward(x=x, layers=layers, scale=1.0))
    assert reg.stats()["captures"] == 4


def test_stats_keys():
    stats = registry("eager").stats()
    for key in ("captures", "replays", "eager_fallbacks", "capture_failures", "capture_seconds",
                "padded_rows", "real_rows", "graphs", "per_graph"):
        assert key in stats


def test_draft_switch_runs_the_original():
    reg = registry("static")
    graphed = reg.graphed("draft", batch_arg="x", enabled=False)(lambda x: x - 1)
    np.testing.assert_array_equal(graphed(x=paddle.ones([2, 2])).numpy(), 0.0)
    assert reg.stats()["captures"] == 0
    graphed.enabled = True
    np.testing.assert_array_equal(graphed(x=paddle.ones([2, 2])).numpy(), 0.0)
    assert reg.stats()["captures"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_of_registry_buffers_are_adopted_without_a_copy(backend):
    reg = registry(backend)
    ids = reg.buffers.declare("input_ids", [8], "int64", pad="value", pad_value=-1)

    @reg.graphed("t", batch_arg="ids")
    def fwd(*, ids):
        return ids * 2, ids.sum()

    reg.buffers.write("input_ids", paddle.to_tensor([1, 2, 3], dtype="int64"))
    doubled, total = fwd(ids=reg.buffers.input_ids[:3])
    assert doubled.numpy().tolist() == [2, 4, 6]
    assert int(total) == 1 + 2 + 3 - 1  # the padding row of bucket 4 holds the buffer's sentinel
    assert "ids" not in fwd.staging  # no staging copy exists
    assert ids.numpy().tolist() == [1, 2, 3, -1, -1, -1, -1, -1]
    # A fresh tensor is never copied into the registry buffer an earlier call passed a
    # view of: it gets a staging buffer of its own (another graph), and the buffer keeps its data.
    doubled, total = fwd(ids=paddle.to_tensor([5, 5], dtype="int64"))
    assert doubled.numpy().tolist() == [10, 10] and int(total) == 10
    assert ids.numpy().tolist() == [1, 2, 3, -1, -1, -1, -1, -1]
    assert "ids" in fwd.staging and reg.stats()["graphs"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_staging_padding_rules_fill_rows_past_the_batch(backend):
    reg = registry(backend)

    @reg.graphed("t", batch_arg="x", padding={"slot": -1})
    def fwd(*, x, slot):
        return x + 1, slot * 2

    fwd(x=paddle.full([4], 7.0), slot=paddle.to_tensor([3, 3, 3, 3], dtype="int32"))  # fills bucket 4
    out, slots = fwd(x=paddle.ones([3]), slot=paddle.to_tensor([0, 1, 2], dtype="int32"))
    assert out.numpy().tolist() == [2.0] * 3 and slots.numpy().tolist() == [0, 2, 4]
    assert fwd.staging["slot"][:4].numpy().tolist() == [0, 1, 2, -1]  # the sentinel, not the previous step's 3
    assert fwd.staging["x"][:4].numpy().tolist() == [1.0, 1.0, 1.0, 0.0]  # zero padding, not 7.0
    assert reg.stats()["replays"] == 2


def test_bad_padding_rule_names_the_argument():
    reg = registry("eager")
    with pytest.raises(graphcap.CaptureError, match=r"padding\['x'\]"):
        reg.graphed("t", batch_arg="x", padding={"x": "nan"})(lambda x: x)
