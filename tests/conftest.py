"""Shared fixtures: every test runs on the CPU build of Paddle."""

from __future__ import annotations

import os
from typing import Any

import paddle
import pytest

paddle.set_device("cpu")

# `make test` installs the paddleformers extra and sets this, so CI fails rather
# than skips when the third-party model library is missing.
REQUIRE_PADDLEFORMERS = os.environ.get("GRAPHCAP_REQUIRE_PADDLEFORMERS") == "1"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    paddle.seed(1234)


def paddleformers_transformers() -> Any:
    """``paddleformers.transformers``, or a skip (a failure under ``make test``) when it is missing."""
    try:
        import paddleformers.transformers as transformers
    except ImportError:
        if REQUIRE_PADDLEFORMERS:
            raise
        pytest.skip("paddleformers is not installed (pip install 'graphcap[paddleformers]')")
    return transformers


def tiny_llama_config(**overrides: Any) -> Any:
    """A small ``LlamaConfig`` that runs on CPU: 2 layers, grouped-query attention (4 heads, 2 kv heads)."""
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama_config as config

    return config(**{**TEST_LLAMA, **overrides})


# Smaller than the demo's model: the tests build it many times.
TEST_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    """A randomly initialised PaddleFormers ``LlamaForCausalLM`` in eval mode (no weights are downloaded)."""
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama as build

    return build(seed=0, scale=1.0, **TEST_LLAMA)


def full_recompute_greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    """The model's own greedy decode: the whole sequence recomputed every step, no cache."""
    import paddle

    sequence = list(prompt)
    with paddle.no_grad():
        for _ in range(steps):
            logits = model(input_ids=paddle.to_tensor([sequence]), use_cache=False, return_dict=True).logits
            sequence.append(int(paddle.argmax(logits[0, -1]).numpy()))
    return sequence[len(prompt):]


def scaled_2d(model: Any, scale: float = 4.0) -> Any:
    """``model`` in eval mode with every 2-D weight times ``scale``: logits of a trained model's magnitude."""
    import paddle

    model.eval()
    with paddle.no_grad():
        for parameter in model.parameters():
            if len(parameter.shape) == 2:
                parameter.set_value(parameter * scale)
    return model
