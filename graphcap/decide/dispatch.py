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

The steady state decides in one lookup (``recall``). A *flat* call (every
argument a tensor or a plain scalar) is looked up by its ``memo_key``: its
argument names, batch rows and scalar values. ``remember`` stores there the
key ``decide`` built and what each leaf's role rests on: the shapes and
dtypes, a prefix view's address, a static leaf's identity, a staged leaf
being no registry buffer nor its prefix. ``recall`` checks exactly that, in
a few C-level passes, and returns the remembered decision, or None wherever
``decide`` might decide otherwise. So a recalled decision is always the one
``decide`` would make; calls holding tensors in containers or objects are
decided every time.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import paddle

from graphcap.buffers import StaticBuffers, dtype_name
from graphcap.decide import pytree
from graphcap.decide.buckets import BucketMap
from graphcap.errors import CaptureError

__all__ = ["BATCHED", "STATIC", "Dispatch", "Dispatcher", "GraphKey", "Recalled", "leaf_is_batched"]

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
_MEMOS_PER_KEY = 4
# Argument values a flat call's signature holds by value (with their type: True and 1 differ).
_SCALARS = frozenset((int, float, bool, str, type(None)))
_Tensor = paddle.Tensor
_TENSOR_TYPES = itertools.repeat(_Tensor)



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


class Recalled(NamedTuple):
    """A remembered decision: ``key``, the call's tensor leaves in key order, and the caller's ``target``.

    ``target`` is what the caller attached at ``remember`` (the graph entry
    of ``key``), so that the steady state needs no second lookup.
    """

    rows: int
    key: GraphKey
    leaves: list[paddle.Tensor]
    target: Any


