"""The built-in model used by the demo and benchmarks: a tiny LM, its MTP draft head and KV caches.

``load_tiny_lm(max_batch)`` loads the shipped weights (``tiny_lm.pdparams``, made by
``python -m graphcap.models.train``); ``corpus.make_prompts`` gives demo prompts.
"""

from graphcap.models.tiny_lm import (
    KVCache,
    MTPHead,
    TinyLM,
    TinyLMBundle,
    TinyLMConfig,
    WeightsNotFoundError,
    load_tiny_lm,
)

__all__ = [
    "KVCache",
    "MTPHead",
    "TinyLM",
    "TinyLMBundle",
    "TinyLMConfig",
    "WeightsNotFoundError",
    "load_tiny_lm",
]
