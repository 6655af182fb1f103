"""What graphcap guarantees, one finding a test (``graphcap.trust``), each compared with calling the function.

=========================================================  ==============================================
finding                                                    tests
=========================================================  ==============================================
rows that interact, captured from a full bucket, were      test_rows_that_interact_run_padded_calls_eagerly,
replayed padded with wrong results                         test_row_interaction_can_fail_the_capture,
                                                           test_rows_that_interact_from_a_padded_first_call
row-independent padded captures were refused by rounding   test_row_independent_padded_capture_is_kept,
                                                           test_rounding_by_row_count_is_not_a_leak
declared padding rules are honoured, not poisoned          test_declared_padding_rules_are_not_poisoned
a Python value changed after capture was baked in          test_changed_python_value_recaptures,
                                                           test_changed_python_value_eager_or_raise
what no guard sees: caught by the shadow check             test_shadow_check_catches_an_unwatched_change,
                                                           test_shadow_check_of_a_right_graph_passes
a stateful function is still rejected                      test_stateful_function_is_still_rejected,
                                                           test_tolerance_mode_accepts_noise_not_state
coverage says how much work graphs served                  test_coverage_counts_graph_and_eager_calls,
                                                           test_low_coverage_warns_once
tolerance by dtype and magnitude (fp16/bf16 on numpy)      test_tolerance_*
bad configuration                                          test_bad_trust_config_names_field_and_value
=========================================================  ==============================================
"""

from __future__ import annotations

import logging

import numpy as np
import paddle
import pytest

import graphcap
from graphcap import (
    AddressStabilityError,
    CaptureError,
    CaptureRegistry,
    CaptureSafetyError,
    ConfigError,
    GraphConfig,
)
from graphcap.trust import tolerance

BACKENDS = ("eager", "static")


def registry(backend: str, **overrides) -> CaptureRegistry:
    options = dict(use_graph=True, backend=backend, capture_sizes=(1, 2, 4, 8), address_check_interval=1)
    return CaptureRegistry(GraphConfig(**{**options, **overrides}))


def centred(*, x):
    return x - x.mean(axis=0)


def per_row(*, x, w):
    return paddle.matmul(x, w) * 16.0


# Row interaction --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_interact_run_padded_calls_eagerly(backend):
    reg = registry(backend)
    graphed = reg.graphed("centred", batch_arg="x")(centred)
    full = paddle.randn([8, 4])
    np.testing.assert_array_equal(graphed(x=full).numpy(), centred(x=full).numpy())  # captured full
    for rows in (7, 6, 5):
        x = paddle.randn([rows, 4])
        np.testing.assert_array_equal(graphed(x=x).numpy(), centred(x=x).numpy(), err_msg=f"rows={rows}")
    np.testing.assert_array_equal(graphed(x=full).numpy(), centred(x=full).numpy())  # full still replays
    stats = reg.stats()
    reasons = [entry for entry in stats["fallbacks"] if entry["bucket"] == 8]
    assert len(reasons) == 1 and reasons[0]["calls"] == 3
    assert "rows interact" in reasons[0]["reason"] and "output (max difference" in reasons[0]["reason"]
    assert stats["replays"] == 2 and stats["capture_failures"] == 0
    assert stats["coverage"]["centred"] == pytest.approx(2 / 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_interact_from_a_padded_first_call(backend):
    reg = registry(backend)
    graphed = reg.graphed("centred", batch_arg="x")(centred)
    for rows in (6, 5, 8):
        x = paddle.randn([rows, 4])
        np.testing.assert_array_equal(graphed(x=x).numpy(), centred(x=x).numpy(), err_msg=f"rows={rows}")
    assert reg.stats()["replays"] == 1  # only the full call replayed


def test_row_interaction_can_fail_the_capture():
    reg = registry("eager", on_row_interaction="fail")
    graphed = reg.graphed("centred", batch_arg="x")(centred)
    x = paddle.randn([8, 4])
    np.testing.assert_array_equal(graphed(x=x).numpy(), centred(x=x).numpy())
    stats = reg.stats()
    assert stats["capture_failures"] == 1 and stats["replays"] == 0
    assert "rows interact" in stats["fallbacks"][0]["reason"]
    with pytest.raises(CaptureError, match="rows interact"):
        registry("eager", on_row_interaction="fail", on_capture_failure="raise").graphed(
            "centred", batch_arg="x")(centred)(x=x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 8])
def test_row_independent_padded_capture_is_kept(backend, rows):
    # |values| about 40: the magnitude of a trained model's logits, where row-count rounding shows.
    reg = registry(backend)
    w = paddle.randn([16, 16])
    graphed = reg.graphed("per_row", batch_arg="x")(lambda x: per_row(x=x, w=w)) if backend == "eager" else \
        reg.graphed("per_row", batch_arg="x", static_args=["w"])(per_row)
    call = (lambda x: graphed(x=x)) if backend == "eager" else (lambda x: graphed(x=x, w=w))
    x = paddle.randn([rows, 16])
    got, want = call(x).numpy(), per_row(x=x, w=w).numpy()
    assert np.abs(want).max() > 10
    bound = tolerance.bound(want, "float32")
    assert np.abs(got - want).max() <= bound, f"rows={rows}: off by {np.abs(got - want).max()} (bound {bound})"
    stats = reg.stats()
    assert stats["fallbacks"] == [] and stats["replays"] == 1, stats["fallbacks"]


def test_rounding_by_row_count_is_not_a_leak():
    # Rows are independent, but a GEMM over 5 rows may round differently from one over 8: never a leak.
    rng = np.random.default_rng(0)
    w = paddle.to_tensor(rng.standard_normal((128, 512)).astype("float32") * 4)
    reg = registry("eager")
    graphed = reg.graphed("logits", batch_arg="x")(lambda x: paddle.matmul(x, w))
    for rows in (5, 6, 7, 8, 3):
        x = paddle.to_tensor(rng.standard_normal((rows, 128)).astype("float32"))
        got, want = graphed(x=x).numpy(), paddle.matmul(x, w).numpy()
        assert np.abs(got - want).max() <= tolerance.bound(want, "float32")
    assert reg.stats()["fallbacks"] == []


def test_declared_padding_rules_are_not_poisoned():
    # Padding rows must hold slot -1 (the declared rule): poisoning them with real slots would alias rows.
    reg = registry("eager")

    def gather(*, x, slot):
        table = paddle.zeros([8, 4])
        hits = paddle.where((slot >= 0).unsqueeze(-1), x, paddle.zeros_like(x))
        return hits + table.sum() * 0, slot * 1

    graphed = reg.graphed("gather", batch_arg="x", padding={"slot": -1})(gather)
    out, slots = graphed(x=paddle.ones([3, 4]), slot=paddle.to_tensor([0, 1, 2]))
    assert slots.numpy().tolist() == [0, 1, 2] and out.numpy().sum() == 12.0
    assert reg.stats()["fallbacks"] == []


# Python values --------------------------------------------------------------------------
SCALE = 1.0


class Sampler:
    def __init__(self) -> None:
        self.temperature = 2.0
        self.mode = "scale"
        self.flag = True
        self.gain = np.float32(2.0)


def _closure(value: float):
    def forward(*, x):
        return x * value

    def set_value(new: float) -> None:
        nonlocal value
        value = new

    return forward, set_value


def global_scale(*, x):
    return x * SCALE


