"""build_sampling_params: golden cases, reference sweep, in-place seeds, capture form, errors.

Each case runs both kernels (``impl="custom"``, the C++ op, and
``impl="paddle"``, the portable Paddle-ops kernel) where they promise the
same thing. The op is built by ``make op`` before the tests run; the tests
only load it.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap.errors import OpBuildError, OpInputError, StaticBufferError
from graphcap.ops import (
    KUNLUN_MAX_INFER_SEED,
    MAX_INFER_SEED,
    build,
    build_sampling_params,
    build_sampling_params_into,
    build_sampling_params_reference,
    library_path,
    load_ops,
    padding_sampling_params,
)
from graphcap.ops._loader import _find_compiler
from graphcap.trust.graph_safe_ops import graph_safe_ops, is_graph_safe_op


def _t(values, dtype: str) -> paddle.Tensor:
    return paddle.to_tensor(np.asarray(values), dtype=dtype)


def _inputs(top_p, top_k, seed, slt, cu=None, enc=None) -> dict:
    kwargs = {
        "top_p": _t(top_p, "float32"),
        "top_k": _t(top_k, "int64"),
        "infer_seed": _t(seed, "int64"),
        "seq_lens_this_time": _t(slt, "int32"),
    }
    if cu is not None:
        kwargs["cu_seqlens_q_output"] = _t(cu, "int32")
    if enc is not None:
        kwargs["seq_lens_encoder"] = _t(enc, "int32")
    return kwargs


def _flat(t: paddle.Tensor) -> list:
    return t.numpy().reshape(-1).tolist()


IMPLS = ["custom", "paddle"]


# ---------------------------------------------------------------- golden cases


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_gpu_layout(impl):
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], cu=[0, 2, 3])
    p, k, s = build_sampling_params(impl=impl, **kw, token_num_output=3, increment_value=1)
    assert p.shape == [3, 1] and k.shape == [3, 1] and s.shape == [3, 1]
    assert (p.dtype, k.dtype, s.dtype) == (paddle.float32, paddle.int64, paddle.int64)
    np.testing.assert_array_equal(p.numpy().reshape(-1), np.float32([0.9, 0.9, 0.5]))
    assert _flat(k) == [50, 50, 10]
    assert _flat(s) == [100, 104, 200]
    assert _flat(kw["infer_seed"]) == [101, 201]


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_encoder_layout(impl):
    kw = _inputs([0.9, 0.8, 0.7], [1, 2, 3], [100, 200, 300], [4, 3, 2], enc=[0, 0, 0])
    p, k, s = build_sampling_params(impl=impl,
        **kw, token_num_output=9, increment_value=16, max_seed=KUNLUN_MAX_INFER_SEED
    )
    assert _flat(s) == [100, 104, 108, 112, 200, 204, 208, 300, 304]
    np.testing.assert_array_equal(p.numpy().reshape(-1), np.float32([0.9] * 4 + [0.8] * 3 + [0.7] * 2))
    assert _flat(k) == [1] * 4 + [2] * 3 + [3] * 2
    assert _flat(kw["infer_seed"]) == [116, 216, 316]


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_encoder_layout_wraps_at_kunlun_max(impl):
    m = KUNLUN_MAX_INFER_SEED
    kw = _inputs([0.9, 0.8], [1, 2], [m - 8, m - 9], [4, 4], enc=[0, 0])
    _, _, s = build_sampling_params(impl=impl, **kw, token_num_output=8, increment_value=16, max_seed=m)
    assert _flat(s) == [2147483638, 2147483642, 0, 4, 2147483637, 2147483641, 2147483645, 3]
    assert _flat(kw["infer_seed"]) == [8, 7]


@pytest.mark.parametrize("impl", IMPLS)
def test_prefill_request_gets_one_row_in_encoder_layout(impl):
    # request 0 prefills (enc > 0): one row with its seed; request 1 is an empty slot.
    kw = _inputs([0.3, 0.4, 0.5], [7, 8, 9], [10, 20, 30], [57, 0, 2], enc=[57, 0, 0])
    p, k, s = build_sampling_params(impl=impl, **kw, token_num_output=3, increment_value=4)
    assert _flat(k) == [7, 9, 9]
    assert _flat(s) == [10, 30, 34]
    assert _flat(kw["infer_seed"]) == [14, 24, 34]


@pytest.mark.parametrize("impl", IMPLS)
def test_seed_arithmetic_is_exact_near_int64_max(impl):
    m = MAX_INFER_SEED
    seeds = [m - 1, m - 4, m - 5]
    kw = _inputs([1.0] * 3, [0] * 3, seeds, [3, 2, 1], cu=[0, 3, 5, 6])
    _, _, s = build_sampling_params(impl=impl, **kw, token_num_output=6, increment_value=64)
    assert _flat(s) == [m - 1, 3, 7, m - 4, 0, m - 5]
    assert _flat(kw["infer_seed"]) == [(x + 64) % m for x in seeds]


# ------------------------------------------------------------ reference sweep


def _random_batch(rng: np.random.Generator, batch: int, max_seed: int, k: int) -> dict:
    kind = rng.choice(3, size=batch, p=[0.2, 0.3, 0.5])  # 0 empty, 1 prefill, 2 decode
    prompt = rng.integers(2, 300, size=batch)
    decode = rng.integers(1, k + 2, size=batch)
    slt = np.where(kind == 0, 0, np.where(kind == 1, prompt, decode)).astype(np.int32)
    enc = np.where(kind == 1, prompt, 0).astype(np.int32)
    rows = np.where(kind == 0, 0, np.where(kind == 1, 1, decode))
    cu = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    near_max = max_seed - rng.integers(1, 4 * (k + 2) + 64, size=batch)
    anywhere = rng.integers(0, max_seed, size=batch, dtype=np.int64)
    seed = np.where(rng.random(batch) < 0.5, near_max, anywhere).astype(np.int64)
    return {
        "top_p": rng.random(batch).astype(np.float32),
        "top_k": rng.integers(0, 100, size=batch).astype(np.int64),
        "infer_seed": seed,
        "seq_lens_this_time": slt,
        "cu": cu,
        "enc": enc,
        "rows": int(rows.sum()),
    }


def _sweep_cases() -> list[tuple[int, int, int, int, str]]:
    rng = np.random.default_rng(2024)
    cases = []
    for i in range(24):
        batch = [1, 512][i] if i < 2 else int(rng.integers(1, 513))
        cases.append(
            (
                i,
                batch,
                [MAX_INFER_SEED, KUNLUN_MAX_INFER_SEED][i % 2],
                int(rng.integers(0, 65)),
                ["cu", "enc"][(i // 2) % 2],
            )
        )
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case,batch,max_seed,increment,layout", _sweep_cases())
def test_matches_reference_on_random_batches(case, batch, max_seed, increment, layout, impl):
    rng = np.random.default_rng(case)
    b = _random_batch(rng, batch, max_seed, k=int(rng.integers(0, 5)))
    lengths = {"cu_seqlens_q_output": b["cu"]} if layout == "cu" else {"seq_lens_encoder": b["enc"]}
    common = {k: b[k] for k in ("top_p", "top_k", "infer_seed", "seq_lens_this_time")}
    extra = int(rng.integers(0, 8))  # eager form with spare rows -> padding
    want = build_sampling_params_reference(
        **common, **lengths, token_num_output=b["rows"] + extra, increment_value=increment, max_seed=max_seed
    )
    dtypes = {"top_p": "float32", "top_k": "int64", "infer_seed": "int64", "seq_lens_this_time": "int32"}
    tensors = {k: _t(v, dtypes[k]) for k, v in common.items()}
    tensors.update({k: _t(v, "int32") for k, v in lengths.items()})
    got = build_sampling_params(impl=impl,
        **tensors, token_num_output=b["rows"] + extra, increment_value=increment, max_seed=max_seed
    )
    for g, w in zip(got, want[:3], strict=True):
        np.testing.assert_array_equal(g.numpy(), w)
    np.testing.assert_array_equal(tensors["infer_seed"].numpy(), want[3])


# ------------------------------------------- FastDeploy's legacy builder (baseline)


def _away_from_the_top(b: dict, rng: np.random.Generator) -> dict:
    # Seeds far below 2**63: FastDeploy's `seed + 4*j` cannot overflow there.
    return {**b, "infer_seed": rng.integers(0, 2**62, size=b["infer_seed"].shape[0]).astype(np.int64)}


@pytest.mark.parametrize("layout", ["cu", "enc"])
def test_legacy_builder_matches_op_rows_away_from_the_top(layout):
    rng = np.random.default_rng(7)
    b = _away_from_the_top(_random_batch(rng, 64, MAX_INFER_SEED, k=3), rng)
    lengths = {"cu": b["cu"]} if layout == "cu" else {"enc": b["enc"]}
    kw = _inputs(b["top_p"], b["top_k"], b["infer_seed"], b["seq_lens_this_time"], **lengths)
    legacy_seed = kw["infer_seed"].clone()
    legacy = padding_sampling_params(**{**kw, "infer_seed": legacy_seed}, increment_value=16, advance_seed=True)
    got = build_sampling_params(**kw, token_num_output=b["rows"], increment_value=16)
    assert legacy[0].shape == [b["rows"], 1]  # exactly the real rows: a value-dependent shape
    for g, w in zip(got, legacy, strict=True):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    np.testing.assert_array_equal(legacy_seed.numpy(), kw["infer_seed"].numpy())


def test_legacy_builder_seed_sum_overflows_near_int64_max_where_the_op_is_exact():
    # FastDeploy's builder adds 4*j to the seed before reducing: near 2**63 the
    # int64 sum wraps, and row 1 of this request repeats row 0's seed.
    m = MAX_INFER_SEED
    kw = _inputs([1.0], [0], [m - 1], [3], enc=[0])
    _, _, legacy = padding_sampling_params(**kw)
    _, _, exact = build_sampling_params(**_inputs([1.0], [0], [m - 1], [3], enc=[0]), token_num_output=3,
                                        increment_value=4)
    wrapped = [((m - 1 + 4 * j + 2**63) % 2**64 - 2**63) % m for j in range(3)]  # int64 wrap, then floor mod
    assert _flat(legacy) == wrapped == [m - 1, m - 1, 3]
    assert _flat(exact) == [m - 1, 3, 7]


def test_legacy_builder_leaves_seed_alone_by_default():
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], cu=[0, 2, 3])
    _, _, s = padding_sampling_params(**kw, increment_value=1)
    assert _flat(s) == [100, 104, 200]
    assert _flat(kw["infer_seed"]) == [100, 200]


def test_legacy_builder_slices_max_batch_inputs_like_fastdeploy():
    # FastDeploy passes top_p / top_k / infer_seed / seq_lens_encoder sized to the maximum batch.
    kw = _inputs([0.9, 0.5, 0.3, 0.1], [50, 10, 5, 1], [100, 200, 300, 400], [2, 1], enc=[0, 0, 7, 7])
    p, k, s = padding_sampling_params(**kw, increment_value=4, advance_seed=True)
    assert _flat(k) == [50, 50, 10] and _flat(s) == [100, 104, 200]
    assert _flat(kw["infer_seed"]) == [104, 204, 300, 400]


# ------------------------------------------------------- FastDeploy's calling convention


def _max_batch_inputs(layout: str, spare: int) -> dict:
    """B = 3 requests, per-request inputs with ``spare`` rows more (FastDeploy's max-batch buffers)."""
    p = [0.9, 0.5, 0.7] + [0.25] * spare
    k = [5, 6, 7] + [99] * spare
    seed = [100, 200, MAX_INFER_SEED - 2] + [1000 + i for i in range(spare)]
    if layout == "cu":
        return _inputs(p, k, seed, [2, 1, 3], cu=[0, 2, 3, 6] + [77] * spare)
    return _inputs(p, k, seed, [2, 40, 3], enc=[0, 40, 0] + [5] * spare)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["cu", "enc"])
@pytest.mark.parametrize("form", ["eager", "into"])
def test_more_rows_than_the_batch_use_the_first_b_and_leave_the_rest(impl, layout, form):
    kw = _max_batch_inputs(layout, spare=4)
    exact = {name: t.numpy()[: 4 if name == "cu_seqlens_q_output" else 3] for name, t in kw.items()}
    rows = 6 if layout == "cu" else 6  # cu: 2 + 1 + 3; enc: 2 + 1 (prefill) + 3
    want = build_sampling_params_reference(**exact, token_num_output=rows + 2, increment_value=8)
    seed = kw["infer_seed"]
    address = seed.data_ptr()
    if form == "eager":
        got = build_sampling_params(impl=impl, **kw, token_num_output=rows + 2, increment_value=8)
    else:
        out = _out_buffers(rows + 2)
        got = build_sampling_params_into(impl=impl, **kw, increment_value=8, out_top_p=out[0], out_top_k=out[1],
                                         out_seed=out[2])
    for g, w in zip(got, want[:3], strict=True):
        np.testing.assert_array_equal(g.numpy(), w)
    assert _flat(seed) == want[3].tolist() + [1000, 1001, 1002, 1003]  # rows past B untouched
    assert seed.data_ptr() == address


FEWER_ROWS = [
    ("top_p", {"top_p": _t([0.9, 0.5], "float32")}, "top_p has 2 rows .* B = 3 .* at least B = 3 rows of top_p"),
    ("top_k", {"top_k": _t([5], "int64")}, "top_k has 1 rows .* B = 3 .* at least B = 3 rows of top_k"),
    ("infer_seed", {"infer_seed": _t([1, 2], "int64")}, "infer_seed has 2 rows .* at least B = 3 rows"),
    ("cu", {"cu_seqlens_q_output": _t([0, 2, 3], "int32")},
     "cu_seqlens_q_output has 3 rows .* B = 3 .* at least B \\+ 1 = 4 rows of cu_seqlens_q_output"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("label,change,message", FEWER_ROWS, ids=[f[0] for f in FEWER_ROWS])
def test_fewer_rows_than_the_batch_raise_naming_the_argument_sizes_and_fix(impl, label, change, message):
    kw = {**_max_batch_inputs("cu", spare=0), **change}
    before = kw["infer_seed"].numpy().copy()
    with pytest.raises(OpInputError, match=message):
        build_sampling_params(impl=impl, **kw, token_num_output=8, increment_value=1)
    np.testing.assert_array_equal(kw["infer_seed"].numpy(), before)
    with pytest.raises(OpInputError, match=message):
        build_sampling_params_reference(**{k: v.numpy() for k, v in kw.items()}, token_num_output=8,
                                        increment_value=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_fewer_encoder_lengths_than_the_batch_raise(impl):
    kw = {**_max_batch_inputs("enc", spare=0), "seq_lens_encoder": _t([0, 40], "int32")}
    with pytest.raises(OpInputError, match="seq_lens_encoder has 2 rows .* at least B = 3 rows"):
        build_sampling_params(impl=impl, **kw, token_num_output=8, increment_value=1)


# ------------------------------------------------------------ in place / capture


@pytest.mark.parametrize("impl", IMPLS)
def test_infer_seed_updated_in_place_same_address(impl):
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], cu=[0, 2, 3])
    seed = kw["infer_seed"]
    address = seed.data_ptr()
    for step in range(3):
        build_sampling_params(impl=impl, **kw, token_num_output=3, increment_value=4)
        assert seed.data_ptr() == address
        assert _flat(seed) == [100 + 4 * (step + 1), 200 + 4 * (step + 1)]


def _out_buffers(rows: int, fill: int = 7) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    return (
        paddle.full([rows, 1], float(fill), dtype="float32"),
        paddle.full([rows, 1], fill, dtype="int64"),
        paddle.full([rows, 1], fill, dtype="int64"),
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["cu", "enc"])
def test_capture_form_pads_rows_past_real_count(layout, impl):
    lengths = {"cu": [0, 2, 3]} if layout == "cu" else {"enc": [0, 5]}
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 5], **lengths)
    out_p, out_k, out_s = _out_buffers(6)  # stale 7s must not survive in padding rows
    addresses = [t.data_ptr() for t in (out_p, out_k, out_s)]
    p, k, s = build_sampling_params_into(impl=impl,
        **kw, increment_value=8, out_top_p=out_p, out_top_k=out_k, out_seed=out_s
    )
    assert [t.data_ptr() for t in (out_p, out_k, out_s)] == addresses
    assert [t.data_ptr() for t in (p, k, s)] == addresses
    np.testing.assert_array_equal(out_p.numpy().reshape(-1), np.float32([0.9, 0.9, 0.5, 1.0, 1.0, 1.0]))
    assert _flat(out_k) == [50, 50, 10, 0, 0, 0]
    assert _flat(out_s) == [100, 104, 200, 0, 0, 0]
    assert _flat(kw["infer_seed"]) == [108, 208]


