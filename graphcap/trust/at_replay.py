"""At replay: what the graph reads is still the tensor, at the address, with the Python values, of capture.

Decided once per graph at capture, run on every replay in two tiers:

* every replay, O(1) per item: each static argument leaf is the very tensor
  of capture (``is``), the registry buffers' generation is unchanged (no name
  rebound), every edge on the path to a reachable tensor still holds the
  same child (``model.lin.weight``, ``cache.keys[0]``), and every Python
  value the function read at capture (a global float, ``model.temperature``,
  a closure's number, a Layer's ``training``: a graph bakes them in) is equal
  to its captured value: one C-level ``itemgetter`` and one tuple comparison
  per dict that holds them;
* every ``address_check_interval``-th replay, and whenever the registry's
  generation moved: ``data_ptr()`` and shape of every static leaf, registry
  buffer and reachable tensor, which also catches storage reallocated in
  place and a buffer reshaped by a different-shaped ``copy_``.

A failed check returns a ``Problem`` naming the path and its kind (``rebind``
or ``value``); the caller raises ``AddressStabilityError``, recaptures or runs
eagerly, per ``on_rebind`` and ``on_value_change``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import attrs
import paddle

from graphcap.buffers import StaticBuffers
from graphcap.trust.reachable import MISSING, Edge

__all__ = ["Problem", "ReplayCheck"]

_data_ptr = paddle.Tensor.data_ptr
# getter(container) without a Python frame per call where the interpreter has operator.call (3.11+).
_apply = getattr(operator, "call", lambda getter, container: getter(container))


@attrs.frozen
class Problem:
    """What a check found: the message, and whether recapturing the graph would make it right."""

    message: str
    recapturable: bool = True
    kind: str = "rebind"  # or "value": a Python value the graph baked in changed


class ReplayCheck:
    """The checks of one captured graph (see the module docstring)."""

    def __init__(
        self,
        *,
        label: str,
        static_leaves: Sequence[tuple[int, str, paddle.Tensor]],
        registry: StaticBuffers,
        edges: Sequence[Edge],
        watched: Sequence[tuple[str, paddle.Tensor]],
        interval: int,
        values: Sequence[Edge] = (),
    ) -> None:
        """Record what the graph reads now. ``static_leaves``: (leaf index, path, tensor)."""
        self.label = label
        self.interval = interval
        self.replays = 0
        self.static_index = tuple(index for index, _, _ in static_leaves)
        self.static_paths = tuple(path for _, path, _ in static_leaves)
        self.static_tensors = tuple(tensor for _, _, tensor in static_leaves)
        self.static_ptrs = tuple(map(_data_ptr, self.static_tensors))
        self.static_shapes = [tensor.shape for tensor in self.static_tensors]
        self.registry = registry
        self.registry_generation = registry.generation
        self.registry_ptrs = registry.addresses()
        self._registry_ptr_tuple = registry.data_ptrs()
        self.registry_shapes = registry.shapes()
        item_edges = [edge for edge in edges if edge.kind == "item"]
        self.item_containers = [edge.container for edge in item_edges]
        self.item_keys = [edge.key for edge in item_edges]
        self.item_children = [edge.child for edge in item_edges]
        self.item_edges = item_edges
        self.cell_edges = [edge for edge in edges if edge.kind == "cell"]
        # Python values, grouped by the dict that holds them: one C-level itemgetter and
        # one tuple comparison per container instead of one Python step per value.
        groups: dict[int, tuple[Any, list[Edge]]] = {}
        self.value_cells = []
        for edge in values:
            if edge.kind == "item":
                groups.setdefault(id(edge.container), (edge.container, []))[1].append(edge)
            else:
                self.value_cells.append(edge)
        self.value_groups = [
            (container, operator.itemgetter(*[edge.key for edge in edges]), tuple(edge.child for edge in edges),
             edges)
            for container, edges in groups.values()
        ]
        # The fast path of values(): every group's getter applied by one C-level map, compared as one
        # tuple (a group of one key yields the value itself, not a 1-tuple).
        self._value_getters = tuple(getter for _, getter, _, _ in self.value_groups)
        self._value_containers = tuple(container for container, _, _, _ in self.value_groups)
        self._values_expected = tuple(expected if len(expected) > 1 else expected[0]
                                      for _, _, expected, _ in self.value_groups)
        self.watched_paths = tuple(path for path, _ in watched)
        self.watched = tuple(tensor for _, tensor in watched)
        self.watched_ptrs = tuple(map(_data_ptr, self.watched))
        self.watched_shapes = [tensor.shape for tensor in self.watched]
        # A graph that reads no static tensor, edge or Python value skips that tier outright
        # (an engine's in-place call over registry buffers is such a graph).
        self._reads_identity = bool(self.static_index or self.item_edges or self.cell_edges)
        self._reads_values = bool(self.value_groups or self.value_cells)

    def __call__(self, leaves: Sequence[paddle.Tensor]) -> Problem | None:
        """Run this replay's checks on the call's tensor leaves; None when all is well."""
        replays = self.replays
        self.replays = replays + 1
        problem = (self._reads_identity and self.identity(leaves)) or (self._reads_values and self.values()) or None
        if problem is None and (replays % self.interval == 0 or self.registry.generation != self.registry_generation):
            problem = self.addresses()
        return problem

    # Tier 1 ------------------------------------------------------------------
    def identity(self, leaves: Sequence[paddle.Tensor]) -> Problem | None:
        """Static leaves are the captured tensors and every edge holds its child (O(1) per item)."""
        for index, path, tensor in zip(self.static_index, self.static_paths, self.static_tensors):
            if leaves[index] is not tensor:
                return Problem(
                    f"{self.label}: static argument {path!r} is not the tensor the graph was captured with "
                    f"(it is at {_data_ptr(leaves[index]):#x}, the graph reads {_data_ptr(tensor):#x}); pass the "
                    f"same tensor every call and update it in place, or let graphcap stage it as a batched input"
                )
        try:
            same = all(map(operator.is_, map(operator.getitem, self.item_containers, self.item_keys),
                           self.item_children))
        except (KeyError, IndexError):
            same = False
        for edge in self.cell_edges if same else [*self.item_edges, *self.cell_edges]:
            if edge.current() is not edge.child:
                return _rebound(self.label, edge)
        return None

    def values(self) -> Problem | None:
        """Every Python value the graph read at capture is equal to its captured value."""
        try:
            same = tuple(map(_apply, self._value_getters, self._value_containers)) == self._values_expected
        except (KeyError, IndexError):
            same = False
        if not same:
            for container, getter, expected, edges in self.value_groups:
                try:
                    now_values = getter(container)
                except (KeyError, IndexError):
                    now_values = None
                if len(edges) == 1:
                    now_values = (now_values,)
                if now_values != expected:
                    return _value_changed(self.label, edges)
        for edge in self.value_cells:
            if edge.current() != edge.child:
                return _value_changed(self.label, [edge])
        return None

    # Tier 2 ------------------------------------------------------------------
    def addresses(self) -> Problem | None:
        """``data_ptr()`` and shape of everything the graph reads match capture."""
        now = tuple(map(_data_ptr, self.static_tensors))
        if now != self.static_ptrs:
            for path, before, after in zip(self.static_paths, self.static_ptrs, now):
                if before != after:
                    return Problem(
                        f"{self.label}: static argument {path!r} moved from {before:#x} to {after:#x} since capture "
                        f"(its storage was reallocated); update it in place without changing its shape"
                    )
        problem = self._registry()
        if problem is not None:
            return problem
        shapes = [tensor.shape for tensor in self.static_tensors]
        if shapes != self.static_shapes:
            for path, before, after in zip(self.static_paths, self.static_shapes, shapes):
                if before != after:
                    return Problem(
                        f"{self.label}: static argument {path!r} has shape {list(after)} but the graph was "
                        f"captured with {list(before)}; keep its shape and update it in place"
                    )
        now = tuple(map(_data_ptr, self.watched))
        shapes = [tensor.shape for tensor in self.watched]
        if now != self.watched_ptrs or shapes != self.watched_shapes:
            for path, before, after, shape_before, shape_after in zip(
                self.watched_paths, self.watched_ptrs, now, self.watched_shapes, shapes
            ):
                if before != after or shape_before != shape_after:
                    return Problem(
                        f"{self.label}: {path} moved from {before:#x} {list(shape_before)} to {after:#x} "
                        f"{list(shape_after)} since capture; the graph still reads the old storage. Update it "
                        f"in place (paddle.assign(new, output=t) with the same shape), or call registry.reset()"
                    )
        return None

    def _registry(self) -> Problem | None:
        buffers = self.registry
        if (buffers.generation == self.registry_generation and buffers.data_ptrs() == self._registry_ptr_tuple
                and buffers.shapes() == self.registry_shapes):
            return None  # same names, addresses and shapes as capture: nothing to name
        ptrs = buffers.addresses()
        if ptrs != self.registry_ptrs:
            for name, before in self.registry_ptrs.items():
                after = ptrs.get(name)
                if after != before:
                    return Problem(
                        f"{self.label}: registry buffer {name!r} moved from {before:#x} to "
                        f"{after if after is None else hex(after)} since capture; write it in place "
                        f"(buffers.write({name!r}, value) or buf[:n] = value), never rebind or reshape it",
                        recapturable=False,
                    )
            # Only additions (buffers declared after capture) differ: record them too.
            self.registry_ptrs = ptrs
        shapes = buffers.shapes()
        if shapes[: len(self.registry_shapes)] != self.registry_shapes:
            for name, before, after in zip(self.registry_ptrs, self.registry_shapes, shapes):
                if before != after:
                    return Problem(
                        f"{self.label}: registry buffer {name!r} was reshaped from {list(before)} to {list(after)} "
                        f"since capture (copy_/assign from a different-shaped tensor); write it with "
                        f"buffers.write({name!r}, value), which pads instead of reshaping",
                        recapturable=False,
                    )
        self.registry_shapes = shapes
        self.registry_generation = buffers.generation
        self._registry_ptr_tuple = buffers.data_ptrs()
        return None


def _value_changed(label: str, edges: Sequence[Edge]) -> Problem:
    edge = next((edge for edge in edges if edge.current() != edge.child), edges[0])
    now = edge.current()
    return Problem(
        f"{label}: {edge.path} was {edge.child!r} at capture and is {now!r} now; the graph baked {edge.child!r} "
        f"in. Pass it as an argument (part of the graph key), or call registry.reset() after changing it",
        kind="value",
    )


def _rebound(label: str, edge: Edge) -> Problem:
    now = edge.current()
    what = "was removed" if now is MISSING else f"now holds another {type(now).__name__}"
    return Problem(
        f"{label}: {edge.path} {what} since capture, and the graph still reads the old tensor; update "
        f"tensors in place (paddle.assign(new, output=old), layer.set_state_dict(...)) instead of rebinding "
        f"them, call registry.reset() after a rebinding weight reload, or set GraphConfig(on_rebind='recapture')"
    )

