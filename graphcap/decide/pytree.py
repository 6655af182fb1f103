"""Argument and output trees: tensors inside containers and objects are leaves.

A graphed function is called the way other people write forwards: tensors
arrive inside tuples (the legacy ``past_key_values``), lists, dicts, objects
(a cache, a ``ForwardMeta``-style dataclass), and results leave as tuples,
namedtuples, dicts, ``ModelOutput`` objects or dataclasses. This module turns
a call's arguments into a *tree* (a hashable description of the structure,
every non-tensor leaf included by value) plus the list of tensor leaves, and
builds values back from a tree.

Argument trees are nested tuples of these nodes:

* ``TENSOR``: a tensor leaf (its value lives in the leaf list).
* ``("v", type, value)``: a non-tensor leaf, keyed by value (and type, so
  ``1`` and ``True`` never share a graph).
* ``("r", Ref(obj))``: an object keyed by identity: a cycle, or a container
  nested deeper than ``MAX_DEPTH``.
* ``("s", type, children)``: a tuple, list or namedtuple.
* ``("m", type, keys, children)``: a dict, in its own key order (dict
  subclasses such as PaddleFormers' ``ModelOutput`` included).
* ``("o", type, names, children)``: a dataclass's fields or a plain object's
  attributes (sorted names).

Layers, modules, functions and classes are ``"v"`` leaves: hashed by
identity, their tensors are found by ``graphcap.trust.reachable`` instead.

Output trees use the same shapes but hold non-tensor leaves as constants
(``OutputTree``); they are rebuilt into fresh containers on every replay.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import paddle

from graphcap.errors import CaptureError

__all__ = [
    "MAX_DEPTH",
    "TENSOR",
    "OutputTree",
    "Ref",
    "find_unhashable",
    "flatten_arguments",
    "output_constants",
    "output_leaves",
    "output_structure",
    "path_matches",
    "slot_names",
    "substitute",
    "tensor_paths",
    "value_leaves",
]

#: Containers and objects nested deeper than this are keyed by identity.
MAX_DEPTH = 6

_Value = paddle.pir.Value
_LEAF_TYPES = (paddle.Tensor, _Value)


class _TensorLeaf:
    """The marker for a tensor leaf in a tree (one instance, ``TENSOR``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TENSOR"

    def __reduce__(self) -> str:
        return "TENSOR"


TENSOR = _TensorLeaf()


class Ref:
    """An object keyed by identity: equal only to a ``Ref`` of the very same object."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        """Hold ``obj`` (strongly: a graph keyed on it must not see its id reused)."""
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Ref({type(self.obj).__name__} at {id(self.obj):#x})"


# Leaves compared by value without looking inside.
_ATOMS = frozenset({int, float, bool, str, bytes, complex, type(None), type(Ellipsis), paddle.dtype})
# Objects that are never opened as nodes: hashed as they are (identity for most).
_OPAQUE = (
    paddle.nn.Layer, type, types.ModuleType, types.FunctionType, types.MethodType,
    types.BuiltinFunctionType, functools.partial, enum.Enum,
)


def _is_namedtuple(kind: type) -> bool:
    return issubclass(kind, tuple) and hasattr(kind, "_fields")


def _object_names(value: Any) -> tuple[str, ...] | None:
    """Field or attribute names when ``value`` is opened as an ``"o"`` node, else None.

    Dataclass and attrs fields, else a plain object's ``__dict__`` and
    ``__slots__`` attributes (sorted).
    """
    kind = type(value)
    if isinstance(value, _OPAQUE) or kind.__module__.split(".", 1)[0] in ("builtins", "paddle", "numpy"):
        return None
    if dataclasses.is_dataclass(value):
        return tuple(field.name for field in dataclasses.fields(value))
    if attrs.has(kind):
        return tuple(field.name for field in attrs.fields(kind))
    attributes = getattr(value, "__dict__", None)
    names = set(attributes) if isinstance(attributes, dict) else set()
    names.update(slot for slot in slot_names(kind) if hasattr(value, slot))
    if not names and not isinstance(attributes, dict):
        return None
    return tuple(sorted(names))


@functools.lru_cache(maxsize=1024)
def slot_names(kind: type) -> tuple[str, ...]:
    """The ``__slots__`` names of ``kind`` and its bases (``__dict__`` and ``__weakref__`` left out)."""
    names: list[str] = []
    for klass in kind.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return tuple(name for name in names if name not in ("__dict__", "__weakref__"))


def _flatten(value: Any, leaves: list[Any], depth: int, active: set[int]) -> Any:
    if isinstance(value, _LEAF_TYPES):
        leaves.append(value)
        return TENSOR
    kind = type(value)
    if kind in _ATOMS:
        return ("v", kind, value)
    if isinstance(value, (tuple, list, dict)) or _object_names(value) is not None:
        if depth >= MAX_DEPTH or id(value) in active:
            return ("r", Ref(value))
        active.add(id(value))
        try:
            if isinstance(value, (tuple, list)):
                return ("s", kind, tuple([_flatten(item, leaves, depth + 1, active) for item in value]))
            if isinstance(value, dict):
                keys = tuple(value)
                return ("m", kind, keys, tuple([_flatten(value[key], leaves, depth + 1, active) for key in keys]))
            names = _object_names(value)
            assert names is not None
            return ("o", kind, names, tuple([_flatten(getattr(value, name), leaves, depth + 1, active)
                                             for name in names]))
        finally:
            active.discard(id(value))
    return ("v", kind, value)


def flatten_arguments(bound: Mapping[str, Any]) -> tuple[Any, list[Any]]:
    """``(tree, tensor leaves)`` of one call's bound arguments, names sorted.

    Sorted names make the tree independent of the order the caller wrote the
    arguments in. The tree is hashable whenever every non-tensor leaf is;
    ``find_unhashable`` names the first one that is not.
    """
    leaves: list[Any] = []
    names = tuple(sorted(bound))
    active: set[int] = set()
    children = []
    for name in names:
        value = bound[name]
        if isinstance(value, paddle.Tensor):  # the common case, inlined: the replay path runs this
            leaves.append(value)
            children.append(TENSOR)
        else:
            children.append(_flatten(value, leaves, 1, active))
    return ("args", names, tuple(children)), leaves


# Paths ---------------------------------------------------------------------


def _child_paths(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    tag = node[0]
    if tag == "s":
        for index, child in enumerate(node[2]):
            yield f"{path}[{index}]", child
    elif tag == "m":
        for key, child in zip(node[2], node[3]):
            yield f"{path}[{key!r}]", child
    elif tag == "o":
        for name, child in zip(node[2], node[3]):
            yield f"{path}.{name}", child
    elif tag == "args":
        yield from zip(node[1], node[2])


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(path, leaf node)`` for every leaf under ``node`` in leaf order."""
    if node is TENSOR or node[0] in ("v", "r"):
        yield path, node
        return
    for child_path, child in _child_paths(node, path):
        yield from _walk(child, child_path)


def tensor_paths(tree: Any) -> tuple[str, ...]:
    """The path of every tensor leaf of ``tree`` in leaf order (``kv[0][1]``, ``cache.keys[0]``)."""
    return tuple(path for path, node in _walk(tree, "") if node is TENSOR)


def value_leaves(tree: Any) -> Iterator[tuple[str, Any]]:
    """``(path, node)`` of every non-tensor leaf (``"v"`` and ``"r"`` nodes) of ``tree``."""
    for path, node in _walk(tree, ""):
        if node is not TENSOR:
            yield path, node


def path_matches(path: str, prefixes: frozenset[str]) -> bool:
    """True when ``path`` is one of ``prefixes`` or lies under one (``cache`` covers ``cache.keys[0]``)."""
    if path in prefixes:
        return True
    return any(path.startswith(prefix) and path[len(prefix)] in ".[" for prefix in prefixes if len(path) > len(prefix))


def find_unhashable(tree: Any) -> tuple[str, Any] | None:
    """``(path, value)`` of the first non-tensor leaf that cannot be hashed, or None."""
    for path, node in _walk(tree, ""):
        if node is not TENSOR and node[0] == "v":
            try:
                hash(node[2])
            except TypeError:
                return path, node[2]
    return None


# Substitution (building a call's arguments over static buffers) -------------


def _count(node: Any) -> int:
    if node is TENSOR:
        return 1
    tag = node[0]
    if tag in ("v", "r"):
        return 0
    return sum(_count(child) for child in node[-1])


def _rebuild_container(original: Any, node: Any, children: list[Any]) -> Any:
    tag, kind = node[0], node[1]
    if tag == "s":
        if kind is tuple or kind is list:
            return kind(children)
        if _is_namedtuple(kind):
            return kind(*children)
        return kind(children)
    if tag == "m":
        if kind is dict or kind is OrderedDict:
            return kind(zip(node[2], children))
        new = copy.copy(original)
        for key, child in zip(node[2], children):
            new[key] = child
            if dataclasses.is_dataclass(new) and key in {field.name for field in dataclasses.fields(new)}:
                object.__setattr__(new, key, child)  # ModelOutput-style: items and attributes agree
        return new
    new = copy.copy(original)
    for name, child in zip(node[2], children):
        object.__setattr__(new, name, child)
    return new


def _substitute(value: Any, node: Any, start: int, replace: Mapping[int, Any]) -> Any:
    if node is TENSOR:
        return replace.get(start, value)
    tag = node[0]
    if tag in ("v", "r"):
        return value
    end = start + _count(node)
    if not any(start <= index < end for index in replace):
        return value  # nothing replaced below: the caller's own object, identity kept
    if tag == "s":
        items = list(value)
    elif tag == "m":
        items = [value[key] for key in node[2]]
    else:
        items = [getattr(value, name) for name in node[2]]
    children = []
    for item, child in zip(items, node[-1]):
        children.append(_substitute(item, child, start, replace))
        start += _count(child)
    return _rebuild_container(value, node, children)


def substitute(bound: Mapping[str, Any], tree: Any, replace: Mapping[int, Any]) -> dict[str, Any]:
    """``bound`` with tensor leaf ``i`` replaced by ``replace[i]``; untouched subtrees are the originals.

    Containers holding a replaced leaf are rebuilt (tuples, lists, namedtuples,
    dicts) or shallow-copied with the new value set (dict subclasses,
    dataclasses, plain objects); everything else keeps its identity, so a
    cache object whose tensors are all static is the caller's object itself.
    """
    names, children = tree[1], tree[2]
    result: dict[str, Any] = {}
    start = 0
    for name, child in zip(names, children):
        result[name] = _substitute(bound[name], child, start, replace)
        start += _count(child)
    return result


# Outputs ---------------------------------------------------------------------


def _output_node(value: Any, leaves: list[Any], depth: int) -> Any:
    if isinstance(value, _LEAF_TYPES):
        leaves.append(value)
        return TENSOR
    if depth < MAX_DEPTH and not isinstance(value, (str, bytes)):
        if isinstance(value, (tuple, list)):
            return ("s", type(value), tuple([_output_node(item, leaves, depth + 1) for item in value]))
        if isinstance(value, dict):
            keys = tuple(value)
            return ("m", type(value), keys, tuple([_output_node(value[key], leaves, depth + 1) for key in keys]))
        if (dataclasses.is_dataclass(value) or attrs.has(type(value))) and not isinstance(value, type):
            names = _object_names(value) or ()
            return ("o", type(value), names, tuple([_output_node(getattr(value, name), leaves, depth + 1)
                                                    for name in names]))
    # A constant: returned as it was at capture. Other objects (a cache object
    # the function hands back) are returned by identity, so they may hold only
    # tensors the graph reads, never ones it computes (OutputTree checks).
    return ("c", value)


def _tensors_within(value: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """Tensors inside a constant result: containers, attributes and slots, a few levels deep."""
    if isinstance(value, _LEAF_TYPES):
        yield value
        return
    seen = set() if seen is None else seen
    if depth > 4 or id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None))):
        return
    seen.add(id(value))
    if isinstance(value, (tuple, list)):
        children: Iterator[Any] = iter(value)
    elif isinstance(value, dict):
        children = iter(value.values())
    elif isinstance(value, paddle.nn.Layer) or type(value).__module__.split(".", 1)[0] in ("paddle", "numpy"):
        return
    else:
        names = _object_names(value) or ()
        children = (getattr(value, name, None) for name in names)
    for child in children:
        yield from _tensors_within(child, depth + 1, seen)


