"""Sampler: seeded draws, top-k / top-p masks, plain and speculative paths, to_static parity."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap.ops import MAX_INFER_SEED, build_sampling_params_reference
from graphcap.ops.sampler import (
    sample_plain,
    sample_rows,
    sample_speculative,
    seeded_uniform,
    seeded_uniform_reference,
    speculative_increment,
)
from graphcap.trust.graph_safe_ops import is_graph_safe_op


def _t(values, dtype: str) -> paddle.Tensor:
    return paddle.to_tensor(np.asarray(values), dtype=dtype)


def _logits(rows: int, vocab: int, seed: int = 0) -> paddle.Tensor:
    return _t(np.random.default_rng(seed).standard_normal((rows, vocab)) * 3, "float32")


def test_seeded_uniform_matches_reference_bit_for_bit():
    seeds = np.array([0, 1, -1, -5, 12345, 2**31 - 1, MAX_INFER_SEED, -(2**63), 2**63 - 1], dtype=np.int64)
    got = seeded_uniform(_t(seeds, "int64")).numpy()
    np.testing.assert_array_equal(got, seeded_uniform_reference(seeds))
    assert got.dtype == np.float32 and np.all((got >= 0) & (got < 1))
    assert is_graph_safe_op("seeded_uniform")


def test_seeded_uniform_is_roughly_uniform():
    u = seeded_uniform(paddle.arange(20000, dtype="int64") * 4).numpy()
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert counts.min() > 1800 and counts.max() < 2200


def test_greedy_and_top_k_one_take_the_argmax():
    logits = _logits(16, 64)
    want = np.argmax(logits.numpy(), axis=-1)
    seeds = paddle.arange(16, dtype="int64")
    ones = paddle.ones([16], dtype="float32")
    np.testing.assert_array_equal(sample_rows(logits, ones, paddle.ones([16], "int64"), seeds).numpy(), want)
    np.testing.assert_array_equal(
        sample_rows(logits, ones, paddle.zeros([16], "int64"), seeds, greedy=True).numpy(), want
    )
    tiny_p = paddle.full([16], 1e-6, dtype="float32")
    np.testing.assert_array_equal(
        sample_rows(logits, tiny_p, paddle.zeros([16], "int64"), seeds).numpy(), want
    )


@pytest.mark.parametrize("k", [2, 5])
def test_top_k_keeps_only_the_k_most_likely(k):
    rows, vocab = 400, 32
    logits = _logits(rows, vocab, seed=1)
    tokens = sample_rows(
        logits, paddle.ones([rows]), paddle.full([rows], k, "int64"), paddle.arange(rows, dtype="int64") * 4
    ).numpy()
    top = np.argsort(-logits.numpy(), axis=-1)[:, :k]
    assert all(tokens[i] in top[i] for i in range(rows))
    assert len(set((tokens == top[:, 0]).tolist())) == 2  # not always the argmax


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two tokens.
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    rows = 2000
    logits = _t(np.tile(np.log(probs), (rows, 1)), "float32")
    tokens = sample_rows(
        logits, paddle.full([rows], 0.7), paddle.zeros([rows], "int64"), paddle.arange(rows, dtype="int64")
    ).numpy()
    assert set(tokens.tolist()) == {0, 1}
    assert abs(np.mean(tokens == 0) - 0.5 / 0.8) < 0.05
    free = sample_rows(
        logits, paddle.ones([rows]), paddle.zeros([rows], "int64"), paddle.arange(rows, dtype="int64")
    ).numpy()
    np.testing.assert_allclose(np.bincount(free, minlength=4) / rows, probs, atol=0.03)


def test_same_seed_same_token():
    logits = _logits(8, 100)
    args = (paddle.full([8], 0.9), paddle.zeros([8], "int64"), _t([7] * 8, "int64"))
    first = sample_rows(_t(np.tile(logits.numpy()[:1], (8, 1)), "float32"), *args).numpy()
    assert len(set(first.tolist())) == 1


def _plain_state(batch: int, seed0: int = 100) -> dict:
    rng = np.random.default_rng(3)
    return {
        "top_p": _t(rng.uniform(0.5, 1.0, batch), "float32"),
        "top_k": _t(rng.integers(0, 20, batch), "int64"),
        "infer_seed": _t(np.arange(batch) * 1000 + seed0, "int64"),
    }


def test_plain_path_uses_op_seeds_and_advances_by_four():
    state = _plain_state(6)
    before = state["infer_seed"].numpy().copy()
    logits = _logits(6, 50)
    tokens = sample_plain(logits, **state)
    np.testing.assert_array_equal(state["infer_seed"].numpy(), before + 4)
    want = sample_rows(logits, state["top_p"], state["top_k"], _t(before, "int64")).numpy()
    np.testing.assert_array_equal(tokens.numpy(), want)
    assert tokens.dtype == paddle.int64 and tokens.shape == [6]


def test_plain_path_wraps_seeds_at_max_seed():
    state = _plain_state(2)
    state["infer_seed"] = _t([MAX_INFER_SEED - 1, MAX_INFER_SEED - 4], "int64")
    sample_plain(_logits(2, 10), **state)
    assert state["infer_seed"].numpy().tolist() == [3, 0]


def test_plain_path_under_to_static_matches_eager():
    batch, vocab, steps = 8, 64, 3
    eager_state = _plain_state(batch)
    static_state = _plain_state(batch)
    seed = static_state["infer_seed"]  # closure tensor, like an engine's static buffer
    address = seed.data_ptr()

    def step(logits, top_p, top_k):
        return sample_plain(logits, top_p=top_p, top_k=top_k, infer_seed=seed)

    program = paddle.jit.to_static(step, full_graph=True)
    for i in range(steps):
        logits = _logits(batch, vocab, seed=i)
        want = sample_plain(logits, **eager_state).numpy()
        got = program(logits, static_state["top_p"], static_state["top_k"]).numpy()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(seed.numpy(), eager_state["infer_seed"].numpy())
    assert seed.data_ptr() == address


def test_plain_path_greedy_still_advances_seeds():
    state = _plain_state(3)
    logits = _logits(3, 20)
    tokens = sample_plain(logits, **state, greedy=True)
    np.testing.assert_array_equal(tokens.numpy(), np.argmax(logits.numpy(), axis=-1))
    assert state["infer_seed"].numpy().tolist() == [104, 1104, 2104]


def _speculative_batch(k: int) -> dict:
    # request 0 decodes k+1 tokens, 1 is empty, 2 prefills (1 row), 3 decodes 2.
    rows = [k + 1, 0, 1, 2]
    return {
        "top_p": _t([0.9, 0.8, 0.7, 0.95], "float32"),
        "top_k": _t([10, 0, 5, 0], "int64"),
        "infer_seed": _t([MAX_INFER_SEED - 3, 5, 50, 500], "int64"),
        "seq_lens_this_time": _t([k + 1, 0, 37, 2], "int32"),
        "cu_seqlens_q_output": _t(np.concatenate([[0], np.cumsum(rows)]), "int32"),
    }


@pytest.mark.parametrize("k", [0, 2, 4])
def test_speculative_path_rows_seeds_and_padding(k):
    batch = _speculative_batch(k)
    capacity = 4 * (k + 1)
    logits = _logits(capacity, 40)
    numpy_in = {name: t.numpy() for name, t in batch.items()}
    want_p, want_k, want_s, want_seed = build_sampling_params_reference(
        **numpy_in, token_num_output=capacity, increment_value=speculative_increment(k)
    )
    tokens = sample_speculative(logits, **batch, num_speculative_tokens=k)
    np.testing.assert_array_equal(batch["infer_seed"].numpy(), want_seed)
    want = sample_rows(logits, _t(want_p, "float32"), _t(want_k, "int64"), _t(want_s, "int64")).numpy()
    np.testing.assert_array_equal(tokens.numpy(), want)
    assert tokens.shape == [capacity]


def test_speculative_path_under_to_static_matches_eager():
    k, capacity = 3, 16
    eager_batch, static_batch = _speculative_batch(k), _speculative_batch(k)
    seed = static_batch.pop("infer_seed")

    def step(logits, top_p, top_k, seq_lens_this_time, cu_seqlens_q_output):
        return sample_speculative(
            logits,
            top_p=top_p,
            top_k=top_k,
            infer_seed=seed,
            seq_lens_this_time=seq_lens_this_time,
            cu_seqlens_q_output=cu_seqlens_q_output,
            num_speculative_tokens=k,
        )

    program = paddle.jit.to_static(step, full_graph=True)
    for i in range(2):
        logits = _logits(capacity, 30, seed=10 + i)
        want = sample_speculative(logits, **eager_batch, num_speculative_tokens=k).numpy()
        got = program(logits, **static_batch).numpy()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(seed.numpy(), eager_batch["infer_seed"].numpy())


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_plain_path_runs_under_graph_capture_and_matches_eager(backend):
    """The plain (non-speculative) path inside a graphed function: same tokens and seeds as eager."""
    from graphcap import CaptureRegistry, GraphConfig

    def make(use_graph: bool):
        reg = CaptureRegistry(GraphConfig(use_graph=use_graph, backend=backend, capture_sizes=(4,)))
        reg.buffers.declare("infer_seed", [4], "int64", pad="keep")
        reg.buffers.declare("top_p", [4], "float32", pad="keep")
        reg.buffers.declare("top_k", [4], "int64", pad="keep")
        reg.buffers.write("infer_seed", paddle.to_tensor([11, 22, 33, 44], dtype="int64"))
        reg.buffers.write("top_p", paddle.to_tensor([0.9, 0.5, 1.0, 0.7], dtype="float32"))
        reg.buffers.write("top_k", paddle.to_tensor([0, 3, 5, 0], dtype="int64"))

        @reg.graphed("plain", batch_arg="logits")
        def step(*, logits):
            bufs = reg.buffers
            return sample_plain(logits, top_p=bufs.top_p, top_k=bufs.top_k, infer_seed=bufs.infer_seed)

        return reg, step

    reg_on, step_on = make(True)
    reg_off, step_off = make(False)
    for index in range(4):
        logits = paddle.randn([4, 32])
        np.testing.assert_array_equal(step_on(logits=logits).numpy(), step_off(logits=logits).numpy(), str(index))
    assert reg_on.stats()["replays"] == 4 and reg_on.stats()["captures"] == 1
    assert reg_on.buffers.infer_seed.numpy().tolist() == reg_off.buffers.infer_seed.numpy().tolist()
    assert reg_on.buffers.infer_seed.numpy().tolist() == [11 + 16, 22 + 16, 33 + 16, 44 + 16]
