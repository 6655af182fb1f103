"""Capture sizes (buckets): which padded row count serves a batch, and how much padding it costs.

A batch of ``rows`` runs in the graph of the smallest capture size >= rows.
Above the largest size it runs eagerly (an eager fallback, never an error);
zero rows run nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from graphcap.decide.capture_sizes import fastdeploy_sizes
from graphcap.errors import ConfigError, StaticBufferError

__all__ = ["BucketMap", "PaddingStats", "capped_sizes", "default_capture_sizes"]


def default_capture_sizes(max_size: int, *, multiplier: int = 1) -> tuple[int, ...]:
    """graphcap's default capture sizes: FastDeploy's list up to ``max_size`` requests, times ``multiplier``.

    The list is 1, 2, 4, then 8..128 step 8, 144..256 step 16, 288..1024 step
    32, plus ``max_size`` itself, filtered to <= ``max_size``; each size is then
    multiplied by ``multiplier`` (1+k rows per request with k draft tokens).
    """
    return fastdeploy_sizes(max_size, multiplier=multiplier)


def capped_sizes(sizes: Iterable[int], cap: int) -> tuple[int, ...]:
    """``sizes`` up to ``cap``, plus ``cap`` itself: the buckets of an engine that never has more than ``cap`` rows."""
    return tuple(sorted({size for size in sizes if size <= cap} | {cap}))


class BucketMap:
    """Maps a row count to its capture size in O(1) through a table built once."""

    __slots__ = ("sizes", "largest", "_table")

    def __init__(self, sizes: Iterable[int]) -> None:
        """Build the lookup table for ``sizes`` (positive integers, any order)."""
        ordered = tuple(sorted(set(sizes)))
        if not ordered or ordered[0] < 1:
            raise ConfigError(f"capture sizes must be positive integers (got {ordered!r})")
        self.sizes: tuple[int, ...] = ordered
        self.largest: int = ordered[-1]
        table = [0] * (self.largest + 1)
        position = 0
        for rows in range(1, self.largest + 1):
            while ordered[position] < rows:
                position += 1
            table[rows] = ordered[position]
        self._table: list[int] = table

    def bucket(self, rows: int) -> int | None:
        """The capture size for ``rows``: 0 for 0 rows, None above the largest size."""
        if rows > self.largest:
            return None
        if rows < 0:
            raise StaticBufferError(f"rows={rows} is negative; a batch has 0 or more rows")
        return self._table[rows]

    def __repr__(self) -> str:
        return f"BucketMap({list(self.sizes)})"


@attrs.define
class BucketUsage:
    """Real and padded rows that one bucket served."""

    steps: int = 0
    real_rows: int = 0
    padded_rows: int = 0


@attrs.define
class PaddingStats:
    """Padding statistics per bucket; eager fallbacks are counted under bucket ``None``."""

    per_bucket: dict[int | None, BucketUsage] = attrs.Factory(dict)
    # rows -> steps since the last re-plan (CaptureRegistry.replan reads and rolls it into its history).
    rows_seen: dict[int, int] = attrs.Factory(dict)

    def record(self, rows: int, bucket: int | None) -> None:
        """Count one step of ``rows`` real rows served by ``bucket`` (None = eager)."""
        seen = self.rows_seen
        seen[rows] = seen.get(rows, 0) + 1
        usage = self.per_bucket.get(bucket)
        if usage is None:
            usage = self.per_bucket[bucket] = BucketUsage()
        usage.steps += 1
        usage.real_rows += rows
        if bucket is not None:
            usage.padded_rows += bucket - rows

    @property
    def real_rows(self) -> int:
        """Real rows over all buckets, eager fallbacks included."""
        return sum(usage.real_rows for usage in self.per_bucket.values())

    @property
    def padded_rows(self) -> int:
        """Padding rows added over all buckets."""
        return sum(usage.padded_rows for usage in self.per_bucket.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"4": {"steps": .., "real_rows": .., "padded_rows": ..}, "eager": {...}}``."""
        ordered = sorted(self.per_bucket.items(), key=lambda item: (item[0] is None, item[0] or 0))
        return {("eager" if bucket is None else str(bucket)): attrs.asdict(usage) for bucket, usage in ordered}

