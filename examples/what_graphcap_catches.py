"""What graphcap catches, one short section per pitfall: ``python examples/what_graphcap_catches.py``.

Runs on the CPU build of Paddle: the default backend there (``static``, a
``paddle.jit.to_static`` program) reads static buffers by reference, exactly as
a device graph reads addresses. Each section prints the pitfall and what
graphcap raised or did (an exception's type and first line).

The later sections are code graphcap did not write: a ``paddle.nn.Layer``
whose weights a reload rebinds, a cache object passed as an argument, state
kept in Python or advanced in place, a non-tensor argument, a capture that
fails on the backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

os.environ.setdefault("GLOG_minloglevel", "2")  # quiet Paddle's C++ info lines
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from graphcap import (  # noqa: E402
    AddressStabilityError,
    CaptureError,
    CaptureRegistry,
    CaptureSafetyError,
    GraphConfig,
)
from graphcap.execute.backends.eager import EagerBackend  # noqa: E402
from graphcap.trust.reachable import Reachable  # noqa: E402

paddle.set_device("cpu")


def new_registry(**options: object) -> CaptureRegistry:
    """Graphs on, one bucket of 4 rows, the full address check on every replay."""
    config = GraphConfig(use_graph=True, capture_sizes=(4,), address_check_interval=1, **options)
    return CaptureRegistry(config)


def show(pitfall: str, outcome: object) -> None:
    print(f"{pitfall:<34} -> {outcome}")


def first_line(kind: type[BaseException], err: BaseException) -> str:
    """``Kind: first line of the message``, named by the documented class caught (not a private subclass)."""
    return f"{kind.__name__}: {str(err).splitlines()[0]}"


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def graphcap_log() -> Iterator[list[logging.LogRecord]]:
    """Collect graphcap's log records here instead of letting Paddle's root handler print them."""
    handler = LogRecords()
    logger = logging.getLogger("graphcap")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def rebinding_a_static_buffer() -> None:
    reg = new_registry()
    reg.buffers.declare("cu_seqlens_q_output", [5], "int32")
    try:
        reg.buffers.cu_seqlens_q_output = paddle.zeros([5], dtype="int32")  # should be a write in place
    except AddressStabilityError as err:
        show("rebinding a static buffer", first_line(AddressStabilityError, err))


def host_read_during_capture() -> None:
    reg = new_registry()

    @reg.graphed("scale", batch_arg="x")
    def scale(*, x: paddle.Tensor) -> paddle.Tensor:
        return x * x.max().item()  # a host read: baked in as a constant on a device

    try:
        scale(x=paddle.ones([3]))
    except CaptureSafetyError as err:
        show("host read during capture", first_line(CaptureSafetyError, err))


def value_dependent_shape_during_capture() -> None:
    reg = new_registry()

    @reg.graphed("expand", batch_arg="x")
    def expand(*, x: paddle.Tensor, repeats: paddle.Tensor) -> paddle.Tensor:
        return paddle.repeat_interleave(x, repeats)  # output rows depend on the values of `repeats`

    try:
        expand(x=paddle.ones([3]), repeats=paddle.to_tensor([1, 2, 3]))
    except CaptureSafetyError as err:
        show("value-dependent shape in capture", first_line(CaptureSafetyError, err))


def moved_buffer_at_replay() -> None:
    reg = new_registry()
    table = reg.buffers.declare("table", [8, 2], "float32")

    def lookup(*, x: paddle.Tensor) -> paddle.Tensor:
        return x + reg.buffers.table.sum()

    lookup = reg.graphed("lookup", batch_arg="x")(lookup)
    lookup(x=paddle.zeros([4]))
    table.copy_(paddle.ones([16, 2]), False)  # a different-shaped copy_: Paddle reallocates the buffer
    try:
        lookup(x=paddle.zeros([4]))
    except AddressStabilityError as err:
        show("moved/reallocated buffer at replay", first_line(AddressStabilityError, err))


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


# Code graphcap did not write -----------------------------------------------------------


class TinyModel(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.lin = paddle.nn.Linear(3, 3)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.nn.functional.relu(self.lin(x))


class KVCache:
    """A cache object holding one key tensor per layer, as model libraries write them."""

    def __init__(self, layers: int, slots: int, width: int) -> None:
        self.keys = [paddle.zeros([slots, width]) for _ in range(layers)]


def reload_new_weights(model: TinyModel) -> None:
    """A weight reload that rebinds the parameter instead of writing it in place."""
    weight = paddle.create_parameter([3, 3], "float32")
    weight.set_value(paddle.randn([3, 3]))
    model.lin.weight = weight


def parameter_rebound_by_a_weight_reload() -> None:
    reg = new_registry()
    model = TinyModel()
    forward = reg.graphed("forward", batch_arg="x")(model.forward)  # a bound method: its paths start at self
    x = paddle.randn([4, 3])
    forward(x)
    reload_new_weights(model)  # the graph still reads the old weight tensor
    try:
        forward(x)
    except AddressStabilityError as err:
        show("parameter rebound by weight reload", first_line(AddressStabilityError, err))


def cache_tensor_reallocated_in_an_argument() -> None:
    reg = new_registry()

    @reg.graphed("attend", batch_arg="x")
    def attend(*, x: paddle.Tensor, cache: KVCache) -> paddle.Tensor:
        return x + cache.keys[0][:1]

    cache = KVCache(layers=2, slots=8, width=3)
    x = paddle.randn([4, 3])
    attend(x=x, cache=cache)
    cache.keys[0] = paddle.zeros([8, 3])  # re-allocated inside the object instead of written in place
    try:
        attend(x=x, cache=cache)
    except AddressStabilityError as err:
        show("cache.keys[0] re-allocated", first_line(AddressStabilityError, err))


def python_held_tensor_replaced_every_call() -> None:
    reg = new_registry()
    past = [paddle.zeros([4, 3])]  # held in Python, outside the call

    @reg.graphed("decode", batch_arg="x")
    def decode(*, x: paddle.Tensor) -> paddle.Tensor:
        past[0] = past[0] + x  # a new tensor every call: what PaddleFormers' DynamicCache.update does
        return past[0]

    try:
        decode(x=paddle.ones([4, 3]))
    except CaptureSafetyError as err:
        show("Python-held tensor replaced", first_line(CaptureSafetyError, err))


def undeclared_counter_argument() -> None:
    reg = new_registry()

    @reg.graphed("step", batch_arg="x")
    def step(*, x: paddle.Tensor, step_count: paddle.Tensor) -> paddle.Tensor:
        paddle.assign(step_count + 1, output=step_count)  # advanced in place, not declared to graphcap
        return x * step_count

    step_count = paddle.to_tensor([5.0])
    try:
        step(x=paddle.ones([3, 3]), step_count=step_count)
    except CaptureSafetyError as err:
        show("undeclared in-place counter", first_line(CaptureSafetyError, err))
    after = step_count.numpy().tolist()
    show("", f"step_count after the failed capture: {after} (the warmups' advances undone)")


def unhashable_non_tensor_leaf() -> None:
    reg = new_registry()
    mix = reg.graphed("mix", batch_arg="x")(lambda x, kv: x + kv[0])
    x = paddle.ones([3, 3])
    try:
        mix(x=x, kv=(x, np.ones(3)))  # a NumPy array is a non-tensor leaf: part of the graph key
    except CaptureError as err:
        show("unhashable non-tensor leaf", first_line(CaptureError, err))


class FailingCaptureBackend(EagerBackend):
    """The eager backend, except that capturing fails the way a device capture can."""

    def capture(self, run: Callable[[], None], label: str, reachable: Reachable | None = None) -> NoReturn:
        raise RuntimeError(
            "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing"
        )


def capture_failing_on_the_backend() -> None:
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(4,)), backend=FailingCaptureBackend())
    double = reg.graphed("double", batch_arg="x")(lambda x: x * 2)
    with graphcap_log() as records:
        for _ in range(2):
            out = double(x=paddle.ones([3]))
    [warning] = [record for record in records if record.levelno == logging.WARNING]
    show("capture fails on the backend", f"WARNING: {warning.getMessage().splitlines()[0]}")
    stats = reg.stats()
    show("", f"ran eagerly: {out.numpy().tolist()}, eager_fallbacks={stats['eager_fallbacks']}, "
             f"fallbacks={stats['fallbacks']}")


def reload_with_recapture() -> None:
    reg = new_registry(on_rebind="recapture")
    model = TinyModel()

    @reg.graphed("forward", batch_arg="x")
    def forward(x: paddle.Tensor) -> paddle.Tensor:
        return model(x)  # a closure over the model: paths start at model

    x = paddle.randn([4, 3])
    forward(x)
    reload_new_weights(model)
    with graphcap_log() as records:
        out = forward(x)
    same = np.array_equal(out.numpy(), model(x).numpy())
    show("reload with on_rebind='recapture'",
         f"recaptures={reg.stats()['recaptures']}, result is the new weights' result: {same}; "
         f"INFO: {records[0].getMessage()}")


if __name__ == "__main__":
    rebinding_a_static_buffer()
    host_read_during_capture()
    value_dependent_shape_during_capture()
    moved_buffer_at_replay()
    batch_above_the_largest_bucket()
    stale_padding_rows()
    parameter_rebound_by_a_weight_reload()
    cache_tensor_reallocated_in_an_argument()
    python_held_tensor_replaced_every_call()
    undeclared_counter_argument()
    unhashable_non_tensor_leaf()
    capture_failing_on_the_backend()
    reload_with_recapture()
