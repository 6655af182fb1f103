"""``CaptureRegistry``: (graph name, bucket) -> captured graph; warmup, capture, replay, fallback.

Lifecycle of one call of a graphed function, on one screen:

1. *Decide*: rows of the batch argument -> bucket (``BucketMap``). No bucket
   (too many rows) -> eager fallback; zero rows -> the original function,
   no graph.
2. *Stage*: every batched input is written in place into its static staging
   buffer (``StaticBuffers``), rows past the real count padded by rule.
3. *Capture* (first call of a key only): warmups run the function eagerly on
   the static buffers (the first under the capture-safety guard), static
   outputs are allocated from the warmup's outputs, the backend captures a
   closure that reads the buffers and writes the outputs. Registry buffers
   declared with ``restore=True`` (the default for ``declare``: state such as
   ``infer_seed`` that a step advances in place) are snapshotted before and
   copied back after, so warmups and capture leave no trace in them.
4. *Check*: the addresses of static arguments and registry buffers are
   compared with those recorded at capture (``debug_checks``).
5. *Replay*: the graph runs; outputs are views of the static outputs sliced
   to the real rows. They are overwritten by the next replay of the same
   bucket: copy them if they must outlive it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import paddle

from graphcap import guard
from graphcap.backends import Backend, Graph, make_backend
from graphcap.buckets import BucketMap, PaddingStats
from graphcap.buffers import StaticBuffers, dtype_name
from graphcap.config import GraphConfig
from graphcap.errors import AddressStabilityError, CaptureError, CaptureSafetyError, GraphCapError

logger = logging.getLogger("graphcap")

__all__ = ["CaptureRegistry", "GraphedFunction", "GraphKey"]


@attrs.frozen
class GraphKey:
    """The fewest fields that identify one padded batch of one graphed function."""

    name: str
    bucket: int
    batched: tuple[str, ...]
    extras: tuple[tuple[str, Any], ...]


@attrs.frozen
class CallPlan:
    """How one call shape's arguments are treated: staged, checked, or keyed."""

    names: tuple[str, ...]  # sorted: the plan's identity in graph keys
    batched: tuple[str, ...]
    static: tuple[str, ...]
    extras: tuple[str, ...]
    # (argument, buffers, buffer name): where each batched argument is staged.
    sources: tuple[tuple[str, StaticBuffers, str], ...]

    # Identity in graph keys: the argument names and where each batched one is
    # staged. A graph reads the buffers it was captured over, so a call that
    # stages an argument elsewhere (a registry-buffer view one time, a fresh
    # tensor the next) must not replay it.
    key: tuple[Any, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        where = tuple((name, id(buffers), buffer) for name, buffers, buffer in self.sources)
        object.__setattr__(self, "key", (self.names, where))


@attrs.define(eq=False)
class GraphEntry:
    """A captured bucket: its graph, its static outputs and the addresses it was captured over."""

    key: GraphKey
    graph: Graph | None = None
    outputs: list[paddle.Tensor] = attrs.Factory(list)
    sliced: tuple[bool, ...] = ()
    structure: Any = None
    static_items: tuple[tuple[str, paddle.Tensor], ...] = ()
    static_ptrs: tuple[int, ...] = ()
    buffer_ptrs: dict[str, int] = attrs.Factory(dict)
    buffer_ptr_values: tuple[int, ...] = ()
    buffer_shapes: list[list[int]] = attrs.Factory(list)
    static_shapes: list[list[int]] = attrs.Factory(list)
    buffer_generation: int = -1
    failed: bool = False
    replays: int = 0


# Output pytrees: a tensor, or tuples / lists / dicts of them -------------------


def _flatten(value: Any, leaves: list[paddle.Tensor]) -> Any:
    if isinstance(value, paddle.Tensor):
        leaves.append(value)
        return None
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_flatten(item, leaves) for item in value))
    if isinstance(value, dict):
        # Sorted keys: the same leaf order as paddle.utils.flatten, used inside traces.
        return (dict, tuple((key, _flatten(value[key], leaves)) for key in sorted(value)))
    raise CaptureError(
        f"a graphed function must return tensors, or tuples/lists/dicts of tensors (got {type(value).__name__})"
    )


