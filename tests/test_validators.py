"""``positive_int``: the integer check shared by the capture-size lists and the size planner."""

from __future__ import annotations

import numpy as np
import pytest

from graphcap.errors import ConfigError
from graphcap.validators import positive_int


@pytest.mark.parametrize(
    ("value", "minimum", "want"),
    [(1, 1, 1), (512, 1, 512), (np.int64(7), 1, 7), (0, 0, 0)],
)
def test_accepts_integers_at_or_above_the_minimum(value, minimum, want):
    got = positive_int(value, "max_size", minimum=minimum)
    assert got == want and type(got) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "max_size=True is a bool; pass an integer >= 1"),
        (np.bool_(True), "is a bool; pass an integer >= 1"),
        (2.0, "max_size=2.0 is not an integer; pass an integer >= 1"),
        ("3", "max_size='3' is not an integer"),
        (0, "max_size=0 is not allowed; pass an integer >= 1"),
        (-4, "max_size=-4 is not allowed"),
    ],
)
def test_rejects_with_the_field_the_value_and_the_fix(value, message):
    with pytest.raises(ConfigError) as info:
        positive_int(value, "max_size")
    assert message in str(info.value)
