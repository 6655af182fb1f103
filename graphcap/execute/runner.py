"""Executing what the dispatcher decided: stage, capture, replay.

The lifecycle of one graph, on one screen (``GraphRunner.capture``):

1. *Sources*: each batched leaf gets the buffer it is staged into: the
   registry buffer it is a prefix view of (zero-copy), or a staging buffer of
   this function allocated once at the largest bucket. Every bucket's graph
   reads a prefix view of it, so one address serves them all.
2. *Stage*: the call's batched leaves are written in place, padding rows
   filled by rule (also on every replay).
3. *Warmup*: the function runs eagerly on the staged views, ``num_warmups``
   times, the first under the capture-safety guard. The registry buffers
   declared restorable (``infer_seed``) are put back before each run, so the
   runs see the same state. An exception from the user's function
   propagates unchanged: eager would raise it too.
4. *Purity and rows*: outputs of the warmups, static arguments and staged
   inputs are compared bitwise on CPU (``graphcap.trust.at_capture_purity``); a
   function with state of its own raises ``CaptureSafetyError`` naming what
   changed. A run with fewer rows tells which outputs follow the rows, and a
   run with the padding rows poisoned must leave the real rows as they were
   (``graphcap.trust.at_capture_rows``), else padded calls run eagerly.
5. *Capture*: static outputs are allocated from the warmup's outputs, the
   backend captures a closure that reads the buffers and writes the outputs.
   A failure of the capture itself (tracing, device capture) leaves the
   bucket eager with its reason, or raises with ``on_capture_failure="raise"``.
6. *Verify*: the captured graph's own run (or one replay) must reproduce the
   warmup's outputs bitwise.
7. *Checks*: what the graph reads is recorded for ``graphcap.trust.at_replay``: static
   leaves, registry buffers, tensors reachable from the function, and on the
   ``static`` backend the traced program's own captured inputs.

Restorable registry buffers are put back once more at the end, so capture
leaves no trace in them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import paddle

from graphcap import failures
from graphcap.buffers import StaticBuffers, dtype_name, pad_rows
from graphcap.config import GraphConfig
from graphcap.decide import pytree
from graphcap.decide.binding import CallBinder
from graphcap.decide.dispatch import GraphKey, leaf_is_batched
from graphcap.errors import CaptureError, CaptureSafetyError, GraphCapError
from graphcap.execute.backends import Backend, Graph
from graphcap.execute.backends.static import Refused
from graphcap.failures import CaptureFailed
from graphcap.stats import RegistryStats
from graphcap.trust import at_capture_guard as guard
from graphcap.trust import reachable, tolerance
from graphcap.trust.at_capture_purity import CaptureWatch, first_difference, host_copies
from graphcap.trust.at_capture_rows import (
    RunRecord,
    compare_runs,
    padding_leak,
    poison_rows,
    row_interaction,
    row_outputs,
)
from graphcap.trust.at_replay import ReplayCheck

logger = logging.getLogger("graphcap")

__all__ = ["NO_RESULT", "GraphEntry", "GraphRunner"]


def in_to_static_mode() -> bool:
    """True inside a ``paddle.jit.to_static`` trace."""
    from paddle.base.dygraph.base import in_to_static_mode as tracing

    return bool(tracing())


def as_program_input(value: Any) -> Any:
    """Inside a trace, an eager tensor as the program input that reads it by reference; else ``value``."""
    from paddle.jit.dy2static.convert_operators import convert_load

    return convert_load(value) if isinstance(value, paddle.Tensor) else value


NO_RESULT = object()


@attrs.define(eq=False)
class GraphEntry:
    """One captured graph: its key, the graph, its static outputs, where inputs are staged, its checks.

    ``failure`` holds the reason when this key runs eagerly instead (a
    capture that failed, or unsafe code with ``on_unsafe_capture="eager"``).
    """

    key: GraphKey
    label: str
    graph: Graph | None = None
    outputs: list[paddle.Tensor] = attrs.Factory(list)
    sliced: tuple[bool, ...] = ()
    tree: pytree.OutputTree | None = None
    # (leaf index, buffers, buffer name, pad end): where each batched leaf is staged. A registry
    # buffer is padded by its own rule over its whole capacity (pad end), as its owner declared
    # it; a staging buffer (pad end 0) only up to the bucket its graph reads.
    sources: tuple[tuple[int, StaticBuffers, str, int], ...] = ()
    # The same, resolved for the replay path (see GraphRunner._staging_plan).
    staging_plan: tuple[tuple[Any, ...], ...] = ()
    check: ReplayCheck | None = None
    failure: str | None = None
    # Set when the rows interact: padded calls of this key run eagerly with this reason, full ones replay.
    padded_failure: str | None = None
    replays: int = 0
    # The eager result of the call whose capture failed on its padded batch (returned once).
    eager_result: Any = NO_RESULT

    def release(self) -> None:
        """Release the graph; the entry must not be replayed afterwards."""
        if self.graph is not None:
            self.graph.reset()
            self.graph = None


class _PaddedRaised(Exception):
    """The function raised on the padded batch (``reason``), where the real batch may run."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _State:
    """Snapshots of the restorable registry buffers, put back in place on demand."""

    def __init__(self, items: list[tuple[str, paddle.Tensor]]) -> None:
        self.names = [name for name, _ in items]
        self.tensors = [tensor for _, tensor in items]
        self.saved = [tensor.clone() for tensor in self.tensors]

    def restore(self) -> None:
        # Same-shape assign keeps each buffer's address.
        for tensor, copy in zip(self.tensors, self.saved):
            paddle.assign(copy, output=tensor)


