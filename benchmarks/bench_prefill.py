"""Prefill under graphs: tokens/s per prompt-length bucket, capture time, padded tokens, and token-bucket plans.

    python benchmarks/bench_prefill.py [--rounds N] [--json PATH] [--quick]
    python benchmarks/bench_prefill.py --markdown results/prefill.json   # the README tables from a result

Two parts, written to ``results/prefill.json``:

1. *Prefill tokens/s per bucket* on a PaddleFormers Llama (``tiny_llama``,
   2-D weights x4), for each prefill capture size ``T`` and each batch of
   prompts (1 and 4 prompts, lengths spread over ``(previous size, T]``), three
   ways, interleaved round by round in one process (medians):

   * ``off``: graphs off, every prompt prefilled eagerly on its own (what
     ``GraphedCausalLM`` does without ``prefill_capture_sizes``);
   * ``batched_eager``: graphs off, the prompts padded to ``T`` and prefilled
     together (the same step, no graph): the part of the speed-up that is
     batching alone;
   * ``static``: graphs on, static backend: the same padded batch replayed from
     its (rows, ``T``) graph.

   tokens/s counts real prompt tokens only. Each bucket's first graphed call is
   timed apart (capture time: tracing plus the capture checks), and the
   static engine's padded tokens and coverage of ``prefill_<T>`` are reported.
   The first token of every prompt must be identical in the three modes
   (greedy): the script exits 1 otherwise.
2. *Token buckets from a prompt-length trace*
   (``traces/prompts/prompt_lengths.txt``, synthetic, see ``make_traces.py``):
   padded tokens / real tokens and the share of prompt tokens left to eager
   prefill, for FastDeploy's default ``cudagraph_capture_sizes_prefill``
   ``[1, 2, 4, 8]`` and for powers of two up to its default
   ``max_capture_shape_prefill`` 512 (our construction: how FastDeploy fills
   a list up to that maximum was not found), each against graphcap's exact
   planner (``plan_capture_sizes`` over prompt lengths) at the same graph
   count, once with the largest size free and once capped at the list's own
   largest size.

CPU figures: the ``static`` backend is a ``paddle.jit.to_static`` program, not
a device graph. Timings are ratios measured side by side; the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paddle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from graphcap import GraphConfig  # noqa: E402
from graphcap.decide.size_planner import load_trace, padding_waste, plan_capture_sizes  # noqa: E402

RESULTS = HERE / "results"
PROMPT_TRACE = HERE / "traces" / "prompts" / "prompt_lengths.txt"
MODES = ("off", "batched_eager", "static")
SIZES = (16, 32, 64)
BATCHES = (1, 4)
MAX_LEN = 128
# FastDeploy GraphOptimizationConfig defaults: cudagraph_capture_sizes_prefill and max_capture_shape_prefill.
FASTDEPLOY_PREFILL = (1, 2, 4, 8)
FASTDEPLOY_MAX_PREFILL = 512


def bucket_prompts(size: int, previous: int, batch: int, vocab: int) -> list[list[int]]:
    """``batch`` prompts with lengths spread evenly over ``(previous, size]``, the longest exactly ``size``."""
    span = size - previous
    lengths = [size - (span * index) // batch for index in range(batch)]
    return [[(7 * row + 13 * position + 1) % vocab for position in range(length)]
            for row, length in enumerate(lengths)]


def build(model: Any, mode: str, batch: int, sizes: Sequence[int]) -> Any:
    """A ``GraphedCausalLM`` over ``model`` for ``mode``: prefill sizes unless ``off``, graphs only for ``static``."""
    from graphcap.integrations.paddleformers import GraphedCausalLM

    config = GraphConfig(use_graph=mode == "static", backend="static" if mode == "static" else "eager",
                         capture_sizes=tuple(range(1, batch + 1)),
                         prefill_capture_sizes=None if mode == "off" else tuple(sizes))
    return GraphedCausalLM(model, config, max_batch=batch, max_len=MAX_LEN)


def prefill_call(lm: Any, mode: str, prompts: list[list[int]]) -> Callable[[], list[int]]:
    """The prefill of ``prompts`` into slots ``0..len-1`` in ``mode``; it returns each prompt's first token."""
    slots = list(range(len(prompts)))
    if mode == "off":
        return lambda: [lm.prefill(slot, prompt) for slot, prompt in zip(slots, prompts)]
    return lambda: lm.prefill_graphs.run(slots, prompts, greedy=True)


