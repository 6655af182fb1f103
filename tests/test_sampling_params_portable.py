"""The portable ``build_sampling_params`` kernel (``impl="paddle"``) and ``impl="auto"``.

The portable kernel is the C++ op's semantics from standard Paddle ops, for
XPU and custom devices. Here, on CPU, it is compared bit for bit with the
numpy reference and the C++ op on random batches (both layouts, both moduli,
seeds at the edges of int64), traced by ``paddle.jit.to_static`` and captured
on graphcap's ``static`` backend (one graph serving several real row counts),
run under graphcap's capture guard, and driven by the samplers and the MTP
engine through ``impl="auto"`` on a place the C++ op has no kernel for.
"""

from __future__ import annotations

import logging

import numpy as np
import paddle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphcap import CaptureRegistry, CaptureSafetyError, GraphConfig, capture_guard
from graphcap.errors import OpBuildError, OpInputError
from graphcap.ops import (
    KUNLUN_MAX_INFER_SEED,
    MAX_INFER_SEED,
    build_sampling_params,
    build_sampling_params_into,
    build_sampling_params_reference,
    padding_sampling_params,
    portable,
)
from graphcap.ops import sampling_params as sp

DTYPES = {"top_p": "float32", "top_k": "int64", "infer_seed": "int64", "seq_lens_this_time": "int32",
          "cu_seqlens_q_output": "int32", "seq_lens_encoder": "int32"}
MODULI = [MAX_INFER_SEED, KUNLUN_MAX_INFER_SEED]


def _tensors(arrays: dict) -> dict:
    return {name: paddle.to_tensor(np.asarray(value), dtype=DTYPES[name]) for name, value in arrays.items()}


def _outputs(rows: int, fill: int = 7) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    # Stale values everywhere: every row must be rewritten (real rows or padding).
    return (
        paddle.full([rows, 1], float(fill), dtype="float32"),
        paddle.full([rows, 1], fill, dtype="int64"),
        paddle.full([rows, 1], fill, dtype="int64"),
    )


def _batch(rng: np.random.Generator, batch: int, spare: int, max_seed: int, layout: str, k: int = 4) -> dict:
    """A batch of ``batch`` requests (empty, prefill, decode of 1..k+1 rows) with ``spare`` extra rows of
    per-request inputs (FastDeploy's max-batch tensors); seeds near the modulus, anywhere below it, and
    anywhere in int64 (the op reduces them)."""
    kind = rng.choice(3, size=batch, p=[0.2, 0.3, 0.5])  # 0 empty, 1 prefill, 2 decode
    prompt = rng.integers(2, 300, size=batch)
    decode = rng.integers(1, k + 2, size=batch)
    slt = np.where(kind == 0, 0, np.where(kind == 1, prompt, decode)).astype(np.int32)
    rows = np.where(kind == 0, 0, np.where(kind == 1, 1, decode))
    width = batch + spare
    near = max_seed - rng.integers(1, 4 * (k + 2) + 64, size=width)
    below = rng.integers(0, max_seed, size=width, dtype=np.int64)
    anywhere = rng.integers(-(2**63), 2**63 - 1, size=width, dtype=np.int64, endpoint=True)
    pick = rng.random(width)
    seed = np.where(pick < 0.45, near, np.where(pick < 0.9, below, anywhere)).astype(np.int64)
    arrays = {
        "top_p": rng.random(width).astype(np.float32),
        "top_k": rng.integers(0, 100, size=width).astype(np.int64),
        "infer_seed": seed,
        "seq_lens_this_time": slt,
    }
    if layout == "cu":
        cu = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
        arrays["cu_seqlens_q_output"] = np.concatenate([cu, rng.integers(0, 999, size=spare)]).astype(np.int32)
    else:
        enc = np.where(kind == 1, prompt, 0)
        arrays["seq_lens_encoder"] = np.concatenate([enc, rng.integers(0, 9, size=spare)]).astype(np.int32)
    return {"arrays": arrays, "rows": int(rows.sum())}