class GraphRunner:
    """Stages, captures and replays the graphs of one graphed function."""

    def __init__(
        self,
        *,
        name: str,
        fn: Callable[..., Any],
        binder: CallBinder,
        config: GraphConfig,
        backend: Backend,
        registry_buffers: StaticBuffers,
        staging: StaticBuffers,
        padding_rules: Mapping[str, tuple[str, float | int]],
        largest: int,
        stats: RegistryStats,
        skip_types: tuple[type, ...],
    ) -> None:
        """Everything capture and replay need, passed explicitly."""
        self.name = name
        self.fn = fn
        self.binder = binder
        self.config = config
        self.backend = backend
        self.registry_buffers = registry_buffers
        self.staging = staging
        self.padding_rules = padding_rules
        self.largest = largest
        self.stats = stats
        self.skip_types = skip_types
        # (path, dtype, trailing shape) -> staging buffer name.
        self._staging_names: dict[tuple[str, str, tuple[int, ...]], str] = {}
        # (output index, dtype, row shape) -> an output at the largest bucket, shared by every bucket.
        self._shared_outputs: dict[tuple[int, str, tuple[int, ...]], paddle.Tensor] = {}
        self.bitwise = tolerance.runs_are_bitwise(config.run_comparison, backend.name)

    def snapshot_state(self) -> _State:
        """A copy of the restorable registry buffers (``infer_seed``), to put back with ``restore()``."""
        return _State(self.registry_buffers.restorable_items())

    # Stage -------------------------------------------------------------------
    def stage(self, entry: GraphEntry, leaves: Sequence[paddle.Tensor], rows: int) -> None:
        """Write the call's batched leaves into their buffers, padding rows filled by rule.

        The replay path. A staging buffer is private to this function and its
        dtype and row shape are in the graph key, so it is written without
        checks; a registry buffer goes through ``StaticBuffers.stage``.
        """
        bucket = entry.key.bucket
        for index, buf, pad, pad_value, registry, name, pad_end in entry.staging_plan:
            if registry is not None:
                value = leaves[index]
                # The zero-copy path: the leaf is this buffer's prefix (classified by address and
                # layout); a reshaped buffer goes through stage(), which raises naming it.
                if buf.shape[0] != pad_end or value.data_ptr() != buf.data_ptr():
                    registry.stage(name, value, rows, pad_end)
                elif rows < pad_end and pad != "keep":
                    pad_rows(buf, pad, pad_value, rows, pad_end)
                continue
            if rows:
                buf[:rows] = leaves[index]
            if rows < bucket and pad != "keep":
                pad_rows(buf, pad, pad_value, rows, bucket)

    def _sources(
        self, key: GraphKey, paths: Sequence[str]
    ) -> tuple[tuple[tuple[int, StaticBuffers, str, int], ...], dict[int, paddle.Tensor]]:
        sources = []
        views: dict[int, paddle.Tensor] = {}
        for index, (layout, path) in enumerate(zip(key.layout, paths)):
            if not leaf_is_batched(layout):
                continue
            _, dtype, trailing, source = layout
            if source:
                buffers, buffer_name = self.registry_buffers, source
                pad_end = buffers.spec(source).capacity
            else:
                buffers, buffer_name, pad_end = self.staging, self._staging_buffer(path, dtype, trailing), 0
            sources.append((index, buffers, buffer_name, pad_end))
            views[index] = buffers[buffer_name][: key.bucket]
        return tuple(sources), views

    @staticmethod
    def _staging_plan(sources: Sequence[tuple[int, StaticBuffers, str, int]]) -> tuple[tuple[Any, ...], ...]:
        """Per batched leaf, what ``stage`` needs without a lookup: buffer, padding rule, registry or not."""
        plan = []
        for index, buffers, name, pad_end in sources:
            spec = buffers.spec(name)
            plan.append((index, buffers[name], spec.pad, spec.pad_value, buffers if pad_end else None, name, pad_end))
        return tuple(plan)

    def _staging_buffer(self, path: str, dtype: Any, trailing: tuple[int, ...]) -> str:
        """The staging buffer for leaf ``path`` of this dtype and row shape, declared on first use."""
        spec = (path, dtype_name(dtype), trailing)
        name = self._staging_names.get(spec)
        if name is None:
            # The first spec seen for a path takes its plain name (what users look up);
            # another dtype or row shape for the same path gets a numbered one.
            name = path if path not in self.staging else f"{path}#{len(self._staging_names) + 1}"
            pad, pad_value = self.padding_rules.get(path, ("zero", 0))
            self.staging.declare(name, (self.largest, *trailing), dtype, pad=pad, pad_value=pad_value)
            self._staging_names[spec] = name
        return name

    # Capture -----------------------------------------------------------------
    def capture(
        self, key: GraphKey, bound: Mapping[str, Any], leaves: Sequence[paddle.Tensor], rows: int,
        paths: Sequence[str],
    ) -> GraphEntry:
        """Capture the graph of ``key`` from this call (staging it too); see the module docstring.

        Returns the entry, with ``failure`` set when the bucket must run
        eagerly. Raises the user's own exception from a warmup unchanged,
        ``CaptureSafetyError`` for unsafe or impure code (unless
        ``on_unsafe_capture="eager"``), ``CaptureError`` for a failed capture
        with ``on_capture_failure="raise"``.
        """
        started = time.perf_counter()
        bucket = key.bucket
        entry = GraphEntry(key=key, label=f"{self.name}[bucket {bucket}]")
        # 1-2. Sources and staging.
        entry.sources, views = self._sources(key, paths)
        entry.staging_plan = self._staging_plan(entry.sources)
        self.stage(entry, leaves, rows)
        binder, tree = self.binder, key.tree
        static_indices = [index for index, layout in enumerate(key.layout) if not leaf_is_batched(layout)]

        @paddle.jit.not_to_static
        def build_call(staged_views: dict[int, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            # The call over static buffers: the caller's arguments with each batched
            # leaf replaced by its buffer's view, defaults filled in (so the traced
            # function never evaluates a default itself). In a to_static trace the
            # static leaves and tensor defaults enter the program as inputs, read by
            # reference: handed over as eager tensors, code that dy2static did not
            # convert would bake their values in as constants.
            replace = dict(staged_views)
            tracing = in_to_static_mode()
            if tracing:
                replace.update({index: as_program_input(leaves[index]) for index in static_indices})
            call = binder.with_defaults(pytree.substitute(bound, tree, replace))
            if tracing:
                call = {name: as_program_input(value) if name not in bound else value for name, value in call.items()}
            return binder.split(call)

        args, keywords = build_call(views)
        registry_ids = {id(tensor) for tensor in self.registry_buffers.tensors().values()}
        static = [(index, paths[index], leaf) for index, leaf in enumerate(leaves)
                  if not leaf_is_batched(key.layout[index])]
        state = _State(self.registry_buffers.restorable_items())
        owned = self._registry_ranges()

        def scan() -> reachable.Reachable:
            return reachable.scan(self.fn, _argument_roots(bound, key.tree), skip=self.skip_types)

        watch = CaptureWatch(
            entry.label,
            static_leaves=[(path, leaf) for _, path, leaf in static if not owned(leaf)],
            staged=[(paths[index], views[index]) for index, _, _, pad_end in entry.sources if not pad_end],
            adopted=[(name, tensor) for name, tensor in self.registry_buffers.tensors().items()
                     if not self.registry_buffers.spec(name).restore],
            before=scan(), rescan=scan, owned=owned, runs=self.config.num_warmups,
        )
        try:
            try:
                # 3-4. Warmups, the row probe and purity.
                outputs = self._warmups(entry, args, keywords, state, watch, build_call, views, rows)
                # 5. Capture.
                found = scan()
                state.restore()
                entry.outputs = self._static_outputs(outputs.specs, bucket, entry.sliced)
                entry.graph = self._capture_graph(entry, build_call, found, state)
                # 6. Verify.
                self._verify(entry, outputs, state)
            finally:
                state.restore()
        except CaptureSafetyError as exc:
            if self.config.on_unsafe_capture == "raise":
                entry.release()  # a graph made before the failed check goes now (its executor with it)
                raise
            message = str(exc).splitlines()[0]
            return self._fail(entry, f"unsafe capture: {message.removeprefix(entry.label + ': ')}", exc)
        except CaptureFailed as exc:
            if self.config.on_capture_failure == "raise":
                entry.release()
                raise CaptureError(
                    f"{entry.label}: capture failed on the {self.backend.name} backend: {exc.reason}"
                ) from exc.__cause__
            return self._fail(entry, f"capture failed on the {self.backend.name} backend: {exc.reason}", exc)
        except _PaddedRaised as exc:
            # The padded batch raised where eager may not: eager decides, on the real call.
            entry.eager_result = self.binder.call(self.fn, bound)  # its own exception propagates unchanged
            return self._fail(entry, f"the function raises on the padded batch of {bucket} rows ({exc.reason}); "
                                     f"give padding rows values it accepts (padding=...)", exc.__cause__ or exc)
        # 7. Checks.
        entry.check = self._replay_check(entry, static, registry_ids, found, views)
        elapsed = time.perf_counter() - started
        self.stats.count("captures")
        self.stats.capture_seconds += elapsed
        # `graphcap_capture` carries the same facts as fields, for tools that
        # time captures (benchmarks/bench_capture.py) without parsing the text.
        logger.debug("captured %s in %.3f s", entry.label, elapsed,
                     extra={"graphcap_capture": (self.name, bucket, elapsed)})
        return entry

    def _registry_ranges(self) -> Callable[[paddle.Tensor], bool]:
        """A test for 'this tensor lies inside a registry buffer' (the buffer itself or a view into it)."""
        ranges = [(tensor.data_ptr(), tensor.data_ptr() + _nbytes(tensor))
                  for tensor in self.registry_buffers.tensors().values()]

        def owned(tensor: paddle.Tensor) -> bool:
            pointer = tensor.data_ptr()
            return any(start <= pointer < end for start, end in ranges)

        return owned

    def _static_outputs(
        self, specs: Sequence[tuple[list[int], Any]], bucket: int, sliced: Sequence[bool]
    ) -> list[paddle.Tensor]:
        """The static outputs of a graph of ``bucket``, allocated outside any capture.

        Where the backend allows writing into a prefix view, an output whose
        rows are the bucket's is a view of one tensor allocated once at the
        largest bucket, shared by every bucket of this function: output
        memory is the largest bucket's, not the sum over buckets. Other
        outputs get tensors of their own.
        """
        outputs = []
        for index, ((shape, dtype), cut) in enumerate(zip(specs, sliced)):
            if self.backend.shares_outputs and cut:
                key = (index, dtype_name(dtype), tuple(shape[1:]))
                shared = self._shared_outputs.get(key)
                if shared is None:
                    shared = self._shared_outputs[key] = paddle.zeros([self.largest, *shape[1:]], dtype=dtype)
                outputs.append(shared[:bucket])
            else:
                outputs.append(paddle.zeros(list(shape), dtype=dtype))
        return outputs

    def output_bytes(self, entries: Sequence[GraphEntry]) -> int:
        """Bytes of static output memory held for ``entries`` (shared outputs counted once)."""
        total = sum(_nbytes(tensor) for tensor in self._shared_outputs.values())
        for entry in entries:
            total += sum(_nbytes(out) for out, cut in zip(entry.outputs, entry.sliced)
                         if not (cut and self.backend.shares_outputs))
        return total

    def _warmups(
        self, entry: GraphEntry, args: tuple[Any, ...], keywords: dict[str, Any], state: _State,
        watch: CaptureWatch, build_call: Callable[[dict[int, Any]], tuple[tuple[Any, ...], dict[str, Any]]],
        views: dict[int, paddle.Tensor], rows: int,
    ) -> RunRecord:
        """Run the eager warmups, the row probe and the purity comparisons; returns the first warmup's outputs.

        Sets ``entry.tree`` and ``entry.sliced`` (which outputs follow the rows).
        """
        bucket = entry.key.bucket
        runs: list[RunRecord] = []
        for attempt in range(self.config.num_warmups):
            state.restore()
            try:
                with guard.capture_guard(graph=self.name, bucket=bucket) if attempt == 0 else _nothing():
                    result = self.fn(*args, **keywords)
            except GraphCapError:
                raise
            except Exception as exc:
                if rows < bucket:
                    raise _PaddedRaised(failures.root_cause(exc)) from exc
                raise  # the real batch itself: eager raises this too, unchanged
            self.stats.count("warmups")
            if entry.tree is None:
                try:
                    entry.tree = pytree.OutputTree(result, known=watch.is_known)
                except CaptureError as exc:
                    raise CaptureFailed(str(exc)) from exc
            runs.append(RunRecord.of(result, state.tensors))
            del result
            watch.after_run()
        # The most specific cause first: state the function keeps (restored before
        # raising), then outputs that differ between runs on the same inputs.
        watch.check()
        probe = self._probe(entry, state, build_call, views, rows)
        assert entry.tree is not None
        for attempt, other in enumerate(runs[1:], start=2):
            compare_runs(entry.label, entry.tree, runs[0], other, f"warmup {attempt}", state.names,
                         bitwise=self.bitwise, scale=self.config.tolerance_scale)
        # The most specific question about padding first (do the rows interact?), then the
        # padded run against the real rows alone, within the rounding of another row count.
        entry.sliced = row_outputs(entry.tree, bucket, runs[0], None, rows)
        interaction = self._padding_check(entry, state, build_call(views), runs[0] if rows < bucket else None, rows)
        # Rows that interact differ from the real rows alone by design: then only shapes are compared.
        real_rows = rows if interaction is None else 0
        entry.sliced = row_outputs(entry.tree, bucket, runs[0], probe, real_rows, self.config.tolerance_scale)
        if interaction is not None:
            if self.config.on_row_interaction == "fail" or self.config.sync_ranks:
                raise CaptureFailed(interaction)
            entry.padded_failure = interaction
            logger.warning("%s: %s", entry.label, interaction)
        return runs[0]

    def _padding_check(
        self, entry: GraphEntry, state: _State, call: tuple[tuple[Any, ...], dict[str, Any]],
        by_rule: RunRecord | None, rows: int,
    ) -> str | None:
        """Run the bucket with its padding rows poisoned; the reason when a real row changed, else None.

        A padded capture compares with its first warmup (padding by the
        rule); a full one treats its last row as padding, runs it by the rule
        and poisoned, and puts the row back. Only rows padded with zeros (the
        default rule) are poisoned: a declared rule (a sentinel slot id, a
        copy of row 0) is what those rows must hold. The staged buffers are
        put back as they were, so capture sees this call's own data.
        """
        bucket = entry.key.bucket
        real = rows if rows < bucket else bucket - 1
        poisonable = [(buf, pad, pad_value) for _, buf, pad, pad_value, *_ in entry.staging_plan if pad != "keep"]
        if real < 1 or not any(pad == "zero" for _, pad, _ in poisonable):
            return None
        saved = [(buf, buf[:bucket].clone()) for buf, _, _ in poisonable]
        args, keywords = call
        try:
            if by_rule is None:
                for buf, pad, pad_value in poisonable:
                    pad_rows(buf, pad, pad_value, real, bucket)
                by_rule = self._record_run(state, args, keywords)
            for buf, pad, _ in poisonable:
                if pad == "zero":
                    buf[real:bucket] = poison_rows(buf[:real], bucket - real)
            poisoned = self._record_run(state, args, keywords)
        except Exception as exc:  # other padding values the function refuses say nothing about its rows
            logger.debug("%s: no padding check (the function refuses poisoned padding rows)", entry.label,
                         exc_info=exc)
            return None
        finally:
            for buf, copy in saved:
                buf[:bucket] = copy
        assert entry.tree is not None
        leak = padding_leak(entry.tree, entry.sliced, by_rule, poisoned, real, bitwise=self.bitwise,
                            scale=self.config.tolerance_scale)
        return None if leak is None else row_interaction(leak, bucket, real)

    def _record_run(self, state: _State, args: tuple[Any, ...], keywords: dict[str, Any]) -> RunRecord:
        state.restore()
        return RunRecord.of(self.fn(*args, **keywords), state.tensors)

    def _probe(
        self, entry: GraphEntry, state: _State,
        build_call: Callable[[dict[int, Any]], tuple[tuple[Any, ...], dict[str, Any]]],
        views: dict[int, paddle.Tensor], rows: int,
    ) -> tuple[int, RunRecord] | None:
        """One more run with fewer rows, to tell outputs that follow the rows from those that do not.

        The real rows when the batch is padded, else one row less. None when
        the bucket has one row, or the function cannot run on other rows (it
        checks a row count against other inputs): then an output is taken to
        follow the rows when its first dimension is the bucket.
        """
        bucket = entry.key.bucket
        probe_rows = rows if rows < bucket else bucket - 1
        if probe_rows < 1:
            return None
        state.restore()
        args, keywords = build_call({index: view[:probe_rows] for index, view in views.items()})
        try:
            result = self.fn(*args, **keywords)
        except Exception as exc:
            logger.debug("%s: no row probe (the function refuses %d rows)", entry.label, probe_rows, exc_info=exc)
            return None
        # Not a run "on the same inputs": fewer rows may round differently (Paddle's
        # reductions round by size), so only its shapes and constants are compared.
        return probe_rows, RunRecord.of(result, state.tensors)

    def _capture_graph(
        self, entry: GraphEntry, build_call: Callable[[dict[int, Any]], tuple[tuple[Any, ...], dict[str, Any]]],
        found: reachable.Reachable, state: _State,
    ) -> Graph:
        """Capture with each form the backend offers until one works; the last failure is the reason."""
        error: BaseException | None = None
        refused = ""
        for form in self.backend.forms(self.fn, found):
            if isinstance(form, Refused):
                refused = form.reason
                continue
            state.restore()  # a failed attempt may have run part of the function
            try:
                with guard.capture_guard(graph=self.name, bucket=entry.key.bucket):
                    return self.backend.capture(self._run(entry, build_call, form), label=entry.label,
                                                reachable=found)
            except Exception as exc:
                cause = failures.original(exc)
                if isinstance(cause, GraphCapError):
                    raise cause from None
                logger.debug("%s: capturing %r failed", entry.label, form, exc_info=exc)
                error = exc
        if error is None:
            raise CaptureFailed(refused)
        reason = failures.root_cause(error)
        raise CaptureFailed(f"{reason}; {refused}" if refused else reason) from error

    @staticmethod
    def _run(
        entry: GraphEntry, build_call: Callable[[dict[int, Any]], tuple[tuple[Any, ...], dict[str, Any]]],
        traced: Callable[..., Any],
    ) -> Callable[[], None]:
        outputs = entry.outputs
        bucket = entry.key.bucket
        whole = [(index, buffers[buffer_name]) for index, buffers, buffer_name, _ in entry.sources]

        # What the backend captures: reads the static buffers and static leaves,
        # writes the static outputs in place. The views are sliced here, inside
        # the closure: the static backend traces it with to_static, where a view
        # made outside (an eager strided tensor) crashes Paddle while the slice of
        # a whole buffer becomes a slice op in the program. ``build_call`` and
        # ``output_leaves`` are not_to_static: they run as Python on traced values.
        def run() -> None:
            sliced = {}
            for index, buffer in whole:
                sliced[index] = buffer[:bucket]
            args, keywords = build_call(sliced)
            for out, static_out in zip(pytree.output_leaves(traced(*args, **keywords)), outputs):
                paddle.assign(out, output=static_out)

        return run

    def _verify(self, entry: GraphEntry, first: RunRecord, state: _State) -> None:
        """The captured graph's run must give the warmup's outputs bit for bit."""
        assert entry.graph is not None and entry.tree is not None
        if not self.backend.capture_executes:
            state.restore()
            try:
                entry.graph.replay()
            except Exception as exc:
                entry.release()
                raise CaptureFailed(failures.root_cause(exc)) from exc
        changed = tolerance.first_mismatch(first.values, host_copies(entry.outputs), first.dtypes, entry.tree.paths,
                                           bitwise=self.bitwise, scale=self.config.tolerance_scale)
        written = first_difference(first.state, host_copies(state.tensors))
        if changed is not None or written is not None:
            entry.release()
            what = (changed.describe() if changed is not None
                    else f"write into registry buffer {state.names[written]!r}")
            raise CaptureFailed(
                f"the captured graph's {what} differs from the eager warmup's on the same inputs (the backend "
                f"did not reproduce the function: to_static drops in-place Tensor methods such as add_() and "
                f"rounds integer constants near 2^63; use paddle.assign(x, output=t) and int64 tensors)"
            )

    def _fail(self, entry: GraphEntry, reason: str, exc: BaseException) -> GraphEntry:
        entry.failure = reason
        entry.release()
        self.stats.count("capture_failures")
        logger.warning("%s: %s; this bucket runs eagerly from now on", entry.label, reason)
        logger.debug("%s: full traceback of the capture failure", entry.label, exc_info=exc)
        return entry

    def run_padded(
        self, key: GraphKey, bound: Mapping[str, Any], leaves: Sequence[paddle.Tensor], rows: int,
        paths: Sequence[str],
    ) -> Any:
        """Run the function once, eagerly, on this call staged into ``key``'s bucket; outputs cut to ``rows``.

        What a replay would compute, with a replay's shapes and a single
        execution, for a rank whose key has no graph while the others replay
        theirs (collectives inside the function then still meet).
        """
        sources, views = self._sources(key, paths)
        entry = GraphEntry(key=key, label=f"{self.name}[bucket {key.bucket}]", sources=sources,
                           staging_plan=self._staging_plan(sources))
        self.stage(entry, leaves, rows)
        call = self.binder.with_defaults(pytree.substitute(bound, key.tree, views))
        args, keywords = self.binder.split(call)
        result = self.fn(*args, **keywords)
        tree = pytree.OutputTree(result)
        cut = [leaf[:rows] if leaf.shape and leaf.shape[0] == key.bucket else leaf
               for leaf in pytree.output_leaves(result)]
        return tree.rebuild(cut)

    # Checks ------------------------------------------------------------------
    def _replay_check(
        self, entry: GraphEntry, static: list[tuple[int, str, paddle.Tensor]], registry_ids: set[int],
        found: reachable.Reachable, views: dict[int, paddle.Tensor],
    ) -> ReplayCheck:
        """What the graph reads besides its staged inputs, recorded for every replay's checks."""
        known = registry_ids | {id(leaf) for _, _, leaf in static} | {id(view) for view in views.values()}
        known |= {id(out) for out in entry.outputs} | {id(t) for t in self.staging.tensors().values()}
        watched = [(path, tensor) for path, tensor in found.tensors.values() if id(tensor) not in known]
        read = entry.graph.captured_tensors() if entry.graph is not None else None
        if read is not None:
            # The traced program's own inputs are the ground truth of what it reads:
            # watch exactly those, named by the path the scan reached them by.
            named = {id(tensor): path for path, tensor in watched}
            watched = [
                (named.get(id(tensor)) or f"a tensor {list(tensor.shape)} {dtype_name(tensor.dtype)} the graph reads",
                 tensor)
                for tensor in read if id(tensor) not in known
            ]
        edges = [edge for edge in found.edges if id(edge.child) not in registry_ids]
        return ReplayCheck(
            label=entry.label, static_leaves=static, registry=self.registry_buffers, edges=edges,
            watched=watched, interval=self.config.address_check_interval, values=found.values,
        )


def _nbytes(tensor: paddle.Tensor) -> int:
    return int(tensor.numel()) * tensor.element_size()


def _argument_roots(bound: Mapping[str, Any], tree: Any) -> list[tuple[str, Any]]:
    """Non-tensor argument leaves worth scanning for tensors (Layers, opaque objects), with their paths."""
    roots = []
    for path, node in pytree.value_leaves(tree):
        value = node[-1].obj if node[0] == "r" else node[2]
        if not isinstance(value, (int, float, str, bytes, bool, type(None))):
            roots.append((path, value))
    return roots


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield
