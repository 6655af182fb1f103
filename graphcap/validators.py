"""Argument checks shared by modules that sit below the config: one function per kind of value.

Imports numpy and ``graphcap.errors`` only, so the lowest layers (the engines'
capture-size lists, the size planner) can use it without importing the config.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from graphcap.errors import ConfigError

__all__ = ["ascending_sizes", "positive_int"]


def positive_int(value: Any, field: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum``, or ``ConfigError`` naming ``field`` and the value.

    Accepts anything with ``__index__`` (numpy integers included); rejects
    bools, which are integers to Python but never a size.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{field}={value!r} is a bool; pass an integer >= {minimum}")
    try:
        number = operator.index(value)
    except TypeError as exc:
        raise ConfigError(f"{field}={value!r} is not an integer; pass an integer >= {minimum}") from exc
    if number < minimum:
        raise ConfigError(f"{field}={number} is not allowed; pass an integer >= {minimum}")
    return number


def ascending_sizes(value: Any, field: str) -> tuple[int, ...]:
    """``value`` as a non-empty, strictly ascending tuple of positive ints, or ``ConfigError`` naming ``field``."""
    allowed = "a non-empty, strictly ascending sequence of positive token counts such as (16, 32, 64)"
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"'{field}' must be {allowed} (got {value!r})")
    try:
        sizes = tuple(value)
    except TypeError:
        raise ConfigError(f"'{field}' must be {allowed} (got {value!r})") from None
    if not sizes:
        raise ConfigError(f"'{field}' must not be empty; it must be {allowed}")
    for size in sizes:
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"'{field}' must hold positive integers (got {size!r} in {value!r})")
    if any(later <= earlier for earlier, later in zip(sizes, sizes[1:])):
        raise ConfigError(
            f"'{field}' must be strictly ascending (got {list(sizes)}; sorted and without repeats: "
            f"{sorted(set(sizes))})"
        )
    return tuple(int(size) for size in sizes)
