"""Tests for graphcap.trust.at_capture_guard: host reads and value-dependent shapes raise during capture."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle
import pytest

from graphcap import failures
from graphcap.errors import CaptureSafetyError, ConfigError, GraphCapError
from graphcap.trust.at_capture_guard import GUARDED_CALLS, allow_host_reads, capture_guard, guard_active
from graphcap.trust.graph_safe_ops import register_graph_safe_op

THIS_FILE = os.path.basename(__file__)


@pytest.fixture
def t() -> dict[str, paddle.Tensor]:
    """A few small tensors the flagged and allowed calls work on."""
    x = paddle.to_tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    return {
        "x": x,
        "mask": x > 0,
        "scalar": paddle.to_tensor(2.0),
        "i": paddle.to_tensor(1, dtype="int64"),
        "v": paddle.to_tensor([1, 1, 2, 3, 3], dtype="int64"),
        "reps": paddle.to_tensor([1, 2, 0], dtype="int64"),
    }


# One row per flagged call: (call name expected in the message, the call).
# Each lambda sits on one line, so its first line is the line the call is on.
# fmt: off
FLAGGED: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("Tensor.numpy()", lambda t: t["x"].numpy()),
    ("Tensor.item()", lambda t: t["scalar"].item()),
    ("Tensor.tolist()", lambda t: t["x"].tolist()),
    ("bool(Tensor)", lambda t: bool(t["scalar"] > 1)),
    ("bool(Tensor)", lambda t: 1 if t["scalar"] > 1 else 0),
    ("int(Tensor)", lambda t: int(t["scalar"])),
    ("float(Tensor)", lambda t: float(t["scalar"])),
    ("Tensor.__index__", lambda t: [10, 20, 30][t["i"]]),
    ("Tensor.__array__", lambda t: np.asarray(t["x"])),
    ("paddle.nonzero", lambda t: paddle.nonzero(t["mask"])),
    ("Tensor.nonzero()", lambda t: t["mask"].nonzero()),
    ("paddle.masked_select", lambda t: paddle.masked_select(t["x"], t["mask"])),
    ("Tensor.masked_select()", lambda t: t["x"].masked_select(t["mask"])),
    ("paddle.unique", lambda t: paddle.unique(t["v"])),
    ("Tensor.unique()", lambda t: t["v"].unique()),
    ("paddle.unique_consecutive", lambda t: paddle.unique_consecutive(t["v"])),
    ("Tensor.unique_consecutive()", lambda t: t["v"].unique_consecutive()),
    ("paddle.repeat_interleave with Tensor repeats", lambda t: paddle.repeat_interleave(t["x"][0], t["reps"])),
    ("paddle.repeat_interleave with Tensor repeats", lambda t: paddle.repeat_interleave(t["x"][0], repeats=t["reps"])),
    ("Tensor.repeat_interleave() with Tensor repeats", lambda t: t["x"][0].repeat_interleave(t["reps"])),
    ("boolean-mask indexing", lambda t: t["x"][t["mask"]]),
    ("boolean-mask indexing", lambda t: t["x"][0][(t["mask"][0],)]),
    ("paddle.where(condition) without x and y", lambda t: paddle.where(t["mask"])),
    ("Tensor.cpu()", lambda t: t["x"].cpu()),
    ("paddle.to_tensor of a list holding tensors", lambda t: paddle.to_tensor([t["scalar"], t["scalar"]])),
    ("paddle.arange with a Tensor bound", lambda t: paddle.arange(t["i"])),
    ("paddle.reshape with a Tensor in the shape", lambda t: paddle.reshape(t["x"], [t["i"] + 1, -1])),
    ("Tensor.reshape with a Tensor in the shape", lambda t: t["x"].reshape([t["i"] + 1, 3])),
    ("paddle.full with a Tensor shape or value", lambda t: paddle.full([t["i"]], 1.0)),
    ("paddle.slice with Tensor starts or ends", lambda t: paddle.slice(t["x"], [1], [0], [t["i"]])),
    ("paddle.split with Tensor sections", lambda t: paddle.split(t["x"], [t["i"], 2], axis=1)),
    ("Tensor.split with Tensor sections", lambda t: t["x"].split([t["i"], 2], axis=1)),
    ("paddle.device.synchronize()", lambda t: paddle.device.synchronize()),
    ("paddle.device.cuda.synchronize()", lambda t: paddle.device.cuda.synchronize()),
]
# fmt: on


@pytest.mark.parametrize(("call", "fn"), FLAGGED, ids=[f"{i}-{c}" for i, (c, _) in enumerate(FLAGGED)])
def test_flagged_call_raises_with_call_and_line(t: dict[str, Any], call: str, fn: Callable[..., Any]) -> None:
    line = fn.__code__.co_firstlineno
    with capture_guard(graph="target", bucket=8):
        with pytest.raises(CaptureSafetyError) as info:
            fn(t)
    err = info.value
    message = str(err)
    assert isinstance(err, GraphCapError)
    assert call in message
    assert f"{THIS_FILE}:{line}" in message
    assert "'target'" in message and "bucket 8" in message
    assert "allow_host_reads" in message  # the fix is named
    assert err.call is not None and call in err.call
    assert (err.graph, err.bucket) == ("target", 8)
    assert err.location.endswith(f"{THIS_FILE}:{line}")
    # The same call outside capture is fine: nothing is patched any more (a device
    # synchronization has no device to wait for on this CPU build).
    if "synchronize" not in call:
        fn(t)


def test_every_guarded_call_has_a_test_row() -> None:
    tested = {c for c, _ in FLAGGED}
    for name in GUARDED_CALLS:
        assert any(c in name for c in tested), name


def test_common_model_code_runs_clean() -> None:
    paddle.seed(0)
    lin = paddle.nn.Linear(8, 8)
    emb = paddle.nn.Embedding(16, 8)
    ids = paddle.to_tensor([[1, 2, 3, 4]], dtype="int64")
    x = paddle.randn([4, 8])
    buf = paddle.zeros([6, 8])
    ptr = buf.data_ptr()
    n = 3
    with capture_guard(graph="target", bucket=4):
        h = emb(ids)[0]
        h = paddle.nn.functional.layer_norm(h + x, [8])
        h = lin(h)
        logits = paddle.matmul(h, emb.weight, transpose_y=True)
        probs = paddle.nn.functional.softmax(logits, axis=-1)
        values, index = paddle.topk(probs, k=2)
        best = paddle.argmax(probs, axis=-1)
        picked = paddle.gather(h, best % 4)
        sums = paddle.cumsum(values, axis=-1)
        last = h[:, -1]
        head = h[:n]
        buf[:n] = head
        paddle.assign(paddle.zeros([6, 8]), output=buf)
        both = paddle.concat([h, picked], axis=0)
        flat = both.reshape([2, 32])
        clipped = paddle.where(h > 0, h, paddle.zeros_like(h))
        taken = h[index[:, 0] % 4]  # integer-tensor indexing is a gather: static shape
        _ = (h.shape, len(h), h.ndim, h.dtype, repr(h), str(sums), f"{last}")
    assert buf.data_ptr() == ptr
    assert [s.shape for s in (flat, clipped, taken, sums)] == [[2, 32], [4, 8], [4, 8], [4, 2]]


def test_paddle_internal_calls_are_let_through() -> None:
    # Printing and stacking: Paddle reads values itself here, from its own frames.
    x = paddle.arange(6, dtype="float32")
    with capture_guard(graph="g", bucket=1):
        stacked = paddle.stack([x, x])
        text = repr(stacked)
        copied = paddle.to_tensor(x)  # a tensor (not a list of them) is copied on the device
    assert stacked.shape == [2, 6] and "Tensor" in text and copied.shape == [6]


def test_graph_safe_op_may_read_on_host() -> None:
    @register_graph_safe_op("test_guard_host_reading_op")
    def host_reading_op(x: paddle.Tensor) -> paddle.Tensor:
        # A C++ op's Python wrapper may check values; the op vouches for it.
        assert x.numpy().shape == (3,)
        return x * float(x[0])

    x = paddle.to_tensor([2.0, 3.0, 4.0])
    with capture_guard(graph="g", bucket=1):
        out = host_reading_op(x)
        with pytest.raises(CaptureSafetyError):
            x.numpy()  # the same call outside the op is still flagged
    np.testing.assert_allclose(out.numpy(), [4.0, 6.0, 8.0])


def test_graph_safe_op_registration_errors_name_the_problem() -> None:
    @register_graph_safe_op("test_guard_registered_once", inplace=("out",))
    def writes_out(x: paddle.Tensor, out: paddle.Tensor) -> None:
        paddle.assign(x, output=out)

    with pytest.raises(ConfigError, match="already registered"):
        register_graph_safe_op("test_guard_registered_once")(lambda x: x)
    with pytest.raises(ConfigError, match=r"\['outt'\].*not parameters"):
        register_graph_safe_op("test_guard_typo_in_inplace", inplace=("outt",))(lambda x, out: x)
    # The refused registration left no entry behind, so the name can still be used.
    register_graph_safe_op("test_guard_typo_in_inplace", inplace=("out",))(lambda x, out: x)


def test_allow_host_reads_context_manager_logs_once_per_site(caplog: pytest.LogCaptureFixture) -> None:
    x = paddle.to_tensor([1.0, 2.0])
    caplog.set_level(logging.INFO, logger="graphcap.guard")
    seen = []
    with capture_guard(graph="draft", bucket=2):
        for _ in range(3):
            with allow_host_reads(reason="debug dump of logits"):
                seen.append(x.numpy().tolist())
        with allow_host_reads(reason="second site"):
            assert x[0].item() == 1.0
    records = [r for r in caplog.records if r.name == "graphcap.guard"]
    assert seen == [[1.0, 2.0]] * 3
    assert len(records) == 2
    assert "debug dump of logits" in records[0].getMessage()
    assert THIS_FILE in records[0].getMessage() and "'draft'" in records[0].getMessage()
    assert "second site" in records[1].getMessage()


def test_allow_host_reads_decorator(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="graphcap.guard")

    @allow_host_reads(reason="vouched: value is a compile-time constant")
    def read(x: paddle.Tensor) -> float:
        return float(x)

    x = paddle.to_tensor(1.5)
    assert read(x) == 1.5  # outside capture: not logged
    with capture_guard(graph="g", bucket=1):
        assert read(x) == 1.5
        assert read(x) == 1.5
        with pytest.raises(CaptureSafetyError):
            float(x)  # the hatch ends with the decorated call
    records = [r for r in caplog.records if r.name == "graphcap.guard"]
    assert len(records) == 1
    assert "compile-time constant" in records[0].getMessage()


def test_allow_host_reads_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        allow_host_reads(reason=" ")


def _attribute_snapshot() -> dict[tuple[str, str], Any]:
    owners = {"Tensor": paddle.Tensor, "paddle": paddle}
    names = [
        "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__array__",
        "__getitem__", "nonzero", "masked_select", "unique", "unique_consecutive",
        "repeat_interleave", "where",
    ]  # fmt: skip
    return {
        (label, name): owner.__dict__[name]
        for label, owner in owners.items()
        for name in names
        if name in owner.__dict__
    }


def test_nothing_patched_outside_capture() -> None:
    before = _attribute_snapshot()
    original_numpy = paddle.Tensor.numpy
    original_nonzero = paddle.nonzero
    assert not guard_active()
    with capture_guard(graph="g", bucket=1):
        assert guard_active()
        assert paddle.Tensor.numpy is not original_numpy
        assert paddle.nonzero is not original_nonzero
    assert not guard_active()
    assert paddle.Tensor.numpy is original_numpy
    assert paddle.nonzero is original_nonzero
    after = _attribute_snapshot()
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_reentrant_guards() -> None:
    original = paddle.Tensor.item
    x = paddle.to_tensor(1.0)
    with capture_guard(graph="outer", bucket=4):
        with capture_guard(graph="inner", bucket=2):
            with pytest.raises(CaptureSafetyError) as info:
                x.item()
            assert (info.value.graph, info.value.bucket) == ("inner", 2)
        # The inner exit must not unpatch while the outer guard is active.
        assert paddle.Tensor.item is not original
        with pytest.raises(CaptureSafetyError) as info:
            x.item()
        assert info.value.graph == "outer"
    assert paddle.Tensor.item is original
    assert x.item() == 1.0


def test_exception_inside_guard_restores_everything() -> None:
    before = _attribute_snapshot()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_guard(graph="g", bucket=1):
            with capture_guard(graph="g2", bucket=1):
                raise RuntimeError("boom")
    assert not guard_active()
    after = _attribute_snapshot()
    assert all(after[k] is before[k] for k in before)
    # A guard error escaping also restores.
    with pytest.raises(CaptureSafetyError):
        with capture_guard(graph="g", bucket=1):
            paddle.to_tensor([1.0]).numpy()
    assert paddle.Tensor.numpy is before[("Tensor", "numpy")]


def test_repeat_interleave_int_repeats_allowed(t: dict[str, Any]) -> None:
    with capture_guard(graph="g", bucket=1):
        out = paddle.repeat_interleave(t["x"], 2, axis=0)
        out2 = t["x"].repeat_interleave(repeats=3, axis=1)
        with pytest.raises(CaptureSafetyError, match="Tensor repeats"):
            paddle.repeat_interleave(t["x"], paddle.to_tensor([1, 2]), axis=0)
    assert out.shape == [4, 3] and out2.shape == [2, 9]


def test_other_threads_are_not_checked() -> None:
    x = paddle.to_tensor([1.0, 2.0])
    original = paddle.Tensor.numpy
    results: list[Any] = []
    started, release = threading.Event(), threading.Event()

    def capture() -> None:
        with capture_guard(graph="g", bucket=1):
            started.set()
            release.wait(5)

    worker = threading.Thread(target=capture)
    worker.start()
    try:
        assert started.wait(5)
        assert paddle.Tensor.numpy is not original  # patched, for the other thread
        results.append(x.numpy().tolist())  # this thread is not capturing
        assert not guard_active()
    finally:
        release.set()
        worker.join(5)
    assert results == [[1.0, 2.0]]


def test_to_static_tracing_under_guard() -> None:
    buf = paddle.zeros([2, 3])

    def safe(x: paddle.Tensor) -> paddle.Tensor:
        paddle.assign(paddle.nn.functional.softmax(x), output=buf)
        return x.sum()

    def unsafe(x: paddle.Tensor) -> paddle.Tensor:
        return paddle.nonzero(x > 0)

    x = paddle.to_tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    with capture_guard(graph="static", bucket=2):
        total = paddle.jit.to_static(safe, full_graph=True)(x)
        # to_static re-raises traced errors as type(err)(new message); the
        # original, with its structured fields, is attached to the copy.
        with pytest.raises(CaptureSafetyError) as info:
            paddle.jit.to_static(unsafe, full_graph=True)(x)
    original = failures.original(info.value)
    assert original.call == "paddle.nonzero"
    assert (original.graph, original.bucket) == ("static", 2)
    np.testing.assert_allclose(float(total), 1.5, rtol=1e-6)