def _unflatten(structure: Any, leaves: Iterator[paddle.Tensor]) -> Any:
    if structure is None:
        return next(leaves)
    kind, items = structure
    if kind is dict:
        return {key: _unflatten(item, leaves) for key, item in items}
    return kind(_unflatten(item, leaves) for item in items)


class GraphedFunction:
    """A function wrapped by ``CaptureRegistry.graphed``; call it like the original.

    ``__wrapped__`` is the original function. ``enabled`` switches graphs for
    this function alone at run time (the draft switch); off, calls go straight
    to the original.
    """

    def __init__(
        self,
        registry: CaptureRegistry,
        name: str,
        fn: Callable[..., Any],
        *,
        batch_arg: str,
        static_args: Sequence[str],
        capture_sizes: Sequence[int],
        enabled: bool,
        padding: Mapping[str, Any] | None = None,
        rows_per_request: int = 1,
    ) -> None:
        """Use ``CaptureRegistry.graphed``; this constructor is not public API."""
        self.registry = registry
        self.name = name
        self.__wrapped__ = fn
        functools.update_wrapper(self, fn)
        self.batch_arg = batch_arg
        self.static_args = frozenset(static_args)
        self.rows_per_request = rows_per_request
        self.padding_rules = {name: _padding_rule(name, rule) for name, rule in (padding or {}).items()}
        self.buckets = BucketMap(capture_sizes)
        self.enabled = enabled
        self.padding = PaddingStats()
        self.staging = StaticBuffers(owner=f"{name}.staging")
        self._signature = inspect.signature(fn)
        self._entries: dict[tuple[Any, ...], GraphEntry] = {}
        self._plans: dict[tuple[str, ...], CallPlan] = {}
        self._last_call: dict[str, Any] | None = None
        params = self._signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if batch_arg not in params and not takes_any:
            raise CaptureError(f"batch_arg={batch_arg!r} is not a parameter of {fn.__qualname__}{self._signature}")

    # Call path -------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one step: replay the bucket's graph, capturing it first if needed."""
        fn = self.__wrapped__
        if not self.enabled:
            return fn(*args, **kwargs)
        bound = kwargs if not args else dict(self._signature.bind(*args, **kwargs).arguments)
        plan = self._plans.get(tuple(bound))
        if plan is None:
            plan = self._plan(bound)
        rows = bound[self.batch_arg].shape[0]
        bucket = self.buckets.bucket(rows)
        if bucket == 0:
            return fn(**bound)
        if bucket is None:
            self.padding.record(rows, None)
            self.registry._counts["eager_fallbacks"] += 1
            return fn(**bound)
        try:
            entry = self._entries.get((plan.key, bucket, tuple([bound[name] for name in plan.extras])))
        except TypeError:
            self._check_hashable(bound, plan)
            raise
        for name, buffers, buffer_name in plan.sources:
            buffers.write(buffer_name, bound[name], rows=rows)
        if entry is None:
            entry = self._capture(plan, bound, bucket)
        if entry.failed:
            self.padding.record(rows, None)
            self.registry._counts["eager_fallbacks"] += 1
            return fn(**bound)
        if self.registry.config.debug_checks:
            self._check_addresses(entry, bound)
        entry.graph.replay()  # type: ignore[union-attr]
        entry.replays += 1
        self.registry._counts["replays"] += 1
        self.padding.record(rows, bucket)
        if rows == bucket:
            outputs: Iterator[paddle.Tensor] = iter(entry.outputs)
        else:
            outputs = (out[:rows] if cut else out for out, cut in zip(entry.outputs, entry.sliced))
        return _unflatten(entry.structure, outputs)

    def _plan(self, bound: dict[str, Any]) -> CallPlan:
        """Classify a call's arguments once per set of argument names.

        Batched tensors (first dim equal to the rows of ``batch_arg``) are
        staged; other tensors are static (checked on replay); everything else
        is part of the graph key. Registry buffers and ``static_args`` are
        never batched, whatever their shape.
        """
        batch = bound.get(self.batch_arg)
        if not isinstance(batch, paddle.Tensor) or not batch.shape:
            raise CaptureError(
                f"{self.name}: batch_arg {self.batch_arg!r} must be passed as a tensor with rows "
                f"(got {type(batch).__name__})"
            )
        rows = batch.shape[0]
        batched: list[str] = []
        static: list[str] = []
        extras: list[str] = []
        sources: list[tuple[str, StaticBuffers, str]] = []
        owned = self.registry._buffer_ids
        # Sorted, so that the same arguments passed in another order share a plan key and graphs.
        for name, value in sorted(bound.items()):
            if isinstance(value, paddle.Tensor):
                if name == self.batch_arg or (
                    name not in self.static_args and id(value) not in owned and value.shape[:1] == [rows]
                ):
                    batched.append(name)
                    sources.append(self._source(name, value))
                else:
                    static.append(name)
            else:
                extras.append(name)
        plan = CallPlan(
            names=tuple(sorted(bound)), batched=tuple(batched), static=tuple(static), extras=tuple(extras),
            sources=tuple(sources),
        )
        self._check_hashable(bound, plan)
        self._plans[tuple(bound)] = plan
        return plan

    def _source(self, name: str, value: paddle.Tensor) -> tuple[str, StaticBuffers, str]:
        """Where batched argument ``name`` is staged.

        A prefix view of a registry buffer big enough for the largest bucket
        is adopted: the graph reads that buffer directly, so passing the view
        again costs no copy (zero-copy path) and the buffer's own padding rule
        applies. Anything else gets a staging buffer of its own, allocated
        once at the largest bucket; every bucket's graph reads a prefix view
        of it, so one address serves them all.
        """
        registry_buffers = self.registry.buffers
        largest = self.buckets.largest
        pointer = value.data_ptr()
        for buffer_name, tensor in registry_buffers.tensors().items():
            spec = registry_buffers.spec(buffer_name)
            if (
                tensor.data_ptr() == pointer
                and spec.capacity >= largest
                and list(spec.shape[1:]) == list(value.shape[1:])
                and spec.dtype == dtype_name(value.dtype)
            ):
                return name, registry_buffers, buffer_name
        if name not in self.staging:
            pad, pad_value = self.padding_rules.get(name, ("zero", 0))
            shape = (largest, *value.shape[1:])
            self.staging.declare(name, shape, value.dtype, pad=pad, pad_value=pad_value)
        return name, self.staging, name

    def _check_hashable(self, bound: dict[str, Any], plan: CallPlan) -> None:
        """Raise ``CaptureError`` naming the first non-tensor argument that cannot be a graph key."""
        for name in plan.extras:
            try:
                hash(bound[name])
            except TypeError:
                raise CaptureError(
                    f"{self.name}: argument {name!r} of type {type(bound[name]).__name__} is not hashable; "
                    f"non-tensor arguments are part of the graph key"
                ) from None

    def _check_addresses(self, entry: GraphEntry, bound: dict[str, Any]) -> None:
        """Raise ``AddressStabilityError`` if anything the graph reads has moved since capture.

        Every replay: identity of the static arguments and the registry
        buffers' generation (bumped by any rebinding), both O(1) per item.
        Every ``address_check_interval``-th replay, and whenever those differ:
        the full ``data_ptr()`` comparison, which also catches a tensor whose
        storage was reallocated in place (a reshaping ``copy_``).
        """
        full = entry.replays % self.registry.config.address_check_interval == 0
        if not full:
            for name, tensor in entry.static_items:
                if bound[name] is not tensor:
                    full = True
                    break
            else:
                full = self.registry.buffers.generation != entry.buffer_generation
        if full:
            self._compare_addresses(entry, bound)

    def _compare_addresses(self, entry: GraphEntry, bound: dict[str, Any]) -> None:
        now = tuple([bound[name].data_ptr() for name, _ in entry.static_items])
        if now != entry.static_ptrs:
            for (name, _), before, after in zip(entry.static_items, entry.static_ptrs, now):
                if before != after:
                    raise AddressStabilityError(
                        f"{self.name}[bucket {entry.key.bucket}]: static argument {name!r} is at "
                        f"{after:#x} but the graph was captured over {before:#x}; pass the same tensor "
                        f"every call (update it in place), or let graphcap stage it as a batched input"
                    )
        buffers = self.registry.buffers
        if buffers.data_ptrs() != entry.buffer_ptr_values:
            for name, before in entry.buffer_ptrs.items():
                after = buffers[name].data_ptr()
                if after != before:
                    raise AddressStabilityError(
                        f"{self.name}[bucket {entry.key.bucket}]: registry buffer {name!r} moved from "
                        f"{before:#x} to {after:#x} since capture; write it in place "
                        f"(buffers.write({name!r}, value) or buf[:n] = value), never rebind or reshape it"
                    )
            # Only additions (buffers declared after capture) differ: record them too.
            entry.buffer_ptrs = buffers.addresses()
            entry.buffer_ptr_values = tuple(entry.buffer_ptrs.values())
        # A copy_/assign from a smaller tensor reshapes a buffer in place at the
        # same address; a device graph would go on reading the captured extent.
        shapes = buffers.shapes()
        if shapes[: len(entry.buffer_shapes)] != entry.buffer_shapes:
            for name, before, after in zip(entry.buffer_ptrs, entry.buffer_shapes, shapes):
                if before != after:
                    raise AddressStabilityError(
                        f"{self.name}[bucket {entry.key.bucket}]: registry buffer {name!r} was reshaped from "
                        f"{list(before)} to {list(after)} since capture (copy_/assign from a different-shaped tensor); "
                        f"write it with buffers.write({name!r}, value), which pads instead of reshaping"
                    )
        entry.buffer_shapes = shapes
        static_shapes = [bound[name].shape for name, _ in entry.static_items]
        if static_shapes != entry.static_shapes:
            for (name, _), before, after in zip(entry.static_items, entry.static_shapes, static_shapes):
                if before != after:
                    raise AddressStabilityError(
                        f"{self.name}[bucket {entry.key.bucket}]: static argument {name!r} has shape {list(after)} "
                        f"but the graph was captured with {list(before)}; keep its shape and update it in place"
                    )
        entry.buffer_generation = buffers.generation

    # Capture -----------------------------------------------------------------
    def _capture(self, plan: CallPlan, bound: dict[str, Any], bucket: int) -> GraphEntry:
        registry = self.registry
        self._last_call = dict(bound)
        extras = tuple(bound[name] for name in plan.extras)
        key = GraphKey(self.name, bucket, plan.batched, tuple(zip(plan.extras, extras)))
        static = {name: bound[name] for name in plan.static}
        entry = GraphEntry(key=key)
        entry_key = (plan.key, bucket, extras)
        self._entries[entry_key] = entry
        views = {name: buffers[buffer_name] for name, buffers, buffer_name in plan.sources}
        fixed = dict(key.extras)
        fixed.update(static)
        fn = self.__wrapped__
        traced_fn = registry.backend.prepare(fn)

        def run_eager() -> Any:
            kwargs = dict(fixed)
            for name, buf in views.items():
                kwargs[name] = buf[:bucket]
            return fn(**kwargs)

        # What the backend captures. Self-contained on purpose: the static
        # backend traces it with to_static, which converts only this function
        # and ``traced_fn``; a nested helper called from here would run
        # unconverted on eager tensors inside the trace, and a graphcap helper
        # would be converted without its module's globals. paddle.utils is
        # never converted.
        def run() -> None:
            kwargs = dict(fixed)
            for name, buf in views.items():
                kwargs[name] = buf[:bucket]
            for out, static_out in zip(paddle.utils.flatten(traced_fn(**kwargs)), entry.outputs):
                paddle.assign(out, output=static_out)

        started = time.perf_counter()
        try:
            with _restored(registry.buffers.restorable()):
                for attempt in range(max(1, registry.config.num_warmups)):
                    # Warmup 0 runs under the capture-safety guard: host reads and
                    # value-dependent shapes surface here on every backend.
                    with guard.capture_guard(graph=self.name, bucket=bucket) if attempt == 0 else _nothing():
                        result = run_eager()
                    registry._counts["warmups"] += 1
                leaves: list[paddle.Tensor] = []
                entry.structure = _flatten(result, leaves)
                # Static outputs are allocated outside any capture, once per bucket;
                # replays overwrite them in place.
                entry.outputs = [paddle.zeros(out.shape, dtype=out.dtype) for out in leaves]
                entry.sliced = tuple(bool(out.shape) and out.shape[0] == bucket for out in leaves)
                del result, leaves
                with guard.capture_guard(graph=self.name, bucket=bucket):
                    entry.graph = registry.backend.capture(run, label=f"{self.name}[{bucket}]")
        except CaptureSafetyError:
            if registry.config.on_unsafe_capture == "raise":
                del self._entries[entry_key]
                raise
            self._fail(entry, "unsafe code inside the captured function", exc_info=True)
            return entry
        except GraphCapError:
            del self._entries[entry_key]
            raise
        except Exception:
            self._fail(entry, "capture raised", exc_info=True)
            return entry
        entry.static_items = tuple(static.items())
        entry.static_ptrs = tuple(tensor.data_ptr() for tensor in static.values())
        entry.buffer_ptrs = registry.buffers.addresses()
        entry.buffer_ptr_values = tuple(entry.buffer_ptrs.values())
        entry.buffer_shapes = registry.buffers.shapes()
        entry.static_shapes = [tensor.shape for tensor in static.values()]
        entry.buffer_generation = registry.buffers.generation
        elapsed = time.perf_counter() - started
        registry._counts["captures"] += 1
        registry._capture_seconds += elapsed
        logger.debug("captured %s[%d] in %.3f s", self.name, bucket, elapsed)
        return entry

    def _fail(self, entry: GraphEntry, why: str, *, exc_info: bool) -> None:
        entry.failed = True
        entry.graph = None
        self.registry._counts["capture_failures"] += 1
        logger.warning(
            "%s[bucket %d]: %s; this bucket runs eagerly from now on", self.name, entry.key.bucket, why,
            exc_info=exc_info,
        )

    def capture_all(self, example: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None) -> int:
        """Capture every bucket of this function, largest first; returns how many were captured.

        ``example`` is either one call's arguments (any batch size: batched
        inputs are tiled or cut to each bucket as dummy rows; static tensors
        and extras are used as given) or a callable ``rows -> arguments`` that
        builds a consistent dummy batch of exactly ``rows`` rows (and may
        write the registry buffers that batch needs, e.g.
        ``cu_seqlens_q_output``). Without ``example`` the last call's
        arguments are used. Buckets captured already are skipped.
        """
        if example is None:
            example = self._last_call
        if not example:
            raise CaptureError(
                f"{self.name}: capture_all needs example arguments or one earlier call to learn input shapes"
            )
        captured = 0
        for bucket in sorted(self.buckets.sizes, reverse=True):
            if callable(example):
                dummy = dict(example(bucket))
                plan = self._plans.get(tuple(dummy)) or self._plan(dummy)
            else:
                dummy = dict(example)
                plan = self._plans.get(tuple(dummy)) or self._plan(dummy)
                for name in plan.batched:
                    dummy[name] = _resize_rows(example[name], bucket)
            extras = tuple(dummy[name] for name in plan.extras)
            if (plan.key, bucket, extras) not in self._entries:
                for name, buffers, buffer_name in plan.sources:
                    buffers.write(buffer_name, dummy[name], rows=bucket)
                captured += not self._capture(plan, dummy, bucket).failed
            if self.registry._progress is not None:
                self.registry._progress.update(1)
        return captured

    def reset(self) -> None:
        """Drop every graph of this function; the next call recaptures."""
        for entry in self._entries.values():
            if entry.graph is not None:
                entry.graph.reset()
        self._entries.clear()

    @property
    def graphs(self) -> int:
        """Live captured graphs of this function."""
        return sum(1 for entry in self._entries.values() if not entry.failed)


