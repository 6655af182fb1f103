"""Deciding, apart from executing: a call's arguments -> eager (with a reason) or one graph's key.

``Dispatcher.decide`` looks at one call and nothing else: the rows of the
batch argument pick the bucket; every tensor leaf of the argument tree is
classified from *this call's* shapes, so the order of earlier calls never
matters:

* *batched*: its first dimension is the batch's rows (or it is named in
  ``batched_args``). It is staged into a static buffer and padded. A prefix
  view of a registry buffer large enough for the largest bucket is read in
  place (zero-copy); any other tensor gets a staging buffer of its own, so a
  fresh tensor is never copied into a registry buffer.
* *static*: anything else, registry buffers and ``static_args`` included. The
  graph reads it where it is; replays check it is the same tensor.

The classification, every tensor leaf's dtype and shape (rows excluded) and
every non-tensor leaf's value form the ``GraphKey``: two calls share a graph
exactly when a graph captured for one is right for the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import paddle

from graphcap import pytree
from graphcap.buckets import BucketMap
from graphcap.buffers import StaticBuffers, dtype_name
from graphcap.errors import CaptureError

__all__ = ["BATCHED", "STATIC", "Dispatch", "Dispatcher", "GraphKey", "leaf_is_batched"]

STATIC = "static"
BATCHED = "batched"
# id(paddle dtype) -> name: Paddle's dtype objects are singletons.
_DTYPE_NAMES = {
    id(getattr(paddle, name)): name
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
                 "complex64", "complex128")
    if hasattr(paddle, name)
}
_MAX_TREES = 1024


class GraphKey(NamedTuple):
    """The fewest fields that identify one graph: which function, bucket, argument tree and leaf layout.

    ``layout`` has one entry per tensor leaf: ``("static", dtype name, shape)``
    or ``("batched", dtype name, trailing shape, source)`` where ``source`` is
    the registry buffer read in place, or ``""`` for a staging buffer.
    """

    name: str
    bucket: int
    tree: Any
    layout: tuple[tuple[Any, ...], ...]


class Dispatch(NamedTuple):
    """One call's decision: ``key`` is None exactly when the call runs eagerly, for ``reason``."""

    rows: int
    key: GraphKey | None
    leaves: list[paddle.Tensor]
    reason: str


def leaf_is_batched(entry: tuple[Any, ...]) -> bool:
    """True for a layout entry of a batched leaf."""
    return entry[0] == BATCHED


def normalize_path(path: str) -> str:
    """An argument path as graphcap writes it: ``state["table"]`` and ``state['table']`` are one path."""
    return re.sub(r'\["([^"\']*)"\]', r"['\1']", path.strip())