def _check_all_kernels(arrays: dict, rows: int, extra: int, increment: int, max_seed: int) -> None:
    """Reference, C++ op and portable kernel agree bit for bit, eager and capture form."""
    capacity = rows + extra
    want = build_sampling_params_reference(**arrays, token_num_output=capacity, increment_value=increment,
                                           max_seed=max_seed)
    for impl in ("custom", "paddle"):
        eager = _tensors(arrays)
        got = build_sampling_params(**eager, token_num_output=capacity, increment_value=increment,
                                    max_seed=max_seed, impl=impl)
        into = _tensors(arrays)
        out = _outputs(capacity)
        got_into = build_sampling_params_into(**into, increment_value=increment, max_seed=max_seed,
                                              out_top_p=out[0], out_top_k=out[1], out_seed=out[2], impl=impl)
        for form, result, state in (("eager", got, eager), ("into", got_into, into)):
            for name, g, w in zip(("top_p", "top_k", "seed"), result, want[:3], strict=True):
                np.testing.assert_array_equal(g.numpy(), w, err_msg=f"{impl} {form} {name}")
            np.testing.assert_array_equal(state["infer_seed"].numpy(), want[3], err_msg=f"{impl} {form} infer_seed")


# ------------------------------------------------------------ random batches


@st.composite
def _cases(draw: st.DrawFn) -> dict:
    max_seed = draw(st.sampled_from(MODULI))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "batch": draw(st.integers(0, 24)),
        "spare": draw(st.integers(0, 3)),
        "max_seed": max_seed,
        "layout": draw(st.sampled_from(["cu", "enc"])),
        "extra": draw(st.integers(0, 5)),
        "increment": draw(st.one_of(st.integers(0, 64), st.integers(0, 2**63 - 1), st.just(max_seed - 1))),
    }


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_portable_equals_reference_and_custom_op_on_random_batches(case):
    rng = np.random.default_rng(case["seed"])
    b = _batch(rng, case["batch"], case["spare"], case["max_seed"], case["layout"])
    _check_all_kernels(b["arrays"], b["rows"], case["extra"], case["increment"], case["max_seed"])


@pytest.mark.parametrize("max_seed", MODULI, ids=["max", "kunlun"])
@pytest.mark.parametrize("layout", ["cu", "enc"])
@pytest.mark.parametrize("batch", [1, 64, 512])
def test_portable_equals_reference_and_custom_op_on_large_batches(batch, layout, max_seed):
    rng = np.random.default_rng(batch * 7 + len(layout))
    b = _batch(rng, batch, spare=5, max_seed=max_seed, layout=layout)
    _check_all_kernels(b["arrays"], b["rows"], extra=3, increment=20, max_seed=max_seed)


@pytest.mark.parametrize("max_seed", MODULI, ids=["max", "kunlun"])
def test_portable_reduces_every_int64_seed_like_the_op(max_seed):
    # The extremes of int64 and both sides of every ladder step's threshold.
    edges = [-(2**63), -(2**63) + 1, -max_seed, -1, 0, 1, max_seed - 1, max_seed, max_seed + 1,
             2 * max_seed if 2 * max_seed < 2**63 else 2**63 - 2, 2**63 - 1]
    arrays = {"top_p": np.full(len(edges), 0.5, np.float32), "top_k": np.arange(len(edges), dtype=np.int64),
              "infer_seed": np.int64(edges), "seq_lens_this_time": np.full(len(edges), 3, np.int32),
              "seq_lens_encoder": np.zeros(len(edges), np.int32)}
    _check_all_kernels(arrays, rows=3 * len(edges), extra=1, increment=2**63 - 1, max_seed=max_seed)


def test_fastdeploy_xpu_op_cases():
    # The cases of FastDeploy's XPU op test (test_build_sampling_params.py), Kunlun modulus.
    m = KUNLUN_MAX_INFER_SEED
    cases = [
        ([0.9, 0.8, 0.7], [50, 40, 30], [100, 200, 300], [4, 3, 2], [0, 0, 0], 16),
        ([0.95, 0.85], [10, 20], [1000, 2000], [5, 7], [5, 7], 8),
        ([0.9, 0.8, 0.7, 0.6], [50, 40, 30, 20], [10, 20, 30, 40], [3, 4, 2, 5], [0, 4, 0, 5], 20),
        ([0.5], [5], [42], [6], [0], 24),
        ([0.9, 0.9], [50, 50], [m - 8, m - 9], [4, 4], [0, 0], 16),
        ([0.9, 0.8, 0.7], [50, 40, 30], [1, 2, 3], [1, 1, 1], [0, 0, 0], 4),
    ]
    for p, k, seed, slt, enc, increment in cases:
        arrays = {"top_p": np.float32(p), "top_k": np.int64(k), "infer_seed": np.int64(seed),
                  "seq_lens_this_time": np.int32(slt), "seq_lens_encoder": np.int32(enc)}
        rows = sum(1 if e > 0 else s for s, e in zip(slt, enc))
        _check_all_kernels(arrays, rows, extra=0, increment=increment, max_seed=m)