def _padding_rule(name: str, rule: Any) -> tuple[str, float | int]:
    """``"zero"`` / ``"copy_row0"`` / ``"keep"`` / a number -> (pad rule, pad value)."""
    if isinstance(rule, str) and rule in ("zero", "copy_row0", "keep"):
        return rule, 0
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return "value", rule
    raise CaptureError(
        f"padding[{name!r}]={rule!r} is not a padding rule; use 'zero', 'copy_row0', 'keep' or a number"
    )


def _resize_rows(value: paddle.Tensor, rows: int) -> paddle.Tensor:
    """``value`` cut or tiled along dim 0 to ``rows`` rows (dummy inputs for start-up capture)."""
    have = value.shape[0]
    if have >= rows:
        return value[:rows]
    repeats = -(-rows // have)
    return paddle.concat([value] * repeats, axis=0)[:rows]


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _restored(tensors: list[paddle.Tensor]) -> Iterator[None]:
    """Snapshot ``tensors`` and copy the snapshot back in place on exit.

    Warmups and (on the eager and static backends) the capture itself execute
    the function; a function that advances ``infer_seed`` in place must not
    have those extra runs count. Same-shape ``assign`` keeps each tensor's
    address.
    """
    saved = [tensor.clone() for tensor in tensors]
    try:
        yield
    finally:
        for tensor, copy in zip(tensors, saved):
            paddle.assign(copy, output=tensor)


class CaptureRegistry:
    """Owns the backend, the static buffers and every captured graph of one engine.

    ``buffers`` holds registry-owned static buffers (``cu_seqlens_q_output``,
    ``batch_id_per_token_output``, ``infer_seed`` ...); declare them once, write
    them in place. Their addresses are recorded at each capture and compared
    on each replay.
    """

    def __init__(self, config: GraphConfig | None = None, *, backend: Backend | None = None) -> None:
        """Create a registry for ``config``; ``backend`` overrides the configured one (tests)."""
        self.config = config if config is not None else GraphConfig()
        self.backend: Backend = backend if backend is not None else make_backend(self.config.resolved_backend())
        self.buffers = StaticBuffers(owner="registry.buffers")
        self._functions: dict[str, GraphedFunction] = {}
        self._counts = {
            "captures": 0, "replays": 0, "eager_fallbacks": 0, "capture_failures": 0, "warmups": 0,
        }
        self._capture_seconds = 0.0
        self._progress: Any = None
        self._buffer_ids_cache: frozenset[int] = frozenset()
        self._buffer_ids_generation = -1

    @property
    def _buffer_ids(self) -> frozenset[int]:
        # Rebuilt only when the buffers' generation says a name was added or rebound.
        if self.buffers.generation != self._buffer_ids_generation:
            self._buffer_ids_cache = frozenset(id(tensor) for tensor in self.buffers.tensors().values())
            self._buffer_ids_generation = self.buffers.generation
        return self._buffer_ids_cache

    def graphed(
        self,
        name: str,
        *,
        batch_arg: str,
        static_args: Sequence[str] = (),
        capture_sizes: Sequence[int] | None = None,
        rows_per_request: int | None = None,
        enabled: bool | None = None,
        padding: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], GraphedFunction | Callable[..., Any]]:
        """Decorator: run the function through graphs, one per bucket of ``batch_arg``'s rows.

        Constraints, where users meet them:

        * Every tensor argument whose first dimension equals the rows of
          ``batch_arg`` is a batched input, staged into a static buffer and
          padded. Name tensors that only look batched in ``static_args``.
        * Other tensor arguments must be registry buffers or the same tensor
          every call (checked on replay). Non-tensor arguments are part of
          the graph key; keep their variety small.
        * The function must not read tensor values on the host or produce
          value-dependent shapes (checked during capture).
        * Results are views of static outputs, overwritten by the next replay.

        ``capture_sizes`` overrides the config's sizes for this graph;
        ``rows_per_request`` rescales them (the draft step has fewer rows per
        request than the verify step). ``enabled=None`` follows ``use_graph``.
        ``padding`` gives a batched argument's padding rule for rows past the
        real count: ``"zero"`` (default), ``"copy_row0"``, ``"keep"``, or a
        number (a sentinel such as -1 for slot ids). Staging applies it on
        every call, so padding rows never carry a previous step's data.
        With ``use_graph=False`` the original function runs unchanged.
        """

        def decorate(fn: Callable[..., Any]) -> GraphedFunction | Callable[..., Any]:
            if not self.config.use_graph:

                @functools.wraps(fn)
                def original(*args: Any, **kwargs: Any) -> Any:
                    return fn(*args, **kwargs)

                return original
            if name in self._functions:
                raise CaptureError(f"graph name {name!r} is already used in this registry; pick another")
            sizes = capture_sizes if capture_sizes is not None else self.config.sizes_for(rows_per_request)
            graphed_fn = GraphedFunction(
                self, name, fn, batch_arg=batch_arg, static_args=static_args, capture_sizes=sizes,
                enabled=True if enabled is None else enabled, padding=padding,
                rows_per_request=self.config.rows_per_request if rows_per_request is None else rows_per_request,
            )
            self._functions[name] = graphed_fn
            return graphed_fn

        return decorate

    def functions(self) -> dict[str, GraphedFunction]:
        """graph name -> graphed function."""
        return dict(self._functions)

    def capture_all(
        self,
        examples: Mapping[str, Mapping[str, Any] | Callable[[int], Mapping[str, Any]]] | None = None,
        *,
        freeze_gc: bool = True,
    ) -> int:
        """Capture every bucket of every graphed function, largest first, with a progress bar.

        ``examples`` maps graph names to one call's arguments or to a callable
        ``rows -> arguments`` (see ``GraphedFunction.capture_all``); functions
        without one reuse their last call. The Python garbage collector is frozen for
        the sweep (start-up capture spends much of its time in collections).
        Logs one summary line; returns the number of graphs captured.
        """
        from tqdm.auto import tqdm

        examples = examples or {}
        total = sum(len(fn.buckets.sizes) for fn in self._functions.values())
        started = time.perf_counter()
        was_enabled = gc.isenabled()
        if freeze_gc:
            gc.collect()
            gc.freeze()
            gc.disable()
        captured = 0
        try:
            with tqdm(total=total, desc="graphcap capture", unit="graph", disable=None, leave=False) as bar:
                self._progress = bar
                for name, graphed_fn in self._functions.items():
                    if graphed_fn.enabled:
                        captured += graphed_fn.capture_all(examples.get(name))
        finally:
            self._progress = None
            if freeze_gc:
                gc.unfreeze()
                if was_enabled:
                    gc.enable()
        logger.info(
            "graphcap: captured %d graphs (%s backend) in %.2f s",
            captured, self.backend.name, time.perf_counter() - started,
        )
        return captured

    def plan(self, trace: Sequence[int] | None = None) -> Any:
        """The capture plan of this registry's graphed functions (``graphcap.plan.CapturePlan``).

        Lists each graph's buckets, flags sizes that are not multiples of its
        rows per request, and with ``trace`` (request counts per step) gives
        the padding waste to expect. After a run, ``stats()["per_graph"]``
        holds the real vs padded rows that were actually seen.
        """
        from graphcap.plan import CapturePlan, plan_graphs

        functions = self._functions.values()
        graphs, warnings = plan_graphs(
            {fn.name: fn.buckets.sizes for fn in functions},
            num_speculative_tokens=self.config.num_speculative_tokens,
            rows_per_request={fn.name: fn.rows_per_request for fn in functions},
            trace=trace,
        )
        return CapturePlan(graphs=graphs, num_speculative_tokens=self.config.num_speculative_tokens,
                           warnings=warnings)

    def reset(self) -> None:
        """Drop every graph (for weight reloads); the next call of each bucket recaptures.

        Static buffers keep their addresses; the backend releases its pool.
        """
        for graphed_fn in self._functions.values():
            graphed_fn.reset()
        self.backend.reset()

    def stats(self) -> dict[str, Any]:
        """Counters and padding: ``captures``, ``replays``, ``eager_fallbacks``, ``capture_failures``,
        ``warmups``, ``capture_seconds``, ``graphs``, ``real_rows``, ``padded_rows`` and ``per_graph``
        (real vs padded rows per bucket, eager fallbacks under ``"eager"``)."""
        functions = self._functions.values()
        return {
            **self._counts,
            "capture_seconds": round(self._capture_seconds, 4),
            "graphs": sum(fn.graphs for fn in functions),
            "real_rows": sum(fn.padding.real_rows for fn in functions),
            "padded_rows": sum(fn.padding.padded_rows for fn in functions),
            "backend": self.backend.name,
            "per_graph": {fn.name: fn.padding.as_dict() for fn in functions},
        }

