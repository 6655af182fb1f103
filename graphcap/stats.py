"""``RegistryStats``: what a registry did, passed explicitly to everything that counts.

A fallback to eager is never silent: every one is counted under
``eager_fallbacks`` and, with its graph, bucket and reason, in ``fallbacks``
(one entry per distinct reason, with a count).
"""

from __future__ import annotations

from typing import Any

__all__ = ["COUNTERS", "RegistryStats"]

COUNTERS = ("captures", "replays", "eager_fallbacks", "capture_failures", "warmups", "recaptures", "collectives")


class RegistryStats:
    """Counters, capture time and the reasons for every eager fallback of one registry."""

    def __init__(self) -> None:
        """All counters at zero."""
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.capture_seconds = 0.0
        # (graph, bucket, reason) -> how many calls ran eagerly for it.
        self._fallbacks: dict[tuple[str, int | None, str], int] = {}

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self.counts[name] += amount

    def fallback(self, graph: str, bucket: int | None, reason: str) -> None:
        """Record one call of ``graph`` that ran eagerly, and why."""
        self.counts["eager_fallbacks"] += 1
        key = (graph, bucket, reason)
        self._fallbacks[key] = self._fallbacks.get(key, 0) + 1

    def fallbacks(self) -> list[dict[str, Any]]:
        """``[{graph, bucket, reason, calls}]``, in the order the reasons first occurred."""
        return [
            {"graph": graph, "bucket": bucket, "reason": reason, "calls": calls}
            for (graph, bucket, reason), calls in self._fallbacks.items()
        ]

    def as_dict(self) -> dict[str, Any]:
        """The counters, ``capture_seconds`` and ``fallbacks``."""
        return {**self.counts, "capture_seconds": round(self.capture_seconds, 4), "fallbacks": self.fallbacks()}
