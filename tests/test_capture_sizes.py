"""The capture-size lists engines ship: each rule against its documented definition, and argument checks."""

from __future__ import annotations

import pytest

from graphcap.decide.capture_sizes import (
    ENGINE_RULES,
    fastdeploy_sizes,
    sglang_sizes,
    trtllm_sizes,
    vllm_sizes,
)
from graphcap.errors import ConfigError


def test_fastdeploy_sizes() -> None:
    sizes = fastdeploy_sizes(512)
    assert sizes[:5] == (1, 2, 4, 8, 16)
    for value in (128, 144, 256, 288, 512):
        assert value in sizes
    assert 136 not in sizes and 272 not in sizes
    assert sizes[-1] == 512 and len(sizes) == 35
    assert fastdeploy_sizes(10) == (1, 2, 4, 8, 10)
    assert fastdeploy_sizes(1) == (1,)
    assert fastdeploy_sizes(10, multiplier=4) == (4, 8, 16, 32, 40)
    assert fastdeploy_sizes(2000)[-3:] == (992, 1024, 2000)


def test_other_engine_sizes() -> None:
    vllm = vllm_sizes(512)
    assert vllm[:5] == (1, 2, 4, 8, 16) and 248 in vllm and 256 in vllm and 264 not in vllm
    assert vllm[-1] == 512 and len(vllm) == 51
    assert vllm_sizes(100)[-1] == 96  # vLLM does not append an off-grid maximum
    sglang = sglang_sizes(512)
    assert sglang[:6] == (1, 2, 4, 8, 12, 16) and 256 in sglang and 272 in sglang and 496 in sglang
    assert sglang[-1] == 512 and sglang_sizes(600)[-3:] == (544, 576, 600)
    assert sglang_sizes(100)[-2:] == (96, 100)
    assert trtllm_sizes() == (1, 2, 4, *range(8, 129, 8))
    assert trtllm_sizes(300)[-4:] == (128, 192, 256, 300)
    assert trtllm_sizes(128, multiplier=2)[:3] == (2, 4, 8)
    for rule in ENGINE_RULES.values():
        assert list(rule(64)) == sorted(set(rule(64)))
        with pytest.raises(ConfigError, match="max_size=0"):
            rule(0)
        with pytest.raises(ConfigError, match="multiplier=0"):
            rule(8, multiplier=0)