@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_python_value_recaptures(backend):
    global SCALE
    SCALE = 1.0
    reg = registry(backend, address_check_interval=8)
    sampler, held, flags = Sampler(), Sampler(), Sampler()  # one object each: a reason names its value

    def by_attribute(*, x):
        return x * sampler.temperature

    def by_numpy_scalar(*, x):
        return x * float(held.gain)  # a host read of a NumPy scalar, not of a tensor

    def by_flag_and_string(*, x):
        return x * 3.0 if flags.flag and flags.mode == "scale" else x

    closure, set_closure = _closure(2.0)
    functions = {
        "global": reg.graphed("global", batch_arg="x")(global_scale),
        "attribute": reg.graphed("attribute", batch_arg="x")(by_attribute),
        "closure": reg.graphed("closure", batch_arg="x")(closure),
        "numpy": reg.graphed("numpy", batch_arg="x")(by_numpy_scalar),
        "flag": reg.graphed("flag", batch_arg="x")(by_flag_and_string),
    }
    x = paddle.ones([3])
    before = {name: float(fn(x=x)[0]) for name, fn in functions.items()}
    assert before == {"global": 1.0, "attribute": 2.0, "closure": 2.0, "numpy": 2.0, "flag": 3.0}
    for _ in range(2):
        for fn in functions.values():
            fn(x=x)  # replays; the next change lands on a replay that is not an address-check one
    SCALE, sampler.temperature, held.gain, flags.flag = 3.0, 6.0, np.float32(5.0), False
    set_closure(7.0)
    after = {name: float(fn(x=x)[0]) for name, fn in functions.items()}
    assert after == {"global": 3.0, "attribute": 6.0, "closure": 7.0, "numpy": 5.0, "flag": 1.0}
    stats = reg.stats()
    assert stats["recaptures"] == 5
    reasons = {entry["graph"]: entry["reason"] for entry in stats["recapture_reasons"]}
    assert reasons["global"] == "SCALE was 1.0 at capture and is 3.0 now"
    assert reasons["attribute"] == "sampler.temperature was 2.0 at capture and is 6.0 now"
    assert reasons["closure"] == "value was 2.0 at capture and is 7.0 now"
    assert reasons["numpy"] == "held.gain was 2.0 at capture and is 5.0 now"
    assert reasons["flag"] == "flags.flag was True at capture and is False now"
    flags.mode = "off"
    flags.flag = True
    assert float(functions["flag"](x=x)[0]) == 1.0  # a string changed: recaptured again
    SCALE = 1.0


@pytest.mark.parametrize("policy", ["eager", "raise"])
def test_changed_python_value_eager_or_raise(policy):
    sampler = Sampler()
    reg = registry("static", on_value_change=policy)

    def forward(*, x):
        return x * sampler.temperature

    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = paddle.ones([3])
    assert float(graphed(x=x)[0]) == 2.0
    sampler.temperature = 6.0
    if policy == "raise":
        with pytest.raises(AddressStabilityError, match="sampler.temperature was 2.0 at capture and is 6.0"):
            graphed(x=x)
        return
    assert float(graphed(x=x)[0]) == 6.0
    assert float(graphed(x=x)[0]) == 6.0
    fallbacks = reg.stats()["fallbacks"]
    assert fallbacks[0]["calls"] == 2 and "sampler.temperature was 2.0" in fallbacks[0]["reason"]
    assert reg.stats()["recaptures"] == 0


def test_sync_ranks_refuses_value_recapture():
    with pytest.raises(ConfigError, match="on_value_change"):
        GraphConfig(sync_ranks=True, on_value_change="recapture")
    assert GraphConfig(sync_ranks=True).value_change_policy == "raise"


# Shadow checks -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_shadow_check_catches_an_unwatched_change(backend):
    # No guard sees an element of a NumPy array read with float(): on the static backend the
    # graph bakes 2.0 in; the shadow check finds the replay wrong and returns the eager answer.
    table = np.array([2.0])
    reg = registry(backend, shadow_check_interval=2)

    def forward(*, x):
        with graphcap.allow_host_reads(reason="a host-side table (test)"):
            return x * float(table[0])

    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = paddle.ones([3])
    assert float(graphed(x=x)[0]) == 2.0  # replay 1
    assert float(graphed(x=x)[0]) == 2.0  # replay 2: shadow-checked, right
    table[0] = 5.0
    graphed(x=x)  # replay 3: not checked (on the static backend this one is still 2.0)
    assert float(graphed(x=x)[0]) == 5.0  # replay 4: checked; the eager answer on a mismatch
    assert float(graphed(x=x)[0]) == 5.0  # the graph is disabled from now on
    stats = reg.stats()
    assert stats["shadow_checks"] == 2
    if backend == "eager":  # eager replays re-run Python: nothing to find
        assert stats["shadow_mismatches"] == 0 and stats["fallbacks"] == []
        return
    assert stats["shadow_mismatches"] == 1
    detail = stats["shadow_mismatch_details"][0]
    assert detail["path"] == "output" and detail["difference"] == 3.0 and detail["tolerance"] > 0
    assert "shadow check" in stats["fallbacks"][0]["reason"] and stats["fallbacks"][0]["calls"] == 2
    with pytest.raises(CaptureError, match="shadow check"):
        strict = registry(backend, shadow_check_interval=1, on_capture_failure="raise")
        strict_fn = strict.graphed("t", batch_arg="x")(forward)
        strict_fn(x=x)
        table[0] = 7.0
        strict_fn(x=x)


