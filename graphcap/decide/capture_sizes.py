"""The capture-size lists engines ship: FastDeploy's, vLLM's, SGLang's and TensorRT-LLM's defaults.

Each rule is written from its engine's documented definition (the source is
cited beside it) and has the signature ``rule(max_size, *, multiplier=1)``:
the sizes up to ``max_size`` requests, ascending, each times ``multiplier``
(1+k rows per request with k draft tokens). FastDeploy's list is graphcap's
default (``GraphConfig.capture_sizes=None``, through
``graphcap.decide.buckets.default_capture_sizes``); the others are baselines that
``benchmarks/bench_buckets.py`` compares the size planner
(``graphcap.decide.size_planner``) against. This module sits at the bottom of
graphcap's layers: it imports no paddle and nothing of graphcap but its
argument checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from graphcap.validators import positive_int

__all__ = ["ENGINE_RULES", "fastdeploy_sizes", "sglang_sizes", "trtllm_sizes", "vllm_sizes"]


def _finish(sizes: Iterable[int], max_size: int, multiplier: int) -> tuple[int, ...]:
    kept = sorted({size for size in sizes if size <= max_size})
    return tuple(size * multiplier for size in kept)


def _check_rule_args(max_size: int, multiplier: int) -> tuple[int, int]:
    return positive_int(max_size, "max_size"), positive_int(multiplier, "multiplier")


def fastdeploy_sizes(max_size: int, *, multiplier: int = 1) -> tuple[int, ...]:
    """FastDeploy's default capture sizes for ``max_size`` requests, each times ``multiplier``.

    1, 2, 4, then 8..128 step 8, 144..256 step 16, 288..1024 step 32, plus
    ``max_size`` itself, filtered to <= ``max_size``. FastDeploy's default
    maximum is ``min(512, max_num_seqs)``. With k draft tokens pass
    ``multiplier=k+1``: the filter counts requests, the sizes count rows.
    """
    # Source: FastDeploy fastdeploy/config.py, GraphOptimizationConfig
    # (init_with_cudagrpah_size / _set_cudagraph_sizes) and docs/features/graph_optimization.md.
    max_size, multiplier = _check_rule_args(max_size, multiplier)
    candidates = [1, 2, 4, *range(8, 129, 8), *range(144, 257, 16), *range(288, 1025, 32), max_size]
    return _finish(candidates, max_size, multiplier)


def vllm_sizes(max_size: int, *, multiplier: int = 1) -> tuple[int, ...]:
    """vLLM's default CUDA-graph capture sizes up to ``max_size``, each times ``multiplier``.

    1, 2, 4, every 8 from 8 to 248, then every 16 from 256 to ``max_size``
    (``max_cudagraph_capture_size``, by default ``min(2 * max_num_seqs, 512)``).
    ``max_size`` itself is not added when it is off that grid.
    """
    # Source: vLLM vllm/config/vllm.py, VllmConfig._set_cudagraph_sizes:
    # [1, 2, 4] + range(8, 256, 8) + range(256, max_graph_size + 1, 16), then filtered.
    max_size, multiplier = _check_rule_args(max_size, multiplier)
    candidates = [1, 2, 4, *range(8, 256, 8), *range(256, max_size + 1, 16)]
    return _finish(candidates, max_size, multiplier)


def sglang_sizes(max_size: int, *, multiplier: int = 1) -> tuple[int, ...]:
    """SGLang's default CUDA-graph batch sizes up to ``max_size``, each times ``multiplier``.

    1, 2, 4, 8, 12, every 8 from 16 to 256, every 16 from 272 to 496, every 32
    from 512, filtered to <= ``max_size`` (``--cuda-graph-max-bs``, whose default
    depends on GPU memory, e.g. 160 to 512), plus ``max_size`` itself.
    """
    # Source: SGLang python/sglang/srt/server_args.py, ServerArgs._generate_cuda_graph_batch_sizes
    # (non-speculative branch; recent versions append cuda_graph_max_bs when off the grid).
    max_size, multiplier = _check_rule_args(max_size, multiplier)
    candidates = [
        1, 2, 4, 8, 12,
        *range(16, 257, 8),
        *range(272, 512, 16),
        *range(512, max_size + 1, 32),
        max_size,
    ]  # fmt: skip
    return _finish(candidates, max_size, multiplier)


def trtllm_sizes(max_size: int = 128, *, multiplier: int = 1) -> tuple[int, ...]:
    """TensorRT-LLM's CUDA-graph batch sizes with padding enabled, each times ``multiplier``.

    1, 2, 4, every 8 from 8 to 128, then every 64 (192, 256, ...) up to
    ``max_size``, plus ``max_size`` itself; the default maximum is 128.
    """
    # Source: TensorRT-LLM tensorrt_llm/llmapi/llm_args.py,
    # CudaGraphConfig._generate_cuda_graph_batch_sizes(max_batch_size, enable_padding=True).
    max_size, multiplier = _check_rule_args(max_size, multiplier)
    candidates = [1, 2, 4, *range(8, 129, 8), *range(192, max_size + 1, 64), max_size]
    return _finish(candidates, max_size, multiplier)


ENGINE_RULES: dict[str, Callable[..., tuple[int, ...]]] = {
    "fastdeploy": fastdeploy_sizes,
    "vllm": vllm_sizes,
    "sglang": sglang_sizes,
    "tensorrt-llm": trtllm_sizes,
}
"""Engine name -> its default capture-size rule ``rule(max_size, *, multiplier=1)``."""