def output_structure(value: Any) -> Any:
    """The shape of a result's tree without values: equal for two runs that return alike."""
    return _skeleton(_output_node(value, [], 0))


def _skeleton(node: Any) -> Any:
    if node is TENSOR:
        return node
    if node[0] == "c":
        return ("c", type(node[1]))
    if node[0] == "s":
        return ("s", node[1], tuple(_skeleton(child) for child in node[2]))
    return (node[0], node[1], node[2], tuple(_skeleton(child) for child in node[3]))


@paddle.jit.not_to_static
def output_leaves(value: Any) -> list[Any]:
    """The tensor leaves of a function's result, in ``OutputTree`` order.

    Marked ``not_to_static``: the static backend calls it inside a trace,
    where the leaves are ``paddle.pir.Value`` and this must run as Python.
    """
    leaves: list[Any] = []
    _output_node(value, leaves, 0)
    return leaves


def output_constants(value: Any) -> tuple[tuple[str, Any], ...]:
    """``(path, value)`` of every non-tensor leaf of a function's result."""
    node = _output_node(value, [], 0)
    return tuple((path, leaf[1]) for path, leaf in OutputTree._leaf_paths(node, "output") if leaf is not TENSOR)


class OutputTree:
    """The structure of a graphed function's result, rebuilt around static outputs on replay.

    Built once per graph from a warmup's result. ``rebuild(leaves)`` returns
    the same container types as eager (tuple, list, namedtuple, dict, dict
    subclasses such as ``ModelOutput``, dataclasses); non-tensor leaves come
    back as the values the warmup returned.
    """

    def __init__(self, value: Any, known: Callable[[Any], bool] = lambda tensor: False) -> None:
        """Describe ``value``; raises ``CaptureError`` if its containers cannot be rebuilt.

        ``known(tensor)`` is True for a tensor the graph reads (a static
        argument, a registry buffer, a reachable tensor): a constant result
        object may hold those (it is returned by identity), but a tensor the
        function computed inside an object graphcap cannot open would be
        frozen at its capture value.
        """
        leaves: list[Any] = []
        self.node = _output_node(value, leaves, 0)
        self.paths: tuple[str, ...] = tuple(path for path, node in self._leaf_paths(self.node, "output")
                                            if node is TENSOR)
        self.constants = output_constants(value)
        for path, constant in self.constants:
            if any(not known(tensor) for tensor in _tensors_within(constant)):
                raise CaptureError(
                    f"{path} is a {type(constant).__name__} holding tensors the function computed, which graphcap "
                    f"cannot rebuild on replay (it would return the capture's tensors forever); return tensors in "
                    f"tuples, lists, dicts, dataclasses, attrs classes or ModelOutput objects"
                )
        self._build = self._compile(self.node, value)
        rebuilt = self.rebuild(leaves)
        if not _same_structure(rebuilt, value):
            raise CaptureError(
                f"a graphed function returned {type(value).__name__}, which graphcap cannot rebuild on replay; "
                f"return tensors inside tuples, lists, dicts, ModelOutput objects or dataclasses"
            )

    @staticmethod
    def _leaf_paths(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if node is TENSOR or node[0] == "c":
            yield path, node
            return
        for child_path, child in _child_paths(node, path):
            yield from OutputTree._leaf_paths(child, child_path)

    def _compile(self, node: Any, original: Any) -> Callable[[Iterator[Any]], Any]:
        """A function that consumes leaves from an iterator and returns the rebuilt value."""
        if node is TENSOR:
            return next
        tag = node[0]
        if tag == "c":
            constant = node[1]
            return lambda leaves: constant
        kind = node[1]
        if tag == "s":
            parts = [self._compile(child, item) for child, item in zip(node[2], original)]
            if _is_namedtuple(kind):
                return lambda leaves: kind(*[part(leaves) for part in parts])
            return lambda leaves: kind([part(leaves) for part in parts])
        keys = node[2]
        items = [original[key] for key in keys] if tag == "m" else [getattr(original, key) for key in keys]
        parts = [self._compile(child, item) for child, item in zip(node[3], items)]
        if tag == "m" and (kind is dict or kind is OrderedDict):
            return lambda leaves: kind(zip(keys, [part(leaves) for part in parts]))
        # Dict subclasses (ModelOutput) and dataclasses: a shallow copy of the
        # warmup's object with every field reset, so no warmup tensor is
        # pinned, then the replay's values set as the original type expects.
        template = copy.copy(original)
        fields = {field.name for field in dataclasses.fields(template)} if dataclasses.is_dataclass(template) else set()
        for key in keys:
            if tag == "m":
                dict.__setitem__(template, key, None)
            if tag == "o" or key in fields:
                object.__setattr__(template, key, None)

        def build(leaves: Iterator[Any]) -> Any:
            new = copy.copy(template)
            for key, part in zip(keys, parts):
                child = part(leaves)
                if tag == "m":
                    dict.__setitem__(new, key, child)
                if tag == "o" or key in fields:
                    object.__setattr__(new, key, child)
            return new

        return build

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        """The result with tensor leaves taken from ``leaves`` in order."""
        return self._build(iter(leaves))


def _same_structure(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` have the same container types and keys all the way down."""
    if isinstance(b, _LEAF_TYPES):
        return isinstance(a, _LEAF_TYPES)
    if type(a) is not type(b):
        return False
    if isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    if isinstance(b, dict):
        return list(a) == list(b) and all(_same_structure(a[key], b[key]) for key in b)
    if dataclasses.is_dataclass(b) and not isinstance(b, type):
        return all(_same_structure(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(b))
    return True
