"""Graphed functions bucketed on tokens as well as rows (``CaptureRegistry.graphed_tokens``).

Every graphed result is compared with the original function called directly
on the same (unpadded) inputs. Across a row or token count the kernels round
differently (a GEMM over another shape), so those comparisons use graphcap's
own float32 bound, 1e-4 of the output's largest magnitude (floored at 1;
``graphcap.trust.tolerance``): the weights are scaled x8 so outputs reach
|x| 10-40, where a padding leak moves a value by a share of its magnitude.
Comparisons of an eager fallback, which is the original function, are bitwise.
"""

from __future__ import annotations

import attrs
import numpy as np
import paddle
import pytest
from conftest import TEST_LLAMA, paddleformers_transformers

from graphcap import CaptureRegistry, ConfigError, GraphConfig
from graphcap.trust.tolerance import bound

SIZES = (4, 8)


class PositionAttention(paddle.nn.Layer):
    """Attention over the tokens with the mask taken from the positions (key position <= query position)."""

    def __init__(self, vocab: int = 64, width: int = 16, scale: float = 8.0) -> None:
        super().__init__()
        paddle.seed(3)
        self.embed = paddle.nn.Embedding(vocab, width)
        self.place = paddle.nn.Embedding(32, width)
        self.out = paddle.nn.Linear(width, width)
        with paddle.no_grad():
            self.out.weight.set_value(self.out.weight * scale)

    def forward(self, ids: paddle.Tensor, positions: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        hidden = self.embed(ids) + self.place(positions)
        scores = paddle.matmul(hidden, hidden, transpose_y=True)
        allowed = positions.unsqueeze(1) <= positions.unsqueeze(2)
        scores = paddle.where(allowed, scores, paddle.full_like(scores, -1e9))
        mixed = paddle.matmul(paddle.nn.functional.softmax(scores, axis=-1), hidden)
        return self.out(mixed), mixed.sum(axis=-1)


def _inputs(rows: int, tokens: int, seed: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    rng = np.random.default_rng(seed)
    ids = paddle.to_tensor(rng.integers(1, 64, size=(rows, tokens)), dtype="int64")
    return ids, paddle.arange(tokens, dtype="int64").expand([rows, tokens])


def _close(got: paddle.Tensor, want: paddle.Tensor) -> None:
    assert got.shape == want.shape
    reference = want.numpy()
    np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=bound(reference, "float32"))


def _graphed(layer, backend="eager", rule="continue", sizes=SIZES):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend=backend, capture_sizes=(1, 2, 4)))

    def attend(ids, positions):
        return layer(ids, positions)

    fn = registry.graphed_tokens("attend", batch_arg="ids", token_sizes=sizes, token_args={"ids": 1, "positions": 1},
                                 token_padding={"positions": rule})(attend)
    return registry, fn


@pytest.mark.parametrize("first", ["full", "padded"])
def test_every_rows_and_tokens_pair_equals_the_direct_call(first):
    layer = PositionAttention()
    registry, fn = _graphed(layer)
    # The first call at each token size fills it (4, 8 tokens at 4 rows) or pads it (3, 6 tokens at 3 rows).
    openers = [(4, 4), (4, 8)] if first == "full" else [(3, 3), (3, 6)]
    pairs = openers + [(rows, tokens) for rows in range(1, 5) for tokens in range(1, 9)]
    for index, (rows, tokens) in enumerate(pairs):
        ids, positions = _inputs(rows, tokens, seed=index)
        for got, want in zip(fn(ids, positions), layer(ids, positions)):
            _close(got, want)
    stats = registry.stats()
    assert stats["tokens"]["attend"]["eager_calls"] == 0 and stats["tokens"]["attend"]["unsafe_sizes"] == {}
    assert stats["graphs"] == 6 and stats["eager_fallbacks"] == 0  # rows buckets 1, 2, 4 at each token size
    real = sum(rows * tokens for rows, tokens in pairs)
    padded = sum(rows * (4 if tokens <= 4 else 8) for rows, tokens in pairs) - real
    assert (stats["tokens"]["attend"]["tokens"], stats["tokens"]["attend"]["padded_tokens"]) == (real, padded)
    assert stats["tokens"]["attend"]["coverage"] == 1.0


def test_the_static_backend_serves_padded_tokens_too():
    layer = PositionAttention()
    registry, fn = _graphed(layer, backend="static")
    for rows, tokens in [(2, 3), (2, 4), (1, 6), (2, 7)]:
        ids, positions = _inputs(rows, tokens, seed=tokens)
        for got, want in zip(fn(ids, positions), layer(ids, positions)):
            _close(got, want)
    assert registry.stats()["tokens"]["attend"]["coverage"] == 1.0


def test_positions_padded_with_zeros_reach_the_real_tokens_and_padded_calls_run_eagerly():
    layer = PositionAttention()
    registry, fn = _graphed(layer, rule="zero")
    ids, positions = _inputs(2, 3, seed=0)
    first = fn(ids, positions)  # padding positions at 0 are attended by every real query
    for got, want in zip(first, layer(ids, positions)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())  # the original function ran
    reason = registry.stats()["tokens"]["attend"]["unsafe_sizes"][4]
    assert reason.startswith("positions interact") and "token size 4" in reason
    full_ids, full_positions = _inputs(2, 4, seed=1)
    for got, want in zip(fn(full_ids, full_positions), layer(full_ids, full_positions)):
        _close(got, want)  # a call that fills the size has no padding: its graph serves it
    stats = registry.stats()
    assert stats["tokens"]["attend"]["eager_calls"] == 1 and stats["replays_per_graph"]["attend[tokens=4]"] == 1
    assert [item["reason"] for item in stats["fallbacks"]] == [reason]


def test_a_padding_rule_that_changes_the_real_result_is_caught_where_other_data_would_not_show_it():
    layer = PositionAttention()
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2)))

    def by_position(ids, positions):
        # The ids only count the tokens: filling their padding another way changes nothing, but zero positions
        # are attended by every real query (key position 0 <= query position).
        return layer(ids * 0 + 1, positions)[0]

    fn = registry.graphed_tokens("by_position", batch_arg="ids", token_sizes=SIZES,
                                 token_args={"ids": 1, "positions": 1})(by_position)
    ids, positions = _inputs(2, 3, seed=6)
    np.testing.assert_array_equal(fn(ids, positions).numpy(), by_position(ids, positions).numpy())
    reason = registry.stats()["tokens"]["by_position"]["unsafe_sizes"][4]
    assert "differs between 3 tokens padded to 4 and the same 3 tokens alone" in reason and "'continue'" in reason


def test_a_reduction_over_the_tokens_is_caught_even_when_the_first_call_fills_its_size():
    registry, fn, centred = _centred_fn()
    full, _ = _inputs(2, 8, seed=4)
    _close(fn(full), centred(full))  # full: served by its graph, and the probe treats position 7 as padding
    assert registry.stats()["tokens"]["centred"]["unsafe_sizes"][8].startswith("positions interact")
    short, _ = _inputs(2, 6, seed=5)
    np.testing.assert_array_equal(fn(short).numpy(), centred(short).numpy())
    assert registry.stats()["tokens"]["centred"]["eager_calls"] == 1


def test_an_output_with_its_tokens_elsewhere_runs_eagerly_with_the_reason():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2)))
    fn = registry.graphed_tokens("moved", batch_arg="ids", token_sizes=SIZES, token_args={"ids": 1})(
        lambda ids: (ids * 2).transpose([1, 0]))
    ids, _ = _inputs(2, 3, seed=0)
    np.testing.assert_array_equal(fn(ids).numpy(), (ids * 2).transpose([1, 0]).numpy())
    reason = registry.stats()["tokens"]["moved"]["unsafe_sizes"][4]
    assert "its tokens are not its axis 1" in reason


def test_calls_above_the_largest_size_run_the_original_counted_with_the_reason():
    layer = PositionAttention()
    registry, fn = _graphed(layer)
    ids, positions = _inputs(1, 9, seed=2)
    for got, want in zip(fn(ids, positions), layer(ids, positions)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    stats = registry.stats()
    assert stats["fallbacks"][0]["reason"] == "9 tokens is more than the largest token size 8; the call ran eagerly"
    assert stats["tokens"]["attend"]["coverage"] == 0.0 and stats["graph_coverage"] == 0.0


def test_graphs_off_runs_the_original_function_unchanged():
    layer = PositionAttention()
    registry = CaptureRegistry(GraphConfig(use_graph=False))
    fn = registry.graphed_tokens("attend", batch_arg="ids", token_sizes=SIZES, token_args={"ids": 1})(layer.forward)
    ids, positions = _inputs(2, 3, seed=0)
    assert [t.shape for t in fn(ids, positions)] == [[2, 3, 16], [2, 3]]
    assert registry.stats()["graphs"] == 0 and registry.stats()["tokens"] == {}


@pytest.mark.parametrize("options, message", [
    (dict(token_sizes=(8, 4), token_args={"ids": 1}), "strictly ascending"),
    (dict(token_sizes=(), token_args={"ids": 1}), "must not be empty"),
    (dict(token_sizes=(4,), token_args={"ids": 0}), "axis 0 holds the rows"),
    (dict(token_sizes=(4,), token_args={"positions": 1}), "does not name 'ids'"),
    (dict(token_sizes=(4,), token_args={"ids": 1}, token_padding={"mask": "zero"}), "not in token_args"),
    (dict(token_sizes=(4,), token_args={"ids": 1}, token_padding={"ids": "edge"}), "the rules are"),
    (dict(token_sizes=(4,), token_args={"ids": 1}, token_padding={"ids": "continue"}), "must be 'zero'"),
])
def test_bad_token_options_are_refused_naming_the_value(options, message):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager"))
    with pytest.raises(ConfigError, match=message):
        registry.graphed_tokens("bad", batch_arg="ids", **options)


def test_token_buckets_are_refused_with_sync_ranks():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", on_rebind="raise"))
    # A real sync_ranks registry needs the parallel environment (tests/test_ranks.py starts ranks); the refusal
    # reads only the config, so one rank stands in with the flag set.
    registry.config = attrs.evolve(registry.config, sync_ranks=True)
    with pytest.raises(ConfigError, match="sync_ranks"):
        registry.graphed_tokens("x", batch_arg="ids", token_sizes=(4,), token_args={"ids": 1})


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_a_paddleformers_llama_forward_bucketed_on_tokens_equals_its_direct_call(backend):
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    model = tiny_llama(seed=0, scale=4.0, **TEST_LLAMA)
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend=backend, capture_sizes=(1, 2)))

    def logits(input_ids, position_ids):
        return model(input_ids=input_ids, position_ids=position_ids, use_cache=False, return_dict=True).logits

    fn = registry.graphed_tokens("llama", batch_arg="input_ids", token_sizes=SIZES,
                                 token_args={"input_ids": 1, "position_ids": 1},
                                 token_padding={"position_ids": "continue"})(logits)
    for rows, tokens in [(2, 3), (1, 4), (2, 6), (1, 8), (2, 5)]:
        ids, positions = _inputs(rows, tokens, seed=rows * 10 + tokens)
        want = logits(ids, positions)
        assert float(want.abs().max()) > 5  # logits of a trained model's magnitude, not near-uniform
        _close(fn(ids, positions), want)
    stats = registry.stats()
    assert stats["tokens"]["llama"]["unsafe_sizes"] == {} and stats["tokens"]["llama"]["coverage"] == 1.0
    assert stats["recaptures"] == 0


def _centred_fn():
    layer = PositionAttention()
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2)))

    def centred(ids):
        hidden = layer.embed(ids)
        return hidden - hidden.mean(axis=1, keepdim=True)

    return registry, registry.graphed_tokens("centred", batch_arg="ids", token_sizes=SIZES,
                                             token_args={"ids": 1})(centred), centred


@pytest.mark.parametrize("opener", [[2, 0], [0, 8], "zeros"])
def test_a_first_call_that_cannot_test_the_padding_never_marks_the_size_safe(opener):
    # 0 tokens, 0 rows, or all-zero ids (a dummy warmup, whose "other" padding is zeros too): the probe cannot
    # show the leak of a mean over the tokens, so the size stays unprobed and the real call is probed.
    registry, fn, centred = _centred_fn()
    first = paddle.zeros([2, 8], dtype="int64") if opener == "zeros" else paddle.zeros(opener, dtype="int64")
    np.testing.assert_array_equal(fn(first).numpy(), centred(first).numpy())
    ids, _ = _inputs(2, 6, seed=7)
    np.testing.assert_array_equal(fn(ids).numpy(), centred(ids).numpy())  # eager: the leak was found
    assert registry.stats()["tokens"]["centred"]["unsafe_sizes"][8].startswith("positions interact")


def test_a_non_tensor_result_that_follows_the_tokens_runs_eagerly():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2)))
    fn = registry.graphed_tokens("counted", batch_arg="ids", token_sizes=SIZES, token_args={"ids": 1})(
        lambda ids: (ids * 2, ids.shape[1]))
    ids, _ = _inputs(2, 3, seed=0)
    assert fn(ids)[1] == 3
    assert "non-tensor result" in registry.stats()["tokens"]["counted"]["unsafe_sizes"][4]


def test_a_function_that_raises_on_its_padding_runs_eagerly_with_the_reason():
    layer = PositionAttention()  # 32 positions: positions 27..29 continued to 8 tokens reach 32
    _, short = _graphed(layer, sizes=(8,))
    ids, _ = _inputs(1, 3, seed=1)
    late = paddle.to_tensor([[27, 28, 29]], dtype="int64")
    for got, want in zip(short(ids, late), layer(ids, late)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert "raises on 3 tokens padded to token size 8" in short.stats()["unsafe_sizes"][8]


@pytest.mark.parametrize("token_args", [{"ids": 1, "position": 1}, {"ids": 1, "kwargs": 1}])
def test_token_args_the_function_does_not_take_are_refused_at_decoration(token_args):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager"))

    def fn(ids, positions=None, **kwargs):
        return ids

    with pytest.raises(ConfigError, match="does not take as named parameters"):
        registry.graphed_tokens("x", batch_arg="ids", token_sizes=(4,), token_args=token_args)(fn)


def test_a_token_argument_left_at_none_runs_eagerly_with_the_reason():
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(1, 2)))

    def fn(ids, positions=None):
        return ids * 2 if positions is None else ids + positions

    graphed = registry.graphed_tokens("x", batch_arg="ids", token_sizes=(4,),
                                      token_args={"ids": 1, "positions": 1})(fn)
    ids, _ = _inputs(1, 3, seed=0)
    np.testing.assert_array_equal(graphed(ids).numpy(), (ids * 2).numpy())
    assert "['positions'] are not tensors" in registry.stats()["fallbacks"][0]["reason"]
    assert graphed.coverage == 0.0
