"""Capture guard: host reads and value-dependent shapes raise during capture.

A captured graph replays device kernels only. Python code that reads a tensor
value on the host (``t.item()``, ``bool(t)``, ``t.numpy()``) either breaks the
capture or bakes the value seen at capture into every replay as a constant; an
op whose output shape depends on tensor values (``paddle.nonzero``,
``masked_select``, ``unique``, ``repeat_interleave`` with tensor repeats,
boolean-mask indexing) cannot be replayed at a fixed shape at all. Both fail
silently or with an opaque device error. ``capture_guard`` makes them raise
``CaptureSafetyError`` on CPU, naming the call, the graph, the bucket and the
user's source line.

How it works, and what it costs:

* The patches are installed on ``paddle.Tensor`` and the ``paddle`` module
  when the outermost guard (over all threads) is entered, and the exact
  original attributes are put back when it exits, also on exceptions. Outside capture nothing is patched and nothing costs.
* Whether a call is checked is decided per thread: the patches are global
  while any thread captures, but only the thread(s) inside a guard are checked.
* Paddle calls several of these methods on itself (``__index__`` in shape
  handling, ``numpy`` when printing, ``__bool__`` in ``to_static`` control
  flow). A call whose immediate Python caller lives in the ``paddle`` package
  is therefore let through; only calls made directly from user code (anything
  outside paddle and outside this module / ``graphcap.trust.graph_safe_ops``) are checked.
* Calls made while a registered graph-safe op runs
  (``graphcap.trust.graph_safe_ops.in_graph_safe_op()``) and inside ``allow_host_reads`` are
  let through; each ``allow_host_reads`` site used during capture is logged once.

What it checks (``GUARDED_CALLS``): host reads (``numpy``, ``item``,
``tolist``, ``bool``/``int``/``float``/``__index__``, ``__array__``,
``Tensor.cpu()``, ``paddle.to_tensor`` of a list holding tensors),
value-dependent shapes (``nonzero``, ``masked_select``, ``unique``,
``unique_consecutive``, ``repeat_interleave`` with tensor repeats,
``where(cond)``, boolean-mask indexing), shapes and bounds taken from tensor
values (``arange``, ``reshape``, ``full``, ``slice``, ``split`` with a tensor
where a number belongs) and device synchronizations
(``paddle.device.synchronize``, ``paddle.device.cuda.synchronize``).

What it cannot see, because it patches names where users look them up:

* names bound before the guard was entered (``from paddle import nonzero``,
  ``import paddle.tensor.search as s; s.nonzero``), and bound methods taken
  before capture;
* the same calls made by Paddle's own Python code or by a C++ op on the
  user's behalf (the Paddle-frame exemption above), and host reads inside
  custom C++ kernels;
* reads that are not calls: a tensor's ``shape`` is metadata and always
  allowed; a value computed on the host before capture and closed over is a
  constant of the graph (the pure-function check catches it when it changes).
"""

from __future__ import annotations

import functools
import linecache
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

import paddle

from graphcap.errors import CaptureSafetyError, ConfigError
from graphcap.trust.graph_safe_ops import in_graph_safe_op

__all__ = [
    "GUARDED_CALLS",
    "GuardedCallError",
    "allow_host_reads",
    "capture_guard",
    "guard_active",
]

logger = logging.getLogger("graphcap.guard")

F = TypeVar("F", bound=Callable[..., Any])

_FIX = (
    "keep the value on the device (static shapes, paddle.where instead of masks, "
    "in-place writes into static buffers), or move this out of the captured function; "
    "if it runs inside a C++ op that is graph-safe, register that op with "
    "graphcap.trust.graph_safe_ops.register_graph_safe_op, or wrap code you vouch for in "
    "graphcap.allow_host_reads(reason=...)"
)