def measure_buckets(model: Any, rounds: int, sizes: Sequence[int], batches: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (batch, size): median tokens/s per mode, capture seconds, padding, coverage, identical tokens."""
    vocab = model.config.vocab_size
    rows = []
    for batch in batches:
        engines = {mode: build(model, mode, batch, sizes) for mode in MODES}
        for index, size in enumerate(sizes):
            prompts = bucket_prompts(size, sizes[index - 1] if index else 0, batch, vocab)
            calls = {mode: prefill_call(engine, mode, prompts) for mode, engine in engines.items()}
            before = engines["static"].registry.stats()["capture_seconds"]
            started = time.perf_counter()
            firsts = {"static": calls["static"]()}  # captures (rows, size) on first use
            first_call = time.perf_counter() - started
            capture = engines["static"].registry.stats()["capture_seconds"] - before
            firsts.update({mode: calls[mode]() for mode in MODES if mode != "static"})
            samples: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(rounds):
                for mode, call in calls.items():
                    started = time.perf_counter()
                    call()
                    samples[mode].append(time.perf_counter() - started)
            seconds = {mode: statistics.median(values) for mode, values in samples.items()}
            tokens = sum(len(prompt) for prompt in prompts)
            tps = {mode: round(tokens / value, 1) for mode, value in seconds.items()}
            stats = engines["static"].stats()
            rows.append({
                "batch": batch, "size": size, "prompt_lengths": [len(p) for p in prompts], "tokens": tokens,
                "padded_tokens": batch * size - tokens, "tokens_per_second": tps,
                "static_vs_off": round(tps["static"] / tps["off"], 3),
                "static_vs_batched_eager": round(tps["static"] / tps["batched_eager"], 3),
                "batched_eager_vs_off": round(tps["batched_eager"] / tps["off"], 3),
                "first_call_seconds": round(first_call, 4), "capture_seconds": round(capture, 4),
                "median_static_seconds": round(seconds["static"], 5),
                "coverage": stats["coverage"][f"prefill_{size}"], "recaptures": stats["recaptures"],
                "identical": all(firsts[mode] == firsts["off"] for mode in MODES),
            })
        totals = engines["static"].stats()
        rows[-1]["engine_prefill_stats"] = totals["prefill"]
        rows[-1]["engine_eager_fallbacks"] = totals["eager_fallbacks"]
    return rows


def _served(trace: list[int], sizes: Sequence[int]) -> dict[str, Any]:
    """``padding_waste`` in tokens, plus the share of prompt tokens prefilled eagerly (above the largest size)."""
    waste = padding_waste(trace, sizes)
    total = waste["real_rows"] + waste["eager_rows"]
    return {"sizes": list(waste["sizes"]), "graphs": waste["num_graphs"], "padded_tokens": waste["padded_rows"],
            "waste_ratio": round(waste["waste_ratio"], 4), "eager_prompts": waste["eager_steps"],
            "eager_token_share": round(waste["eager_rows"] / total, 4) if total else 0.0}


def plan_against(trace: list[int], name: str, sizes: Sequence[int]) -> dict[str, Any]:
    """A fixed list against the planner at its graph count: largest size free, and capped at the list's largest."""
    return {
        "list": name, "engine": _served(trace, sizes),
        "planner": _served(trace, plan_capture_sizes(trace, len(sizes))),
        "planner_same_largest": _served(trace, plan_capture_sizes(trace, len(sizes), max_size=max(sizes))),
    }


def measure_plans(trace_path: Path) -> dict[str, Any]:
    """Part 2 over ``trace_path``: FastDeploy's default prefill list and the power-of-two list, each vs the planner."""
    trace = load_trace(trace_path)
    powers = tuple(2**k for k in range(FASTDEPLOY_MAX_PREFILL.bit_length()) if 2**k <= FASTDEPLOY_MAX_PREFILL)
    return {
        "trace": str(trace_path.relative_to(HERE.parent)), "prompts": len(trace), "tokens": sum(trace),
        "longest": max(trace),
        "comparisons": [plan_against(trace, "fastdeploy_default", FASTDEPLOY_PREFILL),
                        plan_against(trace, "powers_of_two_to_512", powers)],
    }


def print_tables(buckets: list[dict[str, Any]], plans: dict[str, Any]) -> None:
    """Both parts as terminal tables."""
    print(f"{'batch':>5} {'T':>4} {'tokens':>6} {'pad':>4} {'off tok/s':>10} {'batched tok/s':>13} "
          f"{'static tok/s':>12} {'static/off':>10} {'capture s':>9} {'coverage':>8} identical")
    for row in buckets:
        tps = row["tokens_per_second"]
        print(f"{row['batch']:>5} {row['size']:>4} {row['tokens']:>6} {row['padded_tokens']:>4} {tps['off']:>10.0f} "
              f"{tps['batched_eager']:>13.0f} {tps['static']:>12.0f} {row['static_vs_off']:>10.2f} "
              f"{row['capture_seconds']:>9.2f} {row['coverage']:>8.0%} {row['identical']}")
    print(f"\n{plans['trace']}: {plans['prompts']} prompts, {plans['tokens']} tokens, longest {plans['longest']}")
    print(f"{'list':<22} {'policy':<22} {'graphs':>6} {'largest':>7} {'waste':>7} {'eager tokens':>12}")
    for comparison in plans["comparisons"]:
        for policy in ("engine", "planner", "planner_same_largest"):
            served = comparison[policy]
            print(f"{comparison['list']:<22} {policy:<22} {served['graphs']:>6} {served['sizes'][-1]:>7} "
                  f"{served['waste_ratio']:>7.1%} {served['eager_token_share']:>12.1%}")


def markdown(result: dict[str, Any]) -> str:
    """The README's two tables, from a ``prefill.json`` result."""
    lines = ["| prompts | size T | real tokens | padded | tok/s off | tok/s batched eager | tok/s static graphs "
             "| static / off | capture s | coverage | first tokens identical |", "|" + "---|" * 11]
    for row in result["buckets"]:
        tps = row["tokens_per_second"]
        lines.append(f"| {row['batch']} | {row['size']} | {row['tokens']} | {row['padded_tokens']} | {tps['off']:.0f} "
                     f"| {tps['batched_eager']:.0f} | {tps['static']:.0f} | {row['static_vs_off']:.2f} "
                     f"| {row['capture_seconds']:.2f} | {row['coverage']:.0%} | {'yes' if row['identical'] else 'NO'} |")
    plans = result["plans"]
    lines += ["", f"`{plans['trace']}`: {plans['prompts']} prompts, {plans['tokens']} tokens, longest {plans['longest']}.",
              "", "| list | sizes | graphs | padded / real tokens | prompt tokens left eager |", "|---|---|---|---|---|"]
    names = {"engine": "", "planner": "graphcap planner, largest free",
             "planner_same_largest": "graphcap planner, same largest size"}
    for comparison in plans["comparisons"]:
        for policy, label in names.items():
            served = comparison[policy]
            sizes = ", ".join(str(size) for size in served["sizes"])
            lines.append(f"| {label or comparison['list']} | {sizes} | {served['graphs']} "
                         f"| {served['waste_ratio']:.1%} | {served['eager_token_share']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print them and write the JSON; exit 1 when a mode's first tokens differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one batch of 2, sizes 4 and 8, 2 rounds (smoke test)")
    parser.add_argument("--json", type=Path, default=RESULTS / "prefill.json")
    parser.add_argument("--markdown", type=Path, help="print the README tables of this result file and exit")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    paddle.set_device("cpu")
    try:
        from graphcap.integrations.paddleformers.tiny import TINY_LLAMA, tiny_llama
    except ImportError as exc:
        print(f"bench_prefill needs paddleformers ({exc}); pip install 'graphcap[paddleformers]'")
        return 1
    sizes, batches, rounds = ((4, 8), (2,), 2) if args.quick else (SIZES, BATCHES, args.rounds)
    model = tiny_llama(seed=0, scale=4.0)
    buckets = measure_buckets(model, rounds, sizes, batches)
    plans = measure_plans(PROMPT_TRACE)
    print_tables(buckets, plans)
    result = {"model": TINY_LLAMA, "weights_scale": 4.0, "max_len": MAX_LEN, "rounds": rounds,
              "backend": "static", "buckets": buckets, "plans": plans}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(row["identical"] for row in buckets) else 1


if __name__ == "__main__":
    sys.exit(main())
