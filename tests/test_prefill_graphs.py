"""Prefill under graphs in ``GraphedCausalLM``: prompts of one step padded to a (rows, tokens) bucket.

Tokens are compared exactly with the model's own greedy decoding (the whole
sequence recomputed every step, no cache) and with the same engine prefilling
eagerly, one prompt at a time (``prefill_capture_sizes`` unset); sampled runs
are seeded and compared token for token with the eager prefill.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import TEST_LLAMA, full_recompute_greedy, paddleformers_transformers, scaled_2d

from graphcap import ConfigError, GraphConfig

# Lengths 1..11 against sizes (4, 8): every bucket padded and full, and one prompt past the largest.
PROMPTS = [[5, 9, 17, 3], [7, 7], [100, 2, 40, 41, 42, 43], [1], [8, 9, 10, 11, 12, 13, 14, 15],
           [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]
MAX_NEW = 5
MAX_LEN = 24
SIZES = (4, 8)
BACKENDS = ["eager", "static"]


def _build(kind: str) -> paddle.nn.Layer:
    transformers = paddleformers_transformers()
    small = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, fuse_rms_norm=False)
    paddle.seed(0)
    if kind == "llama":
        from graphcap.integrations.paddleformers.tiny import tiny_llama

        return tiny_llama(seed=0, scale=4.0, **TEST_LLAMA)
    if kind == "gemma3":
        config = transformers.Gemma3TextConfig(**small, head_dim=16, sliding_window=512)
        return scaled_2d(transformers.Gemma3ForCausalLM(config))
    if kind == "ernie4_5":  # the MoE class with dense layers only (its routing kernel is GPU-only)
        config = transformers.Ernie4_5_MoeConfig(**small, moe_layer_start_index=2, moe_num_experts=4,
                                                 moe_intermediate_size=64)
        return scaled_2d(transformers.Ernie4_5_MoeForCausalLM(config))
    raise AssertionError(kind)


@pytest.fixture(scope="module", params=["llama", "gemma3", "ernie4_5"])
def model(request):
    built = _build(request.param)
    return built, [full_recompute_greedy(built, prompt, MAX_NEW) for prompt in PROMPTS]


def _lm(model, *, backend="eager", prefill=SIZES, use_graph=True, max_batch=4, **options):
    from graphcap.integrations.paddleformers import GraphedCausalLM

    config = GraphConfig(use_graph=use_graph, backend=backend, capture_sizes=(1, 2, 4), prefill_capture_sizes=prefill,
                         **options)
    return GraphedCausalLM(model, config, max_batch=max_batch, max_len=MAX_LEN)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_graphs_decode_token_equal_to_the_models_own_recompute(model, backend):
    built, want = model
    lm = _lm(built, backend=backend)
    assert lm.generate(PROMPTS, MAX_NEW) == want
    stats = lm.stats()
    # 4 slots: the first step admits 4 prompts (lengths 4, 2, 6, 1: buckets 4 and 8), later steps the rest.
    assert stats["prefill"] == {"bucketed_prompts": 5, "too_long_prompts": 1, "tokens": 21,
                                "padded_tokens": 4 * 3 + 8 * 2 - 21}
    assert stats["coverage"]["prefill_4"] == 1.0 and stats["coverage"]["prefill_8"] == 1.0
    # Prefill's host-side counters change every call: no graph (decode or prefill) may recapture for it.
    assert stats["recaptures"] == 0, stats["recapture_reasons"]
    reasons = [item["reason"] for item in stats["fallbacks"]]
    assert reasons == ["a prompt of 11 tokens is longer than the largest prefill capture size 8; it was prefilled "
                       "eagerly"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_tokens_are_identical_to_the_eager_prefill(model, backend):
    built, _ = model
    graphed = _lm(built, backend=backend).generate(PROMPTS, MAX_NEW, greedy=False, seed=11, top_k=20)
    eager = _lm(built, backend=backend, prefill=None).generate(PROMPTS, MAX_NEW, greedy=False, seed=11, top_k=20)
    assert graphed == eager
    assert len({token for output in graphed for token in output}) > 3  # sampled tokens do vary


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_size_first_captured_full_is_right_when_replayed_padded(backend):
    built = _build("llama")
    full = [[5, 9, 17, 3], [60, 61, 62, 63], [8, 9, 10, 11, 12, 13, 14, 15], [1, 2, 3, 4, 5, 6, 7, 8]]
    padded = [[5, 9, 17], [60, 61], [8, 9, 10, 11, 12, 13, 14], [1, 2, 3, 4, 5]]
    lm = _lm(built, backend=backend)
    # One step admits all four: prefill_4 and prefill_8 are each captured at 2 rows from prompts that fill them.
    assert lm.generate(full, MAX_NEW) == [full_recompute_greedy(built, prompt, MAX_NEW) for prompt in full]
    captured = lm.stats()["captures"]
    assert lm.stats()["prefill"]["padded_tokens"] == 0
    # The same (rows, tokens) buckets, now padded (1, 2, 1 and 3 positions): replayed, not recaptured.
    assert lm.generate(padded, MAX_NEW) == [full_recompute_greedy(built, prompt, MAX_NEW) for prompt in padded]
    stats = lm.stats()
    assert stats["captures"] == captured and stats["recaptures"] == 0, stats["recapture_reasons"]
    assert stats["prefill"]["padded_tokens"] == 7 and stats["eager_fallbacks"] == 0


def test_graphs_off_runs_the_same_bucketed_prefill_eagerly():
    built = _build("llama")
    want = [full_recompute_greedy(built, prompt, MAX_NEW) for prompt in PROMPTS]
    lm = _lm(built, use_graph=False)
    assert lm.generate(PROMPTS, MAX_NEW) == want
    assert lm.stats()["captures"] == 0 and lm.stats()["prefill"]["bucketed_prompts"] == 5


def test_positions_past_a_prompts_end_are_written_then_overwritten_by_decode_before_any_read():
    built = _build("llama")
    graphed, eager = _lm(built), _lm(built, prefill=None)
    prompt = [5, 9, 17]  # 3 tokens in the 4-token bucket: position 3 is padding
    for lm in (graphed, eager):
        lm.generate([prompt], 1)  # prefill only: the first token comes from the prefill
    # The last layer's keys of slot 0 (the first layer's key for the padding token 0, whose embedding is the
    # zero padding row, is zero: the last layer's is not).
    keys = {name: lm.cache.layers[-1].keys[0].numpy().copy() for name, lm in (("graphed", graphed), ("eager", eager))}
    scale = max(1.0, float(np.abs(keys["eager"]).max()))
    # Real positions: the same keys (the padded batch may round differently: float32 bound, scaled to the keys).
    np.testing.assert_allclose(keys["graphed"][:, :3], keys["eager"][:, :3], rtol=0, atol=1e-5 * scale)
    # The padding position was written (eager prefill never touches it) ...
    assert np.abs(keys["graphed"][:, 3]).max() > 0 and np.abs(keys["eager"][:, 3]).max() == 0
    # ... and the first decode step writes it before attending it: the same keys there, the same tokens.
    outputs = [lm.generate([prompt], 3) for lm in (graphed, eager)]
    assert outputs[0] == outputs[1] == [full_recompute_greedy(built, prompt, 3)]
    after = [lm.cache.layers[-1].keys[0].numpy()[:, :5] for lm in (graphed, eager)]
    np.testing.assert_allclose(after[0], after[1], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("sizes, message", [
    ((), "must not be empty"),
    ((0, 8), "positive integers"),
    ((8, 4), "strictly ascending"),
    ((4, 4), "strictly ascending"),
    ("16", "non-empty, strictly ascending"),
    ((True,), "positive integers"),
])
def test_bad_prefill_sizes_are_refused_naming_the_value(sizes, message):
    with pytest.raises(ConfigError, match=message):
        GraphConfig(prefill_capture_sizes=sizes)


def test_prefill_sizes_the_engine_cannot_serve_are_refused_at_construction():
    built = _build("llama")
    with pytest.raises(ConfigError, match=r"prefill_capture_sizes=\[4, 32\] holds 32 tokens, more than max_len=24"):
        _lm(built, prefill=(4, 32))
    with pytest.raises(ConfigError, match="sync_ranks"):
        _lm(built, sync_ranks=True, on_rebind="raise")
