"""One typed error hierarchy for graphcap.

Every message is one sentence that names the value, what was expected and the
fix, e.g. ``num_tokens=700 exceeds the largest capture size 512; add it to
capture_sizes or let it run eagerly``.
"""

from __future__ import annotations


class GraphCapError(Exception):
    """Base class of every error graphcap raises on purpose."""


class ConfigError(GraphCapError, ValueError):
    """A ``GraphConfig`` field holds a value that is not allowed."""


class StaticBufferError(GraphCapError, ValueError):
    """A write into a static buffer has the wrong dtype, trailing shape or row count."""


class AddressStabilityError(GraphCapError):
    """A static buffer was rebound or moved, so a captured graph would read stale memory."""


class CaptureError(GraphCapError):
    """Capturing a graph failed (the bucket falls back to eager execution)."""


class CaptureSafetyError(GraphCapError):
    """Code inside a captured region reads tensor values on the host or has value-dependent shapes."""


class OpBuildError(GraphCapError, RuntimeError):
    """A C++ custom op could not be built or loaded."""


class OpInputError(StaticBufferError):
    """A custom op was given a malformed input (wrong dtype, rank, batch size or lengths).

    A ``StaticBufferError`` too: the op's inputs and outputs are static buffers.
    """
