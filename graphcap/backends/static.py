"""The CPU graph: ``paddle.jit.to_static(full_graph=True)`` over the static buffers.

The closure is traced once per bucket into a PIR program. The program holds
the tensors it closed over by reference (inputs read, outputs written through
``paddle.assign(out, output=static_out)``), so replay runs no Python model
code, and a Python attribute rebound after capture is not seen: the program
keeps reading the old tensor, exactly as a device graph keeps reading the old
address. That is what makes this backend a faithful CPU stand-in for the
device in tests. It is not faster than eager on CPU.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs
import paddle
from paddle.jit.dy2static.program_translator import convert_to_static


def _ignore_graphcap_decorators() -> None:
    """Stop dy2static from re-applying ``@...graphed(...)`` when it converts a graphed function.

    Conversion recompiles the function from its source, decorators included;
    re-running graphcap's decorator would register the graph a second time.
    dy2static keeps a list of decorator names it drops; graphcap's joins it.
    """
    from paddle.jit.dy2static.transformers import decorator_transformer

    names = getattr(decorator_transformer, "IGNORE_NAMES", None)
    if isinstance(names, list) and "graphed" not in names:
        names.append("graphed")


@attrs.define
class StaticGraph:
    """One traced program; calling it is a replay."""

    program: Any

    def replay(self) -> None:
        """Run the traced program on the current buffer contents."""
        if self.program is None:
            raise RuntimeError("this static graph was reset; the registry recaptures before replaying")
        self.program()

    def reset(self) -> None:
        """Drop the program (its tensors stay owned by the registry)."""
        self.program = None


class StaticBackend:
    """Traces each bucket's closure with ``paddle.jit.to_static``."""

    name = "static"

    def prepare(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` converted for tracing.

        to_static's AST mode converts a called function only when it is a
        module-level name of its module; a closure or locally defined forward
        would otherwise run unconverted on eager tensors inside the trace
        (which crashes Paddle 3.3). Converting it here covers those too.
        """
        _ignore_graphcap_decorators()
        if inspect.ismethod(fn):
            return functools.partial(convert_to_static(fn.__func__), fn.__self__)
        if inspect.isfunction(fn) and fn.__name__ != "<lambda>":
            return convert_to_static(fn)  # lambdas cannot be converted; they run as written
        return fn  # a Layer or other callable: to_static converts its forward itself

    def capture(self, run: Callable[[], None], label: str) -> StaticGraph:
        """Trace ``run`` into a program; the trace executes it once, writing the outputs."""
        program = paddle.jit.to_static(run, full_graph=True)
        program()
        return StaticGraph(program)

    def reset(self) -> None:
        """Programs are dropped with their graphs."""
