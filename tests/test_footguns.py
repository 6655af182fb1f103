"""Footguns of graph capture, one test each (after tinygrad's ``test_jit_footguns.py``).

Each test drives the bug on the CPU: the ``static`` backend (``paddle.jit.to_static``)
reads static buffers by reference, so it goes stale exactly where a device graph
does, and ``eager`` is the reference every replay is compared with.

====================================  ==============================================  ==============================================  ==============================================
pitfall                               what goes wrong on a device                     what graphcap does                              test
====================================  ==============================================  ==============================================  ==============================================
rebinding a static buffer             the graph keeps reading the old tensor: stale   assignment to a buffer raises; a rebinding      test_rebinding_a_static_buffer
                                      offsets, wrong tokens, no error                 behind its back raises at replay, naming the
                                                                                      buffer and the bucket
``.item()`` inside capture            capture fails (CUDA error 900/901) or the       CaptureSafetyError naming the call and the      test_item_inside_capture
                                      value is baked in as a constant                 user's line; opt-in on_unsafe_capture="eager"
                                                                                      runs that bucket eagerly, counted
``repeat_interleave`` with tensor     a value-dependent shape: the legacy sampling-   CaptureSafetyError; the graph-safe op           test_repeat_interleave_with_tensor_repeats
repeats inside capture                param builder cannot be captured                build_sampling_params_into passes
batch above the largest bucket        no graph for that shape                         eager fallback, counted in stats(), same        test_batch_above_the_largest_bucket
                                                                                      result as eager
draft graphs toggled between steps    target and draft state drift apart: wrong       the draft switch is per call; tokens and the    test_toggling_draft_graphs_between_steps
                                      tokens or a hang                                final infer_seed equal graphs-off
seed wrap-around at both moduli       ``seed + 4*j`` overflows int64 / int32 near     the op wraps modulo MAX_INFER_SEED and          test_seed_wraps_around_at_both_moduli
                                      the modulus                                     KUNLUN_MAX_INFER_SEED, replay equals numpy
padding rows carrying stale data      padding rows replay the previous step's         every staging refills padding rows by rule      test_padding_rows_never_carry_stale_data
                                      values into reductions, KV writes, seeds        (zero / value / copy_row0)
reshaping ``copy_`` into a buffer     Paddle silently reallocates (larger source)     replay raises AddressStabilityError naming      test_reshaping_copy_into_a_static_buffer,
                                      or reshapes in place (smaller source)           the buffer, moved or reshaped (within           test_shrinking_copy_into_a_static_buffer,
                                                                                      address_check_interval replays); write()        test_static_buffer_write_refuses_a_wrong_shape
                                                                                      refuses a wrong shape
an exception inside capture           a capture left open poisons every later         that bucket runs eagerly, its reason in         test_exception_inside_capture,
                                      launch on the stream                            stats()["fallbacks"]; capture_end always        test_exception_inside_a_warmup_propagates_like_eager
                                                                                      called; a warmup's exception propagates as
                                                                                      eager's would
``reset()`` then replay               a released graph replayed, or an old weight     a rebinding reload raises naming the path;      test_reset_then_replay,
                                      tensor read after a reload                      after reset() (or on_rebind="recapture") the   test_rebinding_reload_recaptures_when_asked
                                                                                      next call recaptures, equal to eager
====================================  ==============================================  ==============================================  ==============================================
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import paddle
import pytest

from graphcap import (
    AddressStabilityError,
    CaptureRegistry,
    CaptureSafetyError,
    GraphConfig,
    StaticBufferError,
)
from graphcap.execute.backends.device_double import double_backend
from graphcap.models.corpus import make_prompts
from graphcap.models.tiny_lm import load_tiny_lm
from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions
from graphcap.ops import (
    KUNLUN_MAX_INFER_SEED,
    MAX_INFER_SEED,
    build_sampling_params_into,
    build_sampling_params_reference,
    padding_sampling_params,
)

BACKENDS = ["eager", "static"]
THIS_FILE = os.path.basename(__file__)


def registry(backend: str, **overrides) -> CaptureRegistry:
    options = {"use_graph": True, "backend": backend, "capture_sizes": (2, 4)} | overrides
    return CaptureRegistry(GraphConfig(**options))


def values(tensor: paddle.Tensor) -> list:
    return tensor.numpy().reshape(-1).tolist()


# 1. Rebinding a static buffer ----------------------------------------------------


def offsets_graph(backend: str, **config):
    """A graph that reads registry buffer ``cu_seqlens_q_output``, as a model reads its metadata."""
    reg = registry(backend, capture_sizes=(4,), **config)
    reg.buffers.declare("cu_seqlens_q_output", [5], "int32", pad="keep")
    reg.buffers.write("cu_seqlens_q_output", np.int32([0, 1, 2, 3, 4]))

    @reg.graphed("target", batch_arg="x")
    def fwd(*, x):
        return x + paddle.cast(reg.buffers.cu_seqlens_q_output[:4], "float32")

    return reg, fwd


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebinding_a_static_buffer(backend):
    reg, fwd = offsets_graph(backend)
    x = paddle.zeros([4])
    fwd(x=x)
    new = paddle.to_tensor([0, 2, 4, 6, 8], dtype="int32")
    with pytest.raises(AddressStabilityError, match="cu_seqlens_q_output"):
        reg.buffers.cu_seqlens_q_output = new
    with pytest.raises(AddressStabilityError, match="cu_seqlens_q_output"):
        reg.buffers["cu_seqlens_q_output"] = new
    # Behind the guard's back: the replay refuses, naming the buffer and the bucket.
    reg.buffers._unsafe_rebind("cu_seqlens_q_output", new)
    with pytest.raises(AddressStabilityError, match=r"target\[bucket 4\]: registry buffer 'cu_seqlens_q_output'"):
        fwd(x=x)


def test_rebinding_a_static_buffer_unchecked_gives_stale_results():
    reg, fwd = offsets_graph("static", debug_checks=False)
    x = paddle.zeros([4])
    assert values(fwd(x=x)) == [0, 1, 2, 3]
    reg.buffers._unsafe_rebind("cu_seqlens_q_output", paddle.to_tensor([0, 2, 4, 6, 8], dtype="int32"))
    assert values(fwd.__wrapped__(x=x)) == [0, 2, 4, 6]  # eager reads the new tensor
    assert values(fwd(x=x)) == [0, 1, 2, 3]  # the graph still reads the old one, silently


# 2. .item() inside capture ---------------------------------------------------------


def scale_by_host_max(*, x):
    scale = x.max().item()  # the footgun: a host read inside the captured region
    return x * scale


HOST_READ_LINE = scale_by_host_max.__code__.co_firstlineno + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_item_inside_capture(backend):
    reg = registry(backend)
    fwd = reg.graphed("scale", batch_arg="x")(scale_by_host_max)
    with pytest.raises(CaptureSafetyError) as info:
        fwd(x=paddle.arange(3, dtype="float32"))
    message = str(info.value)
    assert "Tensor.item()" in message and f"{THIS_FILE}:{HOST_READ_LINE}" in message
    assert "'scale' bucket 4" in message
    assert reg.stats()["captures"] == 0 and reg.stats()["graphs"] == 0
    assert not hasattr(paddle.Tensor.item, "__graphcap_guarded__")  # the guard is gone after the error


@pytest.mark.parametrize("backend", BACKENDS)
def test_item_inside_capture_opt_in_eager(backend):
    reg = registry(backend, on_unsafe_capture="eager")
    fwd = reg.graphed("scale", batch_arg="x")(scale_by_host_max)
    for rows in (3, 4):  # both in bucket 4: one failed capture, then eager every call
        x = paddle.arange(rows, dtype="float32") + 1
        assert values(fwd(x=x)) == values(scale_by_host_max(x=x))
    stats = reg.stats()
    assert stats["capture_failures"] == 1 and stats["eager_fallbacks"] == 2
    assert stats["captures"] == 0 and stats["replays"] == 0
    assert stats["per_graph"]["scale"]["eager"]["steps"] == 2


# 3. repeat_interleave with tensor repeats inside capture -----------------------------


def sampling_graph(backend: str, builder: str, *, max_seed: int = MAX_INFER_SEED, increment: int = 12):
    """A graph that builds per-row seeds over registry buffers, with the op or the legacy builder.

    Three requests, two rows each (6 rows, bucket 8): the shape of an MTP verify batch.
    """
    reg = registry(backend, capture_sizes=(8,))
    bufs = reg.buffers
    bufs.declare("top_p", [3], "float32", pad="keep")
    bufs.declare("top_k", [3], "int64", pad="keep")
    bufs.declare("infer_seed", [3], "int64", pad="keep")
    bufs.declare("seq_lens_this_time", [3], "int32", pad="keep")
    bufs.declare("cu_seqlens_q_output", [4], "int32", pad="keep")
    bufs.write("top_p", np.float32([0.9, 0.5, 0.7]))
    bufs.write("top_k", np.int64([5, 0, 9]))
    bufs.write("seq_lens_this_time", np.int32([2, 2, 2]))
    bufs.write("cu_seqlens_q_output", np.int32([0, 2, 4, 6]))
    common = {
        "top_p": bufs.top_p, "top_k": bufs.top_k, "infer_seed": bufs.infer_seed,
        "seq_lens_this_time": bufs.seq_lens_this_time, "cu_seqlens_q_output": bufs.cu_seqlens_q_output,
        "increment_value": increment, "max_seed": max_seed,
    }

    @reg.graphed("sampling_params", batch_arg="logits")
    def fwd(*, logits):
        if builder == "legacy":
            _, _, seed = padding_sampling_params(**common, advance_seed=True)
        else:
            rows = logits.shape[0]
            _, _, seed = build_sampling_params_into(
                **common, out_top_p=paddle.ones([rows, 1], dtype="float32"),
                out_top_k=paddle.zeros([rows, 1], dtype="int64"), out_seed=paddle.zeros([rows, 1], dtype="int64"),
            )
        return seed.reshape([-1])

    return reg, fwd


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeat_interleave_with_tensor_repeats(backend):
    reg, legacy = sampling_graph(backend, "legacy")
    reg.buffers.write("infer_seed", np.int64([100, 200, 300]))
    with pytest.raises(CaptureSafetyError, match="repeat_interleave with Tensor repeats"):
        legacy(logits=paddle.zeros([6, 16]))
    assert values(reg.buffers.infer_seed) == [100, 200, 300]  # the failed capture left no trace

    reg, op = sampling_graph(backend, "op")
    reg.buffers.write("infer_seed", np.int64([100, 200, 300]))
    assert values(op(logits=paddle.zeros([6, 16]))) == [100, 104, 200, 204, 300, 304]
    assert values(reg.buffers.infer_seed) == [112, 212, 312]
    assert reg.stats()["captures"] == 1 and reg.stats()["replays"] == 1


# 4. Batch above the largest bucket ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_above_the_largest_bucket(backend):
    reg = registry(backend)
    w = paddle.randn([3, 5])

    def forward(*, x):
        return paddle.tanh(paddle.matmul(x, w))

    fwd = reg.graphed("t", batch_arg="x")(forward)
    x = paddle.randn([7, 3])
    np.testing.assert_array_equal(fwd(x=x).numpy(), fwd.__wrapped__(x=x).numpy())
    stats = reg.stats()
    assert stats["eager_fallbacks"] == 1 and stats["captures"] == 0 and stats["replays"] == 0
    assert stats["per_graph"]["t"]["eager"] == {"steps": 1, "real_rows": 7, "padded_rows": 0}
    np.testing.assert_array_equal(fwd(x=x[:3]).numpy(), fwd.__wrapped__(x=x[:3]).numpy())  # bucket 4: replays
    assert reg.stats()["replays"] == 1 and reg.stats()["eager_fallbacks"] == 1


# 5. Draft graphs toggled between steps ------------------------------------------------


def test_toggling_draft_graphs_between_steps():
    requests = [
        Request(prompt=prompt, max_new_tokens=6 + index, seed=MAX_INFER_SEED - 40 + index, top_p=0.8, top_k=16)
        for index, prompt in enumerate(make_prompts(3, seed=11))
    ]

    def engine(config: GraphConfig) -> MTPEngine:
        return MTPEngine(config, max_batch=2, sampling=SamplingOptions(greedy=False), bundle=load_tiny_lm(2))

    reference = engine(GraphConfig(use_graph=False, num_speculative_tokens=2))
    want_tokens, _ = reference.generate(requests)
    toggled = engine(GraphConfig(use_graph=True, backend="static", num_speculative_tokens=2, max_capture_size=2))
    # (draft, draft_next) per decode step: both, neither, one, the other, ...
    pattern = [(True, True), (False, False), (True, False), (False, True)]
    decode, steps = toggled._decode, []

    def toggling(active, stats, **agreed):
        toggled.draft.enabled, toggled.draft_next.enabled = pattern[len(steps) % len(pattern)]
        steps.append(len(steps))
        decode(active, stats, **agreed)

    toggled._decode = toggling
    tokens, _ = toggled.generate(requests)
    assert tokens == want_tokens
    assert toggled.infer_seed() == reference.infer_seed()
    assert len(steps) >= len(pattern)
    per_graph = toggled.stats()["per_graph"]
    assert set(per_graph["draft"]) - {"eager"} and set(per_graph["draft_next"]) - {"eager"}  # graphs did replay


# 6. Seed wrap-around at both moduli ----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("modulus", [MAX_INFER_SEED, KUNLUN_MAX_INFER_SEED], ids=["gpu", "kunlun"])
def test_seed_wraps_around_at_both_moduli(backend, modulus):
    reg, fwd = sampling_graph(backend, "op", max_seed=modulus, increment=12)
    seeds = [modulus - 1, modulus - 5, modulus - 13]  # row 1 (+4) and the increment (+12) both wrap
    reg.buffers.write("infer_seed", np.int64(seeds))
    bufs = reg.buffers
    for _ in range(3):
        _, _, want_rows, want_seed = build_sampling_params_reference(
            top_p=bufs.top_p.numpy(), top_k=bufs.top_k.numpy(), infer_seed=np.int64(seeds),
            seq_lens_this_time=bufs.seq_lens_this_time.numpy(), cu_seqlens_q_output=bufs.cu_seqlens_q_output.numpy(),
            token_num_output=6, increment_value=12, max_seed=modulus,
        )
        assert values(fwd(logits=paddle.zeros([6, 16]))) == want_rows.reshape(-1).tolist()
        seeds = values(bufs.infer_seed)
        assert seeds == want_seed.tolist()
    assert all(0 <= seed < 36 for seed in seeds)  # wrapped to small values, not overflowed or clamped
    assert reg.stats()["replays"] == 3


# 7. Padding rows carrying stale data -------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_rows_never_carry_stale_data(backend):
    reg = registry(backend, capture_sizes=(4,))

    # Padding rows are refilled by rule on every staging: zero (x) and copies of row 0 (ids).
    def fwd(*, x, ids):
        return x * 2, ids + 1

    graphed = reg.graphed("t", batch_arg="x", padding={"ids": "copy_row0"})(fwd)
    graphed(x=paddle.full([4], 100.0), ids=paddle.to_tensor([-50, -60, -70, -80]))  # a full bucket
    staged_x, staged_ids = graphed.staging["x"], graphed.staging["ids"]
    x, ids = paddle.to_tensor([1.0, 2.0]), paddle.to_tensor([5, 3])
    for _ in range(2):
        got = graphed(x=x, ids=ids)
        want = fwd(x=x, ids=ids)
        assert values(got[0]) == values(want[0]) == [2.0, 4.0]
        assert values(got[1]) == values(want[1]) == [6, 4]
        assert values(staged_x[2:]) == [0.0, 0.0] and values(staged_ids[2:]) == [5, 5]  # refilled by rule
        staged_x[2:] = math.nan  # poison the padding rows between steps
        staged_ids[2:] = -1
    assert reg.stats()["replays"] == 3  # the capturing call replays too


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reduction_over_padding_rows_runs_padded_calls_eagerly(backend):
    # A reduction over the bucket sees padding rows: padded calls would depend on what they hold.
    reg = registry(backend, capture_sizes=(4,))

    def fwd(*, x):
        return x + x.sum()

    graphed = reg.graphed("t", batch_arg="x")(fwd)
    graphed(x=paddle.full([4], 100.0))  # a full bucket: captured, and its rows found to interact
    x = paddle.to_tensor([1.0, 2.0])
    assert values(graphed(x=x)) == values(fwd(x=x)) == [4.0, 5.0]
    stats = reg.stats()
    assert stats["replays"] == 1 and "rows interact" in stats["fallbacks"][0]["reason"]


# 8. A reshaping copy_ into a static buffer ---------------------------------------------


def table_graph(backend: str, **config):
    reg = registry(backend, capture_sizes=(4,), **config)
    reg.buffers.declare("table", [8, 2], "float32", pad="keep")
    reg.buffers.write("table", paddle.ones([8, 2]))

    @reg.graphed("lookup", batch_arg="x")
    def fwd(*, x):
        return x + reg.buffers.table.sum()

    return reg, fwd


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["copy_", "assign"])
def test_reshaping_copy_into_a_static_buffer(backend, how):
    # In Paddle 3.3.1 a larger source reallocates the destination (new data_ptr, new shape).
    x = paddle.zeros([4])
    for interval, allowed in ((1, 1), (8, 8)):  # 8 is the default interval
        reg, fwd = table_graph(backend, address_check_interval=interval)
        fwd(x=x)
        fwd(x=x)  # one unchecked replay (with interval 8) before the copy
        table, before = reg.buffers.table, reg.buffers.table.data_ptr()
        bigger = paddle.full([16, 2], 2.0)
        table.copy_(bigger, False) if how == "copy_" else paddle.assign(bigger, output=table)
        assert table.shape == [16, 2] and table.data_ptr() != before  # Paddle's silent reallocation
        with pytest.raises(AddressStabilityError, match=r"lookup\[bucket 4\]: registry buffer 'table' moved"):
            for _ in range(allowed):
                fwd(x=x)


def test_static_buffer_write_refuses_a_wrong_shape():
    reg, _ = table_graph("eager")
    before = reg.buffers.table.data_ptr()
    with pytest.raises(StaticBufferError, match=r"buffer 'table' has rows of shape \[2\]"):
        reg.buffers.write("table", paddle.ones([8, 3]))
    with pytest.raises(StaticBufferError, match="buffer 'table' takes 8 rows but the write has 16"):
        reg.buffers.write("table", paddle.ones([16, 2]))
    assert reg.buffers.table.shape == [8, 2] and reg.buffers.table.data_ptr() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_shrinking_copy_into_a_static_buffer(backend):
    reg, fwd = table_graph(backend, address_check_interval=1)
    x = paddle.zeros([4])
    fwd(x=x)
    table, before = reg.buffers.table, reg.buffers.table.data_ptr()
    table.copy_(paddle.full([4, 2], 2.0), False)
    assert table.shape == [4, 2] and table.data_ptr() == before  # reshaped in place: the address survives
    # A device graph would go on reading the captured [8, 2] extent: caught by shape.
    with pytest.raises(AddressStabilityError, match=r"registry buffer 'table' was reshaped from \[8, 2\] to \[4, 2\]"):
        fwd(x=x)
    with pytest.raises(AddressStabilityError, match="buffer 'table' now has shape"):
        reg.buffers.write("table", paddle.ones([2, 2]))


# 9. An exception inside capture ------------------------------------------------------


def fail_once_in_bucket(bucket: int, on_call: int | tuple[int, ...]):
    """``x * 3``, raising on the ``on_call``-th call(s) with ``bucket`` rows (a warmup or the captured run)."""
    calls = itertools.count(1)  # not a dict of ints: graphcap refuses Python values a function changes
    failing = (on_call,) if isinstance(on_call, int) else on_call

    def fwd(*, x):
        if x.shape[0] == bucket:
            if next(calls) in failing:
                raise RuntimeError("device out of memory (simulated)")
        return x * 3

    return fwd


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_inside_capture(backend):
    reg = registry(backend)
    # Calls 1 and 2 with 4 rows are the warmups (the row probe has 3), call 3 the padding
    # check's poisoned run; call 4 is the capture itself: on the static backend the trace
    # of the converted function, then call 5 the trace as written; on the eager backend
    # the replay that verifies it.
    failing = (4, 5) if backend == "static" else 4
    fwd = reg.graphed("t", batch_arg="x")(fail_once_in_bucket(4, on_call=failing))
    x = paddle.arange(3, dtype="float32")
    for _ in range(2):
        assert values(fwd(x=x)) == [0.0, 3.0, 6.0]  # bucket 4: eager from now on
    assert values(fwd(x=x[:2])) == [0.0, 3.0]  # bucket 2 captures and replays
    stats = reg.stats()
    assert stats["capture_failures"] == 1 and stats["eager_fallbacks"] == 2
    assert stats["captures"] == 1 and stats["replays"] == 1 and stats["graphs"] == 1
    [fallback] = stats["fallbacks"]
    assert fallback["graph"] == "t" and fallback["bucket"] == 4 and fallback["calls"] == 2
    assert "device out of memory (simulated)" in fallback["reason"] and THIS_FILE in fallback["reason"]
    assert not hasattr(paddle.Tensor.item, "__graphcap_guarded__")


def test_a_failed_trace_leaves_no_records_in_dy2static():
    # Paddle 3.3.1 keeps per-program records of a trace in global tables keyed by
    # id(program) and drops them only after a successful trace; a later program at
    # the same address then read a dead program's value and crashed the test run.
    from paddle.jit.dy2static.parameter_recorder import _global_inplace_map, _global_parameter_recorder

    def keys() -> list[set]:
        return [set(_global_parameter_recorder.params_dict), set(_global_parameter_recorder.tensor2value),
                set(_global_inplace_map.params_dict)]

    before = keys()
    reg = registry("static")
    fwd = reg.graphed("t", batch_arg="x")(fail_once_in_bucket(4, on_call=(4, 5)))
    x = paddle.arange(3, dtype="float32")
    assert values(fwd(x=x)) == [0.0, 3.0, 6.0]
    assert reg.stats()["capture_failures"] == 1
    assert keys() == before
    assert values(fwd(x=x[:2])) == [0.0, 3.0]  # the next trace reads the same staging buffers
    assert keys() == before and reg.stats()["captures"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_inside_a_warmup_propagates_like_eager(backend):
    reg = registry(backend)
    fwd = reg.graphed("t", batch_arg="x")(fail_once_in_bucket(4, on_call=1))
    x = paddle.arange(4, dtype="float32")  # a full bucket: the warmup is the real call
    with pytest.raises(RuntimeError, match="simulated"):
        fwd(x=x)
    assert values(fwd(x=x)) == [0.0, 3.0, 6.0, 9.0]  # nothing was disabled: the next call captures
    assert reg.stats()["capture_failures"] == 0 and reg.stats()["graphs"] == 1


def test_exception_inside_device_capture_always_ends_capture():
    log: list = []
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(2, 4), num_warmups=1), backend=double_backend(log))
    fwd = reg.graphed("t", batch_arg="x")(fail_once_in_bucket(4, on_call=3))  # 2: poisoned padding, 3: capture
    assert values(fwd(x=paddle.ones([3]))) == [3.0, 3.0, 3.0]
    assert [kind for kind, _ in log] == ["new", "sync", "begin", "end", "reset"]  # ended, then released
    fwd(x=paddle.ones([2]))
    # Capture, the replay that verifies it, then this call's replay.
    assert [kind for kind, _ in log][5:] == ["new", "sync", "begin", "end", "sync", "replay", "replay"]
    assert reg.stats()["capture_failures"] == 1 and reg.stats()["graphs"] == 1


# 10. reset() then replay ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_then_replay(backend):
    reg = registry(backend)
    model = {"w": paddle.ones([2, 2])}

    def fwd(*, x):
        return paddle.matmul(x, model["w"])

    graphed = reg.graphed("t", batch_arg="x")(fwd)
    x = paddle.ones([2, 2])
    assert values(graphed(x=x)) == [2.0] * 4
    model["w"][:] = 3.0  # an in-place weight update, then reset
    reg.reset()
    assert reg.stats()["graphs"] == 0
    assert values(graphed(x=x)) == values(fwd(x=x)) == [6.0] * 4
    assert reg.stats()["captures"] == 2
    model["w"] = paddle.full([2, 2], 5.0)  # a weight reload by rebinding: the graph reads the old tensor
    with pytest.raises(AddressStabilityError, match=r"t\[bucket 2\]: model\['w'\] now holds another Tensor"):
        graphed(x=x)
    reg.reset()
    assert values(graphed(x=x)) == values(fwd(x=x)) == [10.0] * 4
    assert reg.stats()["captures"] == 3 and reg.stats()["graphs"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebinding_reload_recaptures_when_asked(backend):
    reg = registry(backend, on_rebind="recapture")
    model = {"w": paddle.ones([2, 2])}

    def forward(*, x):
        return paddle.matmul(x, model["w"])

    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = paddle.ones([2, 2])
    assert values(graphed(x=x)) == [2.0] * 4
    model["w"] = paddle.full([2, 2], 5.0)
    assert values(graphed(x=x)) == [10.0] * 4
    assert reg.stats()["recaptures"] == 1 and reg.stats()["graphs"] == 1
