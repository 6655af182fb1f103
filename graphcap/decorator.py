"""``graphcap.graphed(registry, name, ...)``: the module-level form of ``CaptureRegistry.graphed``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphcap.registry import CaptureRegistry, GraphedFunction


def graphed(
    registry: CaptureRegistry, name: str, **options: Any
) -> Callable[[Callable[..., Any]], GraphedFunction | Callable[..., Any]]:
    """Decorator: ``registry.graphed(name, **options)``; see that method for the constraints.

    With ``registry.config.use_graph`` False the decorated function runs
    unchanged and ``__wrapped__`` is the original.
    """
    return registry.graphed(name, **options)
