"""Benchmark: build_sampling_params, C++ op and portable kernel, vs FastDeploy's legacy builder.

For B in {8, 64, 256, 1024} requests and k in {0, 4} speculative tokens
(a decoding request outputs k + 1 rows; the batch mixes 75% decode, 15%
prefill and 10% empty slots), each builder runs in interleaved rounds (every
round calls each builder once in a rotating order, so drift hits all alike).
Reports the median microseconds per call and the ratios, prints a table and
writes benchmarks/results/sampling_params.json.

Builders (all on CPU, all building the same rows; encoder layout by default,
the layout of FastDeploy's builder; ``--layout cu`` for the GPU layout):

* op             ``build_sampling_params(impl="custom")``: C++ op, eager form (advances infer_seed)
* op_into        ``build_sampling_params_into(impl="custom")``: C++ op, capture form (static outputs)
* portable       ``build_sampling_params(impl="paddle")``: portable Paddle-ops kernel, eager form
* portable_into  ``build_sampling_params_into(impl="paddle")``: portable kernel, capture form
* reference      ``build_sampling_params_reference`` (numpy + Python ints)
* fastdeploy     ``padding_sampling_params``: FastDeploy's legacy builder operation for operation
                 (the repeats ``where``, four ``repeat_interleave`` with tensor repeats, cumsum,
                 gathers, ``(seed + offset) % max_seed``); it does not advance infer_seed (FastDeploy's
                 runner did that apart, two more ops, not counted here) and pads no rows

Ratios: ``fastdeploy / op`` is what replacing FastDeploy's builder by the C++
op saves per call; ``fastdeploy / portable_into`` the same for the portable
kernel in its capture form (what a graph on XPU runs); ``portable_into /
op_into`` what the portable kernel costs over the C++ one. On CPU every Paddle
op is a host call of a few microseconds, so these are dispatch-bound figures;
on a device the builder's ``repeat_interleave`` also syncs with the host.

Target: op >= 5x faster than FastDeploy's builder at B=256, k=4.

Run: ``python benchmarks/bench_sampling_params.py [--rounds N] [--inner M] [--layout enc|cu]``.
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
BUILDERS = ("op", "op_into", "portable", "portable_into", "reference", "fastdeploy")


def make_batch(batch: int, k: int, seed: int = 0, layout: str = "enc") -> dict:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=batch, p=[0.10, 0.15, 0.75])  # empty, prefill, decode
    prompt = rng.integers(2, 512, size=batch)
    slt = np.where(kind == 0, 0, np.where(kind == 1, prompt, k + 1)).astype(np.int32)
    rows = np.where(kind == 0, 0, np.where(kind == 1, 1, k + 1))
    lengths = (
        {"cu_seqlens_q_output": np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)}
        if layout == "cu"
        else {"seq_lens_encoder": np.where(kind == 1, prompt, 0).astype(np.int32)}
    )
    return {
        "top_p": rng.random(batch).astype(np.float32),
        "top_k": rng.integers(0, 100, size=batch).astype(np.int64),
        # Below 2**62: FastDeploy's unreduced seed sum cannot overflow, all builders agree.
        "infer_seed": rng.integers(0, 2**62, size=batch).astype(np.int64),
        "seq_lens_this_time": slt,
        **lengths,
        "rows": int(rows.sum()),
    }


def builders(batch: dict, k: int) -> dict:
    rows = batch.pop("rows")
    numpy_in = dict(batch)
    tensors = {name: paddle.to_tensor(value) for name, value in batch.items()}
    increment = (k + 1) * 4

    def static_outputs() -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        return (
            paddle.ones([max(rows, 1), 1], dtype="float32"),
            paddle.zeros([max(rows, 1), 1], dtype="int64"),
            paddle.zeros([max(rows, 1), 1], dtype="int64"),
        )

    out_custom, out_portable = static_outputs(), static_outputs()

    def op() -> None:
        build_sampling_params(**tensors, token_num_output=rows, increment_value=increment, impl="custom")

    def op_into() -> None:
        build_sampling_params_into(
            **tensors, increment_value=increment, out_top_p=out_custom[0], out_top_k=out_custom[1],
            out_seed=out_custom[2], impl="custom",
        )

    def portable() -> None:
        build_sampling_params(**tensors, token_num_output=rows, increment_value=increment, impl="paddle")

    def portable_into() -> None:
        build_sampling_params_into(
            **tensors, increment_value=increment, out_top_p=out_portable[0], out_top_k=out_portable[1],
            out_seed=out_portable[2], impl="paddle",
        )

    def reference() -> None:
        build_sampling_params_reference(**numpy_in, token_num_output=rows, increment_value=increment)

    def fastdeploy() -> None:
        padding_sampling_params(**tensors)

    return {
        "op": op, "op_into": op_into, "portable": portable, "portable_into": portable_into,
        "reference": reference, "fastdeploy": fastdeploy,
    }


def same_rows(batch: dict, k: int) -> bool:
    """All builders give the same rows on this batch (the comparison is like for like)."""
    rows = batch["rows"]
    arrays = {name: value for name, value in batch.items() if name != "rows"}
    want = build_sampling_params_reference(**arrays, token_num_output=rows, increment_value=(k + 1) * 4)
    results = [padding_sampling_params(**{n: paddle.to_tensor(v) for n, v in arrays.items()})]
    for impl in ("custom", "paddle"):
        tensors = {n: paddle.to_tensor(v) for n, v in arrays.items()}
        results.append(build_sampling_params(**tensors, token_num_output=rows, increment_value=(k + 1) * 4,
                                             impl=impl))
    return all(
        np.array_equal(got.numpy(), expected) for result in results for got, expected in zip(result, want[:3])
    )


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
    parser.add_argument("--layout", choices=("enc", "cu"), default="enc")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    paddle.set_device("cpu")
    load_ops()

    rows_out = []
    header = (
        f"{'B':>5} {'k':>2} {'rows':>5} {'op':>7} {'op_into':>8} {'portable':>9} {'port_into':>9} "
        f"{'numpy':>8} {'FastDeploy':>10} {'FD/op':>7} {'FD/port_into':>12} {'port_into/op_into':>17}"
    )
    print(f"median us per call, CPU, {args.layout} layout")
    print(header)
    print("-" * len(header))
    for batch_size in BATCHES:
        for k in SPEC_TOKENS:
            batch = make_batch(batch_size, k, seed=batch_size * 10 + k, layout=args.layout)
            rows = batch["rows"]
            if not same_rows(dict(batch), k):
                raise SystemExit(f"builders disagree at B={batch_size}, k={k}; the comparison would be meaningless")
            median = measure(builders(batch, k), args.rounds, args.inner)
            ratios = {
                "fastdeploy_over_op": median["fastdeploy"] / median["op"],
                "fastdeploy_over_portable_into": median["fastdeploy"] / median["portable_into"],
                "portable_into_over_op_into": median["portable_into"] / median["op_into"],
                "portable_over_op": median["portable"] / median["op"],
            }
            entry = {
                "batch": batch_size,
                "k": k,
                "rows": rows,
                "median_us": {name: round(value, 2) for name, value in median.items()},
                "ratio_vs_op": {
                    name: round(value / median["op"], 2) for name, value in median.items() if name != "op"
                },
                "ratios": {name: round(value, 2) for name, value in ratios.items()},
            }
            rows_out.append(entry)
            print(
                f"{batch_size:>5} {k:>2} {rows:>5} {median['op']:>7.1f} {median['op_into']:>8.1f} "
                f"{median['portable']:>9.1f} {median['portable_into']:>9.1f} {median['reference']:>8.1f} "
                f"{median['fastdeploy']:>10.1f} {ratios['fastdeploy_over_op']:>6.1f}x "
                f"{ratios['fastdeploy_over_portable_into']:>11.1f}x {ratios['portable_into_over_op_into']:>16.1f}x"
            )
    target = next(e for e in rows_out if e["batch"] == 256 and e["k"] == 4)
    speedup = target["ratios"]["fastdeploy_over_op"]
    verdict = "met" if speedup >= 5 else "NOT met"
    print(f"\ntarget (op >= 5x faster than FastDeploy's builder at B=256, k=4): {speedup:.1f}x, {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "sampling_params",
                "device": "cpu",
                "layout": args.layout,
                "baseline": "FastDeploy padding_sampling_params (sampler.py), operation for operation",
                "paddle": paddle.__version__,
                "machine": platform.machine(),
                "python": platform.python_version(),
                "rounds": args.rounds,
                "inner": args.inner,
                "results": rows_out,
                "target": {"batch": 256, "k": 4, "fastdeploy_over_op": round(speedup, 2), "met": speedup >= 5},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
