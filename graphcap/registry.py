"""``CaptureRegistry``: one engine's graphed functions, static buffers, backend, agreement and statistics.

Each graphed function (``graphcap.graphed_function``) decides and executes
its own calls; the registry owns what they share: the backend, the registry
buffers (``cu_seqlens_q_output``, ``infer_seed``, adopted KV caches ...), the
statistics, the multi-rank agreement and its per-step decision
(``step()``), and the start-up sweep (``capture_all``).

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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from graphcap.buffers import StaticBuffers
from graphcap.config import GraphConfig
from graphcap.decide.agreement import RankAgreement, StepAgreement
from graphcap.decide.dispatch import GraphKey
from graphcap.decide.token_buckets import TokenPlan
from graphcap.errors import CaptureError, ConfigError
from graphcap.execute.backends import Backend, make_backend
from graphcap.graphed_function import GraphedFunction, refuse_unbound_method
from graphcap.graphed_tokens import TokenBucketedFunction
from graphcap.stats import RegistryStats

logger = logging.getLogger("graphcap")

__all__ = ["CaptureRegistry", "GraphKey", "GraphedFunction", "StepAgreement", "frozen_gc"]


@contextlib.contextmanager
def frozen_gc(freeze: bool = True) -> Iterator[None]:
    """Python's garbage collector collected once, then frozen and off for the block (start-up capture
    spends much of its time in collections); ``freeze=False`` leaves it alone."""
    if not freeze:
        yield
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


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
        self._token_functions: dict[str, TokenBucketedFunction] = {}
        agreement = RankAgreement(group, self.stats_counters) if self.config.sync_ranks else None
        self.agreement = agreement if agreement is not None and agreement.world_size > 1 else None
        self.current_step: StepAgreement | None = None
        # Graph name -> weighted rows histogram of the traffic folded in by replan() (graphcap.decide.replan).
        self._traffic: dict[str, dict[int, int]] = {}
        self._steps = 0  # registry.step() calls, for replan_every
        self._in_step = False  # inside registry.step(): replan() must wait for the step to end
        self._graph_limits: dict[str, int] = {}  # graph name -> its number of sizes before the first replan

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
            """``fn`` through graphs, or ``fn`` itself behind a plain wrapper with graphs off."""
            if not self.config.use_graph:
                return _unchanged(fn)
            self._claim(name)
            refuse_unbound_method(fn)
            sizes = capture_sizes if capture_sizes is not None else self.config.sizes_for(rows_per_request)
            graphed_fn = GraphedFunction(
                name, fn, config=self.config, backend=self.backend, buffers=self.buffers,
                stats=self.stats_counters, agreement=self.agreement, current_step=lambda: self.current_step,
                batch_arg=batch_arg, static_args=static_args, batched_args=batched_args,
                capture_sizes=sizes, enabled=True if enabled is None else enabled, padding=padding,
                rows_per_request=self.config.rows_per_request if rows_per_request is None else rows_per_request,
                skip_types=(CaptureRegistry, GraphedFunction, TokenBucketedFunction, StaticBuffers),
            )
            self._functions[name] = graphed_fn
            return graphed_fn

        return decorate

    def graphed_tokens(
        self,
        name: str,
        *,
        batch_arg: str,
        token_sizes: Sequence[int],
        token_args: Mapping[str, int],
        token_padding: Mapping[str, str] | None = None,
        **graphed: Any,
    ) -> Callable[[Callable[..., Any]], TokenBucketedFunction | Callable[..., Any]]:
        """Decorator: ``graphed`` bucketed on tokens as well as rows (``graphcap.graphed_tokens``).

        It returns a ``TokenBucketedFunction`` with graphs on, the original
        function behind a plain wrapper with graphs off. The function must be
        pure apart from registry buffers: the first call at each token size
        runs it three more times eagerly on that call's arguments (the token
        probe), restoring only the registry's restorable buffers.

        ``token_args`` maps each argument with a token axis to that axis
        (``{"input_ids": 1, "attention_mask": 2}``); ``batch_arg``'s axis
        counts the call's tokens. A call of ``S`` tokens runs at the smallest
        of ``token_sizes`` holding it, its token arguments padded by
        ``token_padding`` (``"zero"`` by default, ``"continue"`` for positions,
        ``"copy_last"`` for a mask), its outputs with the tokens on axis 1 cut
        back to ``S``. Other keywords go to ``graphed`` for each size's graph,
        named ``<name>[tokens=T]``. With ``use_graph=False`` the original
        function runs unchanged; with ``sync_ranks`` it is refused (token
        sizes are not agreed across ranks yet).
        """
        plan = TokenPlan.build(token_sizes, batch_arg, token_args, token_padding)
        if self.config.sync_ranks:
            raise ConfigError(
                f"graphed_tokens({name!r}) with sync_ranks=True: ranks would pick token sizes alone, and token "
                f"buckets are not agreed across ranks yet; use graphed() with sync_ranks")

        def decorate(fn: Callable[..., Any]) -> TokenBucketedFunction | Callable[..., Any]:
            """``fn`` bucketed on tokens, or ``fn`` itself behind a plain wrapper with graphs off."""
            parameters = inspect.signature(fn).parameters
            unknown = [arg for arg in plan.axes if arg not in parameters
                       or parameters[arg].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
            if unknown:
                raise ConfigError(
                    f"graphed_tokens({name!r}): token_args names {unknown}, which {fn.__name__} does not take as "
                    f"named parameters (it takes {list(parameters)}); name its token arguments exactly")
            if not self.config.use_graph:
                return _unchanged(fn)
            self._claim(name)
            refuse_unbound_method(fn)
            bucketed = TokenBucketedFunction(name, fn, self, plan, {"batch_arg": batch_arg, **graphed})
            self._token_functions[name] = bucketed
            return bucketed

        return decorate

    def _claim(self, name: str) -> None:
        """Refuse a name a graphed function (rows or tokens) of this registry already uses."""
        if name in self._functions or name in self._token_functions:
            raise CaptureError(f"graph name {name!r} is already used in this registry; pick another")

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
        self._steps += 1
        every = self.config.replan_every
        if every and self._steps % every == 0:
            self.replan(min_gain=self.config.replan_min_gain)
        self._in_step = True
        try:
            yield from self._agreed_step(rows, busy)
        finally:
            self._in_step = False

    def _agreed_step(self, rows: int, busy: bool) -> Iterator[StepAgreement]:
        """The body of ``step()``: one exchange (none for one rank), the agreement held while the step runs."""
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
        captured = 0
        with frozen_gc(freeze_gc), tqdm(total=total, desc="graphcap capture", unit="graph", disable=None,
                                        leave=False) as bar:
            for graphed_fn in enabled:
                graphed_fn._progress = bar
                try:
                    captured += graphed_fn.capture_all(examples.get(graphed_fn.name))
                finally:
                    graphed_fn._progress = None
        logger.info(
            "graphcap: captured %d graphs (%s backend) in %.2f s",
            captured, self.backend.name, time.perf_counter() - started,
        )
        return captured

    def plan(self, trace: Sequence[int] | None = None) -> Any:
        """The capture plan of this registry's graphed functions (``graphcap.decide.capture_plan.CapturePlan``).

        Lists each graph's buckets, flags sizes that are not multiples of its
        rows per request, and with ``trace`` (request counts per step) gives
        the padding waste to expect. After a run, ``stats()["per_graph"]``
        holds the real vs padded rows that were actually seen.
        """
        from graphcap.decide.capture_plan import GraphSpec, make_capture_plan

        specs = [
            GraphSpec(name=fn.name, sizes=fn.buckets.sizes, rows_per_request=fn.rows_per_request)
            for fn in self._functions.values()
        ]
        return make_capture_plan(specs, num_speculative_tokens=self.config.num_speculative_tokens, trace=trace)

    def replan(self, max_graphs: int | None = None, memory_budget: int | float | None = None, *,
               min_gain: float = 0.0) -> dict[str, tuple[int, ...]]:
        """Re-plan every graphed function's capture sizes from the traffic it saw; returns name -> sizes.

        Each function's rows since the last re-plan are folded into its
        history (older steps count half per re-plan, ``graphcap.decide.replan``), the
        exact planner picks at most ``max_graphs`` sizes (None: as many as it
        had before its first re-plan; ``memory_budget`` bytes may lower it,
        a graph's bytes being its static outputs) keeping the largest size, and the plan is adopted when it pads at least ``min_gain`` (a
        fraction) fewer rows than the current sizes on that traffic. Graphs at
        sizes no longer planned are released; new sizes capture at their
        first call (or call ``capture_all``). With several ranks, call it on
        every rank between the same two steps (not inside ``step()``): the
        histograms are agreed first (one collective per function), so every
        rank adopts the same plan.

        Raises ``ConfigError`` for ``max_graphs`` < 1, a budget below one
        graph per function, or a budget before any graph was captured, and
        ``CaptureError`` inside ``step()``; nothing changes then.
        """
        from graphcap.decide.replan import decide_sizes, fold_traffic, graphs_in_budget
        from graphcap.validators import positive_int

        limit = None if max_graphs is None else positive_int(max_graphs, "max_graphs")
        if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0.0 <= min_gain < 1.0:
            raise ConfigError(f"min_gain={min_gain!r} must be a fraction in [0, 1)")
        if self._in_step:
            raise CaptureError("replan() inside registry.step(): the step's agreement holds one state per current "
                               "size; call it between two steps (on every rank), or set replan_every")
        # With several ranks every function takes part, switched on here or not: each rank runs the same
        # collectives in the same order, and adopts the same sizes (the bucket vectors stay equal).
        functions = [fn for fn in self._functions.values() if fn.enabled or self.agreement is not None]
        for fn in functions:  # the graph count a function started with: the default limit, never shrinking
            self._graph_limits.setdefault(fn.name, len(fn.buckets.sizes))
        if memory_budget is not None:
            # One graph's bytes: its own outputs where each graph has its own (static backend), else
            # the outputs all of a function's graphs share.
            per_graph = max((fn.output_bytes // (1 if self.backend.shares_outputs else max(fn.graphs, 1))
                             for fn in functions), default=0)
            if self.agreement is not None:
                per_graph = self.agreement.exchange([per_graph])[0]
            if per_graph == 0:
                raise ConfigError(f"memory_budget={memory_budget!r}: no graph has been captured yet, so the "
                                  f"bytes a graph holds are unknown; capture first (capture_all), then replan")
            in_budget = graphs_in_budget(memory_budget, per_graph, len(functions))
            limit = in_budget if limit is None else min(limit, in_budget)
        # Decide every function first, then adopt: a failure leaves every function as it was.
        decisions = []
        for fn in functions:
            history = fold_traffic(self._traffic.get(fn.name, {}), fn.padding.rows_seen)
            if self.agreement is not None:
                # MAX over the ranks of the same-length vector: every rank plans from the same histogram.
                agreed = self.agreement.exchange([history.get(rows, 0) for rows in range(fn.buckets.largest + 1)])
                history = {rows: count for rows, count in enumerate(agreed) if count}
            decision = decide_sizes(history, fn.buckets.sizes, max_graphs=limit or self._graph_limits[fn.name],
                                    multiple_of=fn.rows_per_request or 1, min_gain=min_gain)
            decisions.append((fn, history, decision))
        planned: dict[str, tuple[int, ...]] = {}
        for fn, history, decision in decisions:
            fn.padding.rows_seen.clear()
            self._traffic[fn.name] = history
            if decision.adopted:
                logger.info("%s: re-planned capture sizes %s -> %s (padded rows on recent traffic %d -> %d)",
                            fn.name, list(fn.buckets.sizes), list(decision.sizes), decision.padded_before,
                            decision.padded_after)
                fn.adopt_sizes(decision.sizes)
                self.stats_counters.count("replans")
            planned[fn.name] = fn.buckets.sizes
        return planned

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
        under ``"eager"``), ``coverage`` (function name -> share of its calls
        whose result came from a graph, None before its first call),
        ``graph_coverage`` (the same over every function's calls),
        ``replays_per_graph`` (function name -> calls a graph served),
        ``shadow_checks`` and ``shadow_mismatches`` (with
        ``shadow_mismatch_details``), ``recapture_reasons``, and ``tokens``
        (``graphed_tokens`` name -> its calls, real and padded tokens, eager
        calls, coverage and unsafe token sizes; its eager calls count in
        ``graph_coverage``).
        """
        functions = self._functions.values()
        tokens = {name: fn.stats() for name, fn in self._token_functions.items()}
        token_eager = sum(entry["eager_calls"] for entry in tokens.values())
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
            "replays_per_graph": {fn.name: fn.graph_calls for fn in functions},
            "coverage": {fn.name: fn.coverage for fn in functions},
            "graph_coverage": _share(sum(fn.graph_calls for fn in functions),
                                     sum(fn.graph_calls + fn.eager_calls for fn in functions) + token_eager),
            "tokens": tokens,
        }


def _unchanged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` behind a plain wrapper: what ``graphed`` and ``graphed_tokens`` return with graphs off."""

    @functools.wraps(fn)
    def original(*args: Any, **kwargs: Any) -> Any:
        """The original function, unchanged (graphs off)."""
        return fn(*args, **kwargs)

    return original


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole
