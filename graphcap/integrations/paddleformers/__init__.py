"""PaddleFormers causal LMs under graphcap: a static KV cache and a graphed decode loop.

Needs ``paddleformers`` (``pip install 'graphcap[paddleformers]'``); importing
this package imports it, the core package never does.

* ``StaticCache``: pre-allocated per-layer keys and values written in place.
* ``GraphedCausalLM``: prefill (eager), graphed decode steps and continuous
  batching over a fixed number of slots, with graphcap's sampler.
"""

from graphcap.integrations.paddleformers.cache import StaticCache, StaticLayer
from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM

__all__ = ["GraphedCausalLM", "StaticCache", "StaticLayer"]
