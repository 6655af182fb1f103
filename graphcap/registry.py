"""``CaptureRegistry``: one engine's graphs, static buffers and statistics; ``GraphedFunction``: one call.

One call of a graphed function, on one screen:

1. *Bind*: positional and keyword arguments -> one name -> value mapping.
2. *Decide* (``graphcap.dispatch``, pure): the batch argument's rows pick the
   bucket; zero rows run the original function, rows above the largest bucket
   run it eagerly (counted, with the reason). Otherwise the argument tree is
   flattened (tensors inside tuples, lists, dicts and objects are leaves),
   every leaf classified batched or static from this call's shapes, and the
   ``GraphKey`` built.
3. *Execute* (``graphcap.runner``): an unknown key is captured (warmups,
   purity check, capture, verification); a known one has its batched leaves
   staged into their static buffers, its checks run (``graphcap.checks``),
   and its graph replayed. Outputs come back in the function's own container
   types, tensors as views of the static outputs sliced to the real rows:
   they are overwritten by the next replay of the same bucket, so copy them
   if they must outlive it.

Not thread-safe: one registry serves one engine thread. Capture and replay
mutate shared static buffers, so two threads replaying graphs of one
registry would overwrite each other's inputs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import paddle

from graphcap import pytree
from graphcap.agreement import EAGER, MISSING, READY, RankAgreement
from graphcap.backends import Backend, make_backend
from graphcap.binding import CallBinder
from graphcap.buckets import BucketMap, PaddingStats
from graphcap.buffers import StaticBuffers
from graphcap.config import GraphConfig
from graphcap.dispatch import Dispatcher, GraphKey, leaf_is_batched, path_root
from graphcap.errors import AddressStabilityError, CaptureError
from graphcap.runner import NO_RESULT, GraphEntry, GraphRunner
from graphcap.stats import RegistryStats

logger = logging.getLogger("graphcap")

__all__ = ["CaptureRegistry", "GraphKey", "GraphedFunction"]


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
        batched_args: Sequence[str] = (),
        capture_sizes: Sequence[int],
        enabled: bool,
        padding: Mapping[str, Any] | None = None,
        rows_per_request: int = 1,
    ) -> None:
        """Use ``CaptureRegistry.graphed``; this constructor is not public API."""
        self.name = name
        self.__wrapped__ = fn
        functools.update_wrapper(self, fn)
        self.batch_arg = batch_arg
        self.rows_per_request = rows_per_request
        self.buckets = BucketMap(capture_sizes)
        self.enabled = enabled
        self.padding = PaddingStats()
        self.staging = StaticBuffers(owner=f"{name}.staging")
        self.binder = CallBinder(fn, name=name)
        if not self.binder.accepts(batch_arg):
            raise CaptureError(
                f"batch_arg={batch_arg!r} is not a parameter of {getattr(fn, '__qualname__', fn)}"
                f"{self.binder.signature}"
            )
        for path in (*static_args, *batched_args):
            if not self.binder.accepts(path_root(path)):
                raise CaptureError(
                    f"{name}: static_args/batched_args path {path!r} starts from {path_root(path)!r}, which is not "
                    f"a parameter of {getattr(fn, '__qualname__', fn)}{self.binder.signature}; paths look like "
                    f"'cache', \"kv[0]\", \"inputs['mask']\" or 'cache.keys[0]'"
                )
        self._config = registry.config
        self._stats = registry.stats_counters
        self._dispatcher = Dispatcher(
            name, batch_arg=batch_arg, buckets=self.buckets, registry_buffers=registry.buffers,
            static_args=static_args, batched_args=batched_args,
        )
        self._runner = GraphRunner(
            name=name, fn=fn, binder=self.binder, config=registry.config, backend=registry.backend,
            registry_buffers=registry.buffers, staging=self.staging,
            padding_rules={key: _padding_rule(key, rule) for key, rule in (padding or {}).items()},
            largest=self.buckets.largest, stats=registry.stats_counters,
            skip_types=(CaptureRegistry, GraphedFunction, StaticBuffers),
        )
        self._entries: dict[GraphKey, GraphEntry] = {}
        self._last_call: dict[str, Any] | None = None
        self._agreement = registry.agreement
        self._step_agreement = lambda: registry.current_step
        # (tree, layout) of the last call: the step agreement's prediction of the next key.
        self._predicted: tuple[Any, tuple[Any, ...]] | None = None
        # Keys refused for exceeding max_graphs_per_bucket -> the reason (computed once each).
        self._overflow: dict[GraphKey, str] = {}
        self._progress: Any = None  # the registry's progress bar during capture_all

    # Call path -------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one step: replay the bucket's graph, capturing it first if needed."""
        if self._agreement is not None:
            return self._call_in_lockstep(self.binder.bind(args, kwargs))
        if not self.enabled:
            return self.__wrapped__(*args, **kwargs)
        bound = self.binder.bind(args, kwargs)
        decision = self._dispatcher.decide(bound)
        key, rows = decision.key, decision.rows
        if key is None:
            return self._eager(bound, rows, None, decision.reason)
        entry = self._lookup(key)
        if entry is None:
            too_many = self._too_many_graphs(key)
            if too_many:
                return self._eager(bound, rows, key.bucket, too_many)
            entry = self._capture(key, bound, decision.leaves, rows)
        elif entry.failure is None:
            self._runner.stage(entry, decision.leaves, rows)
        if entry.failure is not None:
            return self._eager(bound, rows, key.bucket, entry.failure, entry)
        return self._replay(entry, bound, decision.leaves, rows)

    def _lookup(self, key: GraphKey) -> GraphEntry | None:
        try:
            return self._entries.get(key)
        except TypeError:  # a non-tensor leaf that cannot be part of a key
            raise self._dispatcher.unhashable(key.tree) from None

    def _replay(self, entry: GraphEntry, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int) -> Any:
        """Check, replay and return the outputs sliced to ``rows`` (the inputs are staged)."""
        bucket = entry.key.bucket
        if self._config.debug_checks:
            problem = entry.check(leaves)  # type: ignore[misc]
            if problem is not None:
                entry = self._on_problem(entry, problem, bound, leaves, rows)
                if entry.failure is not None:
                    return self._eager(bound, rows, bucket, entry.failure)
        entry.graph.replay()  # type: ignore[union-attr]
        entry.replays += 1
        self._stats.count("replays")
        self.padding.record(rows, bucket)
        outputs = entry.outputs
        if rows != bucket:
            outputs = [out[:rows] if cut else out for out, cut in zip(outputs, entry.sliced)]
        return entry.tree.rebuild(outputs)  # type: ignore[union-attr]

    # Lockstep (sync_ranks) -------------------------------------------------------
    def _call_in_lockstep(self, bound: dict[str, Any]) -> Any:
        """One call with every rank of the group: the same bucket, and replay / capture / eager together.

        See ``graphcap.agreement``. Inside ``registry.step()`` the step's
        agreement (made from each function's last key) decides; otherwise
        this call agrees on its own, with one collective.
        """
        dispatcher = self._dispatcher
        rows = dispatcher.rows_of(bound)
        tree, leaves, layout = dispatcher.classify(bound, rows)
        step = self._step_agreement()
        if step is not None and self.name in step.states:
            agreed_rows, states = step.rows_for(self), step.states[self.name]
        else:
            agreed = self._agreement.exchange([rows, *self._states(tree, layout)])  # type: ignore[union-attr]
            agreed_rows, states = agreed[0], agreed[1:]
        self._predicted = (tree, layout)
        if rows > agreed_rows:
            raise CaptureError(
                f"{self.name}: this call has {rows} rows but the step agreed on {agreed_rows}; pass the step's "
                f"row count to registry.step(rows=...) (rows of the target step, rows_per_request "
                f"{self._config.rows_per_request})"
            )
        bucket = self.buckets.bucket(agreed_rows)
        if bucket == 0:
            return self._eager(bound, rows, None, "")
        if bucket is None:
            reason = f"more rows than the largest capture size {self.buckets.largest} on some rank"
            return self._eager(bound, rows, None, reason)
        key = GraphKey(self.name, bucket, tree, layout)
        entry = self._lookup(key)
        state = states[self.buckets.sizes.index(bucket)]
        if state == EAGER:
            if not self.enabled:
                return self._eager(bound, rows, None, "")
            local = entry.failure if entry is not None and entry.failure else ""
            return self._eager(bound, rows, bucket, local or "runs eagerly on another rank (capture failed or "
                                                        "graphs off there)")
        if state == MISSING:
            return self._capture_in_lockstep(key, bound, leaves, rows, entry)
        if entry is None or entry.failure is not None:
            # The step predicted another key for this call: run the bucket once, eagerly, on the
            # padded inputs (the shapes and single execution of a replay); the next agreement
            # sees this key missing and every rank captures it.
            self._stats.fallback(self.name, bucket, "the step's agreement predicted another graph key; ran the "
                                                    "padded bucket eagerly")
            self.padding.record(rows, bucket)
            return self._runner.run_padded(key, bound, leaves, rows, dispatcher.paths(tree))
        self._runner.stage(entry, leaves, rows)
        return self._replay(entry, bound, leaves, rows)

    def _capture_in_lockstep(
        self, key: GraphKey, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int, entry: GraphEntry | None
    ) -> Any:
        """Every rank captures ``key``'s bucket now (a rank that had it captures again), then agrees on the outcome."""
        if entry is not None:
            entry.release()
            del self._entries[key]
        try:
            entry = self._capture(key, bound, leaves, rows)
        except BaseException:
            self._agreement.agree_failed(True)  # type: ignore[union-attr]
            raise
        if self._agreement.agree_failed(entry.failure is not None) and entry.failure is None:  # type: ignore[union-attr]
            entry.failure = "capture failed on another rank"
            entry.release()
        if entry.failure is not None:
            return self._eager(bound, rows, key.bucket, entry.failure, entry)
        return self._replay(entry, bound, leaves, rows)

    def _states(self, tree: Any, layout: tuple[Any, ...]) -> list[int]:
        """This rank's state of every bucket for the key ``(tree, layout)``: READY, MISSING or EAGER."""
        if not self.enabled:
            return [EAGER] * len(self.buckets.sizes)
        states = []
        for bucket in self.buckets.sizes:
            key = GraphKey(self.name, bucket, tree, layout)
            entry = self._lookup(key)
            if entry is None:
                states.append(EAGER if self._too_many_graphs(key) else MISSING)
            else:
                states.append(EAGER if entry.failure is not None else READY)
        return states

    def predicted_states(self) -> list[int]:
        """Bucket states for the key of this function's last call (all MISSING before its first)."""
        if self._predicted is None:
            return [EAGER if not self.enabled else MISSING] * len(self.buckets.sizes)
        return self._states(*self._predicted)

    def _eager(
        self, bound: dict[str, Any], rows: int, bucket: int | None, reason: str, entry: GraphEntry | None = None
    ) -> Any:
        """Run the original function on the caller's arguments; a reason makes it a counted fallback.

        A capture that already ran this very call eagerly (its padded batch
        raised) hands that result over instead of running the call twice.
        """
        if reason:
            self._stats.fallback(self.name, bucket, reason)
            self.padding.record(rows, None)
        if entry is not None and entry.eager_result is not NO_RESULT:
            result, entry.eager_result = entry.eager_result, NO_RESULT
            return result
        return self.binder.call(self.__wrapped__, bound)

    def _capture(self, key: GraphKey, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int) -> GraphEntry:
        self._last_call = bound
        entry = self._runner.capture(key, bound, leaves, rows, self._dispatcher.paths(key.tree))
        self._entries[key] = entry
        return entry

    def _on_problem(
        self, entry: GraphEntry, problem: Any, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int
    ) -> GraphEntry:
        """A check failed: raise, or recapture the graph over what the function reads now."""
        if not problem.recapturable or self._config.on_rebind == "raise":
            raise AddressStabilityError(problem.message)
        logger.info("%s; recapturing (on_rebind='recapture')", problem.message.split(";")[0])
        entry.release()
        del self._entries[entry.key]
        self._stats.count("recaptures")
        return self._capture(entry.key, bound, leaves, rows)

    def _too_many_graphs(self, key: GraphKey) -> str:
        """A fallback reason when ``key`` would exceed ``max_graphs_per_bucket``, else ``""``."""
        reason = self._overflow.get(key)
        if reason is not None:
            return reason
        same_bucket = [other for other in self._entries if other.bucket == key.bucket]
        limit = self._config.max_graphs_per_bucket
        if len(same_bucket) < limit:
            return ""
        paths = self._dispatcher.paths(key.tree)
        varying = sorted(set().union(*(_differences(key, other, paths) for other in same_bucket)))
        reason = (
            f"more than {limit} graphs for one bucket; the arguments that differ between calls are "
            f"{', '.join(varying[:6]) or 'their structure'} (keep their values, shapes and roles steady, "
            f"or raise max_graphs_per_bucket)"
        )
        if len(self._overflow) >= 256:  # keys that differ every call must not pile up here
            self._overflow.clear()
        self._overflow[key] = reason
        return reason

    # Start-up capture -----------------------------------------------------------
    def capture_all(self, example: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None) -> int:
        """Capture every bucket of this function, largest first; returns how many were captured.

        ``example`` is either one call's arguments (any batch size: batched
        leaves are tiled or cut to each bucket as dummy rows; static tensors
        and other values are used as given) or a callable ``rows -> arguments``
        that builds a consistent dummy batch of exactly ``rows`` rows (and may
        write the registry buffers that batch needs, e.g.
        ``cu_seqlens_q_output``). Without ``example`` the last captured call's
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
            dummy = dict(example(bucket)) if callable(example) else self._resized(example, bucket)
            decision = self._dispatcher.decide(dummy)
            if decision.key is not None and self._lookup(decision.key) is None:
                captured += self._capture(decision.key, dummy, decision.leaves, decision.rows).failure is None
            if self._progress is not None:
                self._progress.update(1)
        return captured

    def _resized(self, example: Mapping[str, Any], bucket: int) -> dict[str, Any]:
        """``example`` with every batched leaf tiled or cut to ``bucket`` rows."""
        bound = dict(example)
        decision = self._dispatcher.decide(bound)
        if decision.key is None:
            rows = self._dispatcher.rows_of(bound)
            raise CaptureError(f"{self.name}: the example has {rows} rows, which no bucket takes; pass a smaller one")
        replace = {
            index: _resize_rows(leaf, bucket)
            for index, (leaf, layout) in enumerate(zip(decision.leaves, decision.key.layout))
            if leaf_is_batched(layout)
        }
        return pytree.substitute(bound, decision.key.tree, replace)

    def reset(self) -> None:
        """Drop every graph of this function; the next call recaptures."""
        for entry in self._entries.values():
            entry.release()
        self._entries.clear()
        self._last_call = None
        self._overflow.clear()
        self._dispatcher.clear()

    @property
    def output_bytes(self) -> int:
        """Bytes of static output memory this function's graphs hold (shared outputs counted once)."""
        return self._runner.output_bytes([entry for entry in self._entries.values() if entry.failure is None])

    @property
    def graphs(self) -> int:
        """Live captured graphs of this function."""
        return sum(1 for entry in self._entries.values() if entry.failure is None)


