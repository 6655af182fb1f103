"""``RegistryStats``: what a registry did, passed explicitly to everything that counts.

A fallback to eager is never silent: every one is counted under
``eager_fallbacks`` and, with its graph, bucket and reason, in ``fallbacks``
(one entry per distinct reason, with a count).
"""

from __future__ import annotations

from typing import Any

__all__ = ["COUNTERS", "RegistryStats"]

COUNTERS = (
    "captures", "replays", "eager_fallbacks", "capture_failures", "warmups", "recaptures", "collectives",
    "shadow_checks", "shadow_mismatches", "replans",
)


class RegistryStats:
    """Counters, capture time and the reasons for every eager fallback of one registry."""

    def __init__(self) -> None:
        """All counters at zero."""
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.capture_seconds = 0.0
        # (graph, bucket, reason) -> how many calls ran eagerly for it.
        self._fallbacks: dict[tuple[str, int | None, str], int] = {}
        # (graph, bucket, what changed) -> how many recaptures it caused.
        self._recaptures: dict[tuple[str, int, str], int] = {}
        self._shadow_mismatches: list[dict[str, Any]] = []

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self.counts[name] += amount

    def fallback(self, graph: str, bucket: int | None, reason: str) -> None:
        """Record one call of ``graph`` that ran eagerly, and why."""
        self.counts["eager_fallbacks"] += 1
        key = (graph, bucket, reason)
        self._fallbacks[key] = self._fallbacks.get(key, 0) + 1

    def recapture(self, graph: str, bucket: int, reason: str) -> None:
        """Record one recapture of ``graph``'s bucket, and what changed."""
        self.counts["recaptures"] += 1
        key = (graph, bucket, reason)
        self._recaptures[key] = self._recaptures.get(key, 0) + 1

    def shadow_mismatch(self, graph: str, bucket: int, path: str, difference: float, bound: float) -> None:
        """Record a shadow check that found a replay differing from the eager run."""
        self.counts["shadow_mismatches"] += 1
        self._shadow_mismatches.append(
            {"graph": graph, "bucket": bucket, "path": path, "difference": difference, "tolerance": bound}
        )

    def fallbacks(self) -> list[dict[str, Any]]:
        """``[{graph, bucket, reason, calls}]``, in the order the reasons first occurred."""
        return [
            {"graph": graph, "bucket": bucket, "reason": reason, "calls": calls}
            for (graph, bucket, reason), calls in self._fallbacks.items()
        ]

    def as_dict(self) -> dict[str, Any]:
        """The counters, ``capture_seconds``, ``fallbacks``, ``recapture_reasons`` and ``shadow_mismatch_details``."""
        return {
            **self.counts, "capture_seconds": round(self.capture_seconds, 4), "fallbacks": self.fallbacks(),
            "recapture_reasons": [
                {"graph": graph, "bucket": bucket, "reason": reason, "recaptures": count}
                for (graph, bucket, reason), count in self._recaptures.items()
            ],
            "shadow_mismatch_details": list(self._shadow_mismatches),
        }