def path_root(path: str) -> str:
    """The argument a path starts from: ``cache`` for ``cache.keys[0]``."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


class _TreeInfo(NamedTuple):
    paths: tuple[str, ...]
    overrides: tuple[str | None, ...]  # per leaf: "static", "batched" or None (decide by shape)


class Dispatcher:
    """Turns one call's bound arguments into a ``Dispatch``; holds only caches, never graphs."""

    def __init__(
        self,
        name: str,
        *,
        batch_arg: str,
        buckets: BucketMap,
        registry_buffers: StaticBuffers,
        static_args: Sequence[str] = (),
        batched_args: Sequence[str] = (),
    ) -> None:
        """``static_args`` / ``batched_args`` are argument paths (``cache``, ``kv[0]``) forcing a leaf's role."""
        self.name = name
        self.batch_arg = batch_arg
        self.buckets = buckets
        self.registry_buffers = registry_buffers
        self.static_args = frozenset(normalize_path(path) for path in static_args)
        self.batched_args = frozenset(normalize_path(path) for path in batched_args)
        self._has_overrides = bool(self.static_args or self.batched_args)
        overlap = self.static_args & self.batched_args
        if overlap:
            raise CaptureError(f"{name}: {sorted(overlap)} named in both static_args and batched_args; pick one")
        self._trees: dict[Any, _TreeInfo] = {}
        self._owned_generation = -1
        self._owned: frozenset[int] = frozenset()
        self._views: dict[int, tuple[str, Any, tuple[int, ...]]] = {}

    def rows_of(self, bound: Mapping[str, Any]) -> int:
        """Rows of the batch argument; raises ``CaptureError`` if it is not a tensor with rows."""
        batch = bound.get(self.batch_arg)
        if not isinstance(batch, paddle.Tensor) or not batch.shape:
            raise CaptureError(
                f"{self.name}: batch_arg {self.batch_arg!r} must be passed as a tensor with rows "
                f"(got {type(batch).__name__}); name the argument whose first dimension is the batch"
            )
        return batch.shape[0]

    def decide(self, bound: Mapping[str, Any], bucket: int | None = None) -> Dispatch:
        """Eager (zero rows, more rows than the largest bucket) or the key of the graph to replay.

        ``bucket`` overrides the bucket of this call's own rows (ranks agreed
        on a larger one). The key is built, not hashed: the caller's
        dictionary lookup hashes it, and an unhashable non-tensor leaf
        surfaces there (``unhashable``).
        """
        rows = self.rows_of(bound)
        if bucket is None:
            bucket = self.buckets.bucket(rows)
        if bucket == 0:
            return Dispatch(rows, None, [], "")
        if bucket is None:
            return Dispatch(rows, None, [], f"more rows than the largest capture size {self.buckets.largest}")
        tree, leaves, layout = self.classify(bound, rows)
        return Dispatch(rows, GraphKey(self.name, bucket, tree, layout), leaves, "")

    def classify(self, bound: Mapping[str, Any], rows: int) -> tuple[Any, list[paddle.Tensor], tuple[Any, ...]]:
        """``(tree, tensor leaves, layout)`` of one call: the parts of its key that do not depend on the bucket."""
        tree, leaves = pytree.flatten_arguments(bound)
        overrides = self._overrides(tree) if self._has_overrides else None
        if self.registry_buffers.generation != self._owned_generation:
            self._refresh_registry()
        owned, views = self._owned, self._views
        batch = bound[self.batch_arg]
        layout = []
        append = layout.append
        # The replay path: every tensor leaf costs a shape, a dtype and (with
        # registry buffers to match) a data_ptr; dtypes enter the key by name,
        # since hashing Paddle's dtype objects costs more than the lookup.
        for index, leaf in enumerate(leaves):
            override = overrides[index] if overrides is not None else None
            shape = tuple(leaf.shape)
            dtype = leaf.dtype
            dtype_key = _DTYPE_NAMES.get(id(dtype)) or dtype_name(dtype)
            if leaf is batch or override == BATCHED or (
                override is None and shape and shape[0] == rows and id(leaf) not in owned
            ):
                if not shape or shape[0] != rows:
                    raise CaptureError(
                        f"{self.name}: {self.paths(tree)[index]!r} is declared batched but has shape "
                        f"{list(shape)} while the batch has {rows} rows; give it the batch's rows or remove it "
                        f"from batched_args"
                    )
                source = ""
                if views:
                    view = views.get(leaf.data_ptr())
                    # A prefix view starts at the buffer and is contiguous; a strided view
                    # (buf[0:6:2], m.T[:3]) shares the address but not the layout. (Paddle
                    # calls an empty view non-contiguous: with no rows, there is no layout.)
                    if view is not None and view[1] is dtype and view[2] == shape[1:] and (
                        not rows or leaf.is_contiguous()
                    ):
                        source = view[0]
                append((BATCHED, dtype_key, shape[1:], source))
            else:
                append((STATIC, dtype_key, shape))
        return tree, leaves, tuple(layout)

    def unhashable(self, tree: Any) -> CaptureError:
        """The error for a tree with an unhashable non-tensor leaf, naming its path and the fix."""
        found = pytree.find_unhashable(tree)
        path, value = found if found is not None else ("?", None)
        return CaptureError(
            f"{self.name}: argument {path!r} of type {type(value).__name__} is not hashable, and non-tensor "
            f"arguments are part of the graph key; pass it as a tensor, as a hashable value (a tuple, not a "
            f"list of numbers), or bind it outside the call (a closure or functools.partial)"
        )

    def clear(self) -> None:
        """Forget the per-tree caches (they hold the argument values they were built from)."""
        self._trees.clear()

    def _overrides(self, tree: Any) -> tuple[str | None, ...]:
        try:
            info = self._trees.get(tree)
        except TypeError:
            raise self.unhashable(tree) from None
        return (info if info is not None else self._tree_info(tree)).overrides

    def paths(self, tree: Any) -> tuple[str, ...]:
        """The path of every tensor leaf of ``tree``."""
        info = self._trees.get(tree)
        return info.paths if info is not None else self._tree_info(tree).paths

    def _tree_info(self, tree: Any) -> _TreeInfo:
        paths = pytree.tensor_paths(tree)
        overrides = tuple(
            STATIC if pytree.path_matches(path, self.static_args)
            else BATCHED if pytree.path_matches(path, self.batched_args) else None
            for path in paths
        )
        info = _TreeInfo(paths, overrides)
        if len(self._trees) >= _MAX_TREES:
            # Trees that differ call to call (a counter inside an argument) must not pile up here.
            self._trees.clear()
        self._trees[tree] = info
        return info

    def _refresh_registry(self) -> None:
        """Rebuild the registry-buffer lookups when a buffer was declared or rebound since the last call."""
        buffers = self.registry_buffers
        if buffers.generation == self._owned_generation:
            return
        largest = self.buckets.largest
        tensors = buffers.tensors()
        self._owned = frozenset(id(tensor) for tensor in tensors.values())
        # data_ptr -> (name, dtype, trailing shape) of every buffer a batch of the largest bucket fits in.
        self._views = {
            tensor.data_ptr(): (name, tensor.dtype, tuple(tensor.shape[1:]))
            for name, tensor in tensors.items()
            if buffers.spec(name).capacity >= largest
        }
        self._owned_generation = buffers.generation
