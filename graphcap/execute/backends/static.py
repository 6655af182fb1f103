"""The CPU graph: ``paddle.jit.to_static(full_graph=True)`` over the static buffers.

The closure is traced once per bucket into a PIR program. The program holds
the tensors it closed over by reference (inputs read, outputs written through
``paddle.assign(out, output=static_out)``), so replay runs no Python model
code, and a Python attribute rebound after capture is not seen: the program
keeps reading the old tensor, exactly as a device graph keeps reading the old
address. That is what makes this backend a faithful CPU stand-in for the
device in tests. It is not faster than eager on CPU.

Running functions as Python defines them: dy2static recompiles a function
from its source, which loses what only the live function object knows (a
default bound from an enclosing loop, ``def f(*, scale=scale)``, raises
``NameError`` there). The function is converted when that works. When it
does not (or the converted code fails to trace: dy2static mistranslates some
closures), and for lambdas, it is traced *as written* (marked
``not_to_static``), but only if it reads nothing besides its arguments,
which graphcap hands to the trace as program inputs: in unconverted code an
operator on any other tensor bakes its value in as a constant. Python control
flow on tensor values fails such a trace; either way the bucket runs eagerly
with the reason. Bound methods and ``functools.partial`` are converted through
their function. Library helpers dy2static cannot convert (PaddleFormers'
configuration classes recurse forever in their ``__getattribute__``) are kept
away from conversion for the duration of each trace: the modules of the
non-Layer objects the function reaches, other than modules that define the
function itself or any Layer it reaches.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import paddle

from graphcap.errors import CaptureError
from graphcap.trust.reachable import Reachable, code_names

logger = logging.getLogger("graphcap")


@contextlib.contextmanager
def _decorators_dropped(name: str) -> Iterator[None]:
    """While converting, drop decorators called ``name`` from the recompiled source.

    Conversion re-applies the decorators written above a function; re-running
    ``@registry.graphed(...)`` would register the graph a second time. dy2static
    keeps a list of decorator names it drops: ``name`` joins it only for the
    conversion, so a user's own decorator of that name elsewhere is untouched.
    """
    from paddle.jit.dy2static.transformers import decorator_transformer

    names = getattr(decorator_transformer, "IGNORE_NAMES", None)
    added = isinstance(names, list) and name not in names
    if added:
        names.append(name)  # type: ignore[union-attr]
    try:
        yield
    finally:
        if added:
            names.remove(name)  # type: ignore[union-attr]


@contextlib.contextmanager
def _trace_records_dropped_on_failure() -> Iterator[None]:
    """Forget what a failed trace left in dy2static's global per-program records.

    dy2static maps each eager tensor a trace reads to a value of the program
    being built, in global tables keyed by ``id(program)``, and drops a
    program's entries only when its trace succeeds (Paddle 3.3.1,
    ``graph_tracing_guard``). After a trace that raised, the entries outlive
    their program; a later program allocated at the same address then finds
    the dead program's value for a tensor it reads again (a staging buffer
    shared by the buckets) and Paddle crashes with a segmentation fault in
    ``pir::Type::type_id``, or reads a value of the wrong program. A capture
    that fails is an ordinary event here (the bucket runs eagerly), so the
    entries a failed trace added are removed.
    """
    try:
        from paddle.jit.dy2static.parameter_recorder import _global_inplace_map, _global_parameter_recorder
    except ImportError:  # another Paddle layout: nothing known to clean
        yield
        return

    def tables() -> list[dict[Any, Any]]:
        # Read at each use: a trace's control flow may replace the inplace map's dict.
        found = [getattr(_global_parameter_recorder, "params_dict", None),
                 getattr(_global_parameter_recorder, "tensor2value", None),
                 getattr(_global_inplace_map, "params_dict", None)]
        return [table if isinstance(table, dict) else {} for table in found]

    before = [set(table) for table in tables()]
    try:
        yield
    except BaseException:
        for table, keys in zip(tables(), before):
            for key in set(table) - keys:
                del table[key]
        raise


_SHARED_STACKS: dict[str, traceback.StackSummary] = {}


@contextlib.contextmanager
def _op_callstacks_shared(label: str) -> Iterator[None]:
    """While tracing on this thread, give every traced op one shared call stack naming ``label``.

    Paddle 3.3.1 records each op a PIR trace builds with the Python stack
    (``CallStackRecorder::GetOpCallstackInfo`` in ``op_callstack_utils.cc``
    calls ``traceback.extract_stack()``) and never releases the list it gets
    back: one ``StackSummary`` of some 50 ``FrameSummary`` objects leaks per
    op, about 20 MiB per reset + recapture of a two-layer Llama's three
    decode graphs, for the life of the process. While a capture traces, that
    call returns one list per label built here instead, so what leaks is a
    reference count on a list that lives anyway. The ops' recorded stack then names the
    graph (``<graphcap capture of decode[4]>``) instead of the Python lines
    that built them; Paddle shows it only when a replayed op fails. Other
    threads still get their real stacks.
    """
    original = traceback.extract_stack
    # Already patched: a capture inside a capture on this thread (shared already), or
    # another thread's capture (this one's ops then keep real stacks, as without the fix).
    if getattr(original, "graphcap_shared", False):
        yield
        return
    owner = threading.get_ident()
    # Paddle keeps a reference it never drops to whatever this returns, so the
    # list for a label lives for the process: one per label, reused by every
    # recapture of it, instead of a new one per capture.
    shared = _SHARED_STACKS.get(label)
    if shared is None:
        shared = _SHARED_STACKS[label] = traceback.StackSummary.from_list(
            [(f"<graphcap capture of {label}>", 0, label, label)])

    def extract_stack(f: Any = None, limit: int | None = None) -> traceback.StackSummary:
        if f is None and limit is None and threading.get_ident() == owner:
            return shared
        return original(f, limit)

    extract_stack.graphcap_shared = True  # type: ignore[attr-defined]
    traceback.extract_stack = extract_stack
    try:
        yield
    finally:
        traceback.extract_stack = original


@contextlib.contextmanager
def _modules_kept_as_written(modules: Iterable[types.ModuleType]) -> Iterator[None]:
    """While tracing, let calls into ``modules`` run as written instead of being converted."""
    from paddle.jit.dy2static import convert_call_func

    ignored = convert_call_func.BUILTIN_LIKELY_MODULES
    added = [module for module in modules if module not in ignored]
    ignored.extend(added)
    try:
        yield
    finally:
        for module in added:
            with contextlib.suppress(ValueError):
                ignored.remove(module)


def _helper_modules(found: Reachable | None, fn: Callable[..., Any]) -> list[types.ModuleType]:
    """Modules of the non-Layer helper classes ``fn`` reaches, minus modules that hold model code."""
    if found is None:
        return []
    keep = {getattr(inspect.unwrap(fn), "__module__", None), *found.function_modules}
    for layer_class in found.layer_classes:
        keep.update(klass.__module__ for klass in layer_class.__mro__)
    modules = {}
    for object_class in found.object_classes:
        for klass in object_class.__mro__:
            name = klass.__module__
            if name in keep or name.split(".", 1)[0] in ("builtins", "paddle", "graphcap", "typing", "abc"):
                continue
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__file__", None):
                modules[name] = module
    return list(modules.values())


def _sync_converted_functions() -> None:
    """Give every function dy2static converted the current values of its original's globals and closure cells.

    dy2static converts a function once per function object and gives the
    converted copy a globals dict and closure cells of its own, filled at
    conversion: a trace after a module-level ``SCALE`` or a closure's number
    changed would still read the old value, so a recapture for a changed
    Python value would bake the stale one in again. Run before every trace
    (a few hundred dictionary writes for a PaddleFormers model); a Paddle
    without this cache layout is left alone.
    """
    try:
        from paddle.jit.dy2static.program_translator import _FUNCTION_CACHE

        pairs = list(_FUNCTION_CACHE._converted_static_func_caches.items())
    except Exception:  # noqa: BLE001 - another Paddle layout: nothing to sync
        return
    for original, converted in pairs:
        original = inspect.unwrap(original)
        if not (inspect.isfunction(original) and inspect.isfunction(converted)):
            continue
        names, live = converted.__globals__, original.__globals__
        if names is not live:
            for name in code_names(original.__code__):
                if name in live:
                    names[name] = live[name]
        cells = dict(zip(original.__code__.co_freevars, original.__closure__ or ()))
        for name, cell in zip(converted.__code__.co_freevars, converted.__closure__ or ()):
            source = cells.get(name)
            if source is not None and source is not cell:
                try:
                    cell.cell_contents = source.cell_contents
                except ValueError:  # an empty cell: nothing bound yet
                    pass


def _as_written(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` behind a wrapper that dy2static calls without converting."""

    @paddle.jit.not_to_static
    def call_as_written(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call_as_written


@attrs.frozen
class Refused:
    """A form the static backend will not trace, and why (the reason a bucket then runs eagerly with)."""

    reason: str


class _Executors:
    """Paddle's process-wide cache of program executors, and how many programs were dropped since its last clear.

    Running a traced program builds an executor for it (a PIR interpreter with
    a pool of about five host threads, Paddle 3.3.1), kept in one cache for
    the whole process, keyed by program and never evicted: dropping the
    program leaves its executor and threads behind. Reset + recapture (a
    weight reload) would add threads and memory on every cycle. Paddle clears
    the cache only as a whole; a program still alive rebuilds its executor on
    its next run, once, with the same tensors (its outputs stay where they
    are). So the cache is cleared when programs were dropped: at a backend
    reset, and before a capture that follows a release.
    """

    def __init__(self) -> None:
        """No program dropped yet."""
        self.dropped = 0
        self.clears = 0

    def clear_if_dropped(self) -> None:
        """Release the executors of dropped programs (and rebuild live ones lazily) if any program was dropped."""
        if not self.dropped:
            return
        clear = getattr(paddle.base.core, "clear_executor_cache", None)
        if clear is not None:  # another Paddle build without the cache: nothing held
            clear()
        self.dropped = 0
        self.clears += 1


EXECUTORS = _Executors()


@attrs.define
class StaticGraph:
    """One traced program; calling it is a replay."""

    program: Any

    def replay(self) -> None:
        """Run the traced program on the current buffer contents."""
        if self.program is None:
            raise CaptureError("this static graph was reset; the registry recaptures before replaying, so a caller "
                               "replayed a graph it released")
        self.program()

    def reset(self) -> None:
        """Drop the program (its tensors stay owned by the registry); its executor goes at the next clear."""
        if self.program is not None:
            EXECUTORS.dropped += 1
        self.program = None

    def captured_tensors(self) -> list[paddle.Tensor] | None:
        """The eager tensors the traced program reads or writes: its captured inputs."""
        if self.program is None:
            return None
        try:
            return list(self.program.concrete_program.parameters[0])
        except Exception:  # another Paddle layout of ConcreteProgram: nothing to add
            return None


class StaticBackend:
    """Traces each bucket's closure with ``paddle.jit.to_static``."""

    name = "static"
    capture_executes = True  # tracing runs the program once, writing the outputs
    # to_static refuses an in-place write into a strided view, so each bucket keeps outputs of its own.
    shares_outputs = False

    def forms(self, fn: Callable[..., Any], reachable: Reachable | None = None) -> list[Any]:
        """The forms of ``fn`` to trace, in order: converted where dy2static can, then as written.

        As written is offered only for a function that reads nothing but its
        arguments: in code dy2static did not convert, a tensor read from a
        closure, a global, a Layer or a registry buffer is not a program
        input, and an operator on it bakes its value into the program as a
        constant (or crashes Paddle). Otherwise the last form is a
        ``Refused`` that says why, and the bucket runs eagerly with it.
        """
        converted, why = self._converted(fn)
        forms: list[Any] = [converted] if converted is not None else []
        beyond = reachable.reads_beyond_arguments() if reachable is not None else []
        if not beyond:
            forms.append(_as_written(fn))
        else:
            shown = ", ".join(beyond[:3]) + (" ..." if len(beyond) > 3 else "")
            forms.append(Refused(
                f"{why + '; ' if why else ''}traced as written, the tensors it reads besides its arguments "
                f"({shown}) would be baked into the graph as constants; define it with def (not a lambda), "
                f"bind defaults outside loops, or pass those tensors as arguments"
            ))
        return forms

    def _converted(self, fn: Callable[..., Any]) -> tuple[Callable[..., Any] | None, str]:
        """``fn`` converted by dy2static, or None and why it cannot be."""
        if isinstance(fn, paddle.nn.Layer):
            return fn, ""  # to_static converts a Layer's forward itself
        if isinstance(fn, functools.partial):
            inner, why = self._converted(fn.func)
            return (functools.partial(inner, *fn.args, **fn.keywords) if inner is not None else None), why
        if inspect.ismethod(fn):
            inner, why = self._converted(fn.__func__)
            return (functools.partial(inner, fn.__self__) if inner is not None else None), why
        if not inspect.isfunction(fn):
            return None, f"to_static cannot convert a {type(fn).__name__}"
        if fn.__name__ == "<lambda>":
            return None, "to_static cannot convert a lambda"
        from paddle.jit.dy2static.program_translator import convert_to_static

        try:
            with _decorators_dropped("graphed"):
                return convert_to_static(fn), ""
        except Exception as exc:  # noqa: BLE001 - any conversion failure
            logger.debug("to_static could not convert %s from its source", fn.__qualname__, exc_info=exc)
            return None, f"to_static could not convert {fn.__qualname__} from its source ({type(exc).__name__}: {exc})"

    def capture(self, run: Callable[[], None], label: str, reachable: Reachable | None = None) -> StaticGraph:
        """Trace ``run`` into a program; the trace executes it once, writing the outputs."""
        EXECUTORS.clear_if_dropped()
        _sync_converted_functions()
        with (
            _modules_kept_as_written(_helper_modules(reachable, run)),
            _trace_records_dropped_on_failure(),
            _op_callstacks_shared(label),
        ):
            program = paddle.jit.to_static(run, full_graph=True)
            try:
                program()
            except BaseException:
                EXECUTORS.dropped += 1  # a trace that raised may have built an executor all the same
                raise
        return StaticGraph(program)

    def reset(self) -> None:
        """Programs are dropped with their graphs; release their executors (see ``_Executors``)."""
        EXECUTORS.clear_if_dropped()
