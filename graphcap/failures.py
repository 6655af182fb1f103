"""Saying why a capture failed, in one line a user can act on.

``paddle.jit.to_static`` re-raises an error from traced code as
``type(err)(long message)`` with the original exception attached under
``ERROR_DATA`` (its ``error_value``, and the traceback mapped back to the
user's source). ``original`` recovers that exception, so a graphcap error
raised inside a trace keeps its type and fields, and ``root_cause`` names the
original message and the innermost frame outside Paddle and graphcap.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator

import paddle

__all__ = ["CaptureFailed", "original", "root_cause", "user_frame"]

_PADDLE_DIR = os.path.dirname(os.path.abspath(paddle.__file__)) + os.sep
_GRAPHCAP_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _error_data(exc: BaseException) -> object | None:
    try:
        from paddle.jit.dy2static.error import ERROR_DATA
    except ImportError:  # pragma: no cover - every Paddle 3.x has it
        return None
    return getattr(exc, ERROR_DATA, None)


def original(exc: BaseException) -> BaseException:
    """The exception ``to_static`` wrapped, or ``exc`` itself when nothing was wrapped."""
    data = _error_data(exc)
    value = getattr(data, "error_value", None)
    return value if isinstance(value, BaseException) else exc


def _frames(exc: BaseException) -> Iterator[tuple[str, int, str]]:
    """(file, line, function) from outermost to innermost, traced frames mapped to the user's source."""
    data = _error_data(exc)
    if data is not None:
        origin = getattr(data, "origin_info_map", {}) or {}
        for frame in getattr(data, "origin_traceback", []) or []:
            info = origin.get((frame.filename, frame.lineno))
            if info is not None:
                yield info.location.filepath, info.location.lineno, info.function_name
            else:
                yield frame.filename, frame.lineno, frame.name
        return
    for frame in traceback.extract_tb(exc.__traceback__):
        yield frame.filename, frame.lineno or 0, frame.name


def user_frame(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame outside Paddle, graphcap and to_static's temp files."""
    found = None
    for filename, lineno, function in _frames(exc):
        path = os.path.abspath(filename)
        if path.startswith((_PADDLE_DIR, _GRAPHCAP_DIR)) or "to_static_tmp" in path or filename.startswith("<"):
            continue
        found = f"{filename}:{lineno} in {function}"
    return found


def root_cause(exc: BaseException) -> str:
    """``Type: first line of the original message (at file:line in function)``."""
    cause = original(exc)
    text = str(cause).strip().splitlines()
    message = text[-1].strip() if text and text[0].startswith("In transformed code") else (text[0] if text else "")
    where = user_frame(exc)
    return f"{type(cause).__name__}: {message}" + (f" (at {where})" if where else "")


class CaptureFailed(Exception):
    """The capture itself (not the user's function) failed; ``reason`` is its one-line root cause.

    Internal to a capture: the runner turns it into an eager fallback with
    this reason, or a ``CaptureError`` with ``on_capture_failure="raise"``.
    """

    def __init__(self, reason: str) -> None:
        """Keep ``reason`` (also the message)."""
        super().__init__(reason)
        self.reason = reason
