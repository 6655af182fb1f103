"""Padded captures at trained-model logit magnitudes: how many graphcap keeps, and what padding really changes.

    python benchmarks/bench_trust.py [--out PATH] [--quick]

A PaddleFormers Llama (the tiny one: hidden 128, 4 layers) with its 2-D
weights scaled x1, x4, x8 and x16 (norms untouched: max |logit| about 2, 10,
20, 40), capture sizes (1, 2, 4, 8, 16), on the ``eager`` and ``static``
backends. For every row count r in 1..15 the bucket's *first* decode call has
r rows (``registry.reset()`` before each), so buckets 4, 8 and 16 are
captured padded. Per run: whether the capture was kept (no fallback), the
fallback reasons, whether greedy tokens equal graphs off, and two figures
measured with graphs off on the same decode step: max |logit| and how much
the bucket's padding rows change the real rows' logits (GEMM rounding by row
count, the difference a padding check must tolerate). Per scale and backend:
"captures kept: N of M" and the share of decode calls graphs served
(``stats()["coverage"]`` where the registry has it; replays / (replays +
eager fallbacks) always).

Exit status 1 when any tokens differ from graphs off (a wrong result); a
capture that is not kept is a figure, not a failure: the bucket runs eagerly
and its tokens are still right.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from graphcap import GraphConfig

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = (1, 4, 8, 16)
BACKENDS = ("eager", "static")
CAPTURE_SIZES = (1, 2, 4, 8, 16)
ROWS = tuple(range(1, 16))
QUICK = {"scales": (4,), "backends": ("eager",), "rows": (3, 5)}
MAX_NEW = 3  # the prefill's token, then two decode steps of r rows: a capture and a replay
MAX_LEN = 16
# The measured difference, where the fallback reason states it ("... by 0.000123, beyond the 1e-05 ...").
_MEASURED = re.compile(r"by ([0-9.e+-]+), beyond the ([0-9.e+-]+)")


def scaled_llama(scale: float, seed: int = 0) -> paddle.nn.Layer:
    """The tiny Llama (``tiny_llama(scale=1.0, seed=seed)``) with every 2-D weight times ``scale``; norms untouched.

    The same helper as ``tests/test_real_magnitudes.py``.
    """
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


def prompts_for(rows: int, vocab_size: int) -> list[list[int]]:
    """``rows`` distinct seeded prompts of 2-5 tokens (the test's prompts for the same row count)."""
    rng = np.random.default_rng(rows)
    prompts: list[list[int]] = []
    while len(prompts) < rows:
        prompt = rng.integers(0, vocab_size, size=int(rng.integers(2, 6))).tolist()
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def engine(model: paddle.nn.Layer, backend: str | None) -> Any:
    """A ``GraphedCausalLM`` over ``model``: graphs on ``backend``, or off for None."""
    from graphcap.integrations.paddleformers import GraphedCausalLM

    config = GraphConfig(use_graph=backend is not None, backend=backend or "eager", capture_sizes=CAPTURE_SIZES)
    return GraphedCausalLM(model, config, max_batch=max(CAPTURE_SIZES), max_len=MAX_LEN)


def padding_effect(off: Any, prompts: list[list[int]]) -> dict[str, float | None]:
    """Graphs off, the first decode step of ``prompts``: max |logit|, and the largest change of the real rows'
    logits when the step runs padded to the bucket (padding rows in the scratch slot, as graphcap pads them)."""
    rows, bucket = len(prompts), bucket_of(len(prompts))
    slots = list(range(rows))
    with paddle.no_grad():
        tokens = [off.prefill(slot, prompt) for slot, prompt in zip(slots, prompts)]
        positions = [len(prompt) for prompt in prompts]
        _, logits = off._step(**off.stage(slots, tokens, positions), greedy=True)
        real = logits.numpy().astype(np.float64)
        largest = float(np.abs(real).max())
        if bucket == rows:
            return {"max_abs_logit": round(largest, 3), "padding_difference": None, "relative": None}
        pad = bucket - rows
        _, padded = off._step(**off.stage(slots + [off.scratch_slot] * pad, tokens + [0] * pad,
                                          positions + [0] * pad), greedy=True)
        difference = float(np.abs(padded.numpy().astype(np.float64)[:rows] - real).max())
    return {"max_abs_logit": round(largest, 3), "padding_difference": difference,
            "relative": difference / max(1.0, largest)}


def fallbacks_since(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``stats()["fallbacks"]`` entries that gained calls between two snapshots."""
    seen = {(f["graph"], f["bucket"], f["reason"]): f["calls"] for f in before["fallbacks"]}
    return [f for f in after["fallbacks"] if f["calls"] > seen.get((f["graph"], f["bucket"], f["reason"]), 0)]


def measured_in(reason: str) -> dict[str, float] | None:
    """The difference and bound a fallback reason states, or None where it states none."""
    found = _MEASURED.search(reason)
    return {"difference": float(found.group(1)), "bound": float(found.group(2).rstrip("."))} if found else None


def one_run(lm: Any, off: Any, rows: int) -> dict[str, Any]:
    """Reset ``lm``'s graphs, generate ``rows`` prompts (first call of the bucket has ``rows`` rows); the record."""
    prompts = prompts_for(rows, lm.vocab_size)
    want = off.generate(prompts, MAX_NEW)
    lm.registry.reset()
    before = lm.stats()
    got = lm.generate(prompts, MAX_NEW)
    after = lm.stats()
    fallbacks = fallbacks_since(before, after)
    replays = after["replays"] - before["replays"]
    eager = after["eager_fallbacks"] - before["eager_fallbacks"]
    return {
        "rows": rows, "bucket": bucket_of(rows), "padded": bucket_of(rows) != rows,
        "kept": not fallbacks and after["capture_failures"] == before["capture_failures"],
        "fallback_reasons": [f["reason"] for f in fallbacks],
        "measured_in_reasons": [m for m in (measured_in(f["reason"]) for f in fallbacks) if m is not None],
        "capture_failures": after["capture_failures"] - before["capture_failures"],
        "replays": replays, "eager_calls": eager,
        "tokens_equal": got == want,
        **padding_effect(off, prompts),
    }


def sweep(scale: int, backend: str, rows: tuple[int, ...]) -> dict[str, Any]:
    """Every row count on one scale and backend, one engine reset between runs; runs and summary."""
    model = scaled_llama(scale)
    off, lm = engine(model, None), engine(model, backend)
    start = lm.stats()
    started = time.perf_counter()
    runs = [one_run(lm, off, r) for r in rows]
    end = lm.stats()
    replays = end["replays"] - start["replays"]
    eager = end["eager_fallbacks"] - start["eager_fallbacks"]
    coverage = end.get("coverage")
    kept = sum(run["kept"] for run in runs)
    relative = [run["relative"] for run in runs if run["relative"] is not None]
    return {
        "scale": scale, "backend": backend, "kept": kept, "total": len(runs),
        "captures_kept": f"{kept} of {len(runs)}",
        "not_kept_rows": [run["rows"] for run in runs if not run["kept"]],
        "tokens_equal": all(run["tokens_equal"] for run in runs),
        "max_abs_logit": max(run["max_abs_logit"] for run in runs),
        "max_padding_relative": max(relative) if relative else None,
        "coverage": None if coverage is None else coverage.get("decode"),
        "graph_share": replays / (replays + eager) if replays + eager else None,
        "seconds": round(time.perf_counter() - started, 2),
        "runs": runs,
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(sweeps: list[dict[str, Any]]) -> str:
    """One line per scale and backend, then one per capture not kept with its reason."""
    lines = [f"{'scale':>5} {'backend':<7} {'max|logit|':>10} {'kept':>8} {'coverage':>8} {'graph share':>11} "
             f"{'pad diff / |logit|':>18}  not kept (rows)"]
    for s in sweeps:
        relative = "-" if s["max_padding_relative"] is None else f"{s['max_padding_relative']:.2e}"
        lines.append(f"{'x' + str(s['scale']):>5} {s['backend']:<7} {s['max_abs_logit']:>10.2f} "
                     f"{s['captures_kept']:>8} {_share(s['coverage']):>8} {_share(s['graph_share']):>11} "
                     f"{relative:>18}  {s['not_kept_rows'] or '-'}")
    for s in sweeps:
        for run in s["runs"]:
            for reason in run["fallback_reasons"]:
                lines.append(f"  x{s['scale']} {s['backend']} r={run['rows']} (bucket {run['bucket']}, padding "
                             f"moved logits by {run['padding_difference'] or 0:.3g}): {reason[:110]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Sweep, print the table and write the JSON (``results/trust.json`` by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "trust.json")
    parser.add_argument("--quick", action="store_true", help="one scale, the eager backend, two row counts")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    try:
        import paddleformers  # noqa: F401
    except ImportError as exc:
        print(f"bench_trust needs paddleformers ({exc}); pip install 'graphcap[paddleformers]'")
        return 1
    scales, backends, rows = (QUICK["scales"], QUICK["backends"], QUICK["rows"]) if args.quick \
        else (SCALES, BACKENDS, ROWS)
    started = time.perf_counter()
    sweeps = [sweep(scale, backend, rows) for scale in scales for backend in backends]
    print(format_table(sweeps))
    result = {
        "setup": {"model": "tiny_llama, 2-D weights scaled", "capture_sizes": list(CAPTURE_SIZES),
                  "rows": list(rows), "max_new_tokens": MAX_NEW, "max_len": MAX_LEN, "quick": args.quick},
        "max_abs_logit": {f"x{scale}": max(s["max_abs_logit"] for s in sweeps if s["scale"] == scale)
                          for scale in scales},
        "summary": [{key: value for key, value in s.items() if key != "runs"} for s in sweeps],
        "sweeps": sweeps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0 if all(s["tokens_equal"] for s in sweeps) else 1


if __name__ == "__main__":
    sys.exit(main())