def _refuse_unbound_method(fn: Callable[..., Any]) -> None:
    """A function written in a class body would be graphed without its ``self``: say how to graph it."""
    qualname = getattr(fn, "__qualname__", "")
    parts = qualname.split(".")
    params = list(inspect.signature(fn).parameters) if inspect.isfunction(fn) else []
    if len(parts) > 1 and parts[-2] != "<locals>" and params[:1] == ["self"]:
        raise CaptureError(
            f"{qualname} is a method written in a class body; a graph is captured per object, so graph the bound "
            f"method of an instance instead: registry.graphed(...)(instance.{parts[-1]})"
        )


def _differences(key: GraphKey, other: GraphKey, paths: Sequence[str]) -> set[str]:
    """Argument paths whose value, shape or role differs between two keys of one function."""
    if key.tree != other.tree:
        mine, theirs = dict(pytree.value_leaves(key.tree)), dict(pytree.value_leaves(other.tree))
        differ = {path for path in mine.keys() | theirs.keys() if mine.get(path) != theirs.get(path)}
        return differ or {"the argument structure"}
    return {path for path, a, b in zip(paths, key.layout, other.layout) if a != b}


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


@attrs.frozen
class StepAgreement:
    """What the ranks agreed for one step: the largest rows, whether any rank is busy, bucket states."""

    rows: int
    busy: bool
    states: dict[str, list[int]]  # graph name -> state per bucket (graphcap.agreement)
    rows_per_request: int

    def rows_for(self, graphed_fn: GraphedFunction) -> int:
        """The agreed rows in ``graphed_fn``'s own rows per request."""
        return math.ceil(self.rows * graphed_fn.rows_per_request / self.rows_per_request)