def test_shadow_check_of_a_right_graph_passes_and_keeps_state_advanced_once():
    reg = registry("static", shadow_check_interval=1)
    seed = reg.buffers.declare("seed", [1], "int64")

    def forward(*, x):
        paddle.assign(seed + 1, output=seed)  # declared state: advanced once per step
        return x * 2.0 + seed.astype("float32")

    graphed = reg.graphed("t", batch_arg="x")(forward)
    for step in range(1, 5):
        out = graphed(x=paddle.ones([3]))
        assert out.numpy().tolist() == [2.0 + step] * 3 and int(seed[0]) == step
    stats = reg.stats()
    assert stats["shadow_checks"] == 4 and stats["shadow_mismatches"] == 0 and stats["coverage"]["t"] == 1.0


# State -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_function_is_still_rejected(backend):
    past = [paddle.zeros([4, 3])]
    reg = registry(backend)

    def decode(*, x):
        past[0] = past[0] + x
        return past[0]

    with pytest.raises(CaptureSafetyError, match="rebinds past"):
        reg.graphed("decode", batch_arg="x")(decode)(x=paddle.ones([4, 3]))


def test_tolerance_mode_accepts_noise_not_state():
    # run_comparison="tolerance" is what a device backend uses (kernels with atomics differ in the
    # last bits run to run): noise at 2.5e-6 of the values passes, a changed result does not.
    def jittery(*, x):
        return x * 40.0 + paddle.rand([4]) * scale[0]  # Paddle's generator: state no scan sees

    scale = [1e-4]
    reg = registry("eager", run_comparison="tolerance")
    graphed = reg.graphed("t", batch_arg="x")(jittery)
    graphed(x=paddle.ones([4]))
    assert reg.stats()["captures"] == 1
    scale[0] = 1.0
    with pytest.raises(CaptureSafetyError, match=r"max difference 0\.\d+ > tolerance 0\.004"):
        registry("eager", run_comparison="tolerance").graphed("t", batch_arg="x")(jittery)(x=paddle.ones([4]))
    scale[0] = 1e-4
    with pytest.raises(CaptureSafetyError, match="compared bitwise"):
        registry("eager").graphed("t", batch_arg="x")(jittery)(x=paddle.ones([4]))


# Coverage --------------------------------------------------------------------------------
def test_coverage_counts_graph_and_eager_calls():
    reg = registry("eager", capture_sizes=(4,))
    graphed = reg.graphed("double", batch_arg="x")(lambda x: x * 2)
    assert reg.stats()["coverage"] == {"double": None}
    for rows in (3, 4, 9, 2, 12):  # 9 and 12 rows exceed the largest bucket
        graphed(x=paddle.ones([rows]))
    assert reg.stats()["coverage"] == {"double": 3 / 5}
    graphed(x=paddle.ones([0]))  # no rows: no work, not counted
    assert reg.stats()["coverage"] == {"double": 3 / 5}


def test_low_coverage_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="graphcap")
    reg = registry("eager", capture_sizes=(4,), coverage_warmup_calls=4, coverage_warn_below=0.5)
    graphed = reg.graphed("double", batch_arg="x")(lambda x: x * 2)
    for _ in range(12):
        graphed(x=paddle.ones([9]))
    warnings = [r.getMessage() for r in caplog.records if "graphs served" in r.getMessage()]
    assert warnings == ["double: graphs served 0% of 4 calls (below coverage_warn_below=0.50); the rest ran "
                        "eagerly: more rows than the largest capture size 4"]


# Tolerances -------------------------------------------------------------------------------
def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as Paddle's .numpy() returns them."""
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _logits(rows: int = 8, vocab: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, vocab)) * 8
    values[:, 7] = 40.0  # one confident token per row: |logit| 10-40
    return values


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tolerance_accepts_row_count_rounding(dtype):
    # Two fp32 computations whose accumulation order differs (measured: up to 2e-5 of the largest logit),
    # each rounded once to the output dtype: rounding, never an error.
    reference = _logits()
    other = reference * (1 + 2e-5 * np.random.default_rng(1).uniform(-1, 1, reference.shape))
    a, b = (_encode(values, dtype) for values in (reference, other))
    assert tolerance.compare(a, b, dtype, bitwise=False) is None
    assert tolerance.compare(a, b, dtype, bitwise=True) is not None or dtype != "float32"


@pytest.mark.parametrize("dtype, error", [("float32", 0.05), ("float16", 1.0), ("bfloat16", 4.0)])
def test_tolerance_rejects_a_real_error(dtype, error):
    # A padding row leaking into a real row moves it by a share of its magnitude; here by 0.1-10% of 40.
    reference = _logits()
    wrong = reference.copy()
    wrong[3] += error
    found = tolerance.compare(_encode(reference, dtype), _encode(wrong, dtype), dtype, bitwise=False)
    assert found is not None
    difference, bound = found
    assert bound == pytest.approx(tolerance.RELATIVE[dtype] * 40.0, rel=1e-2) and difference > bound


def test_tolerance_scales_with_magnitude_not_per_element():
    small = np.array([1e-3, 40.0], dtype=np.float32)
    assert tolerance.compare(small, small + np.float32(1e-3), "float32", bitwise=False) is None  # 1e-3 < 4e-3
    assert tolerance.bound(np.zeros(3), "float16") == pytest.approx(1e-2)  # floored at magnitude 1
    assert tolerance.bound(np.array([np.inf, 2.0]), "float32") == pytest.approx(2e-4)  # infinities ignored
    ints = np.array([1, 2, 3])
    assert tolerance.compare(ints, ints + 1, "int64", bitwise=False) is None  # tokens: not across row counts
    assert tolerance.compare(ints, ints + 1, "int64", bitwise=True) == (1.0, 0.0)


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    return _bf16_bits(values) if dtype == "bfloat16" else values.astype(dtype)


# Configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("shadow_check_interval", -1, "shadow_check_interval=-1 is not allowed; pass an integer >= 0"),
    ("shadow_check_interval", 2.5, "shadow_check_interval=2.5 is not an integer"),
    ("coverage_warn_below", 1.5, "'coverage_warn_below' must be a number in [0, 1] (got 1.5)"),
    ("coverage_warn_below", -0.1, "'coverage_warn_below' must be a number in [0, 1] (got -0.1)"),
    ("coverage_warmup_calls", 0, "coverage_warmup_calls=0 is not allowed; pass an integer >= 1"),
    ("tolerance_scale", 0, "'tolerance_scale' must be a number in (0, inf) (got 0)"),
    ("tolerance_scale", "big", "'tolerance_scale' must be a number in (0, inf) (got 'big')"),
    ("on_row_interaction", "ignore", "'on_row_interaction' must be one of eager_padded, fail (got 'ignore')"),
    ("on_value_change", "warn", "'on_value_change' must be one of auto, recapture, eager, raise (got 'warn')"),
    ("run_comparison", "exact", "'run_comparison' must be one of auto, bitwise, tolerance (got 'exact')"),
])
def test_bad_trust_config_names_field_and_value(field, value, message):
    with pytest.raises(ConfigError) as raised:
        GraphConfig(**{field: value})
    assert message in str(raised.value)


def test_trust_config_from_env():
    config = GraphConfig.from_env({"GRAPHCAP_SHADOW_CHECK_INTERVAL": "100", "GRAPHCAP_TOLERANCE_SCALE": "2.5",
                                   "GRAPHCAP_COVERAGE_WARN_BELOW": "0.9"})
    assert (config.shadow_check_interval, config.tolerance_scale, config.coverage_warn_below) == (100, 2.5, 0.9)
    with pytest.raises(ConfigError, match="GRAPHCAP_TOLERANCE_SCALE must be a number"):
        GraphConfig.from_env({"GRAPHCAP_TOLERANCE_SCALE": "x"})
