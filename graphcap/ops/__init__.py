"""graphcap's custom ops and their Python API.

``build_sampling_params`` (eager form) / ``build_sampling_params_into``
(capture form, graph-safe) build per-row top_p, top_k and seeds and advance
``infer_seed`` in place, with ``impl="custom"`` (the C++ op: CPU kernel, CUDA
kernel on a CUDA build), ``impl="paddle"`` (the portable kernel of
``graphcap.ops.portable``, standard Paddle ops, for XPU and custom devices) or
``impl="auto"`` (the default: the C++ op where it was built for the place,
else the portable kernel; ``resolve_impl`` says which). Both follow
FastDeploy's calling convention: B = ``len(seq_lens_this_time)``, longer
per-request inputs are read for their first B rows.
``build_sampling_params_reference`` is the numpy ground truth and
``padding_sampling_params`` FastDeploy's legacy builder, operation for
operation (the benchmark baseline). The C++ ops are compiled once into a
cache (``make op`` / ``python -m graphcap.ops.build``) and loaded on first use.

``graphcap.ops.sampler`` is the graph-safe top-k / top-p sampler built on
these ops: ``sample_plain`` (one row per request) and ``sample_speculative``
(1+k rows per request, for MTP verify).
"""

from graphcap.ops import portable
from graphcap.ops._loader import build, build_root, library_path, load_ops
from graphcap.ops.sampling_params import (
    KUNLUN_MAX_INFER_SEED,
    MAX_INFER_SEED,
    PAD_SEED,
    PAD_TOP_K,
    PAD_TOP_P,
    SAMPLING_PARAMS_IMPLS,
    build_sampling_params,
    build_sampling_params_into,
    build_sampling_params_reference,
    padding_sampling_params,
    resolve_impl,
)

__all__ = [
    "KUNLUN_MAX_INFER_SEED",
    "MAX_INFER_SEED",
    "PAD_SEED",
    "PAD_TOP_K",
    "PAD_TOP_P",
    "SAMPLING_PARAMS_IMPLS",
    "build",
    "build_root",
    "build_sampling_params",
    "build_sampling_params_into",
    "build_sampling_params_reference",
    "library_path",
    "load_ops",
    "padding_sampling_params",
    "portable",
    "resolve_impl",
]
