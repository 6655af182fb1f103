"""Shared fixtures: every test runs on the CPU build of Paddle."""

from __future__ import annotations

import paddle
import pytest

paddle.set_device("cpu")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    paddle.seed(1234)
