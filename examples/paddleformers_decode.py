"""A PaddleFormers Llama decoding through graphcap: ``python examples/paddleformers_decode.py``.

The model is PaddleFormers' own ``LlamaForCausalLM`` (built from a small
config, random weights, nothing downloaded); its ``forward`` runs unchanged in
every decode step. ``GraphedCausalLM`` gives it a static KV cache and graphs
the decode step; graphs off and on produce the same tokens.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")  # quiet Paddle's C++ info lines
warnings.filterwarnings("ignore", category=UserWarning)

import graphcap  # noqa: E402
from graphcap.integrations.paddleformers import GraphedCausalLM  # noqa: E402
from graphcap.integrations.paddleformers.tiny import tiny_llama  # noqa: E402


def main() -> None:
    """Generate greedily and sampled with graphs on, then greedily with graphs off, and compare."""
    model = tiny_llama()  # yours: LlamaForCausalLM.from_pretrained(...), then model.eval()
    prompts = [[1, 5, 9], [2, 7]]
    lm = GraphedCausalLM(model, graphcap.GraphConfig(use_graph=True, backend="static"), max_batch=4, max_len=64)
    tokens = lm.generate(prompts, max_new_tokens=8)  # greedy
    sampled = lm.generate(prompts, max_new_tokens=8, top_p=0.9, seed=7)  # one seed stream per request
    stats = lm.stats()
    print(f"graphs on:  {tokens}")
    print(f"sampled:    {sampled}")
    print(f"graphs={stats['graphs']} replays={stats['replays']} fallbacks={stats['fallbacks']}")

    eager = GraphedCausalLM(model, graphcap.GraphConfig(use_graph=False), max_batch=4, max_len=64)
    reference = eager.generate(prompts, max_new_tokens=8)
    print(f"graphs off: {reference}")
    print(f"identical: {reference == tokens}")


if __name__ == "__main__":
    main()
