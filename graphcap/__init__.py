"""graphcap: CUDA-graph / XPU-graph capture for Paddle LLM inference engines.

One flag (``GraphConfig(use_graph=True)``) turns graph mode on; a
``CaptureRegistry`` pads each batch to a capture size, stages inputs into
address-stable static buffers, captures one graph per bucket and replays it.
"""

import warnings

# Paddle warns at import that ccache is missing, which only matters when
# compiling custom ops (graphcap builds its op once, in `make op`).
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from graphcap.buffers import StaticBuffers  # noqa: E402
from graphcap.config import GraphConfig  # noqa: E402
from graphcap.decorator import graphed  # noqa: E402
from graphcap.errors import (  # noqa: E402
    AddressStabilityError,
    CaptureError,
    CaptureSafetyError,
    ConfigError,
    GraphCapError,
    OpBuildError,
    StaticBufferError,
)
from graphcap.guard import allow_host_reads, capture_guard  # noqa: E402
from graphcap.registry import CaptureRegistry, GraphedFunction  # noqa: E402

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
    "allow_host_reads",
    "capture_guard",
    "graphed",
]

__version__ = "0.1.0"
