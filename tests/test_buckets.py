from __future__ import annotations

import pytest

from graphcap.decide.buckets import BucketMap, PaddingStats
from graphcap.errors import StaticBufferError


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [(0, 0), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16), (16, 16), (17, None), (1000, None)],
)
def test_rows_pad_to_the_smallest_size_that_fits(rows, bucket):
    assert BucketMap([16, 1, 4, 2, 8]).bucket(rows) == bucket


def test_negative_rows_are_rejected():
    with pytest.raises(StaticBufferError, match="rows=-1"):
        BucketMap([1, 2]).bucket(-1)


def test_padding_stats_per_bucket_and_eager():
    stats = PaddingStats()
    for rows, bucket in [(3, 4), (4, 4), (5, 8), (20, None)]:
        stats.record(rows, bucket)
    assert stats.real_rows == 32
    assert stats.padded_rows == 1 + 0 + 3
    assert stats.as_dict() == {
        "4": {"steps": 2, "real_rows": 7, "padded_rows": 1},
        "8": {"steps": 1, "real_rows": 5, "padded_rows": 3},
        "eager": {"steps": 1, "real_rows": 20, "padded_rows": 0},
    }
