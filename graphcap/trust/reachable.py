"""Every tensor a graphed function can read besides its tensor arguments, and how it is reached.

A graph reads the tensors it saw at capture. Those include tensors nobody
passed to it: the parameters and buffers of a ``paddle.nn.Layer`` whose
method is graphed (or that sits in a closure, a global or an argument), a
tensor held in a closure cell or a module global, a cache object's list of
key tensors. A weight reload that rebinds ``model.lin.weight``, or a cache
that re-allocates ``cache.keys[0]``, leaves the graph reading the old tensor.

``scan`` walks those places once, at capture, and records every *edge*
(container, key, child) on a path from a root to a tensor: checking on
replay that each edge still holds the same child catches a rebinding
anywhere on the path (``model.lin = Linear(...)`` as well as
``model.lin.weight = ...``). Edges that lead to no tensor are dropped.

Roots: the bound ``self`` of a method or a Layer called as the function,
closure cells, the module globals the function's code names, the arguments
and keywords of a ``functools.partial``, and non-tensor arguments (Layers and
other objects the caller passes). Functions found on the way (a helper the
forward calls) are walked the same way, except functions of Paddle, NumPy
and the standard library. Plain objects and containers count towards a depth
limit (``MAX_DEPTH``); Layer-to-sublayer hops do not, so deep models are
walked whole. Cycles are visited once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import paddle

from graphcap.decide.pytree import slot_names

__all__ = ["MAX_DEPTH", "MISSING", "Edge", "Reachable", "code_names", "scan"]

MAX_DEPTH = 8
_MAX_ITEMS = 4096  # a longer container is not searched item by item
# Python values a graph bakes in: numbers, flags, strings, and NumPy scalars (np.float32(0.7)).
_SCALARS = (bool, int, float, str, complex, np.generic)

_SKIP_MODULE_ROOTS = ("paddle", "numpy", "graphcap")
_STDLIB = os.path.normcase(sysconfig.get_paths()["stdlib"]) + os.sep
_LAYER_TENSOR_DICTS = ("_parameters", "_buffers", "_sub_layers")


@dataclasses.dataclass(frozen=True)
class Edge:
    """``container[key] is child`` (``kind="item"``) or ``container.cell_contents is child`` (``"cell"``)."""

    container: Any
    key: Any
    child: Any
    path: str
    kind: str = "item"

    def current(self) -> Any:
        """What the container holds at ``key`` now (a fresh marker object when it holds nothing)."""
        try:
            if self.kind == "cell":
                return self.container.cell_contents
            return self.container[self.key]
        except (KeyError, IndexError, ValueError):
            return MISSING


#: What ``Edge.current()`` returns when the container no longer holds the key.
MISSING = object()


@dataclasses.dataclass
class Reachable:
    """What ``scan`` found: tensors by id with their first path, the edges to them, and object classes."""

    tensors: dict[int, tuple[str, paddle.Tensor]] = dataclasses.field(default_factory=dict)
    edges: list[Edge] = dataclasses.field(default_factory=list)
    # Classes of the plain (non-Layer) objects walked, and of the Layers:
    # the static backend keeps dy2static away from the former's modules.
    object_classes: set[type] = dataclasses.field(default_factory=set)
    layer_classes: set[type] = dataclasses.field(default_factory=set)
    function_modules: set[str] = dataclasses.field(default_factory=set)
    # Paths at which the scan met an object of a ``skip`` type (a registry, its buffers).
    skipped: set[str] = dataclasses.field(default_factory=set)
    # Python scalars (numbers, strings, flags such as a Layer's ``training``) on the same
    # paths: a graph bakes their values in.
    values: list[Edge] = dataclasses.field(default_factory=list)

    def reads_beyond_arguments(self) -> list[str]:
        """Paths of what the function reads besides its arguments: tensors, and graphcap's registry or buffers."""
        return sorted({path for path, _ in self.tensors.values()} | self.skipped)

    def path_of(self, tensor: paddle.Tensor) -> str | None:
        """The first path ``scan`` reached ``tensor`` by, or None."""
        found = self.tensors.get(id(tensor))
        return found[0] if found is not None and found[1] is tensor else None


def _is_library_function(fn: types.FunctionType) -> bool:
    module = getattr(fn, "__module__", None) or ""
    if module.split(".", 1)[0] in _SKIP_MODULE_ROOTS:
        return True
    filename = os.path.normcase(fn.__code__.co_filename)
    return filename.startswith(_STDLIB) and "site-packages" not in filename