def test_rows_past_the_capacity_are_dropped_by_the_portable_kernel_and_refused_by_the_cpu_op():
    # No host read can tell the portable kernel (nor the CUDA one) that the batch
    # needs more rows than the output has: it writes the rows that fit.
    arrays = {"top_p": np.float32([0.9, 0.5]), "top_k": np.int64([5, 6]), "infer_seed": np.int64([100, 200]),
              "seq_lens_this_time": np.int32([3, 2]), "cu_seqlens_q_output": np.int32([0, 3, 5])}
    want = build_sampling_params_reference(**arrays, token_num_output=5, increment_value=4)
    tensors = _tensors(arrays)
    out = _outputs(4)
    build_sampling_params_into(**tensors, increment_value=4, out_top_p=out[0], out_top_k=out[1], out_seed=out[2],
                               impl="paddle")
    np.testing.assert_array_equal(out[2].numpy(), want[2][:4])
    np.testing.assert_array_equal(tensors["infer_seed"].numpy(), want[3])
    with pytest.raises(OpInputError, match="rows_capacity"):
        build_sampling_params_into(**_tensors(arrays), increment_value=4, out_top_p=out[0], out_top_k=out[1],
                                   out_seed=out[2], impl="custom")


def test_empty_batch_pads_every_row_and_moves_no_seed():
    arrays = {"top_p": np.float32([0.9]), "top_k": np.int64([5]), "infer_seed": np.int64([100]),
              "seq_lens_this_time": np.zeros(0, np.int32), "cu_seqlens_q_output": np.int32([0, 9])}
    _check_all_kernels(arrays, rows=0, extra=3, increment=4, max_seed=MAX_INFER_SEED)


# ------------------------------------------------------------ to_static


@pytest.mark.parametrize("max_seed", MODULI, ids=["max", "kunlun"])
@pytest.mark.parametrize("layout", ["cu", "enc"])
def test_one_to_static_program_serves_several_row_counts_bit_exactly(layout, max_seed):
    # Closure tensors stand for an engine's static buffers (max-batch sized, as
    # FastDeploy's are); the program must write them in place on every run,
    # with seeds near 2**63 where Python-int constants would be rounded.
    rng = np.random.default_rng(5)
    capacity, batch, spare = 32, 6, 2  # at most 6 * 5 real rows
    first = _batch(rng, batch, spare, max_seed, layout)["arrays"]
    static = _tensors(first)
    out = _outputs(capacity)
    addresses = [t.data_ptr() for t in (*out, static["infer_seed"])]
    lengths_name = "cu_seqlens_q_output" if layout == "cu" else "seq_lens_encoder"

    def step(top_p, top_k, seq_lens_this_time, lengths):
        return build_sampling_params_into(
            top_p=top_p, top_k=top_k, infer_seed=static["infer_seed"], seq_lens_this_time=seq_lens_this_time,
            **{lengths_name: lengths}, increment_value=12, max_seed=max_seed,
            out_top_p=out[0], out_top_k=out[1], out_seed=out[2], impl="paddle",
        )

    program = paddle.jit.to_static(step, full_graph=True)
    real_rows = set()
    for call in range(5):
        arrays = _batch(rng, batch, spare, max_seed, layout)["arrays"] if call else first
        arrays = {**arrays, "infer_seed": static["infer_seed"].numpy()}
        real_rows.add(_real_rows(arrays))
        want = build_sampling_params_reference(**arrays, token_num_output=capacity, increment_value=12,
                                               max_seed=max_seed)
        # Eager calls of both kernels on their own tensors, the same inputs.
        for impl in ("custom", "paddle"):
            eager = _tensors(arrays)
            got = build_sampling_params(**eager, token_num_output=capacity, increment_value=12, max_seed=max_seed,
                                        impl=impl)
            for g, w in zip(got, want[:3], strict=True):
                np.testing.assert_array_equal(g.numpy(), w)
            np.testing.assert_array_equal(eager["infer_seed"].numpy(), want[3])
        tensors = _tensors({name: arrays[name] for name in ("top_p", "top_k", "seq_lens_this_time", lengths_name)})
        returned = program(tensors["top_p"], tensors["top_k"], tensors["seq_lens_this_time"], tensors[lengths_name])
        for r, o, w in zip(returned, out, want[:3], strict=True):
            np.testing.assert_array_equal(r.numpy(), w)  # what later ops in the program read
            np.testing.assert_array_equal(o.numpy(), w)  # what landed in the static outputs
        np.testing.assert_array_equal(static["infer_seed"].numpy(), want[3])
        assert [t.data_ptr() for t in (*out, static["infer_seed"])] == addresses
    assert len(real_rows) > 1  # one program, several real row counts


