"""Calls as name -> value mappings, and back.

The registry keys graphs and stages inputs by argument *name*, so a call is
first turned into one flat mapping (positional arguments bound to their
names, ``**kwargs`` merged in, ``*args`` kept as one tuple under its name),
and the function is later called back from such a mapping, positional-only
parameters and ``*args`` passed positionally.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import paddle

from graphcap.errors import CaptureError

__all__ = ["CallBinder"]

_P = inspect.Parameter


class CallBinder:
    """Binds a function's calls to flat mappings and calls the function from them."""

    def __init__(self, fn: Callable[..., Any], *, name: str) -> None:
        """Read ``fn``'s signature once; ``name`` appears in errors."""
        self.name = name
        # A Layer is called through __call__(*inputs, **kwargs): its arguments are forward's.
        target = fn.forward if isinstance(fn, paddle.nn.Layer) else fn
        self.signature = inspect.signature(target)
        params = self.signature.parameters.values()
        self.var_positional = next((p.name for p in params if p.kind is _P.VAR_POSITIONAL), None)
        self.var_keyword = next((p.name for p in params if p.kind is _P.VAR_KEYWORD), None)
        self.positional_only = tuple(p.name for p in params if p.kind is _P.POSITIONAL_ONLY)
        # The fast path: keyword calls of a function that keyword calls reach whole.
        self.simple = self.var_positional is None and not self.positional_only
        self.defaults = {
            p.name: p.default for p in params
            if p.default is not _P.empty and p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
        }

    def accepts(self, name: str) -> bool:
        """True when ``name`` can be an argument of the function."""
        return name in self.signature.parameters or self.var_keyword is not None

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call ``fn(*args, **kwargs)`` as one flat name -> value mapping (defaults not filled in)."""
        if not args and self.simple:
            return kwargs
        try:
            arguments = self.signature.bind(*args, **kwargs).arguments
        except TypeError as exc:
            raise CaptureError(f"{self.name}: {exc} (signature {self.signature})") from None
        if self.var_keyword is None or self.var_keyword not in arguments:
            return dict(arguments)
        flat = {key: value for key, value in arguments.items() if key != self.var_keyword}
        flat.update(arguments[self.var_keyword])
        return flat

    def with_defaults(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        """``bound`` with every parameter the caller left out set to its default."""
        return {**{key: value for key, value in self.defaults.items() if key not in bound}, **bound}

    def split(self, bound: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(positional, keywords)`` that call the function with the flat mapping ``bound``."""
        if self.simple:
            return (), dict(bound)
        positional: list[Any] = [bound[name] for name in self.positional_only if name in bound]
        keywords = {key: value for key, value in bound.items() if key not in self.positional_only}
        if self.var_positional is not None:
            # Everything before *args must then go positionally too, in order.
            for param in self.signature.parameters.values():
                if param.kind is _P.POSITIONAL_OR_KEYWORD and param.name in keywords:
                    positional.append(keywords.pop(param.name))
                elif param.kind is _P.VAR_POSITIONAL:
                    positional.extend(keywords.pop(param.name, ()))
                    break
        return tuple(positional), keywords

    def call(self, fn: Callable[..., Any], bound: Mapping[str, Any]) -> Any:
        """``fn`` called with the arguments of the flat mapping ``bound``."""
        if self.simple:
            return fn(**bound)
        args, keywords = self.split(bound)
        return fn(*args, **keywords)