# Frames in these places are "internal": a call whose immediate caller is in
# paddle is paddle's own business; this module and graphcap.trust.graph_safe_ops are our
# plumbing and are skipped when looking for the user's line.
# ``co_filename`` is the path the module was imported by (possibly relative),
# so both that spelling and the absolute one are recognised.
_PADDLE_DIRS = tuple(
    {os.path.dirname(paddle.__file__) + os.sep, os.path.dirname(os.path.abspath(paddle.__file__)) + os.sep}
)
_PLUMBING_FILES = frozenset(
    {
        __file__,
        os.path.abspath(__file__),
        os.path.join(os.path.dirname(__file__), "graph_safe_ops.py"),
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "graph_safe_ops.py"),
    }
)


# --------------------------------------------------------------------------
# Per-thread state. ``stack`` holds the (graph, bucket) of each active guard on
# this thread (innermost last); ``allow`` counts nested allow_host_reads.
# --------------------------------------------------------------------------
class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[str, int]] = []
        self.allow: int = 0


_TLS = _ThreadState()

# Process-wide patch state: ``_ACTIVE`` counts guards entered on all threads;
# patches go in on 0 -> 1 and come out on 1 -> 0, both under ``_LOCK``.
_LOCK = threading.Lock()
_ACTIVE = 0
# (owner, attribute name, original value as stored in the owner's __dict__)
_SAVED: list[tuple[Any, str, Any]] = []

# allow_host_reads sites (file, line) already logged during capture.
_LOGGED_SITES: set[tuple[str, int]] = set()
_LOGGED_LOCK = threading.Lock()


def guard_active() -> bool:
    """True while a ``capture_guard`` is active on the calling thread."""
    return bool(_TLS.stack)


# --------------------------------------------------------------------------
# Stack inspection
# --------------------------------------------------------------------------
def _is_paddle(filename: str) -> bool:
    return filename.startswith(_PADDLE_DIRS)


def _caller_frame() -> FrameType | None:
    """The first frame outside graphcap's plumbing: whoever called the patched attribute."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in _PLUMBING_FILES:
        frame = frame.f_back
    return frame


def _user_location(frame: FrameType | None) -> tuple[str, str]:
    """``("file:line", code text)`` of the nearest frame outside paddle and graphcap plumbing."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_paddle(filename) and filename not in _PLUMBING_FILES:
            lineno = frame.f_lineno
            code = linecache.getline(filename, lineno).strip()
            return f"{filename}:{lineno}", code
        frame = frame.f_back
    return "<unknown>", ""


def _checked_caller() -> FrameType | None:
    """The caller frame when a call on a capturing thread must be flagged, else None.

    Allowed: inside ``allow_host_reads``, inside a registered graph-safe op, or
    when the immediate caller is Paddle's own code.
    """
    if _TLS.allow or in_graph_safe_op():
        return None
    frame = _caller_frame()
    if frame is None or _is_paddle(frame.f_code.co_filename):
        return None
    return frame


def _raise(call: str, frame: FrameType, what: str) -> None:
    graph, bucket = _TLS.stack[-1]
    location, code = _user_location(frame)
    shown = f" `{code}`" if code else ""
    message = f"{call} {what} while capturing graph {graph!r} bucket {bucket} at {location}{shown}; {_FIX}"
    raise GuardedCallError(message, call=call, graph=graph, bucket=bucket, location=location)


class GuardedCallError(CaptureSafetyError):
    """The ``CaptureSafetyError`` raised by the capture guard, with structured fields.

    ``call``, ``graph``, ``bucket`` and ``location`` say what was called, while
    capturing which graph and bucket, and where (``file:line``).

    ``paddle.jit.to_static`` re-raises an error from traced code as
    ``type(err)(new_message)``: that copy has the message but not the fields
    (they are None). The original, fields and all, is attached to it;
    ``graphcap.failures.original(err)`` returns it.
    """

    call: str | None
    graph: str | None
    bucket: int | None
    location: str | None

    def __init__(
        self,
        message: str,
        *,
        call: str | None = None,
        graph: str | None = None,
        bucket: int | None = None,
        location: str | None = None,
    ) -> None:
        """Store the message and the structured fields."""
        super().__init__(message)
        self.call = call
        self.graph = graph
        self.bucket = bucket
        self.location = location


