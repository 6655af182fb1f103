"""The reference backend: replay re-runs the Python function on the static buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from graphcap.errors import CaptureError


@attrs.define
class EagerGraph:
    """A 'graph' that is just the closure, run again on every replay."""

    run: Callable[[], None] | None

    def replay(self) -> None:
        """Run the closure on the current buffer contents."""
        if self.run is None:
            raise CaptureError("this eager graph was reset; the registry recaptures before replaying, so a caller "
                               "replayed a graph it released")
        self.run()

    def reset(self) -> None:
        """Forget the closure."""
        self.run = None

    def captured_tensors(self) -> None:
        """Unknown: replay re-runs Python, which reads whatever it finds."""
        return None


class EagerBackend:
    """Capture runs nothing; replay re-executes Python. Results define what 'correct' means."""

    name = "eager"
    capture_executes = False  # capture only keeps the closure
    shares_outputs = True

    def forms(self, fn: Callable[..., Any], reachable: Any = None) -> list[Callable[..., Any]]:
        """Python runs as written: ``fn`` itself."""
        return [fn]

    def capture(self, run: Callable[[], None], label: str, reachable: Any = None) -> EagerGraph:
        """Keep ``run`` for replay; nothing executes now."""
        return EagerGraph(run)

    def reset(self) -> None:
        """Nothing is held beyond the graphs themselves."""
