"""Real-hardware tests: replay on a CUDA / XPU graph equals eager. Skipped without a device."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import CaptureRegistry, GraphConfig
from graphcap.backends import device_graphs_supported

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(not device_graphs_supported(), reason="needs a CUDA/XPU build of Paddle and a device"),
]


def test_device_replay_equals_eager_for_every_batch_size():
    paddle.set_device("gpu")
    w1, w2 = paddle.randn([64, 128]), paddle.randn([128, 32])

    def forward(*, x):
        return paddle.matmul(paddle.nn.functional.silu(paddle.matmul(x, w1)), w2)

    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="device", capture_sizes=(1, 2, 4, 8)))
    graphed = reg.graphed("t", batch_arg="x")(forward)
    for rows in range(1, 9):
        x = paddle.randn([rows, 64])
        np.testing.assert_array_equal(graphed(x=x).numpy(), forward(x=x).numpy())
    assert reg.stats()["captures"] == 4
    reg.reset()