@pytest.mark.parametrize("impl", IMPLS)
def test_capture_form_row_count_follows_device_tensor(impl):
    # Same out buffers, different real row counts: only cu changes.
    out = _out_buffers(5)
    seed = _t([0, 0], "int64")
    for cu, want in (
        ([0, 1, 2], [0, 0, 0, 0, 0]),
        ([0, 3, 5], [8, 12, 16, 8, 12]),
        ([0, 0, 1], [16, 0, 0, 0, 0]),
    ):
        build_sampling_params_into(impl=impl,
            top_p=_t([0.5, 0.5], "float32"),
            top_k=_t([1, 1], "int64"),
            infer_seed=seed,
            seq_lens_this_time=_t(np.diff(cu), "int32"),
            cu_seqlens_q_output=_t(cu, "int32"),
            increment_value=8,
            out_top_p=out[0],
            out_top_k=out[1],
            out_seed=out[2],
        )
        assert _flat(out[2]) == want


@pytest.mark.parametrize("impl", IMPLS)
def test_runs_inside_to_static_and_updates_callers_seed(impl):
    # Closure tensors stand for an engine's static buffers: the program must
    # write them in place, like a replayed graph would.
    seed = _t([100, 200], "int64")
    out_p, out_k, out_s = _out_buffers(4)
    seed_address = seed.data_ptr()

    def step(top_p, top_k, slt, cu):
        return build_sampling_params_into(impl=impl,
            top_p=top_p,
            top_k=top_k,
            infer_seed=seed,
            seq_lens_this_time=slt,
            cu_seqlens_q_output=cu,
            increment_value=4,
            out_top_p=out_p,
            out_top_k=out_k,
            out_seed=out_s,
        )

    program = paddle.jit.to_static(step, full_graph=True)
    args = (_t([0.9, 0.5], "float32"), _t([50, 10], "int64"), _t([2, 1], "int32"))
    _, _, s1 = program(*args, _t([0, 2, 3], "int32"))
    assert _flat(s1) == [100, 104, 200, 0]
    assert _flat(out_s) == [100, 104, 200, 0]
    assert _flat(seed) == [104, 204]
    _, _, s2 = program(*args, _t([0, 1, 3], "int32"))  # new row split, same program
    assert _flat(s2) == [104, 204, 208, 0]
    assert _flat(out_k) == [50, 10, 10, 0]
    assert _flat(seed) == [108, 208]
    assert seed.data_ptr() == seed_address