def _real_rows(arrays: dict) -> int:
    if "cu_seqlens_q_output" in arrays:
        return int(arrays["cu_seqlens_q_output"][len(arrays["seq_lens_this_time"])])
    enc = arrays["seq_lens_encoder"][: len(arrays["seq_lens_this_time"])]
    return int(np.where(enc > 0, 1, arrays["seq_lens_this_time"]).sum())


@pytest.mark.parametrize("max_seed", MODULI, ids=["max", "kunlun"])
@pytest.mark.parametrize("layout", ["cu", "enc"])
def test_static_backend_graph_serves_several_real_row_counts_like_eager(layout, max_seed):
    registry = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=(8, 16, 32)))
    bufs = registry.buffers
    batch, spare = 5, 3
    lengths_name = "cu_seqlens_q_output" if layout == "cu" else "seq_lens_encoder"
    lengths_rows = batch + spare + (1 if layout == "cu" else 0)
    bufs.declare("top_p", [batch + spare], "float32", pad="keep")
    bufs.declare("top_k", [batch + spare], "int64", pad="keep")
    bufs.declare("infer_seed", [batch + spare], "int64", pad="keep")
    bufs.declare("seq_lens_this_time", [batch], "int32", pad="keep")
    bufs.declare(lengths_name, [lengths_rows], "int32", pad="keep")

    @registry.graphed("sampling_params", batch_arg="logits")
    def step(*, logits):
        rows = logits.shape[0]  # the bucket's rows; the real count is on the device
        p, k, s = build_sampling_params_into(
            top_p=bufs.top_p, top_k=bufs.top_k, infer_seed=bufs.infer_seed,
            seq_lens_this_time=bufs.seq_lens_this_time, **{lengths_name: bufs[lengths_name]},
            increment_value=20, max_seed=max_seed,
            out_top_p=paddle.ones([rows, 1], dtype="float32"), out_top_k=paddle.zeros([rows, 1], dtype="int64"),
            out_seed=paddle.zeros([rows, 1], dtype="int64"), impl="paddle",
        )
        return p.reshape([-1]), k.reshape([-1]), s.reshape([-1])

    rng = np.random.default_rng(11)
    eager_state = None
    rows_per_bucket: dict[int, set] = {}
    for _ in range(12):
        arrays = _batch(rng, batch, spare, max_seed, layout)["arrays"]
        if eager_state is not None:
            arrays["infer_seed"] = eager_state
        for name, value in arrays.items():
            bufs.write(name, value)
        rows = _real_rows(arrays)
        if rows == 0:
            continue
        want = build_sampling_params_reference(**arrays, token_num_output=rows, increment_value=20, max_seed=max_seed)
        eager = _tensors(arrays)  # the same step eagerly, portable kernel, own tensors
        eager_out = build_sampling_params(**eager, token_num_output=rows, increment_value=20, max_seed=max_seed,
                                          impl="paddle")
        got = step(logits=paddle.zeros([rows, 1]))
        for g, e, w in zip(got, eager_out, want[:3], strict=True):
            np.testing.assert_array_equal(g.numpy(), e.numpy().reshape(-1))
            np.testing.assert_array_equal(g.numpy(), w.reshape(-1))
        np.testing.assert_array_equal(bufs.infer_seed.numpy(), eager["infer_seed"].numpy())
        eager_state = eager["infer_seed"].numpy()
        bucket = min(size for size in (8, 16, 32) if size >= rows)
        rows_per_bucket.setdefault(bucket, set()).add(rows)
    stats = registry.stats()
    assert stats["eager_fallbacks"] == 0 and stats["replays"] > 0
    assert stats["graphs"] == len(rows_per_bucket)
    assert max(len(real) for real in rows_per_bucket.values()) > 1  # one graph, several real row counts


# ------------------------------------------------------------ capture guard


@pytest.mark.parametrize("layout", ["cu", "enc"])
def test_portable_kernel_passes_the_capture_guard(layout):
    # Called directly (not through the registered graph-safe op, which the guard
    # trusts wholesale): every host read or value-dependent shape would raise.
    rng = np.random.default_rng(3)
    b = _batch(rng, 16, 2, MAX_INFER_SEED, layout)
    arrays, capacity = b["arrays"], b["rows"] + 4
    want = build_sampling_params_reference(**arrays, token_num_output=capacity, increment_value=8)
    tensors = _tensors(arrays)
    lengths_name = "cu_seqlens_q_output" if layout == "cu" else "seq_lens_encoder"
    out = _outputs(capacity)
    with capture_guard(graph="t", bucket=1):
        got = portable.sampling_params_into(
            top_p=tensors["top_p"], top_k=tensors["top_k"], infer_seed=tensors["infer_seed"],
            seq_lens_this_time=tensors["seq_lens_this_time"], lengths=tensors[lengths_name],
            cu_layout=layout == "cu", increment_value=8, max_seed=MAX_INFER_SEED,
            out_top_p=out[0], out_top_k=out[1], out_seed=out[2],
        )
        # The guard is live: FastDeploy's builder trips it at its first repeat_interleave.
        with pytest.raises(CaptureSafetyError, match="repeat_interleave"):
            padding_sampling_params(**_tensors(arrays))
    for g, w in zip(got, want[:3], strict=True):
        np.testing.assert_array_equal(g.numpy(), w)
    np.testing.assert_array_equal(tensors["infer_seed"].numpy(), want[3])


# ------------------------------------------------------------ impl="auto"


@pytest.fixture
def fresh_auto(monkeypatch):
    """Forget earlier impl="auto" decisions, so this test sees (and logs) its own."""
    monkeypatch.setattr(sp, "_AUTO_CHOICES", {})


def test_auto_uses_the_custom_kernel_on_cpu_and_logs_once(fresh_auto, caplog, monkeypatch):
    calls = []
    monkeypatch.setattr(portable, "sampling_params_into", lambda **kw: calls.append(kw))
    arrays = {"top_p": np.float32([0.9]), "top_k": np.int64([5]), "infer_seed": np.int64([100]),
              "seq_lens_this_time": np.int32([2]), "cu_seqlens_q_output": np.int32([0, 2])}
    tensors = _tensors(arrays)
    with caplog.at_level(logging.INFO, logger="graphcap.ops"):
        for _ in range(3):
            out = _outputs(2)
            build_sampling_params_into(**tensors, increment_value=4, out_top_p=out[0], out_top_k=out[1],
                                       out_seed=out[2])
    assert calls == []  # the C++ op ran
    assert tensors["infer_seed"].numpy().tolist() == [112]
    chosen = [r.getMessage() for r in caplog.records if "impl='auto'" in r.getMessage()]
    assert chosen == ["build_sampling_params: impl='auto' uses the custom C++ kernel on cpu "
                      "(the C++ op's CPU kernel is built)"]


@pytest.mark.parametrize("kind", ["xpu", "custom:npu", "gpu"])
def test_auto_uses_the_portable_kernel_where_the_op_has_no_kernel(fresh_auto, caplog, monkeypatch, kind):
    # No XPU here: the place is simulated. (gpu: this Paddle is not a CUDA build, so the .cu was not compiled.)
    monkeypatch.setattr(sp, "_place_kind", lambda tensor: kind)
    real = portable.sampling_params_into
    calls = []

    def spy(**kwargs):
        calls.append(kwargs["cu_layout"])
        return real(**kwargs)

    monkeypatch.setattr(portable, "sampling_params_into", spy)
    arrays = {"top_p": np.float32([0.9, 0.5, 0.1]), "top_k": np.int64([5, 6, 7]),
              "infer_seed": np.int64([MAX_INFER_SEED - 1, 200, 300]), "seq_lens_this_time": np.int32([2, 1]),
              "seq_lens_encoder": np.int32([0, 0, 4])}
    want = build_sampling_params_reference(**arrays, token_num_output=4, increment_value=8)
    tensors = _tensors(arrays)
    with caplog.at_level(logging.INFO, logger="graphcap.ops"):
        got = build_sampling_params(**tensors, token_num_output=4, increment_value=8)
    assert calls == [False]
    for g, w in zip(got, want[:3], strict=True):
        np.testing.assert_array_equal(g.numpy(), w)
    np.testing.assert_array_equal(tensors["infer_seed"].numpy(), want[3])
    assert any(f"portable Paddle-ops kernel on {kind}" in r.getMessage() for r in caplog.records)


def test_auto_falls_back_to_the_portable_kernel_when_the_op_cannot_be_built(fresh_auto, caplog, monkeypatch):
    def no_compiler():
        raise OpBuildError("no C++ compiler found")

    monkeypatch.setattr(sp, "load_ops", no_compiler)
    with caplog.at_level(logging.INFO, logger="graphcap.ops"):
        assert sp.resolve_impl("auto", paddle.ones([1])) == "paddle"
    assert any(r.levelno == logging.WARNING and "no C++ compiler" in r.getMessage() for r in caplog.records)


def test_impl_must_be_auto_custom_or_paddle():
    arrays = {"top_p": np.float32([0.9]), "top_k": np.int64([5]), "infer_seed": np.int64([100]),
              "seq_lens_this_time": np.int32([1]), "cu_seqlens_q_output": np.int32([0, 1])}
    with pytest.raises(OpInputError, match="impl must be one of .*'auto'.*got 'cuda'"):
        build_sampling_params(**_tensors(arrays), token_num_output=1, increment_value=4, impl="cuda")


def test_explicit_custom_and_paddle_are_never_rerouted(monkeypatch):
    monkeypatch.setattr(sp, "_place_kind", lambda tensor: "xpu")
    assert sp.resolve_impl("custom", paddle.ones([1])) == "custom"
    assert sp.resolve_impl("paddle", paddle.ones([1])) == "paddle"


# ------------------------------------------- samplers and the MTP engine ("auto")


def test_the_mtp_engine_on_a_place_without_the_op_gives_the_same_tokens_and_seeds(fresh_auto, monkeypatch):
    from graphcap.models.corpus import make_prompts
    from graphcap.models.tiny_lm import load_tiny_lm
    from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions

    requests = [Request(prompt=prompt, max_new_tokens=8, seed=MAX_INFER_SEED - 9 - i, top_p=0.8, top_k=16)
                for i, prompt in enumerate(make_prompts(4, seed=3))]

    def run(config):
        engine = MTPEngine(config, max_batch=4, bundle=load_tiny_lm(4), sampling=SamplingOptions(greedy=False))
        tokens, _ = engine.generate(requests)
        return tokens, engine.infer_seed(), engine.stats()

    want_tokens, want_seeds, _ = run(GraphConfig(use_graph=False, num_speculative_tokens=2))

    real_params, real_uniform = portable.sampling_params_into, portable.seeded_uniform
    calls: dict[str, int] = {"params": 0, "uniform": 0}

    def params_spy(**kwargs):
        calls["params"] += 1
        return real_params(**kwargs)

    def uniform_spy(seed):
        calls["uniform"] += 1
        return real_uniform(seed)

    # The samplers pass impl="auto"; on a simulated XPU place both of their kernels
    # (sampling params and the seeded uniform) take the portable Paddle-ops form.
    monkeypatch.setattr(sp, "_place_kind", lambda tensor: "xpu")
    monkeypatch.setattr(portable, "sampling_params_into", params_spy)
    monkeypatch.setattr(portable, "seeded_uniform", uniform_spy)
    for config in (GraphConfig(use_graph=False, num_speculative_tokens=2),
                   GraphConfig(use_graph=True, backend="static", num_speculative_tokens=2, max_capture_size=4)):
        calls.update(params=0, uniform=0)
        tokens, seeds, stats = run(config)
        assert calls["params"] and calls["uniform"]  # no custom op in the sampling path
        assert tokens == want_tokens and seeds == want_seeds
        if config.use_graph:
            assert stats["replays"] > 0 and stats["eager_fallbacks"] == 0


# ------------------------------------------------------------ seeded uniform


def test_portable_seeded_uniform_is_bit_identical_to_the_op_and_the_reference():
    from graphcap.ops.sampler import seeded_uniform, seeded_uniform_reference

    rng = np.random.default_rng(11)
    extremes = np.array([0, 1, -1, 2**63 - 1, -(2**63), MAX_INFER_SEED, 2147483646], dtype=np.int64)
    seeds = np.concatenate([rng.integers(-(2**63), 2**63 - 1, size=4096, dtype=np.int64), extremes])
    tensor = paddle.to_tensor(seeds)
    want = seeded_uniform_reference(seeds)
    np.testing.assert_array_equal(seeded_uniform(tensor, impl="paddle").numpy(), want)
    np.testing.assert_array_equal(seeded_uniform(tensor, impl="custom").numpy(), want)
    out = paddle.zeros([seeds.size], dtype="float32")

    def traced() -> None:
        paddle.assign(seeded_uniform(tensor, impl="paddle"), output=out)

    paddle.jit.to_static(traced, full_graph=True)()
    np.testing.assert_array_equal(out.numpy(), want)  # the same bits inside a trace
