"""Padded captures of a PaddleFormers Llama at trained-model logit magnitudes (issue 17, item 1).

A randomly initialised Llama has logits near zero, where GEMM rounding by row
count is invisible. A trained model's logits reach 10-40, and there a bucket
run with padding rows rounds its real rows differently from the same rows run
alone (by ~1e-5 relative); a padding check that calls that difference
"padding changes the result" rejects the capture and the bucket runs eagerly.

Here ``scaled_llama`` multiplies the 2-D weights of the tiny Llama (hidden
128, 4 layers) by 4, 8 or 16 (norms untouched), which gives max |logit| about
10, 20 and 40. For every row count 1..16 over capture sizes (1, 2, 4, 8, 16)
the *first* decode call of its bucket has that many rows, so buckets 4, 8 and
16 are captured padded (3 rows; 5-7; 9-15). Each such capture must be kept
(no fallback, no capture failure) and the greedy tokens must equal graphs off
token for token. A bucket captured full and then replayed padded must equal
graphs off too.

Runtime: one ``GraphedCausalLM`` per (scale, backend), ``registry.reset()``
between row counts; the whole file takes about 4 minutes on 2 cores. A
``static`` capture traces a program (3-5 s here), so the static backend runs
every row count only at scales 4 and 16, and at scales 1 and 8 only
``STATIC_SAMPLE`` (one padded count per padded bucket); its full-then-padded
pairs are ``STATIC_FULL_THEN_PADDED`` at scales 4 and 16. The eager backend
runs every row count and every pair at every scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import pytest
from conftest import paddleformers_transformers

from graphcap import GraphConfig

SCALES = (1, 4, 8, 16)
BACKENDS = ("eager", "static")
CAPTURE_SIZES = (1, 2, 4, 8, 16)
ROWS = tuple(range(1, 17))  # 1..15 (padded where not a capture size) and the full buckets 1, 2, 4, 8, 16
# Static backend at scales 1 and 8: one padded first call per padded bucket, 4 (3), 8 (7) and 16 (12).
STATIC_SAMPLE = (3, 7, 12)
STATIC_EVERY_ROW = (4, 16)
# (rows of the first call, which captures the bucket full; rows of the next call, replayed padded)
FULL_THEN_PADDED = ((4, 3), (8, 5), (16, 9), (16, 15))
STATIC_FULL_THEN_PADDED = ((8, 5), (16, 9))
MAX_NEW = 3  # the prefill's token, then two decode steps of the same rows: a capture and a replay
MAX_LEN = 16
MODEL_SEED = 0


def scaled_llama(scale: float, seed: int = MODEL_SEED) -> paddle.nn.Layer:
    """The tiny Llama (``tiny_llama(scale=1.0, seed=seed)``) with every 2-D weight times ``scale``; norms untouched."""
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    model = tiny_llama(scale=1.0, seed=seed)
    if scale != 1.0:
        with paddle.no_grad():
            for param in model.parameters():
                if param.ndim == 2:
                    param.set_value(param * scale)
    return model


def bucket_of(rows: int) -> int:
    """The smallest capture size holding ``rows``."""
    return min(size for size in CAPTURE_SIZES if size >= rows)


def prompts_for(rows: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """``rows`` distinct seeded prompts of 2-5 tokens."""
    rng = np.random.default_rng(1000 * seed + rows)
    prompts: list[list[int]] = []
    while len(prompts) < rows:
        prompt = rng.integers(0, vocab_size, size=int(rng.integers(2, 6))).tolist()
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def new_fallbacks(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``stats()["fallbacks"]`` entries that gained calls between two snapshots."""
    seen = {(f["graph"], f["bucket"], f["reason"]): f["calls"] for f in before["fallbacks"]}
    return [f for f in after["fallbacks"] if f["calls"] > seen.get((f["graph"], f["bucket"], f["reason"]), 0)]


