"""``GraphedFunction``: one graphed function's call path, on one screen.

1. *Bind*: positional and keyword arguments -> one name -> value mapping.
2. *Decide* (``graphcap.decide.dispatch``, pure): the batch argument's rows pick the
   bucket; zero rows run the original function, rows above the largest bucket
   run it eagerly (counted, with the reason). Otherwise the argument tree is
   flattened (tensors inside tuples, lists, dicts and objects are leaves),
   every leaf classified batched or static from this call's shapes, and the
   ``GraphKey`` built. With ``sync_ranks`` the bucket and whether to replay,
   capture or run eagerly are agreed with the other ranks first
   (``graphcap.decide.agreement``). A flat call like an earlier one (the same
   names, rows, scalars, shapes, dtypes and leaf roles) is decided in one
   lookup instead (``Dispatcher.recall``): the decision ``decide`` made then.
3. *Execute* (``graphcap.execute.runner``): an unknown key is captured (warmups,
   purity check, row probe, capture, verification); a known one has its
   batched leaves staged into their static buffers, its checks run
   (``graphcap.trust.at_replay``), and its graph replayed. Outputs come back in the
   function's own container types, tensors as views of the static outputs
   sliced to the real rows: the next replay of this function overwrites
   them, so copy them if they must outlive it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import paddle

from graphcap.buffers import StaticBuffers, pad_rows
from graphcap.config import GraphConfig
from graphcap.decide import pytree
from graphcap.decide.agreement import EAGER, MISSING, READY, RankAgreement, StepAgreement
from graphcap.decide.binding import CallBinder
from graphcap.decide.buckets import BucketMap, PaddingStats
from graphcap.decide.dispatch import Dispatcher, GraphKey, leaf_is_batched, path_root
from graphcap.errors import AddressStabilityError, CaptureError
from graphcap.execute.backends import Backend
from graphcap.execute.runner import NO_RESULT, GraphEntry, GraphRunner
from graphcap.stats import RegistryStats
from graphcap.trust import in_production
from graphcap.trust.at_capture_purity import host_copies

logger = logging.getLogger("graphcap")

__all__ = ["GraphedFunction", "refuse_unbound_method"]


class GraphedFunction:
    """A function wrapped by ``CaptureRegistry.graphed``; call it like the original.

    ``__wrapped__`` is the original function. ``enabled`` switches graphs for
    this function alone at run time (the draft switch); off, calls go straight
    to the original.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        config: GraphConfig,
        backend: Backend,
        buffers: StaticBuffers,
        stats: RegistryStats,
        agreement: RankAgreement | None,
        current_step: Callable[[], StepAgreement | None],
        batch_arg: str,
        static_args: Sequence[str],
        batched_args: Sequence[str] = (),
        capture_sizes: Sequence[int],
        enabled: bool,
        padding: Mapping[str, Any] | None = None,
        rows_per_request: int = 1,
        skip_types: tuple[type, ...] = (),
    ) -> None:
        """Use ``CaptureRegistry.graphed``; this constructor is not public API.

        The registry passes what it shares with its functions explicitly (its
        config, backend, buffers, counters, rank agreement and a getter of the
        step agreement in progress), so this module never imports the registry.
        ``skip_types`` are graphcap's own objects (the registry, its buffers) that
        the reachable scan does not enter: they have checks of their own.
        """
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
        self._config = config
        self._stats = stats
        self._dispatcher = Dispatcher(
            name, batch_arg=batch_arg, buckets=self.buckets, registry_buffers=buffers,
            static_args=static_args, batched_args=batched_args,
        )
        self._runner = GraphRunner(
            name=name, fn=fn, binder=self.binder, config=config, backend=backend,
            registry_buffers=buffers, staging=self.staging,
            padding_rules={key: _padding_rule(key, rule) for key, rule in (padding or {}).items()},
            largest=self.buckets.largest, stats=stats,
            skip_types=skip_types,
        )
        self._entries: dict[GraphKey, GraphEntry] = {}
        # The arguments of the latest capture, kept for capture_all() without an
        # example. It holds the caller's tensors alive until reset() drops it or
        # the next capture replaces it: one batch of inputs, never more.
        self._last_call: dict[str, Any] | None = None
        self._agreement = agreement
        self._step_agreement = current_step
        # (tree, layout) of the last call: the step agreement's prediction of the next key.
        self._predicted: tuple[Any, tuple[Any, ...]] | None = None
        # Keys refused for exceeding max_graphs_per_bucket -> the reason (computed once each).
        self._overflow: dict[GraphKey, str] = {}
        self._progress: Any = None  # the registry's progress bar during capture_all
        # Coverage: calls whose result came from a graph, and calls that ran eagerly for a reason.
        # Calls with zero rows and calls while this function is switched off count in neither.
        self.graph_calls = 0
        self.eager_calls = 0
        self._coverage_warned = False
        # Non-tensor arguments (sorted items) -> the in-place call replay(rows) rebuilds: learned at
        # capture from calls whose every tensor argument is a prefix view of a registry buffer.
        self._in_place: dict[tuple[tuple[str, Any], ...], InPlaceCall] = {}

    # Call path -------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one step: replay the bucket's graph, capturing it first if needed."""
        if self._agreement is not None:
            return self._call_in_lockstep(self.binder.bind(args, kwargs))
        if not self.enabled:
            return self.__wrapped__(*args, **kwargs)
        bound = self.binder.bind(args, kwargs)
        dispatcher = self._dispatcher
        recalled = dispatcher.recall(bound)
        if recalled is not None:
            entry = recalled.target
            if entry.graph is not None and entry.failure is None:
                # The steady state: one lookup decided; stage, check and replay.
                self._runner.stage(entry, recalled.leaves, recalled.rows)
                return self._replay(entry, bound, recalled.leaves, recalled.rows)
        decision = dispatcher.decide(bound)
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
        dispatcher.remember(bound, decision, entry)
        return self._replay(entry, bound, decision.leaves, rows)

    def replay(self, rows: int, **static: Any) -> Any:
        """Replay the graph for the first ``rows`` rows of the registry buffers the function reads in place.

        For engines that write their inputs into registry buffers themselves
        (with ``StaticBuffers.write``): no arguments are bound, classified or
        staged. ``static`` are the call's non-tensor arguments (``greedy=True``),
        naming which of its graphs. The bucket is looked up, buffers whose
        last ``write`` had other than ``rows`` rows are padded by rule, the
        replay checks run on their interval, and the outputs come back cut to
        ``rows``. Wherever the decorated call would not simply replay (no
        graph yet for the bucket, an eager fallback, lockstep with other
        ranks, a shadow check due, a failed check, zero rows or more than the
        largest bucket), this *is* the decorated call, over the same buffers'
        prefix views, with its reasons and counts.

        Needs one earlier capture of a call with the same ``static`` whose
        tensor arguments were all registry buffer prefix views (a decorated
        call or ``capture_all``). Raises ``CaptureError`` without one, and for
        ``rows`` below 0 or above the buffers' capacity.
        """
        call = self._in_place.get(_static_key(static))
        if call is None:
            raise CaptureError(
                f"{self.name}.replay({rows}{''.join(f', {k}={v!r}' for k, v in static.items())}): no captured call "
                f"with these non-tensor arguments read registry buffers in place; call {self.name} once with "
                f"prefix views of registry buffers as its tensor arguments (or capture_all), then replay"
            )
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= call.capacity:
            raise CaptureError(
                f"{self.name}.replay(rows={rows!r}): rows must be an int in 0..{call.capacity}, the capacity of its "
                f"input buffers ({', '.join(call.sources.values())})"
            )
        bucket = self.buckets.bucket(rows)
        entry = call.entries.get(bucket)  # type: ignore[arg-type]
        if (
            entry is None or entry.failure is not None or self._agreement is not None or not self.enabled
            or (entry.padded_failure is not None and rows != bucket)
            or in_production.is_due(self._config.shadow_check_interval, entry.replays + 1)
        ):
            return self(**call.arguments(rows))
        buffers = call.buffers
        padded = buffers.padded_from_all(call.pad_names)
        if padded.count(rows) != len(padded):
            for (_, buf, pad, pad_value, capacity), padded_from in zip(call.pads, padded):
                if rows < capacity and padded_from != rows:
                    pad_rows(buf, pad, pad_value, rows, capacity)
        if self._config.debug_checks and entry.check(call.leaves) is not None:  # type: ignore[misc]
            # The decorated call checks again and raises, recaptures or runs eagerly, per policy.
            return self(**call.arguments(rows))
        outputs = self._launch(entry, rows)
        self._served(graph=True)
        return entry.tree.rebuild(outputs)  # type: ignore[union-attr]

    def can_replay(self, **static: Any) -> bool:
        """Whether ``replay(rows, **static)`` has a learned in-place call (else call the function once)."""
        return _static_key(static) in self._in_place

    def _learn_in_place(self, bound: dict[str, Any], key: GraphKey, entry: GraphEntry) -> None:
        """Remember ``bound`` for ``replay(rows)`` when its every tensor argument is a registry buffer's prefix."""
        sources = [layout[3] for layout in key.layout if leaf_is_batched(layout)]
        if len(sources) != len(key.layout) or not all(sources):
            return  # a static tensor or a staged (copied) input: replay(rows) cannot rebuild this call
        tensors = {name: value for name, value in bound.items() if isinstance(value, paddle.Tensor)}
        others = {name: value for name, value in bound.items() if name not in tensors}
        if len(tensors) != len(sources) or not all(
            isinstance(value, (int, float, str, bool, type(None))) for value in others.values()
        ):
            return  # tensors inside containers, or objects as arguments: not a flat in-place call
        buffers = self._dispatcher.registry_buffers
        by_address = {buffers[name].data_ptr(): name for name in set(sources)}
        names = {arg: by_address.get(value.data_ptr()) for arg, value in tensors.items()}
        if None in names.values():
            return
        static_key = _static_key(others)
        call = self._in_place.get(static_key)
        if call is None or call.sources != names:
            call = InPlaceCall(names, others, list(tensors.values()), buffers)
            self._in_place[static_key] = call
        call.entries[key.bucket] = entry

    def _lookup(self, key: GraphKey) -> GraphEntry | None:
        try:
            return self._entries.get(key)
        except TypeError:  # a non-tensor leaf that cannot be part of a key
            raise self._dispatcher.unhashable(key.tree) from None

    def _replay(self, entry: GraphEntry, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int) -> Any:
        """Check, replay and return the outputs sliced to ``rows`` (the inputs are staged)."""
        bucket = entry.key.bucket
        if entry.padded_failure is not None and rows != bucket:
            return self._eager(bound, rows, bucket, entry.padded_failure)
        if self._config.debug_checks:
            problem = entry.check(leaves)  # type: ignore[misc]
            if problem is not None:
                entry = self._on_problem(entry, problem, bound, leaves, rows)
                if entry.failure is not None:
                    return self._eager(bound, rows, bucket, entry.failure)
        shadow = in_production.is_due(self._config.shadow_check_interval, entry.replays + 1)
        before = self._runner.snapshot_state() if shadow else None
        outputs = self._launch(entry, rows)
        if before is not None:
            eager_result = self._shadow_check(entry, bound, outputs, before)
            if eager_result is not NO_RESULT:
                return eager_result
        self._served(graph=True)
        return entry.tree.rebuild(outputs)  # type: ignore[union-attr]

    def _launch(self, entry: GraphEntry, rows: int) -> list[paddle.Tensor]:
        """Replay ``entry``'s graph (inputs staged, checks done), count it, and cut its outputs to ``rows``."""
        bucket = entry.key.bucket
        entry.graph.replay()  # type: ignore[union-attr]
        entry.replays += 1
        self._stats.count("replays")
        self.padding.record(rows, bucket)
        if rows == bucket:
            return entry.outputs
        return [out[:rows] if cut else out for out, cut in zip(entry.outputs, entry.sliced)]

    def _shadow_check(self, entry: GraphEntry, bound: dict[str, Any], outputs: list[paddle.Tensor],
                      before: Any) -> Any:
        """Run the call eagerly too and compare (see ``graphcap.trust.in_production``).

        Returns ``NO_RESULT`` when the replay is right; on a mismatch the
        eager result, with the graph disabled and the mismatch recorded.
        """
        assert entry.tree is not None
        replayed = host_copies(outputs)
        after_replay = host_copies(before.tensors)
        before.restore()
        eager_result = self.binder.call(self.__wrapped__, bound)
        self._stats.count("shadow_checks")
        found = in_production.compare_with_eager(
            replayed, [str(out.dtype).rsplit(".", 1)[-1] for out in outputs], entry.tree.paths, eager_result,
            after_replay, host_copies(before.tensors), before.names, scale=self._config.tolerance_scale,
        )
        if found is None:
            return NO_RESULT
        reason = found.reason()
        self._stats.shadow_mismatch(self.name, entry.key.bucket, found.path, found.difference, found.bound)
        logger.warning("%s: %s", entry.label, reason)
        if self._config.on_capture_failure == "raise":
            raise CaptureError(f"{entry.label}: {reason}")
        entry.failure = reason
        entry.release()
        self._stats.fallback(self.name, entry.key.bucket, reason)
        self._served(graph=False)
        return eager_result

    def _served(self, *, graph: bool) -> None:
        """Count one call for coverage; warn once when too few calls came from a graph."""
        if graph:
            self.graph_calls += 1
        else:
            self.eager_calls += 1
        calls = self.graph_calls + self.eager_calls
        config = self._config
        if self._coverage_warned or calls < config.coverage_warmup_calls or calls % config.coverage_warmup_calls:
            return
        share = self.graph_calls / calls
        if share < config.coverage_warn_below:
            self._coverage_warned = True
            reasons = sorted({entry["reason"] for entry in self._stats.fallbacks() if entry["graph"] == self.name})
            logger.warning(
                "%s: graphs served %.0f%% of %d calls (below coverage_warn_below=%.2f); the rest ran eagerly: %s",
                self.name, 100 * share, calls, config.coverage_warn_below, "; ".join(reasons[:3]) or "no reason",
            )

    @property
    def coverage(self) -> float | None:
        """The share of this function's calls whose result came from a graph (None before any call)."""
        calls = self.graph_calls + self.eager_calls
        return None if calls == 0 else self.graph_calls / calls

    # Lockstep (sync_ranks) -------------------------------------------------------
    def _call_in_lockstep(self, bound: dict[str, Any]) -> Any:
        """One call with every rank of the group: the same bucket, and replay / capture / eager together.

        See ``graphcap.decide.agreement``. Inside ``registry.step()`` the step's
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
            self._served(graph=False)
        if entry is not None and entry.eager_result is not NO_RESULT:
            result, entry.eager_result = entry.eager_result, NO_RESULT
            return result
        return self.binder.call(self.__wrapped__, bound)

    def _capture(self, key: GraphKey, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int) -> GraphEntry:
        self._last_call = bound
        entry = self._runner.capture(key, bound, leaves, rows, self._dispatcher.paths(key.tree))
        self._entries[key] = entry
        self._learn_in_place(bound, key, entry)
        return entry

    def _on_problem(
        self, entry: GraphEntry, problem: Any, bound: dict[str, Any], leaves: list[paddle.Tensor], rows: int
    ) -> GraphEntry:
        """A check failed: raise, run the graph eagerly, or recapture it over what the function reads now.

        A moved or rebound tensor follows ``on_rebind``; a changed Python
        value follows ``on_value_change`` (``recapture`` by default).
        """
        policy = self._config.value_change_policy if problem.kind == "value" else self._config.on_rebind
        if not problem.recapturable or policy == "raise":
            raise AddressStabilityError(problem.message)
        what = problem.message.split(";")[0]
        if policy == "eager":
            entry.failure = f"{what.removeprefix(entry.label + ': ')}; the graph runs eagerly (on_value_change='eager')"
            entry.release()
            logger.warning("%s", entry.failure)
            return entry
        logger.info("%s; recapturing", what)
        entry.release()
        del self._entries[entry.key]
        self._stats.recapture(self.name, entry.key.bucket, what.removeprefix(entry.label + ": "))
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
        self._in_place.clear()

    def adopt_sizes(self, sizes: Sequence[int]) -> None:
        """Serve from capture ``sizes`` from now on, keeping the largest: graphs at sizes no longer planned are
        released, the ones kept replay as before, new sizes capture at their first call (or ``capture_all``).

        The largest size stays, because the staging buffers and shared
        outputs were allocated at it. ``CaptureRegistry.replan`` calls this on
        every rank in the same step.
        """
        new = BucketMap(sizes)
        if new.largest != self.buckets.largest:
            raise CaptureError(f"{self.name}: new capture sizes {list(new.sizes)} must keep the largest size "
                               f"{self.buckets.largest} (the static buffers were allocated at it)")
        kept = set(new.sizes)
        for key in [key for key in self._entries if key.bucket not in kept]:
            self._entries.pop(key).release()
        for call in self._in_place.values():
            call.entries = {bucket: entry for bucket, entry in call.entries.items() if bucket in kept}
        self.buckets = new
        self._dispatcher.buckets = new
        self._dispatcher.clear()
        self._overflow.clear()
        self._predicted = None

    @property
    def output_bytes(self) -> int:
        """Bytes of static output memory this function's graphs hold (shared outputs counted once)."""
        return self._runner.output_bytes([entry for entry in self._entries.values() if entry.failure is None])

    @property
    def graphs(self) -> int:
        """Live captured graphs of this function."""
        return sum(1 for entry in self._entries.values() if entry.failure is None)


