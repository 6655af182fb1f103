"""Argument checks shared by modules that sit below the config: one function per kind of value.

Imports numpy and ``graphcap.errors`` only, so the lowest layers (the engines'
capture-size lists, the size planner) can use it without importing the config.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from graphcap.errors import ConfigError

__all__ = ["positive_int"]


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
