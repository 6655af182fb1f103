"""A PaddleFormers causal LM decoding under graphcap's graphs with a static KV cache.

The model is PaddleFormers' own ``LlamaForCausalLM`` (2 layers, 4 heads over 2
kv heads: grouped-query attention), randomly initialised and its weights
scaled so greedy tokens vary. Graphs off is checked against the model's own
full recomputation of every sequence; graphs on against graphs off, token for
token, on the ``eager`` and ``static`` backends.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import TEST_LLAMA, full_recompute_greedy, paddleformers_transformers, tiny_llama_config

from graphcap import AddressStabilityError, ConfigError, GraphConfig

BACKENDS = ["eager", "static"]
PROMPTS = [[5, 9, 17, 3], [7, 7], [100, 2, 40, 41, 42, 43], [1], [8, 9, 10]]
MAX_NEW = 6


@pytest.fixture(scope="module")
def llama():
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    # Random init is nearly uniform: scaled weights make greedy tokens vary.
    return tiny_llama(seed=0, scale=4.0, **TEST_LLAMA)


def graphed(llama, *, use_graph=True, backend="eager", max_batch=4, max_len=16, **options):
    from graphcap.integrations.paddleformers import GraphedCausalLM

    config = GraphConfig(use_graph=use_graph, backend=backend, capture_sizes=(1, 2, 4), **options)
    return GraphedCausalLM(llama, config, max_batch=max_batch, max_len=max_len)


@pytest.fixture(scope="module")
def reference(llama):
    return [full_recompute_greedy(llama, prompt, MAX_NEW) for prompt in PROMPTS]


# The cache ----------------------------------------------------------------------------


def test_static_cache_writes_in_place_at_each_rows_slot_and_position(llama):
    from graphcap.integrations.paddleformers import StaticCache

    cache = StaticCache.for_model(llama, slots=3, max_len=8)
    layer = cache.layers[0]
    assert list(layer.keys.shape) == [3, 2, 8, 16]  # kv heads (2) < heads (4): grouped-query attention
    address = layer.keys.data_ptr()
    keys, values = paddle.randn([2, 2, 1, 16]), paddle.randn([2, 2, 1, 16])
    with cache.bind(paddle.to_tensor([2, 0]), paddle.to_tensor([[5], [1]])):
        got_keys, got_values = cache.update(keys, values, 0)
    assert layer.keys.data_ptr() == address  # no re-allocation
    expected = np.zeros([3, 2, 8, 16], dtype=np.float32)
    expected[2, :, 5] = keys.numpy()[0, :, 0]
    expected[0, :, 1] = keys.numpy()[1, :, 0]
    np.testing.assert_array_equal(layer.keys.numpy(), expected)
    np.testing.assert_array_equal(got_keys.numpy(), expected[[2, 0]])  # the rows' whole caches
    assert list(got_values.shape) == [2, 2, 8, 16]
    assert cache._rows is None  # the binding ends with the forward


def test_static_cache_refuses_an_unbound_update(llama):
    from graphcap.integrations.paddleformers import StaticCache

    cache = StaticCache.for_model(llama, slots=2, max_len=8)
    with pytest.raises(ConfigError, match=r"cache\.bind\(slot_ids, position_ids\)"):
        cache.update(paddle.zeros([1, 2, 1, 16]), paddle.zeros([1, 2, 1, 16]), 0)


def test_cache_tensors_are_registry_buffers_checked_on_replay(llama):
    model = graphed(llama)
    names = [name for name in model.registry.buffers if name.startswith("cache.")]
    assert names == ["cache.k0", "cache.v0", "cache.k1", "cache.v1"]
    model.generate([[5, 9]], 3)
    model.registry.buffers._unsafe_rebind("cache.k0", paddle.zeros(model.cache.layers[0].keys.shape))
    with pytest.raises(AddressStabilityError, match="cache.k0"):
        model.generate([[5, 9]], 3)


# Equivalence ------------------------------------------------------------------------------


def test_graphs_off_equals_the_models_own_full_recomputation(llama, reference):
    assert graphed(llama, use_graph=False).generate(PROMPTS, MAX_NEW) == reference
    assert len({tuple(tokens) for tokens in reference}) == len(PROMPTS)  # the tokens vary


@pytest.mark.parametrize("backend", BACKENDS)
def test_graphs_on_equals_graphs_off_greedy(llama, reference, backend):
    model = graphed(llama, backend=backend)
    assert model.generate(PROMPTS, MAX_NEW) == reference
    stats = model.stats()
    # 5 prompts over 4 slots: decode steps of 4, then the fifth prompt, in buckets 4, 2 and 1.
    assert stats["replays"] >= MAX_NEW - 1 and stats["eager_fallbacks"] == 0 and stats["fallbacks"] == []
    assert stats["capture_failures"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_generation_is_identical_graphs_off_and_on(llama, backend):
    options = dict(greedy=False, top_p=0.9, top_k=20, seed=7)
    off = graphed(llama, use_graph=False).generate(PROMPTS, MAX_NEW, **options)
    on_model = graphed(llama, backend=backend)
    assert on_model.generate(PROMPTS, MAX_NEW, **options) == off
    assert off != graphed(llama, use_graph=False).generate(PROMPTS, MAX_NEW)  # sampling did something
    assert graphed(llama, use_graph=False).generate(PROMPTS, MAX_NEW, **{**options, "seed": 8}) != off
    assert on_model.stats()["eager_fallbacks"] == 0


def test_each_request_has_its_own_seed_stream(llama):
    model = graphed(llama, use_graph=False)
    alone = model.generate([PROMPTS[0]], MAX_NEW, greedy=False, seed=3)
    together = model.generate([PROMPTS[0], PROMPTS[2]], MAX_NEW, greedy=False, seed=3)
    assert together[0] == alone[0]  # request 0's stream does not depend on its neighbours


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_finishing_early_free_their_slot(llama, reference, backend):
    eos = reference[1][0]  # prompt 1's first token: it finishes at once
    off = graphed(llama, use_graph=False, max_batch=2).generate(PROMPTS, MAX_NEW, eos_token_id=eos)
    assert off[1] == [eos]
    for tokens, full in zip(off, reference):
        # Each output is the reference, cut at the first eos.
        assert tokens == (full[: full.index(eos) + 1] if eos in full else full)
    model = graphed(llama, backend=backend, max_batch=2)
    assert model.generate(PROMPTS, MAX_NEW, eos_token_id=eos) == off


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_all_then_generate_replays_only(llama, reference, backend):
    model = graphed(llama, backend=backend)
    assert model.capture_all() == 6  # buckets 1, 2, 4 for greedy and for sampled steps
    captures = model.stats()["captures"]
    assert model.generate(PROMPTS, MAX_NEW) == reference
    assert model.stats()["captures"] == captures  # the dummies wrote only the scratch slot


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_stays_token_equal_across_a_replan(llama, reference, backend):
    model = graphed(llama, backend=backend)
    assert model.generate(PROMPTS, MAX_NEW) == reference
    sizes = model.registry.replan(max_graphs=2)
    assert all(len(planned) <= 2 and planned[-1] == 4 for planned in sizes.values())
    assert model.stats()["replans"] >= 1
    assert model.generate(PROMPTS, MAX_NEW) == reference  # graphs at the new sizes capture on first use
    assert model.stats()["eager_fallbacks"] == 0


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, max_new, message",
    [
        ([[1] * 15], 2, r"prompt 0 has 15 tokens and max_new_tokens=2, which needs 17 cache positions"),
        ([[1, 2], [3, 128]], 2, r"prompt 1 holds token id 128 outside the vocabulary \[0, 128\)"),
        ([[1], []], 2, "prompt 1 is empty"),
        ([[1]], 0, "max_new_tokens=0 must be a positive integer"),
    ],
)
def test_bad_prompts_name_the_value_and_leave_the_model_usable(llama, reference, prompts, max_new, message):
    model = graphed(llama)
    with pytest.raises(ConfigError, match=message):
        model.generate(prompts, max_new)
    assert model.generate(PROMPTS, MAX_NEW) == reference


def test_more_prompts_than_slots_are_queued(llama, reference):
    assert graphed(llama, max_batch=1).generate(PROMPTS, MAX_NEW) == reference


def test_gpu_only_fused_kernel_is_refused_with_the_fix():
    transformers = paddleformers_transformers()
    model = transformers.LlamaForCausalLM(tiny_llama_config(fuse_rms_norm=True))
    model.eval()
    from graphcap.integrations.paddleformers import GraphedCausalLM

    with pytest.raises(ConfigError, match="fuse_rms_norm=False"):
        GraphedCausalLM(model, GraphConfig(use_graph=True), max_batch=2, max_len=8)


def test_sizes_the_model_cannot_serve_are_refused(llama):
    with pytest.raises(ConfigError, match="max_len=100 exceeds the model's max_position_embeddings=64"):
        graphed(llama, max_len=100)
    llama.train()
    try:
        with pytest.raises(ConfigError, match=r"model.eval\(\)"):
            graphed(llama)
    finally:
        llama.eval()


def test_core_package_does_not_import_paddleformers():
    import subprocess
    import sys

    code = "import sys, graphcap, graphcap.registry; print('paddleformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def gemma3(sliding_window: int):
    transformers = paddleformers_transformers()
    config = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, fuse_rms_norm=False,
        sliding_window=sliding_window,
    )
    paddle.seed(0)
    model = transformers.Gemma3ForCausalLM(config)
    model.eval()
    return model


def test_another_model_class_gemma3_matches_its_own_recomputation():
    model = gemma3(sliding_window=512)
    prompts = [[5, 9, 17], [7, 7, 1]]
    want = [full_recompute_greedy(model, prompt, 4) for prompt in prompts]
    assert graphed(model, backend="static").generate(prompts, 4) == want


def test_sliding_windows_shorter_than_the_cache_are_refused():
    with pytest.raises(ConfigError, match=r"sliding_window=4.*use max_len <= 4"):
        graphed(gemma3(sliding_window=4), max_len=16)
