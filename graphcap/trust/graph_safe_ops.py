"""Graph-safe op registry.

A *graph-safe op* has static output shapes, reads no tensor value on the host,
and writes only to its outputs and its declared in-place inputs. Registering a
Python entry point here lets it run inside a captured region: while a
registered op runs, the capture guard's checks (``graphcap.trust.at_capture_guard``) are
suspended for the code it calls, because the op vouches for it.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from graphcap.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen(kw_only=True)
class GraphSafeOp:
    """What graphcap knows about one registered graph-safe op.

    ``inplace`` names the parameters the op updates at the same address (a
    graph replay relies on them keeping their address); registration checks
    that each is a parameter of the op.
    """

    name: str
    inplace: tuple[str, ...] = ()


_REGISTRY: dict[str, GraphSafeOp] = {}
_STATE = threading.local()


def register_graph_safe_op(name: str, *, inplace: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Register the decorated function as the graph-safe op ``name``.

    The decorated function runs unchanged; while it runs,
    ``in_graph_safe_op()`` is True so capture-time checks let its internals
    (for example the C++ op's shape checks) through. ``inplace`` names the
    parameters the op updates at the same address. Raises ``ConfigError``
    when ``name`` is taken or ``inplace`` names a parameter the function
    does not have.
    """

    def decorate(fn: F) -> F:
        if name in _REGISTRY:
            raise ConfigError(f"graph-safe op {name!r} is already registered; pick another name")
        parameters = inspect.signature(fn).parameters
        unknown = [arg for arg in inplace if arg not in parameters]
        if unknown:
            raise ConfigError(
                f"graph-safe op {name!r}: inplace names {unknown!r}, which are not parameters of "
                f"{fn.__qualname__}{tuple(parameters)}; list only the parameters it updates in place"
            )
        _REGISTRY[name] = GraphSafeOp(name=name, inplace=tuple(inplace))

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            _STATE.depth = getattr(_STATE, "depth", 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                _STATE.depth -= 1

        run.__graph_safe_op__ = _REGISTRY[name]  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def in_graph_safe_op() -> bool:
    """True while a registered graph-safe op runs on this thread."""
    return getattr(_STATE, "depth", 0) > 0


def graph_safe_ops() -> dict[str, GraphSafeOp]:
    """A copy of the registry: op name -> ``GraphSafeOp``."""
    return dict(_REGISTRY)


def is_graph_safe_op(name: str) -> bool:
    """True when ``name`` is registered as a graph-safe op."""
    return name in _REGISTRY
