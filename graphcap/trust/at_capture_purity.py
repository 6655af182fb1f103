"""The pure-function check at capture: a graph is right only for a function of its inputs.

A graph replays what one run did. If the function keeps state of its own (a
Python-held tensor it replaces each call, as PaddleFormers' ``DynamicCache``
does; a counter passed as an argument or held in a Layer and advanced in
place; a result written into an argument object's attribute; a value read
on the host inside ``allow_host_reads``), the graph freezes one run's state
and every replay is silently wrong. At capture graphcap runs the function
several times on the same staged inputs, with the declared state
(restorable registry buffers) put back before each run, and compares:

* the outputs of every run, bitwise, and their structure (the runner);
* each staged batched input before and after the first run: a function that
  writes into its batched input writes into graphcap's staging copy, and the
  caller never sees it;
* after the first warmup and after the last: each static tensor argument, each
  tensor the function reaches that is not a parameter (Layer buffers,
  closure and global tensors, tensors in argument objects), each adopted
  registry buffer (a KV cache must be rewritten with the same values, a
  counter would not be), and every reference on the paths to those tensors
  (``model.cache``, ``holder.logits``). Comparing two runs rather than
  before-and-after lets lazy initialisation in the first run pass.

On a difference the watched tensors and references are put back as they were
before the first run, and ``CaptureSafetyError`` names what changed.

Tensors up to ``SMALL`` elements are copied to the host and compared bit for
bit; larger ones (a KV cache) by a checksum computed on their device, so a
capture never copies gigabytes to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import paddle

from graphcap.errors import CaptureSafetyError
from graphcap.trust.reachable import Edge, Reachable

__all__ = ["SMALL", "CaptureWatch", "first_difference", "host_copies", "same_constant"]

#: Tensors with at most this many elements are snapshotted exactly on the host.
SMALL = 1 << 20


def host_copies(tensors: Sequence[paddle.Tensor]) -> list[np.ndarray]:
    """A host copy of each tensor (taken now; later writes to the tensor do not reach it)."""
    return [np.array(tensor.numpy(), copy=True) for tensor in tensors]


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def first_difference(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> int | None:
    """Index of the first pair that differs in any bit (shape and dtype included), or None.

    Sequences of different lengths differ at the first index one of them lacks.
    """
    for index, (a, b) in enumerate(zip(before, after)):
        if not _bitwise_equal(a, b):
            return index
    if len(before) != len(after):
        return min(len(before), len(after))
    return None


def same_constant(a: object, b: object) -> bool:
    """True when two non-tensor results are the same object or compare equal."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def fingerprint(tensor: paddle.Tensor) -> Any:
    """An exact host copy of a small tensor, or for a large one a checksum computed on its device."""
    if int(tensor.numel()) <= SMALL:
        return np.array(tensor.numpy(), copy=True)
    values = tensor.reshape([-1])
    if values.dtype in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64):
        values = paddle.nan_to_num(values.astype("float64"), nan=0.0)
    values = values.astype("float64")
    weights = (paddle.arange(values.shape[0], dtype="int64") % 7919 + 1).astype("float64")
    return (tuple(tensor.shape), float(values.sum()), float((values * weights).sum()))


