"""graphcap: CUDA-graph / XPU-graph capture for Paddle LLM inference engines.

One flag (``GraphConfig(use_graph=True)``) turns graph mode on; a
``CaptureRegistry`` pads each batch to a capture size, stages inputs into
address-stable static buffers, captures one graph per bucket and replays it.
"""

from graphcap.buffers import StaticBuffers
from graphcap.config import GraphConfig
from graphcap.decorator import graphed
from graphcap.errors import (
    AddressStabilityError,
    CaptureError,
    CaptureSafetyError,
    ConfigError,
    GraphCapError,
    OpBuildError,
    StaticBufferError,
)
from graphcap.guard import allow_host_reads, capture_guard
from graphcap.registry import CaptureRegistry, GraphedFunction

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
