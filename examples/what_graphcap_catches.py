"""What graphcap catches, one short section per pitfall: ``python examples/what_graphcap_catches.py``.

Runs on the CPU build of Paddle: the default backend there (``static``, a
``paddle.jit.to_static`` program) reads static buffers by reference, exactly as
a device graph reads addresses. Each section prints the pitfall and what
graphcap raised or did.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")  # quiet Paddle's C++ info lines
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

import paddle  # noqa: E402

from graphcap import AddressStabilityError, CaptureRegistry, CaptureSafetyError, GraphConfig  # noqa: E402

paddle.set_device("cpu")


def new_registry() -> CaptureRegistry:
    """Graphs on, one bucket of 4 rows, the full address check on every replay."""
    return CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(4,), address_check_interval=1))


def show(pitfall: str, outcome: object) -> None:
    print(f"{pitfall:<34} -> {outcome}")


def rebinding_a_static_buffer() -> None:
    reg = new_registry()
    reg.buffers.declare("cu_seqlens_q_output", [5], "int32")
    try:
        reg.buffers.cu_seqlens_q_output = paddle.zeros([5], dtype="int32")  # should be a write in place
    except AddressStabilityError as err:
        show("rebinding a static buffer", f"AddressStabilityError: {err}")


def host_read_during_capture() -> None:
    reg = new_registry()

    @reg.graphed("scale", batch_arg="x")
    def scale(*, x: paddle.Tensor) -> paddle.Tensor:
        return x * x.max().item()  # a host read: baked in as a constant on a device

    try:
        scale(x=paddle.ones([3]))
    except CaptureSafetyError as err:
        show("host read during capture", f"CaptureSafetyError: {err}")


def value_dependent_shape_during_capture() -> None:
    reg = new_registry()

    @reg.graphed("expand", batch_arg="x")
    def expand(*, x: paddle.Tensor, repeats: paddle.Tensor) -> paddle.Tensor:
        return paddle.repeat_interleave(x, repeats)  # output rows depend on the values of `repeats`

    try:
        expand(x=paddle.ones([3]), repeats=paddle.to_tensor([1, 2, 3]))
    except CaptureSafetyError as err:
        show("value-dependent shape in capture", f"CaptureSafetyError: {err}")


def moved_buffer_at_replay() -> None:
    reg = new_registry()
    table = reg.buffers.declare("table", [8, 2], "float32")
    lookup = reg.graphed("lookup", batch_arg="x")(lambda x: x + reg.buffers.table.sum())
    lookup(x=paddle.zeros([4]))
    table.copy_(paddle.ones([16, 2]), False)  # a different-shaped copy_: Paddle reallocates the buffer
    try:
        lookup(x=paddle.zeros([4]))
    except AddressStabilityError as err:
        show("moved/reallocated buffer at replay", f"AddressStabilityError: {err}")


def batch_above_the_largest_bucket() -> None:
    reg = new_registry()
    double = reg.graphed("double", batch_arg="x")(lambda x: x * 2)
    out = double(x=paddle.ones([7]))  # 7 rows > bucket 4: no graph for this shape
    stats = reg.stats()
    show("batch above the largest bucket",
         f"ran eagerly: {out.shape[0]} rows, eager_fallbacks={stats['eager_fallbacks']}, captures={stats['captures']}")


def stale_padding_rows() -> None:
    reg = new_registry()
    total = reg.graphed("total", batch_arg="x", padding={"slot": -1})(lambda x, slot: (x.sum(), slot * 1))
    total(x=paddle.full([4], 100.0), slot=paddle.to_tensor([7, 7, 7, 7]))  # fills the whole bucket
    result, _ = total(x=paddle.ones([2]), slot=paddle.to_tensor([0, 1]))  # 2 rows padded to 4
    tails = {name: total.staging[name][2:].numpy().tolist() for name in ("x", "slot")}
    show("stale padding rows", f"refilled by rule {tails}; sum over the bucket = {float(result)} (not 202.0)")


if __name__ == "__main__":
    rebinding_a_static_buffer()
    host_read_during_capture()
    value_dependent_shape_during_capture()
    moved_buffer_at_replay()
    batch_above_the_largest_bucket()
    stale_padding_rows()
