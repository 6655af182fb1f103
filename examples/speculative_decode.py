"""Speculative decoding under graphs on PaddleFormers models: ``python examples/speculative_decode.py``.

Two draft kinds, each compared with plain decoding (graphs off) of the same
target: ERNIE-4.5 with its own MTP layer (``draft="mtp"``), and a Llama with a
draft model that is a copy of it (so every draft is accepted). Models are
built from small configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")  # quiet Paddle's C++ info lines
warnings.filterwarnings("ignore", category=UserWarning)

import paddle  # noqa: E402

import graphcap  # noqa: E402
from graphcap.integrations.paddleformers import GraphedCausalLM  # noqa: E402
from graphcap.integrations.paddleformers.tiny import tiny_llama  # noqa: E402

PROMPTS = [[1, 5, 9], [2, 7]]


def ernie_with_mtp() -> paddle.nn.Layer:
    """A small ERNIE-4.5 with one MTP layer, dense (its MoE routing kernel is GPU-only)."""
    from paddleformers.transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    config = Ernie4_5_MoeConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                fuse_rms_norm=False, moe_layer_start_index=2, num_nextn_predict_layers=1)
    paddle.seed(0)
    return Ernie4_5_MoeForCausalLM(config).eval()


def compare(name: str, model: paddle.nn.Layer, draft: str | paddle.nn.Layer) -> None:
    """Speculate with ``draft`` under graphs and print whether the tokens equal plain decoding."""
    config = graphcap.GraphConfig(use_graph=True, backend="static", num_speculative_tokens=2)
    lm = GraphedCausalLM(model, config, max_batch=2, max_len=48, draft=draft)
    tokens = lm.generate(PROMPTS, max_new_tokens=8)
    plain = GraphedCausalLM(model, graphcap.GraphConfig(use_graph=False), max_batch=2, max_len=48)
    stats = lm.stats()
    print(f"{name}: identical to plain decoding: {tokens == plain.generate(PROMPTS, max_new_tokens=8)}, "
          f"acceptance {stats['acceptance_rate']:.2f}, coverage {stats['graph_coverage']:.2f}, "
          f"replays {stats['replays_per_graph']}")


def main() -> None:
    """ERNIE-4.5's own MTP layer, then a Llama with a draft model."""
    compare("ernie-4.5 draft='mtp'", ernie_with_mtp(), "mtp")  # random MTP weights: acceptance near 0
    compare("llama draft=<copy>", tiny_llama(), tiny_llama())  # a copy of the target: acceptance 1.00


if __name__ == "__main__":
    main()