class _Memo(NamedTuple):
    """What one remembered decision rests on; every field is compared by one C-level pass in ``recall``."""

    key: GraphKey
    rows: int
    order: tuple[int, ...]  # leaf i of the key is the call's (order[i])-th argument
    shapes: list[list[int]]  # per leaf, as Paddle reports it (compared as lists: no tuple built per call)
    dtypes: tuple[Any, ...]  # per leaf; Paddle's dtypes are singletons, compared with `is`
    views: tuple[int, ...]  # leaves read in place from a registry buffer ...
    view_ptrs: list[int]  # ... at these addresses
    staged: tuple[int, ...]  # leaves copied into a staging buffer (so no registry buffer's prefix)
    statics: tuple[int, ...]  # leaves the graph reads where they are ...
    static_tensors: tuple[paddle.Tensor, ...]  # ... which must be these very tensors
    # Batched because their rows matched (not the batch argument, not named in batched_args), so
    # no registry buffer itself unless it is the call's batch tensor: looked at only when the rows
    # equal some registry buffer's capacity (else no whole buffer has that shape).
    by_shape: tuple[int, ...]
    generation: int
    target: Any


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
        self._memos: dict[tuple[Any, ...], list[_Memo]] = {}
        self._owned_generation = -1
        self._owned: frozenset[int] = frozenset()
        self._capacities: frozenset[int] = frozenset()
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

    def memo_key(self, bound: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """What ``recall`` looks up: a flat call's names, batch rows and scalar arguments (with their types).

        None for a call that is not flat (an argument that is neither a
        tensor nor a plain scalar: a container, an object, a Parameter) or
        whose batch argument is not a tensor with rows.
        """
        batch = bound.get(self.batch_arg)
        if type(batch) is not _Tensor:
            return None
        shape = batch.shape
        if not shape:
            return None
        key: list[Any] = [tuple(bound), shape[0]]
        for value in bound.values():
            kind = type(value)
            if kind is not _Tensor:
                if kind not in _SCALARS:
                    return None
                key.append(kind)  # True and 1 are equal as keys but not as arguments
                key.append(value)
        return tuple(key)

    def recall(self, bound: Mapping[str, Any]) -> Recalled | None:
        """The decision remembered for a call like this one, when ``decide`` would make it again; else None.

        Like this one: the same ``memo_key`` (names, rows, scalar
        arguments), every tensor of the same shape and dtype. And the roles
        still hold: a prefix view at the same
        address, a static leaf the very tensor, a staged leaf no registry
        buffer or its prefix, registry buffers neither declared nor rebound.
        """
        memo_key = self.memo_key(bound)
        memos = self._memos.get(memo_key) if memo_key is not None else None
        if memos is None:
            return None
        generation = self.registry_buffers.generation
        values = tuple(bound.values())
        for memo in memos:
            if memo.generation == generation:
                leaves = [values[position] for position in memo.order]
                if self._holds(memo, leaves, bound[self.batch_arg]):
                    return Recalled(memo.rows, memo.key, leaves, memo.target)
        return None

    def _holds(self, memo: _Memo, leaves: list[Any], batch: Any) -> bool:
        """Whether ``leaves`` have ``memo``'s types, shapes and dtypes, and its roles still hold for them.

        ``decide`` makes any leaf that *is* the call's batch tensor batched,
        whatever its position: a static leaf must not be it, and only such a
        leaf may be a registry buffer where the rows made a leaf batched.
        """
        if (
            not all(map(operator.is_, map(type, leaves), _TENSOR_TYPES))  # first: a scalar has no shape
            or [leaf.shape for leaf in leaves] != memo.shapes
            or not all(map(operator.is_, [leaf.dtype for leaf in leaves], memo.dtypes))
        ):
            return False
        if memo.views and (
            [leaves[index].data_ptr() for index in memo.views] != memo.view_ptrs
            or not all([leaves[index].is_contiguous() for index in memo.views])
        ):
            return False
        if memo.statics:
            statics = [leaves[index] for index in memo.statics]
            if not all(map(operator.is_, statics, memo.static_tensors)) or any(map(operator.is_, statics,
                                                                                   itertools.repeat(batch))):
                return False
        views = self._views
        if views and memo.staged and any([leaves[index].data_ptr() in views for index in memo.staged]):
            return False
        if not memo.by_shape:
            return True
        owned = self._owned
        return not any([id(leaves[index]) in owned and leaves[index] is not batch for index in memo.by_shape])

    def remember(self, bound: Mapping[str, Any], decision: Dispatch, target: Any) -> None:
        """Store ``decision`` (the key ``decide`` just built for ``bound``) for later calls like it.

        ``target`` comes back with every ``recall``. Only a flat call (one
        with a ``memo_key``) is remembered. The memo holds the static leaves (the graph reads them anyway) and no
        batched tensor.
        """
        key = decision.key
        memo_key = self.memo_key(bound)
        if key is None or memo_key is None:
            return
        names = tuple(bound)
        values = tuple(bound.values())
        positions = {name: index for index, name in enumerate(names)}
        order = tuple(positions[name] for name in sorted(names) if type(bound[name]) is _Tensor)
        leaves = decision.leaves
        if len(order) != len(leaves) or any(values[position] is not leaf for position, leaf in zip(order, leaves)):
            return
        overrides = self._overrides(key.tree) if self._has_overrides else (None,) * len(order)
        batch_index = order.index(positions[self.batch_arg])
        batched = [index for index, layout in enumerate(key.layout) if leaf_is_batched(layout)]
        views = tuple(index for index in batched if key.layout[index][3])
        statics = tuple(index for index, layout in enumerate(key.layout) if not leaf_is_batched(layout))
        memo = _Memo(
            key=key, rows=decision.rows, order=order,
            shapes=[leaf.shape for leaf in leaves], dtypes=tuple(leaf.dtype for leaf in leaves),
            views=views, view_ptrs=[leaves[index].data_ptr() for index in views],
            staged=tuple(index for index in batched if not key.layout[index][3]),
            statics=statics, static_tensors=tuple(leaves[index] for index in statics),
            by_shape=tuple(index for index in batched if index != batch_index and overrides[index] is None
                           and decision.rows in self._capacities),
            generation=self._owned_generation, target=target,
        )
        # A few decisions per memo key (another static tensor, dtype or row shape alternating with
        # this one), the latest first; the oldest is forgotten.
        kept = [other for other in self._memos.get(memo_key, ()) if other.key != key][: _MEMOS_PER_KEY - 1]
        if len(self._memos) >= _MAX_TREES:
            self._memos.clear()
        self._memos[memo_key] = [memo, *kept]

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
        """Forget the per-tree caches and remembered decisions (they hold the argument values they were built from)."""
        self._trees.clear()
        self._memos.clear()

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
        self._capacities = frozenset(buffers.spec(name).capacity for name in tensors)
        self._owned_generation = buffers.generation