@pytest.mark.parametrize("impl", IMPLS)
def test_eager_form_inside_to_static_updates_callers_seed(impl):
    seed = _t([1, 2], "int64")

    def step(top_p, top_k, slt, enc):
        return build_sampling_params(impl=impl,
            top_p=top_p,
            top_k=top_k,
            infer_seed=seed,
            seq_lens_this_time=slt,
            seq_lens_encoder=enc,
            token_num_output=3,
            increment_value=5,
        )

    program = paddle.jit.to_static(step, full_graph=True)
    _, _, s = program(
        _t([0.9, 0.5], "float32"), _t([5, 6], "int64"), _t([2, 9], "int32"), _t([0, 9], "int32")
    )
    assert _flat(s) == [1, 5, 2]
    assert _flat(seed) == [6, 7]


def test_capture_form_is_registered_graph_safe():
    assert is_graph_safe_op("build_sampling_params")
    entry = graph_safe_ops()["build_sampling_params"]
    assert set(entry.inplace) == {"infer_seed", "out_top_p", "out_top_k", "out_seed"}


def test_library_is_cached_and_not_rebuilt():
    load_ops()
    assert library_path().exists()
    path, seconds = build()  # sources unchanged: reuses the cached library
    assert path == library_path() and seconds == 0.0


