"""graphcap: CUDA-graph / XPU-graph capture for Paddle LLM inference engines.

One flag (``GraphConfig(use_graph=True)``) turns graph mode on; a
``CaptureRegistry`` pads each batch to a capture size, stages inputs into
address-stable static buffers, captures one graph per bucket and replays it.
"""

# Paddle is not a hard dependency (its CPU, CUDA and XPU wheels are different
# distributions, and graphcap must not pull the CPU one on top of the others),
# so a missing Paddle is reported here, once, with the wheels to choose from.
import warnings as _warnings

try:
    with _warnings.catch_warnings():
        # `import paddle` warns that ccache is missing, which only matters when
        # compiling custom ops (graphcap builds its op once, in `make op`).
        _warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
        import paddle as _paddle  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        f"graphcap needs PaddlePaddle, but `import paddle` failed ({_exc}). graphcap does not install "
        "Paddle itself, so that it never pulls the CPU wheel on top of an accelerator one; install the "
        "wheel for your hardware: `pip install 'graphcap[cpu]'` (or `pip install paddlepaddle`) for CPU, "
        "`paddlepaddle-gpu` for CUDA GPUs, `paddlepaddle-xpu` for Kunlun XPUs "
        "(see https://www.paddlepaddle.org.cn/install for the index URL that matches your CUDA/XPU version)."
    ) from _exc
else:
    # The import was only a check: leave no `graphcap._paddle` attribute behind.
    del _paddle

import warnings

# Paddle warns at import that ccache is missing, which only matters when
# compiling custom ops (graphcap builds its op once, in `make op`).
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from graphcap.buffers import StaticBuffers  # noqa: E402
from graphcap.config import GraphConfig  # noqa: E402
from graphcap.errors import (  # noqa: E402
    AddressStabilityError,
    CaptureError,
    CaptureSafetyError,
    ConfigError,
    GraphCapError,
    OpBuildError,
    StaticBufferError,
)
from graphcap.graphed_function import GraphedFunction  # noqa: E402
from graphcap.graphed_tokens import TokenBucketedFunction  # noqa: E402
from graphcap.registry import CaptureRegistry  # noqa: E402
from graphcap.trust.at_capture_guard import allow_host_reads, capture_guard  # noqa: E402

__all__ = [
    "AddressStabilityError",
    "CaptureError",
    "CaptureRegistry",
    "CaptureSafetyError",
    "ConfigError",
    "GraphCapError",
    "GraphConfig",
    "GraphedFunction",
    "OpBuildError",
    "StaticBufferError",
    "StaticBuffers",
    "TokenBucketedFunction",
    "allow_host_reads",
    "capture_guard",
]

__version__ = "0.1.0"
