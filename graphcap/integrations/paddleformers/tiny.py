"""A small randomly initialised PaddleFormers Llama for demos, benchmarks and tests (nothing is downloaded).

``LlamaForCausalLM`` built from a config: grouped-query attention (more heads
than kv heads), ``fuse_rms_norm=False`` (the fused kernel is GPU-only) and
eager attention. Random initialisation makes nearly uniform logits, so greedy
decoding repeats one token; ``scale`` multiplies every weight so tokens vary.
"""

from __future__ import annotations

from typing import Any

import paddle

__all__ = ["TINY_LLAMA", "tiny_llama", "tiny_llama_config"]

#: The demo's model: 4 layers, 8 heads over 2 kv heads, 128 positions.
TINY_LLAMA: dict[str, Any] = dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=128,
)


def tiny_llama_config(**overrides: Any) -> Any:
    """A ``LlamaConfig`` of ``TINY_LLAMA``'s sizes that runs on CPU; ``overrides`` replace any field."""
    from paddleformers.transformers import LlamaConfig

    options: dict[str, Any] = {**TINY_LLAMA, "fuse_rms_norm": False, **overrides}
    return LlamaConfig(**options)


def tiny_llama(*, seed: int = 0, scale: float = 4.0, **overrides: Any) -> paddle.nn.Layer:
    """``LlamaForCausalLM`` from ``tiny_llama_config(**overrides)``, seeded, weights times ``scale``, in eval mode."""
    from paddleformers.transformers import LlamaForCausalLM

    paddle.seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    model.eval()
    if scale != 1.0:
        with paddle.no_grad():
            for param in model.parameters():
                param.set_value(param * scale)
    return model