class InPlaceCall:
    """A call ``replay(rows)`` rebuilds: each tensor argument the prefix of a registry buffer, the rest as given.

    ``leaves`` (the captured call's tensors) feed the replay checks, whose
    identity tier looks only at static tensors, of which this call has none.
    ``entries`` maps a bucket to the graph captured for this call there.
    """

    __slots__ = ("sources", "statics", "leaves", "buffers", "entries", "pads", "pad_names", "capacity")

    def __init__(self, sources: dict[str, str], statics: dict[str, Any], leaves: list[paddle.Tensor],
                 buffers: StaticBuffers) -> None:
        """``sources`` maps argument names to registry buffer names; ``statics`` are the other arguments."""
        self.sources = sources
        self.statics = statics
        self.leaves = leaves
        self.buffers = buffers
        self.entries: dict[int, GraphEntry] = {}
        specs = {name: buffers.spec(name) for name in set(sources.values())}
        # (buffer name, tensor, rule, value, capacity) of each buffer whose rule pads.
        self.pads = tuple((name, buffers[name], spec.pad, spec.pad_value, spec.capacity)
                          for name, spec in specs.items() if spec.pad != "keep")
        self.pad_names = tuple(name for name, *_ in self.pads)
        self.capacity = min(spec.capacity for spec in specs.values())

    def arguments(self, rows: int) -> dict[str, Any]:
        """The call over the first ``rows`` rows: prefix views of the buffers, and the other arguments."""
        return {**{arg: self.buffers[name][:rows] for arg, name in self.sources.items()}, **self.statics}


def _static_key(static: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The key of an in-place call: its non-tensor arguments, in name order."""
    return tuple(sorted(static.items())) if static else ()


def call_in_place(fn: Any, rows: int, arguments: Callable[[], Mapping[str, Any]], **static: Any) -> Any:
    """``fn.replay(rows, **static)`` once ``fn`` learned its in-place call, else ``fn(**arguments(), **static)``.

    For an engine that has just written ``fn``'s inputs into registry buffers:
    ``arguments`` builds the buffers' prefix views for the decorated call
    (the first one, which captures and teaches ``replay``). ``fn`` may be the
    plain function that ``graphed`` returns with ``use_graph=False``.
    """
    can_replay = getattr(fn, "can_replay", None)
    if can_replay is not None and can_replay(**static):
        return fn.replay(rows, **static)
    return fn(**arguments(), **static)


def refuse_unbound_method(fn: Callable[..., Any]) -> None:
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