def test_missing_compiler_raises_op_build_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(OpBuildError, match="no C\\+\\+ compiler"):
        _find_compiler()


# --------------------------------------------------------------------- errors


def _good() -> dict:
    return _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], cu=[0, 2, 3])


# Dtype and shape errors come from both kernels; value errors (a host read on
# a device) only from the C++ CPU kernel: the portable and CUDA kernels cannot
# check values without a sync and drop rows past the capacity instead.
BOTH, CUSTOM = IMPLS, ["custom"]
BAD_INPUTS = [
    ("top_k dtype", {"top_k": _t([50, 10], "int32")}, "top_k", BOTH),
    ("top_p dtype", {"top_p": _t([0.9, 0.5], "float64")}, "top_p", BOTH),
    ("infer_seed dtype", {"infer_seed": _t([1, 2], "int32")}, "infer_seed", BOTH),
    ("slt dtype", {"seq_lens_this_time": _t([2, 1], "int64")}, "seq_lens_this_time", BOTH),
    ("cu dtype", {"cu_seqlens_q_output": _t([0, 2, 3], "int64")}, "cu_seqlens_q_output", BOTH),
    ("top_p rank", {"top_p": paddle.ones([2, 2, 1])}, "top_p", BOTH),
    ("infer_seed length", {"infer_seed": _t([1], "int64")}, "infer_seed", BOTH),
    ("top_k length", {"top_k": _t([1], "int64")}, "top_k", BOTH),
    ("cu length", {"cu_seqlens_q_output": _t([0, 3], "int32")}, "cu_seqlens_q_output", BOTH),
    ("cu not monotone", {"cu_seqlens_q_output": _t([0, 2, 1], "int32")}, "cu_seqlens_q_output", CUSTOM),
    ("cu start", {"cu_seqlens_q_output": _t([1, 2, 3], "int32")}, "cu_seqlens_q_output[0]", CUSTOM),
    ("cu past N", {"cu_seqlens_q_output": _t([0, 2, 4], "int32")}, "token_num_output", CUSTOM),
    ("negative slt", {"seq_lens_this_time": _t([2, -1], "int32")}, "seq_lens_this_time[1]", CUSTOM),
]
BAD_CASES = [(label, change, name, impl) for label, change, name, impls in BAD_INPUTS for impl in impls]