class CaptureRegistry:
    """Owns the backend, the static buffers and every captured graph of one engine.

    ``buffers`` holds registry-owned static buffers (``cu_seqlens_q_output``,
    ``batch_id_per_token_output``, ``infer_seed`` ...); declare them once, write
    them in place. Their addresses are recorded at each capture and compared
    on each replay. Not thread-safe (see the module docstring).
    """

    def __init__(
        self, config: GraphConfig | None = None, *, backend: Backend | None = None, group: Any = None
    ) -> None:
        """Create a registry for ``config``; ``backend`` overrides the configured one (tests).

        With ``config.sync_ranks``, ``group`` is the ``paddle.distributed``
        group whose ranks agree on every decision (None: the default group);
        a group of one rank needs no agreement and pays no collective.
        """
        self.config = config if config is not None else GraphConfig()
        self.backend: Backend = backend if backend is not None else make_backend(self.config.resolved_backend())
        self.buffers = StaticBuffers(owner="registry.buffers")
        self.stats_counters = RegistryStats()
        self._functions: dict[str, GraphedFunction] = {}
        agreement = RankAgreement(group, self.stats_counters) if self.config.sync_ranks else None
        self.agreement = agreement if agreement is not None and agreement.world_size > 1 else None
        self.current_step: StepAgreement | None = None

    def graphed(
        self,
        name: str,
        *,
        batch_arg: str,
        static_args: Sequence[str] = (),
        batched_args: Sequence[str] = (),
        capture_sizes: Sequence[int] | None = None,
        rows_per_request: int | None = None,
        enabled: bool | None = None,
        padding: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], GraphedFunction | Callable[..., Any]]:
        """Decorator: run the function through graphs, one per bucket of ``batch_arg``'s rows.

        Constraints, where users meet them:

        * Arguments are trees: tensors inside tuples, lists, dicts, dataclasses
          and objects' attributes are leaves. A tensor leaf whose first
          dimension equals the rows of ``batch_arg`` is batched: staged into a
          static buffer and padded. Other tensor leaves are static: the graph
          reads them where they are, so pass the same tensors every call and
          update them in place (checked on replay). ``static_args`` /
          ``batched_args`` force a role by argument path (``"cache"``,
          ``"kv[0]"``). Registry buffers are never batched; a prefix view of
          one is read in place (zero-copy).
        * Non-tensor leaves are part of the graph key; keep their variety
          small. An unhashable one raises ``CaptureError`` naming its path.
        * The function must be a function of its arguments and registry
          buffers: state it advances goes in a registry buffer declared
          restorable (checked at capture), it must not read tensor values on
          the host or produce value-dependent shapes (checked during capture),
          and tensors it reads besides its arguments (Layer parameters,
          closures, globals) must not be rebound (checked on replay).
        * Results keep their container types; their tensors are views of
          static outputs, overwritten by the next replay of the bucket.

        ``capture_sizes`` overrides the config's sizes for this graph;
        ``rows_per_request`` rescales them (the draft step has fewer rows per
        request than the verify step). ``enabled=None`` follows ``use_graph``.
        ``padding`` gives a batched argument's padding rule for rows past the
        real count, by path: ``"zero"`` (default), ``"copy_row0"``, ``"keep"``,
        or a number (a sentinel such as -1 for slot ids). Staging applies it on
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
            _refuse_unbound_method(fn)
            sizes = capture_sizes if capture_sizes is not None else self.config.sizes_for(rows_per_request)
            graphed_fn = GraphedFunction(
                self, name, fn, batch_arg=batch_arg, static_args=static_args, batched_args=batched_args,
                capture_sizes=sizes, enabled=True if enabled is None else enabled, padding=padding,
                rows_per_request=self.config.rows_per_request if rows_per_request is None else rows_per_request,
            )
            self._functions[name] = graphed_fn
            return graphed_fn

        return decorate

    @contextlib.contextmanager
    def step(self, rows: int, *, busy: bool = True) -> Iterator[StepAgreement]:
        """Agree once, for every graphed call inside, on this step across the ranks (one collective).

        ``rows`` is this rank's row count for the step in rows of the target
        step (``rows_per_request`` = 1+k); a function with other rows per
        request is scaled (the draft substeps: one row per request). ``busy``
        says this rank still has work; the agreement's ``busy`` is whether any
        rank has, so an engine loop steps until every rank is done (an idle
        rank still steps, with 0 rows). Without ``sync_ranks`` (or with one
        rank) this costs nothing and the calls decide alone.
        """
        if self.agreement is None:
            yield StepAgreement(rows=rows, busy=busy, states={}, rows_per_request=self.config.rows_per_request)
            return
        functions = list(self._functions.values())
        vector = [rows, int(busy)]
        for graphed_fn in functions:
            vector.extend(graphed_fn.predicted_states())
        agreed = self.agreement.exchange(vector)
        states, offset = {}, 2
        for graphed_fn in functions:
            count = len(graphed_fn.buckets.sizes)
            states[graphed_fn.name] = agreed[offset : offset + count]
            offset += count
        self.current_step = StepAgreement(rows=agreed[0], busy=bool(agreed[1]), states=states,
                                          rows_per_request=self.config.rows_per_request)
        try:
            yield self.current_step
        finally:
            self.current_step = None

    def functions(self) -> dict[str, GraphedFunction]:
        """graph name -> graphed function."""
        return dict(self._functions)

    def capture_all(
        self,
        examples: Mapping[str, Mapping[str, Any] | Callable[[int], Mapping[str, Any]]] | None = None,
        *,
        freeze_gc: bool = True,
    ) -> int:
        """Capture every bucket of every enabled graphed function, largest first, with a progress bar.

        ``examples`` maps graph names to one call's arguments or to a callable
        ``rows -> arguments`` (see ``GraphedFunction.capture_all``); functions
        without one reuse their last call. The Python garbage collector is frozen for
        the sweep (start-up capture spends much of its time in collections).
        Logs one summary line; returns the number of graphs captured.
        """
        from tqdm.auto import tqdm

        examples = examples or {}
        enabled = [fn for fn in self._functions.values() if fn.enabled]
        total = sum(len(fn.buckets.sizes) for fn in enabled)
        started = time.perf_counter()
        was_enabled = gc.isenabled()
        if freeze_gc:
            gc.collect()
            gc.freeze()
            gc.disable()
        captured = 0
        try:
            with tqdm(total=total, desc="graphcap capture", unit="graph", disable=None, leave=False) as bar:
                for graphed_fn in enabled:
                    graphed_fn._progress = bar
                    try:
                        captured += graphed_fn.capture_all(examples.get(graphed_fn.name))
                    finally:
                        graphed_fn._progress = None
        finally:
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
        """Counters and padding.

        ``captures``, ``replays``, ``recaptures``, ``eager_fallbacks``,
        ``capture_failures``, ``warmups``, ``capture_seconds``, ``fallbacks``
        (``[{graph, bucket, reason, calls}]``: why calls ran eagerly),
        ``collectives`` (with ``sync_ranks``), ``graphs``, ``output_bytes``
        (static output memory; shared across buckets where the backend
        allows) and ``output_bytes_per_graph``, ``real_rows``, ``padded_rows``
        and ``per_graph`` (real vs padded rows per bucket, eager fallbacks
        under ``"eager"``).
        """
        functions = self._functions.values()
        output_bytes = {fn.name: fn.output_bytes for fn in functions}
        return {
            **self.stats_counters.as_dict(),
            "graphs": sum(fn.graphs for fn in functions),
            "output_bytes": sum(output_bytes.values()),
            "output_bytes_per_graph": output_bytes,
            "real_rows": sum(fn.padding.real_rows for fn in functions),
            "padded_rows": sum(fn.padding.padded_rows for fn in functions),
            "backend": self.backend.name,
            "per_graph": {fn.name: fn.padding.as_dict() for fn in functions},
        }
