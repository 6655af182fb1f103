"""Real-hardware tests: graphs on a CUDA or XPU device equal eager. Skipped without a device.

The place comes from Paddle (a CUDA build runs on ``gpu``, an XPU build on
``xpu``). Replays of a bucket larger than the batch are compared with a
tolerance: device libraries pick kernels per row count, so a padded batch can
round differently from the unpadded one; a full bucket is compared exactly.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import AddressStabilityError, CaptureRegistry, GraphConfig
from graphcap.execute.backends import device_graphs_supported

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(not device_graphs_supported(), reason="needs a CUDA/XPU build of Paddle and a device"),
]


@pytest.fixture(autouse=True)
def _on_the_device():
    paddle.set_device("gpu" if paddle.is_compiled_with_cuda() else "xpu")
    yield
    paddle.set_device("cpu")


def device_registry(sizes=(1, 2, 4, 8), **options) -> CaptureRegistry:
    return CaptureRegistry(GraphConfig(use_graph=True, backend="device", capture_sizes=sizes, **options))


def test_device_replay_equals_eager_for_every_batch_size():
    w1, w2 = paddle.randn([64, 128]), paddle.randn([128, 32])

    def forward(*, x):
        return paddle.matmul(paddle.nn.functional.silu(paddle.matmul(x, w1)), w2)

    reg = device_registry()
    graphed = reg.graphed("t", batch_arg="x")(forward)
    for rows in range(1, 9):
        x = paddle.randn([rows, 64])
        got, want = graphed(x=x).numpy(), forward(x=x).numpy()
        if rows in (1, 2, 4, 8):
            np.testing.assert_array_equal(got, want)  # the bucket is the batch: the same kernels
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    stats = reg.stats()
    assert stats["captures"] == 4 and stats["eager_fallbacks"] == 0
    # Outputs are prefixes of one tensor at the largest bucket.
    assert stats["output_bytes"] == 8 * 32 * 4
    reg.reset()


def test_rebinding_is_caught_on_the_device():
    layer = paddle.nn.Linear(16, 16)
    reg = device_registry(sizes=(4,))
    graphed = reg.graphed("t", batch_arg="x")(lambda x: layer(x))
    x = paddle.randn([4, 16])
    np.testing.assert_array_equal(graphed(x=x).numpy(), layer(x).numpy())
    layer.weight = paddle.create_parameter([16, 16], "float32")
    with pytest.raises(AddressStabilityError, match=r"layer\.weight"):
        graphed(x=x)


@pytest.mark.parametrize("impl", ["custom", "paddle"])
@pytest.mark.parametrize("max_seed", [9223372036854775806, 2147483646])
def test_sampling_params_kernels_match_the_reference_on_the_device(impl, max_seed):
    from graphcap.ops import build_sampling_params, build_sampling_params_reference

    rng = np.random.default_rng(7)
    batch = 64
    lens = rng.integers(0, 5, size=batch).astype(np.int32)
    top_p = rng.random(batch).astype(np.float32)
    top_k = rng.integers(0, 50, size=batch).astype(np.int64)
    seeds = rng.integers(max_seed - 100, max_seed, size=batch).astype(np.int64)  # near the wrap-around
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    want = build_sampling_params_reference(
        top_p=top_p, top_k=top_k, infer_seed=seeds.copy(), seq_lens_this_time=lens, cu_seqlens_q_output=cu,
        token_num_output=int(cu[-1]), increment_value=4, max_seed=max_seed,
    )
    infer_seed = paddle.to_tensor(seeds)
    got = build_sampling_params(
        top_p=paddle.to_tensor(top_p), top_k=paddle.to_tensor(top_k), infer_seed=infer_seed,
        seq_lens_this_time=paddle.to_tensor(lens), cu_seqlens_q_output=paddle.to_tensor(cu),
        token_num_output=int(cu[-1]), increment_value=4, max_seed=max_seed, impl=impl,
    )
    for a, b in zip(got, want[:3]):
        np.testing.assert_array_equal(np.asarray(a.numpy()).reshape(-1), np.asarray(b).reshape(-1))
    np.testing.assert_array_equal(infer_seed.numpy(), want[3])


def test_mtp_engine_graphs_on_equals_off_on_the_device():
    from graphcap.models.corpus import make_prompts
    from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions

    requests = [Request(prompt=p, max_new_tokens=12, seed=i, top_p=0.9, top_k=32)
                for i, p in enumerate(make_prompts(8, seed=3))]
    results = []
    for use_graph in (False, True):
        config = GraphConfig(use_graph=use_graph, backend="device", num_speculative_tokens=2, max_capture_size=8)
        engine = MTPEngine(config, max_batch=8, sampling=SamplingOptions(greedy=True))
        tokens, _ = engine.generate(requests)
        results.append(tokens)
    assert results[0] == results[1]


def test_paddleformers_llama_on_the_device():
    pytest.importorskip("paddleformers")
    from graphcap.integrations.paddleformers import GraphedCausalLM
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    model = tiny_llama(seed=0)
    prompts = [[5, 9, 17], [7, 7], [1, 2, 3, 4, 5]]
    outputs = []
    for use_graph in (False, True):
        config = GraphConfig(use_graph=use_graph, backend="device", capture_sizes=(1, 2, 4))
        outputs.append(GraphedCausalLM(model, config, max_batch=4, max_len=32).generate(prompts, 8))
    assert outputs[0] == outputs[1]
