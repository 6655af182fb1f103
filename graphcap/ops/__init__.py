"""graphcap's C++ custom ops and their Python API.

``build_sampling_params`` (eager form) / ``build_sampling_params_into``
(capture form, graph-safe) build per-row top_p, top_k and seeds and advance
``infer_seed`` in place; ``build_sampling_params_reference`` is the numpy
ground truth and ``padding_sampling_params`` the legacy Paddle-ops builder.
The ops are compiled once into a cache (``make op`` /
``python -m graphcap.ops.build``) and loaded on first use.
"""

from graphcap.ops._loader import build, build_root, library_path, load_ops
from graphcap.ops.sampling_params import (
    KUNLUN_MAX_INFER_SEED,
    MAX_INFER_SEED,
    PAD_SEED,
    PAD_TOP_K,
    PAD_TOP_P,
    build_sampling_params,
    build_sampling_params_into,
    build_sampling_params_reference,
    padding_sampling_params,
)

__all__ = [
    "KUNLUN_MAX_INFER_SEED",
    "MAX_INFER_SEED",
    "PAD_SEED",
    "PAD_TOP_K",
    "PAD_TOP_P",
    "build",
    "build_root",
    "build_sampling_params",
    "build_sampling_params_into",
    "build_sampling_params_reference",
    "library_path",
    "load_ops",
    "padding_sampling_params",
]
