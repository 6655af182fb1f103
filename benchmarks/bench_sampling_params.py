"""Benchmark: build_sampling_params C++ op vs numpy reference vs the Paddle-ops builder.

For B in {8, 64, 256, 1024} requests and k in {0, 4} speculative tokens
(a decoding request outputs k + 1 rows; the batch mixes 75% decode, 15%
prefill and 10% empty slots), each builder runs in interleaved rounds (every
round calls each builder once in a rotating order, so drift hits all alike).
Reports the median microseconds per call and the ratios against the op, prints
a table and writes benchmarks/results/sampling_params.json.

Builders (all on CPU, GPU layout):
* op        ``build_sampling_params`` (eager form; advances infer_seed)
* op_into   ``build_sampling_params_into`` (capture form, static outputs)
* reference ``build_sampling_params_reference`` (numpy + Python ints)
* paddle    ``padding_sampling_params`` (legacy Paddle-ops builder, seed not advanced)

Target: op >= 5x faster than the Paddle-ops builder at B=256, k=4.

Run: ``python benchmarks/bench_sampling_params.py [--rounds N] [--inner M]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import paddle

from graphcap.ops import (
    build_sampling_params,
    build_sampling_params_into,
    build_sampling_params_reference,
    load_ops,
    padding_sampling_params,
)

BATCHES = (8, 64, 256, 1024)
SPEC_TOKENS = (0, 4)
RESULTS = Path(__file__).resolve().parent / "results" / "sampling_params.json"


def make_batch(batch: int, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=batch, p=[0.10, 0.15, 0.75])  # empty, prefill, decode
    prompt = rng.integers(2, 512, size=batch)
    slt = np.where(kind == 0, 0, np.where(kind == 1, prompt, k + 1)).astype(np.int32)
    rows = np.where(kind == 0, 0, np.where(kind == 1, 1, k + 1))
    cu = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    return {
        "top_p": rng.random(batch).astype(np.float32),
        "top_k": rng.integers(0, 100, size=batch).astype(np.int64),
        "infer_seed": rng.integers(0, 2**62, size=batch).astype(np.int64),
        "seq_lens_this_time": slt,
        "cu_seqlens_q_output": cu,
        "rows": int(rows.sum()),
    }


def builders(batch: dict, k: int) -> dict:
    rows = batch.pop("rows")
    numpy_in = dict(batch)
    tensors = {name: paddle.to_tensor(value) for name, value in batch.items()}
    increment = (k + 1) * 4
    out = (
        paddle.ones([max(rows, 1), 1], dtype="float32"),
        paddle.zeros([max(rows, 1), 1], dtype="int64"),
        paddle.zeros([max(rows, 1), 1], dtype="int64"),
    )

    def op() -> None:
        build_sampling_params(**tensors, token_num_output=rows, increment_value=increment)

    def op_into() -> None:
        build_sampling_params_into(
            **tensors, increment_value=increment, out_top_p=out[0], out_top_k=out[1], out_seed=out[2]
        )

    def reference() -> None:
        build_sampling_params_reference(**numpy_in, token_num_output=rows, increment_value=increment)

    def paddle_ops() -> None:
        padding_sampling_params(**tensors, increment_value=increment)

    return {"op": op, "op_into": op_into, "reference": reference, "paddle": paddle_ops}


def measure(fns: dict, rounds: int, inner: int) -> dict[str, float]:
    for fn in fns.values():  # warm up allocators and caches
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            start = time.perf_counter_ns()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter_ns() - start) / inner / 1000.0)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    paddle.set_device("cpu")
    load_ops()

    rows_out = []
    header = (
        f"{'B':>5} {'k':>2} {'rows':>5} {'op us':>9} {'into us':>9} {'numpy us':>10} {'paddle us':>10} "
        f"{'numpy/op':>9} {'paddle/op':>10}"
    )
    print(header)
    print("-" * len(header))
    for batch_size in BATCHES:
        for k in SPEC_TOKENS:
            batch = make_batch(batch_size, k, seed=batch_size * 10 + k)
            rows = batch["rows"]
            median = measure(builders(batch, k), args.rounds, args.inner)
            entry = {
                "batch": batch_size,
                "k": k,
                "rows": rows,
                "median_us": {name: round(value, 2) for name, value in median.items()},
                "ratio_vs_op": {
                    name: round(value / median["op"], 2) for name, value in median.items() if name != "op"
                },
            }
            rows_out.append(entry)
            print(
                f"{batch_size:>5} {k:>2} {rows:>5} {median['op']:>9.1f} {median['op_into']:>9.1f} "
                f"{median['reference']:>10.1f} {median['paddle']:>10.1f} "
                f"{median['reference'] / median['op']:>8.1f}x {median['paddle'] / median['op']:>9.1f}x"
            )
    target = next(e for e in rows_out if e["batch"] == 256 and e["k"] == 4)
    speedup = target["ratio_vs_op"]["paddle"]
    verdict = "met" if speedup >= 5 else "NOT met"
    print(f"\ntarget (op >= 5x faster than the Paddle-ops builder at B=256, k=4): {speedup:.1f}x, {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "sampling_params",
                "device": "cpu",
                "paddle": paddle.__version__,
                "machine": platform.machine(),
                "python": platform.python_version(),
                "rounds": args.rounds,
                "inner": args.inner,
                "results": rows_out,
                "target": {"batch": 256, "k": 4, "paddle_over_op": speedup, "met": speedup >= 5},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