# --------------------------------------------------------------------------
# Wrappers. Each takes the original attribute and returns its replacement;
# ``flag(args, kwargs)`` decides whether a checked call is unsafe.
# --------------------------------------------------------------------------
_HOST_READ = "reads a tensor value on the host"
_DYNAMIC = "has an output shape that depends on tensor values"
_HOST_SHAPE = "takes a shape or bound from a tensor value, read on the host"
_SYNC = "waits for the device (a synchronization inside a captured region)"


def _always(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return True


def _tensor_repeats(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # repeat_interleave(x, repeats, ...) and x.repeat_interleave(repeats, ...)
    # both arrive here as (x, repeats, ...) since the method is the same function.
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    return isinstance(repeats, paddle.Tensor)


def _where_without_values(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # paddle.where(cond) alone is nonzero(cond, as_tuple=True).
    x = args[1] if len(args) > 1 else kwargs.get("x")
    y = args[2] if len(args) > 2 else kwargs.get("y")
    return x is None and y is None


def _holds_tensor(value: Any) -> bool:
    """True for an eager tensor, or a list/tuple with one inside (traced values are not eager tensors)."""
    if isinstance(value, paddle.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_tensor(item) for item in value)


def _argument(position: int, name: str) -> Callable[..., bool]:
    """A flag: the argument at ``position`` (or keyword ``name``) holds a tensor."""

    def flag(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        value = args[position] if len(args) > position else kwargs.get(name)
        return _holds_tensor(value)

    return flag


def _any_argument(*where: tuple[int, str]) -> Callable[..., bool]:
    """A flag: any of the arguments at ``where`` ((position, name) pairs) holds a tensor."""
    checks = [_argument(position, name) for position, name in where]
    return lambda args, kwargs: any(check(args, kwargs) for check in checks)


def _tensor_data_in_a_list(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # paddle.to_tensor(t) copies on the device; paddle.to_tensor([t, u]) goes through numpy.
    data = args[0] if args else kwargs.get("data")
    return isinstance(data, (list, tuple)) and _holds_tensor(data)


def _is_bool_tensor(obj: Any) -> bool:
    return isinstance(obj, paddle.Tensor) and obj.dtype == paddle.bool


def _bool_mask_index(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    index = args[1] if len(args) > 1 else kwargs.get("item")
    if isinstance(index, (tuple, list)):
        return any(_is_bool_tensor(i) for i in index)
    return _is_bool_tensor(index)


def _make_wrapper(
    call: str, original: Callable[..., Any], what: str, flag: Callable[..., bool]
) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        # Cheapest tests first: threads that are not capturing pay one
        # thread-local read; `flag` (isinstance checks) runs before the stack
        # walk so that e.g. ordinary `x[:n]` indexing skips the walk.
        if _TLS.stack and flag(args, kwargs):
            frame = _checked_caller()
            if frame is not None:
                _raise(call, frame, what)
        return original(*args, **kwargs)

    guarded.__graphcap_guarded__ = call  # type: ignore[attr-defined]
    return guarded


# (owner attribute path, attribute name, shown call name, what, flag)
_TENSOR_SPECS: tuple[tuple[str, str, str, Callable[..., bool]], ...] = (
    ("numpy", "Tensor.numpy()", _HOST_READ, _always),
    ("item", "Tensor.item()", _HOST_READ, _always),
    ("tolist", "Tensor.tolist()", _HOST_READ, _always),
    ("__bool__", "bool(Tensor)", _HOST_READ, _always),
    ("__int__", "int(Tensor)", _HOST_READ, _always),
    ("__float__", "float(Tensor)", _HOST_READ, _always),
    ("__index__", "Tensor.__index__ (a tensor used as a Python int)", _HOST_READ, _always),
    ("__array__", "numpy.asarray(Tensor) / Tensor.__array__", _HOST_READ, _always),
    ("__getitem__", "boolean-mask indexing Tensor[mask]", _DYNAMIC, _bool_mask_index),
    ("nonzero", "Tensor.nonzero()", _DYNAMIC, _always),
    ("masked_select", "Tensor.masked_select()", _DYNAMIC, _always),
    ("unique", "Tensor.unique()", _DYNAMIC, _always),
    ("unique_consecutive", "Tensor.unique_consecutive()", _DYNAMIC, _always),
    ("repeat_interleave", "Tensor.repeat_interleave() with Tensor repeats", _DYNAMIC, _tensor_repeats),
    ("cpu", "Tensor.cpu()", "copies a tensor to the host", _always),
    ("reshape", "Tensor.reshape with a Tensor in the shape", _HOST_SHAPE, _argument(1, "shape")),
    ("split", "Tensor.split with Tensor sections", _HOST_SHAPE, _any_argument((1, "num_or_sections"), (2, "axis"))),
)
# (module path, attribute, shown call name, what, flag): module functions the guard patches.
_MODULE_SPECS: tuple[tuple[str, str, str, str, Callable[..., bool]], ...] = (
    ("paddle", "nonzero", "paddle.nonzero", _DYNAMIC, _always),
    ("paddle", "masked_select", "paddle.masked_select", _DYNAMIC, _always),
    ("paddle", "unique", "paddle.unique", _DYNAMIC, _always),
    ("paddle", "unique_consecutive", "paddle.unique_consecutive", _DYNAMIC, _always),
    ("paddle", "repeat_interleave", "paddle.repeat_interleave with Tensor repeats", _DYNAMIC, _tensor_repeats),
    ("paddle", "where", "paddle.where(condition) without x and y", _DYNAMIC, _where_without_values),
    ("paddle", "to_tensor", "paddle.to_tensor of a list holding tensors", _HOST_READ, _tensor_data_in_a_list),
    ("paddle", "arange", "paddle.arange with a Tensor bound", _HOST_SHAPE,
     _any_argument((0, "start"), (1, "end"), (2, "step"))),
    ("paddle", "reshape", "paddle.reshape with a Tensor in the shape", _HOST_SHAPE, _argument(1, "shape")),
    ("paddle", "full", "paddle.full with a Tensor shape or value", _HOST_SHAPE,
     _any_argument((0, "shape"), (1, "fill_value"))),
    ("paddle", "slice", "paddle.slice with Tensor starts or ends", _HOST_SHAPE,
     _any_argument((2, "starts"), (3, "ends"))),
    ("paddle", "split", "paddle.split with Tensor sections", _HOST_SHAPE,
     _any_argument((1, "num_or_sections"), (2, "axis"))),
    ("paddle.device", "synchronize", "paddle.device.synchronize()", _SYNC, _always),
    ("paddle.device.cuda", "synchronize", "paddle.device.cuda.synchronize()", _SYNC, _always),
)

#: The call names the guard checks, in the words its errors use.
GUARDED_CALLS: tuple[str, ...] = tuple(s[1] for s in _TENSOR_SPECS) + tuple(s[2] for s in _MODULE_SPECS)


def _build_patches() -> list[tuple[Any, str, Any, Any]]:
    """``(owner, name, original, replacement)`` for every attribute that exists.

    Wrappers are built once per original object: ``paddle.nonzero`` and
    ``paddle.Tensor.nonzero`` are the same function in Paddle 3.x but get their
    own wrapper so the error names the form the user wrote.
    """
    patches: list[tuple[Any, str, Any, Any]] = []
    tensor_dict = paddle.Tensor.__dict__
    for name, call, what, flag in _TENSOR_SPECS:
        if name in tensor_dict:  # absent in some Paddle versions: nothing to guard
            original = tensor_dict[name]
            patches.append((paddle.Tensor, name, original, _make_wrapper(call, original, what, flag)))
    # Module attributes only: ``from paddle.tensor.search import nonzero``
    # binds the function at import time and cannot be reached by patching.
    for module_path, name, call, what, flag in _MODULE_SPECS:
        owner = sys.modules.get(module_path)
        if owner is not None and name in owner.__dict__:
            original = owner.__dict__[name]
            patches.append((owner, name, original, _make_wrapper(call, original, what, flag)))
    return patches


# Built on first use and reused while still current. It is only (re)built in
# _install, i.e. when no guard is active and nothing of ours is patched, so the
# recorded originals are the attributes as they are outside capture.
_PATCHES: list[tuple[Any, str, Any, Any]] | None = None


def _install() -> None:
    """Put the wrappers in place; on any failure restore what was already replaced."""
    global _PATCHES
    # Rebuild if anything (another library, a Paddle re-import) replaced one of
    # the originals since we built the wrappers: restoring must give back what
    # was there at this entry, not what was there at the first one.
    if _PATCHES is None or any(
        owner.__dict__.get(name) is not original for owner, name, original, _ in _PATCHES
    ):
        _PATCHES = _build_patches()
    try:
        for owner, name, original, replacement in _PATCHES:
            _SAVED.append((owner, name, original))
            setattr(owner, name, replacement)
    except BaseException:
        _restore()
        raise


def _restore() -> None:
    """Put back the exact original objects, last patched first."""
    while _SAVED:
        owner, name, original = _SAVED.pop()
        setattr(owner, name, original)


class _CaptureGuard:
    """The context manager returned by ``capture_guard``.

    Re-entrant: nested guards on one thread push their (graph, bucket) and the
    innermost one is named in errors. Patches are shared by all threads and
    stay installed until the last guard on any thread exits.
    """

    __slots__ = ("graph", "bucket")

    def __init__(self, graph: str, bucket: int) -> None:
        self.graph = graph
        self.bucket = bucket

    def __enter__(self) -> _CaptureGuard:
        global _ACTIVE
        # Patch first, then mark this thread as capturing: if patching fails,
        # the thread state is untouched and nothing needs undoing.
        with _LOCK:
            if _ACTIVE == 0:
                _install()
            _ACTIVE += 1
        _TLS.stack.append((self.graph, self.bucket))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _ACTIVE
        # Reverse order of __enter__: unmark the thread, then unpatch if last.
        _TLS.stack.pop()
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                _restore()


def capture_guard(*, graph: str, bucket: int) -> _CaptureGuard:
    """A context manager under which host reads and value-dependent shapes raise.

    While it is active on this thread, calls listed in ``GUARDED_CALLS`` made
    from user code raise ``CaptureSafetyError`` (with attributes ``call``,
    ``graph``, ``bucket``, ``location``). Calls from inside Paddle, from a
    registered graph-safe op, or inside ``allow_host_reads`` pass. Entering the
    outermost guard installs the patches; leaving it (normally or by exception)
    restores the original attributes.
    """
    return _CaptureGuard(graph, bucket)


class allow_host_reads:  # noqa: N801 - used like a function: allow_host_reads(reason=...)
    """Let code the user vouches for read tensor values during capture.

    Works as a context manager (``with allow_host_reads(reason="..."):``) and as
    a decorator (``@allow_host_reads(reason="...")``). Each site (where it is
    written in the source) that is entered while a capture guard is active is
    logged once on the ``graphcap.trust.at_capture_guard`` logger, with the reason. Whatever the
    vouched code reads is baked into the captured graph as a constant.
    """

    __slots__ = ("reason", "_site")

    def __init__(self, reason: str) -> None:
        """Remember ``reason`` (required, non-empty) and the source line that wrote this."""
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(
                f"allow_host_reads needs a non-empty reason=... saying why the host read is safe (got {reason!r})"
            )
        self.reason = reason
        caller = sys._getframe(1)
        self._site = (caller.f_code.co_filename, caller.f_lineno)

    def __enter__(self) -> allow_host_reads:
        """Suspend the capture checks on this thread until the matching exit."""
        # Thread-local depth, not instance state: one decorator instance is
        # entered by every call of the function it wraps, possibly recursively.
        _TLS.allow += 1
        if _TLS.stack and self._site not in _LOGGED_SITES:
            with _LOGGED_LOCK:
                first = self._site not in _LOGGED_SITES
                _LOGGED_SITES.add(self._site)
            if first:
                graph, bucket = _TLS.stack[-1]
                logger.warning(
                    "allow_host_reads at %s:%d used while capturing graph %r bucket %d: %s",
                    self._site[0],
                    self._site[1],
                    graph,
                    bucket,
                    self.reason,
                )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Resume the checks suspended by ``__enter__``."""
        _TLS.allow -= 1

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` so every call runs inside this escape hatch."""

        @functools.wraps(fn)
        def vouched(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return vouched  # type: ignore[return-value]
