"""A PaddleFormers Llama decoding through GraphedCausalLM: tokens/s and graphcap's host overhead per step.

    python benchmarks/bench_llama.py [--rounds N] [--json PATH]

Two measurements, each interleaved round by round in one process, medians:

1. *Tokens/s*: the same prompts generated with graphs off, on the ``eager``
   backend and on the ``static`` backend, at batch 1 and batch 8 (greedy,
   24 new tokens). Each configuration captures in a warm-up pass first; the
   timed passes replay. Tokens must be identical across the three.
2. *Host overhead per decode step*: ``GraphedCausalLM.decode`` on the
   ``eager`` backend (dispatch, staging, checks, Python replay of the step)
   against the same step written by hand: the same buffer writes, then the
   step function called directly on the buffers' views. Goal: <= 1.10x.

CPU figures: the ``static`` backend is a ``paddle.jit.to_static`` program,
which removes the model's Python overhead, not a device graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paddle

from graphcap import GraphConfig

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("off", "eager", "static")


def build(model, mode: str, batch: int):
    """A GraphedCausalLM over ``model`` for one mode, capture sizes 1..``batch``."""
    from graphcap.integrations.paddleformers import GraphedCausalLM

    config = GraphConfig(use_graph=mode != "off", backend="eager" if mode == "off" else mode, max_capture_size=batch)
    return GraphedCausalLM(model, config, max_batch=batch, max_len=model.config.max_position_embeddings)


def tokens_per_second(model, batch: int, rounds: int, new_tokens: int) -> dict[str, object]:
    """Median tokens/s per mode at ``batch`` prompts, interleaved; and whether tokens agree."""
    from graphcap.integrations.paddleformers.demo import demo_prompts

    prompts = demo_prompts(batch, seed=batch)
    engines = {mode: build(model, mode, batch) for mode in MODES}
    outputs = {mode: engine.generate(prompts, new_tokens) for mode, engine in engines.items()}  # capture pass
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, engine in engines.items():
            started = time.perf_counter()
            engine.generate(prompts, new_tokens)
            samples[mode].append(batch * new_tokens / (time.perf_counter() - started))
    medians = {mode: round(statistics.median(values), 1) for mode, values in samples.items()}
    stats = engines["static"].stats()
    return {
        "batch": batch,
        "tokens_per_second": medians,
        "static_vs_off": round(medians["static"] / medians["off"], 3),
        "eager_vs_off": round(medians["eager"] / medians["off"], 3),
        "identical": all(outputs[mode] == outputs["off"] for mode in MODES),
        "static_eager_fallbacks": stats["eager_fallbacks"],
        "static_graphs": stats["graphs"],
        "static_graph_coverage": stats["graph_coverage"],
    }


def step_overhead(model, batch: int, rounds: int, inner: int) -> dict[str, float]:
    """µs per decode step: graphcap on the eager backend vs the same step by hand, interleaved."""
    engine = build(model, "eager", batch)
    slots = list(range(batch))
    tokens = [1] * batch
    positions = [4] * batch
    for slot in slots:
        engine.prefill(slot, [1, 2, 3, 4])
    engine.decode(slots, tokens, positions)  # capture

    def by_hand() -> list[int]:
        # What decode() does around the graph: the same staging into the same buffers,
        # then the step itself on the buffers' views, with no manager.
        next_tokens, _ = engine._step(**engine.stage(slots, tokens, positions), greedy=True)
        return next_tokens.numpy().tolist()

    cases: dict[str, Callable[[], object]] = {
        "graphcap_eager": lambda: engine.decode(slots, tokens, positions),
        "by_hand": by_hand,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            started = time.perf_counter()
            for _ in range(inner):
                case()
            samples[name].append((time.perf_counter() - started) / inner * 1e6)
    medians = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    return {**medians, "ratio": round(medians["graphcap_eager"] / medians["by_hand"], 3),
            "overhead_us": round(medians["graphcap_eager"] - medians["by_hand"], 1)}


def main(argv: list[str] | None = None) -> int:
    """Print both tables and write ``results/llama.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--json", type=Path, default=RESULTS / "llama.json")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    try:
        from graphcap.integrations.paddleformers.tiny import TINY_LLAMA, tiny_llama
    except ImportError as exc:
        print(f"bench_llama needs paddleformers ({exc}); pip install 'graphcap[paddleformers]'")
        return 1
    model = tiny_llama(seed=0)
    rows = [tokens_per_second(model, batch, args.rounds, args.new_tokens) for batch in (1, 8)]
    overhead = {f"batch_{batch}": step_overhead(model, batch, args.rounds, args.inner) for batch in (1, 8)}
    print(f"{'batch':>5} {'off tok/s':>10} {'eager tok/s':>12} {'static tok/s':>13} {'static/off':>10} "
          f"{'coverage':>8} identical")
    for row in rows:
        tps = row["tokens_per_second"]
        print(f"{row['batch']:>5} {tps['off']:>10.1f} {tps['eager']:>12.1f} {tps['static']:>13.1f} "
              f"{row['static_vs_off']:>10.2f} {row['static_graph_coverage']:>8.1%} {row['identical']}")
    print(f"{'batch':>5} {'graphcap µs':>12} {'by hand µs':>11} {'ratio':>6}")
    for name, values in overhead.items():
        print(f"{name.split('_')[1]:>5} {values['graphcap_eager']:>12.1f} {values['by_hand']:>11.1f} "
              f"{values['ratio']:>6.3f}")
    result = {"model": TINY_LLAMA, "new_tokens": args.new_tokens, "rounds": args.rounds,
              "tokens_per_second": rows, "step_overhead": overhead}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