class Engines:
    """Models, graphs-off references and graphed engines, built once per scale / (scale, backend)."""

    def __init__(self) -> None:
        """Empty caches; everything is built on first use."""
        self._models: dict[float, paddle.nn.Layer] = {}
        self._engines: dict[tuple[float, str], Any] = {}
        self._references: dict[tuple[float, tuple[tuple[int, ...], ...]], list[list[int]]] = {}

    def model(self, scale: float) -> paddle.nn.Layer:
        """The scaled Llama for ``scale``."""
        if scale not in self._models:
            self._models[scale] = scaled_llama(scale)
        return self._models[scale]

    def engine(self, scale: float, backend: str) -> Any:
        """A ``GraphedCausalLM`` over the scaled model; backend ``"off"`` is graphs off."""
        key = (scale, backend)
        if key not in self._engines:
            from graphcap.integrations.paddleformers import GraphedCausalLM

            on = backend != "off"
            config = GraphConfig(use_graph=on, backend=backend if on else "eager", capture_sizes=CAPTURE_SIZES)
            self._engines[key] = GraphedCausalLM(self.model(scale), config, max_batch=max(CAPTURE_SIZES),
                                                 max_len=MAX_LEN)
        return self._engines[key]

    def reference(self, scale: float, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy tokens with graphs off for ``prompts``, all decoded together (every step has their rows)."""
        key = (scale, tuple(tuple(prompt) for prompt in prompts))
        if key not in self._references:
            self._references[key] = self.engine(scale, "off").generate(prompts, MAX_NEW)
        return self._references[key]


@pytest.fixture(scope="module")
def engines() -> Engines:
    """One cache of models and engines for the whole module."""
    return Engines()


def _cases() -> list[Any]:
    cases = []
    for scale in SCALES:
        for backend in BACKENDS:
            rows_here = ROWS if backend == "eager" or scale in STATIC_EVERY_ROW else STATIC_SAMPLE
            cases += [pytest.param(scale, backend, rows, id=f"x{scale}-{backend}-r{rows}") for rows in rows_here]
    return cases


def _pair_cases() -> list[Any]:
    return [
        pytest.param(scale, backend, full, padded, id=f"x{scale}-{backend}-{full}then{padded}")
        for scale in SCALES for backend in BACKENDS if backend == "eager" or scale in STATIC_EVERY_ROW
        for full, padded in (FULL_THEN_PADDED if backend == "eager" else STATIC_FULL_THEN_PADDED)
    ]


@pytest.mark.parametrize("scale", SCALES)
def test_scaled_weights_reach_trained_model_logits(engines: Engines, scale: int) -> None:
    """Only 2-D weights are scaled, and x4..x16 give |logit| of a trained model (about 10-40)."""
    model = engines.model(scale)
    plain = engines.model(1)
    for (name, param), (_, base) in zip(model.named_parameters(), plain.named_parameters()):
        want = base.numpy() * (scale if param.ndim == 2 else 1.0)
        np.testing.assert_allclose(param.numpy(), want, rtol=1e-6, err_msg=f"scale={scale}: {name}")
    prompts = prompts_for(8, model.config.vocab_size)
    with paddle.no_grad():
        largest = max(
            float(model(input_ids=paddle.to_tensor([prompt]), use_cache=False, return_dict=True).logits.abs().max())
            for prompt in prompts
        )
    print(f"scale x{scale}: max |logit| {largest:.2f}")
    if scale == 1:
        assert largest < 5.0, f"scale={scale}: max |logit| {largest:.2f}, expected a random model's (< 5)"
    else:
        assert 8.0 <= largest <= 60.0, f"scale={scale}: max |logit| {largest:.2f}, expected 10-40 (trained-model)"


@pytest.mark.parametrize("scale, backend, rows", _cases())
def test_first_call_with_rows_captures_and_matches_graphs_off(
    engines: Engines, scale: int, backend: str, rows: int
) -> None:
    """The bucket's first call has ``rows`` rows (padded unless a capture size): kept, and tokens equal graphs off."""
    lm = engines.engine(scale, backend)
    prompts = prompts_for(rows, lm.vocab_size)
    want = engines.reference(scale, prompts)
    where = f"r={rows} (bucket {bucket_of(rows)}) scale=x{scale} backend={backend}"
    lm.registry.reset()
    before = lm.stats()
    assert before["graphs"] == 0, f"{where}: registry.reset() left {before['graphs']} graphs"
    got = lm.generate(prompts, MAX_NEW)
    after = lm.stats()
    problems = []
    fallbacks = new_fallbacks(before, after)
    if fallbacks:
        problems.append("ran eagerly: " + "; ".join(f"bucket {f['bucket']}: {f['reason']}" for f in fallbacks))
    failures = after["capture_failures"] - before["capture_failures"]
    if failures:
        problems.append(f"{failures} capture failure(s)")
    captures = after["captures"] - before["captures"]
    if captures != 1:
        problems.append(f"{captures} captures after reset, expected 1 (the bucket recaptured)")
    replays = after["replays"] - before["replays"]
    if replays < MAX_NEW - 2:
        problems.append(f"{replays} replays, expected the second decode step to replay")
    if got != want:
        problems.append(f"tokens {got} differ from graphs off {want}")
    assert not problems, f"{where}: " + " | ".join(problems)


@pytest.mark.parametrize("scale, backend, full, padded", _pair_cases())
def test_full_capture_replayed_padded_matches_graphs_off(
    engines: Engines, scale: int, backend: str, full: int, padded: int
) -> None:
    """A bucket captured from a full first call, then replayed with fewer rows, gives graphs off's tokens."""
    lm = engines.engine(scale, backend)
    where = f"r={padded} replayed in bucket {full} captured full, scale=x{scale} backend={backend}"
    lm.registry.reset()
    full_prompts = prompts_for(full, lm.vocab_size, seed=1)
    assert lm.generate(full_prompts, MAX_NEW) == engines.reference(scale, full_prompts), \
        f"{where}: the full call (r={full}) differs from graphs off"
    prompts = prompts_for(padded, lm.vocab_size, seed=2)
    want = engines.reference(scale, prompts)
    before = lm.stats()
    got = lm.generate(prompts, MAX_NEW)
    after = lm.stats()
    problems = []
    fallbacks = new_fallbacks(before, after)
    if fallbacks:
        problems.append("ran eagerly: " + "; ".join(f"bucket {f['bucket']}: {f['reason']}" for f in fallbacks))
    if after["captures"] != before["captures"]:
        problems.append(f"{after['captures'] - before['captures']} new captures; the padded calls should replay")
    if after["replays"] - before["replays"] != MAX_NEW - 1:
        problems.append(f"{after['replays'] - before['replays']} replays, expected {MAX_NEW - 1}")
    if got != want:
        problems.append(f"tokens {got} differ from graphs off {want}")
    assert not problems, f"{where}: " + " | ".join(problems)