def same_fingerprint(a: Any, b: Any) -> bool:
    """True when two fingerprints of one tensor agree."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return _bitwise_equal(a, b)
    return a == b


class CaptureWatch:
    """Snapshots what a capture's runs must leave alone, and compares the first run with the last."""

    def __init__(
        self,
        label: str,
        *,
        static_leaves: Sequence[tuple[str, paddle.Tensor]],
        staged: Sequence[tuple[str, paddle.Tensor]],
        adopted: Sequence[tuple[str, paddle.Tensor]],
        before: Reachable,
        rescan: Callable[[], Reachable],
        owned: Callable[[paddle.Tensor], bool],
        runs: int,
    ) -> None:
        """Take the snapshots before the first of ``runs`` runs on the same inputs.

        ``before`` is the reachable scan taken now; ``rescan`` scans again after
        the first run (lazily created state then counts); ``owned`` says
        whether a tensor is (a view of) a registry buffer, which is declared
        state and not watched here. With a single run, its state is compared
        with the state before it (lazy initialisation then looks like state:
        use two warmups).
        """
        self.label = label
        self.static_leaves = list(static_leaves)
        self.staged = list(staged)
        self.adopted = list(adopted)
        self.rescan = rescan
        self.owned = owned
        self.before_edges = [edge for edge in before.edges if edge.kind != "none"]
        self.before_values = list(before.values)
        self._known = {id(tensor) for _, tensor in before.tensors.values()} | {id(t) for _, t in static_leaves}
        self.before_tensors = self._watched_tensors(before)
        # Put back on failure: exact copies of what can be copied.
        self.restore_copies = [
            (tensor, fingerprint(tensor)) for _, tensor in [*self.static_leaves, *self.before_tensors]
        ]
        self.staged_before = [fingerprint(view) for _, view in self.staged]
        self.expected = runs
        self.edges = [edge for edge in before.edges if edge.kind != "none"]
        self.value_edges = list(before.values)
        self.tensors = self.before_tensors
        self.first: dict[str, Any] | None = self._record() if runs == 1 else None
        self.last: dict[str, Any] | None = None
        self.runs = 0

    def is_known(self, tensor: Any) -> bool:
        """True for a tensor the graph reads rather than computes: a static argument, a reachable tensor, a buffer."""
        return id(tensor) in self._known or (isinstance(tensor, paddle.Tensor) and self.owned(tensor))

    def _watched_tensors(self, found: Reachable) -> list[tuple[str, paddle.Tensor]]:
        return [
            (path, tensor) for path, tensor in found.tensors.values()
            if not isinstance(tensor, paddle.base.framework.EagerParamBase) and not self.owned(tensor)
        ]

    def after_run(self) -> None:
        """Record the state one run left (the staged inputs are checked after the first)."""
        self.runs += 1
        if self.runs == 1:
            changed = next((path for (path, view), saved in zip(self.staged, self.staged_before)
                            if not same_fingerprint(saved, fingerprint(view))), None)
            if changed is not None:
                self.restore()
                raise CaptureSafetyError(
                    f"{self.label}: the function writes into its batched argument {changed!r}, which graphcap "
                    f"stages into a copy, so the caller would never see the write; adopt the tensor as a "
                    f"registry buffer (registry.buffers.adopt(...)) or name it in static_args"
                )
            if self.expected == 1:
                self.last = self._record()  # compared with the state before the run
                return
            found = self.rescan()
            self.edges = [edge for edge in found.edges if edge.kind != "none"]
            self.value_edges = list(found.values)
            self.tensors = self._watched_tensors(found)
            self.first = self._record()
        else:
            self.last = self._record()

    def _record(self) -> dict[str, Any]:
        return {
            "static": [fingerprint(tensor) for _, tensor in self.static_leaves],
            "reachable": [fingerprint(tensor) for _, tensor in self.tensors],
            "adopted": [fingerprint(tensor) for _, tensor in self.adopted],
            "edges": [edge.current() for edge in self.edges],
            "values": [edge.current() for edge in self.value_edges],
        }

    def check(self) -> None:
        """Raise ``CaptureSafetyError`` (after putting everything back) when the last run left other state."""
        if self.first is None or self.last is None:
            return
        problem = self._difference(self.first, self.last)
        if problem is not None:
            self.restore()
            raise CaptureSafetyError(f"{self.label}: {problem}")

    def _difference(self, first: dict[str, Any], last: dict[str, Any]) -> str | None:
        fix = ("state a step advances must live in a registry buffer declared restorable "
               "(registry.buffers.declare(...)), or be passed in as a batched argument")
        for (path, _), a, b in zip(self.static_leaves, first["static"], last["static"]):
            if not same_fingerprint(a, b):
                return (f"the function changed its static argument {path!r} in place between two runs on the "
                        f"same inputs, so a graph would freeze one step's value; {fix}")
        for (path, _), a, b in zip(self.tensors, first["reachable"], last["reachable"]):
            if not same_fingerprint(a, b):
                return (f"the function changed {path} in place between two runs on the same inputs: state it "
                        f"keeps itself, which a graph would freeze; {fix}")
        for (name, _), a, b in zip(self.adopted, first["adopted"], last["adopted"]):
            if not same_fingerprint(a, b):
                return (f"two runs on the same inputs left registry buffer {name!r} different: an adopted buffer "
                        f"(restore=False) may only be rewritten with the same values, as a KV cache is; declare "
                        f"state a step advances with restore=True")
        for edge, a, b in zip(self.value_edges, first["values"], last["values"]):
            if a is not b and (type(a) is not type(b) or a != b):
                return (f"the function changes {edge.path} (a Python value: {a!r}, then {b!r}) on every call, and "
                        f"a graph replays no Python; keep such counters in a registry buffer")
        for edge, a, b in zip(self.edges, first["edges"], last["edges"]):
            if a is not b:
                return (f"the function rebinds {edge.path} on every call (as a cache that replaces its tensors "
                        f"does), and a graph replays no Python: keep the tensor and write it in place, or return "
                        f"the value instead of storing it")
        return None

    def restore(self) -> None:
        """Put back the references and the tensors the runs changed, as they were before the first run."""
        for edge in [*self.before_edges, *self.before_values]:
            _rebind(edge)
        for tensor, saved in self.restore_copies:
            if isinstance(saved, np.ndarray) and tuple(tensor.shape) == saved.shape:
                paddle.assign(paddle.to_tensor(saved), output=tensor)


def _rebind(edge: Edge) -> None:
    if edge.current() is edge.child:
        return
    try:
        if edge.kind == "cell":
            if hasattr(edge.container, "owner"):  # a __slots__ attribute
                setattr(edge.container.owner, edge.container.name, edge.child)
            else:
                edge.container.cell_contents = edge.child
        else:
            edge.container[edge.key] = edge.child
    except Exception:  # a container that refuses the write (a tuple, a frozen object): leave it
        return