@pytest.mark.parametrize("label,change,name,impl", BAD_CASES, ids=[f"{b[0]}-{b[3]}" for b in BAD_CASES])
def test_bad_inputs_raise_naming_the_input(label, change, name, impl):
    kw = {**_good(), **change}
    before = kw["infer_seed"].numpy().copy()
    with pytest.raises(StaticBufferError, match=name.replace("[", r"\[").replace("]", r"\]")):
        build_sampling_params(impl=impl, **kw, token_num_output=3, increment_value=1)
    # Checks run before any write: the seeds are untouched.
    np.testing.assert_array_equal(kw["infer_seed"].numpy(), before)


def test_negative_encoder_length_names_seq_lens_encoder():
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], enc=[0, -3])
    with pytest.raises(StaticBufferError, match=r"seq_lens_encoder\[1\]"):
        build_sampling_params(**kw, token_num_output=3, increment_value=1)


@pytest.mark.parametrize("lengths", [{}, {"cu": [0, 2, 3], "enc": [0, 0]}], ids=["neither", "both"])
def test_layout_needs_exactly_one_of_cu_and_encoder(lengths):
    kw = _inputs([0.9, 0.5], [50, 10], [100, 200], [2, 1], **lengths)
    with pytest.raises(StaticBufferError, match="cu_seqlens_q_output.*seq_lens_encoder"):
        build_sampling_params(**kw, token_num_output=3, increment_value=1)
    with pytest.raises(StaticBufferError, match="cu_seqlens_q_output.*seq_lens_encoder"):
        build_sampling_params_reference(
            **{k: v.numpy() for k, v in kw.items()}, token_num_output=3, increment_value=1
        )


def test_token_num_output_must_be_a_host_int():
    with pytest.raises(StaticBufferError, match="token_num_output"):
        build_sampling_params(**_good(), token_num_output=_t(3, "int64"), increment_value=1)


def test_capture_form_rejects_too_small_capacity_and_bad_outputs():
    out_p, out_k, out_s = _out_buffers(2)
    with pytest.raises(StaticBufferError, match="rows_capacity"):
        build_sampling_params_into(
            **_good(), increment_value=1, out_top_p=out_p, out_top_k=out_k, out_seed=out_s
        )
    out_p, out_k, _ = _out_buffers(4)
    with pytest.raises(StaticBufferError, match="out_seed"):
        build_sampling_params_into(
            **_good(), increment_value=1, out_top_p=out_p, out_top_k=out_k, out_seed=paddle.zeros([4, 1])
        )
    with pytest.raises(StaticBufferError, match="out_top_k"):
        build_sampling_params_into(
            **_good(),
            increment_value=1,
            out_top_p=out_p,
            out_top_k=paddle.zeros([3, 1], dtype="int64"),
            out_seed=paddle.zeros([4, 1], dtype="int64"),
        )


def test_max_seed_must_be_positive():
    with pytest.raises(StaticBufferError, match="max_seed"):
        build_sampling_params(**_good(), token_num_output=3, increment_value=1, max_seed=0)