@functools.lru_cache(maxsize=1024)
def _from_stdlib(kind: type) -> bool:
    """True for a class defined in the standard library."""
    module = sys.modules.get(kind.__module__)
    filename = os.path.normcase(getattr(module, "__file__", "") or "")
    return filename.startswith(_STDLIB) and "site-packages" not in filename


def code_names(code: types.CodeType) -> Iterator[str]:
    """Global names a code object (and the code nested in it: comprehensions, lambdas) may read."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_names(const)


class _Scanner:
    def __init__(self, skip: tuple[type, ...]) -> None:
        self.skip = skip
        self.found = Reachable()
        # id -> whether a tensor lies below; an id present with False while
        # its walk is in progress stops cycles.
        self.memo: dict[int, bool] = {}
        self.keep: list[Any] = []  # objects whose ids are in memo stay alive during the scan
        self.classes_seen: dict[type, bool] = {}

    # Edges -------------------------------------------------------------------
    def child(
        self, container: Any, key: Any, value: Any, path: str, depth: int, kind: str = "item", values: bool = True
    ) -> bool:
        if values and kind != "none" and isinstance(value, _SCALARS) and not str(key).startswith("_"):
            # A Python value the function may read: a graph bakes it in, so it is watched too.
            self.found.values.append(Edge(container, key, value, path, kind))
            return False
        below = self.visit(value, path, depth)
        if below and kind != "none":
            self.found.edges.append(Edge(container, key, value, path, kind))
        return below

    # Values ------------------------------------------------------------------
    def visit(self, value: Any, path: str, depth: int) -> bool:
        if isinstance(value, paddle.Tensor):
            self.found.tensors.setdefault(id(value), (path, value))
            return True
        if value is None or isinstance(value, (int, float, str, bytes, bool, complex, type, types.ModuleType)):
            return False
        if isinstance(value, self.skip):
            # graphcap's own objects have checks of their own; that the function reaches them
            # (and the registry buffers in them) is still worth knowing.
            self.found.skipped.add(path)
            return False
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = False
        self.keep.append(value)
        below = self.open(value, path, depth)
        self.memo[key] = below
        return below

    def open(self, value: Any, path: str, depth: int) -> bool:
        if isinstance(value, paddle.nn.Layer):
            return self.layer(value, path, depth)
        if depth >= MAX_DEPTH:
            return False
        if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
            return self.function(value, path, depth + 1)
        # Python values in plain dicts and lists are watched only near the function (a flag
        # in a closure's dict); deeper ones (a config's label maps) would only cost checks.
        near = depth <= 1
        if isinstance(value, dict):
            return self.items(value, ((key, item) for key, item in list(value.items())[:_MAX_ITEMS]),
                              path, depth, "item", lambda key: f"[{key!r}]", values=near)
        if isinstance(value, list):
            return self.items(value, enumerate(value[:_MAX_ITEMS]), path, depth, "item", lambda i: f"[{i}]",
                              values=near)
        if isinstance(value, tuple):
            # Tuples cannot be rebound in place: the edge into the tuple is checked, its items need not be.
            return self.items(value, enumerate(value[:_MAX_ITEMS]), path, depth, "none", lambda i: f"[{i}]")
        if type(value).__module__.split(".", 1)[0] in ("builtins", "paddle", "numpy") or _from_stdlib(type(value)):
            return False  # a logger, a lock, a Paddle or NumPy object: nothing a graph reads lives there
        self.found.object_classes.add(type(value))
        attributes = getattr(value, "__dict__", None)
        below = False
        if isinstance(attributes, dict):
            below = self.items(attributes, list(attributes.items())[:_MAX_ITEMS], path, depth, "item",
                               lambda name: f".{name}")
        for slot in slot_names(type(value)):
            if hasattr(value, slot):
                # A slot can be rebound but has no container to index: checked like a cell.
                below |= self.child(_SlotCell(value, slot), None, getattr(value, slot), f"{path}.{slot}",
                                    depth + 1, "cell")
        return below

    def items(
        self, container: Any, pairs: Iterable[tuple[Any, Any]], path: str, depth: int, kind: str,
        name: Callable[[Any], str], values: bool = True,
    ) -> bool:
        below = False
        for key, item in pairs:
            below |= self.child(container, key, item, path + name(key), depth + 1, kind, values)
        return below

    def layer(self, layer: paddle.nn.Layer, path: str, depth: int) -> bool:
        self.found.layer_classes.add(type(layer))
        below = False
        for dict_name in _LAYER_TENSOR_DICTS:
            tensors = layer.__dict__.get(dict_name) or {}
            for key, item in list(tensors.items()):
                if item is not None:
                    # Sublayers do not count towards the depth limit.
                    below |= self.child(tensors, key, item, f"{path}.{key}", depth, "item")
        if depth < MAX_DEPTH:
            attributes = layer.__dict__
            for key, item in list(attributes.items()):
                if key not in _LAYER_TENSOR_DICTS and not isinstance(item, paddle.nn.Layer):
                    below |= self.child(attributes, key, item, f"{path}.{key}", depth + 1, "item")
        below |= self.layer_class(type(layer), depth)
        return below

    def layer_class(self, kind: type, depth: int) -> bool:
        """Tensors a Layer class holds itself, and the globals its ``forward`` reads (once per class)."""
        if kind in self.classes_seen:
            return self.classes_seen[kind]
        self.classes_seen[kind] = False
        below = False
        name = f"{kind.__module__}.{kind.__qualname__}"
        for key, item in list(vars(kind).items()):
            if isinstance(item, paddle.Tensor):
                # Checked like any attribute: rebinding the class's tensor is rebinding what the graph reads.
                below |= self.child(vars(kind), key, item, f"{name}.{key}", depth + 1, "item")
        forward = vars(kind).get("forward")
        if isinstance(forward, types.FunctionType) and not _is_library_function(forward):
            below |= self.root_function(forward, kind.__module__, depth + 1)
        self.classes_seen[kind] = below
        return below

    def function(self, fn: Any, path: str, depth: int) -> bool:
        below = False
        if isinstance(fn, functools.partial):
            below |= self.child(None, None, fn.func, path, depth, "none")
            for index, arg in enumerate(fn.args):
                below |= self.child(None, None, arg, f"{path}.args[{index}]", depth, "none")
            for key, arg in fn.keywords.items():
                below |= self.child(fn.keywords, key, arg, f"{path}.keywords[{key!r}]", depth, "item")
            return below
        if isinstance(fn, types.MethodType):
            below |= self.child(None, None, fn.__self__, f"{path}.__self__" if path else "self", depth, "none")
            return below | self.function(fn.__func__, path, depth)
        if _is_library_function(fn):
            return False
        return self.root_function(fn, path, depth)

    def root_function(self, fn: types.FunctionType, path: str = "", depth: int = 0) -> bool:
        """Closure cells, defaults and the module globals ``fn``'s code names (named ``path.name``)."""
        below = False
        self.found.function_modules.add(fn.__module__)
        prefix = f"{path}." if path else ""
        code = fn.__code__
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not bound yet
                continue
            below |= self.child(cell, None, contents, prefix + name, depth, "cell")
        # Defaults are evaluated once, at definition: a tensor default is read by every call.
        if fn.__defaults__:
            below |= self.child(None, None, fn.__defaults__, prefix + "__defaults__", depth, "none")
        if fn.__kwdefaults__:
            below |= self.child(None, None, fn.__kwdefaults__, prefix + "__kwdefaults__", depth, "none")
        namespace = fn.__globals__
        for name in dict.fromkeys(code_names(code)):
            if name in namespace:
                below |= self.child(namespace, name, namespace[name], prefix + name, depth, "item")
        return below


class _SlotCell:
    """Lets an edge through a ``__slots__`` attribute be checked like a closure cell."""

    __slots__ = ("owner", "name")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    @property
    def cell_contents(self) -> Any:
        """The slot's current value."""
        try:
            return getattr(self.owner, self.name)
        except AttributeError:
            raise ValueError(self.name) from None


def scan(
    fn: Callable[..., Any], arguments: Sequence[tuple[str, Any]] = (), *, skip: tuple[type, ...] = ()
) -> Reachable:
    """Walk ``fn`` (its self, closures, globals, defaults, partial arguments) and ``arguments``.

    ``arguments`` are ``(path, value)`` of the non-tensor arguments the caller
    passed (a Layer, an opaque object); their tensors are recorded like the
    function's. Objects of the ``skip`` types are not entered (graphcap's own
    registry and buffers, which have checks of their own). ``fn`` itself is
    walked even where a helper of the same library would be skipped. Returns
    every tensor reached with its first path, and the edges on the way.
    """
    scanner = _Scanner(skip)
    if isinstance(fn, types.FunctionType):
        scanner.root_function(fn)
    elif isinstance(fn, (types.MethodType, functools.partial)):
        scanner.function(fn, "", 0)
    else:
        scanner.child(None, None, fn, "self", 0, "none")
    for path, value in arguments:
        scanner.child(None, None, value, path, 0, "none")
    return scanner.found


def module_of(kind: type) -> types.ModuleType | None:
    """The module object that defines class ``kind`` (None for builtins or unknown)."""
    return sys.modules.get(getattr(kind, "__module__", "") or "")

