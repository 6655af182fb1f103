"""Reset soak: OS threads and RSS over reset + recapture cycles on the static backend.

    python benchmarks/bench_resets.py [--cycles 15]

Each cycle is what a weight reload does (RL weight sync, adapter swaps): new
weights written in place, ``registry.reset()``, then every bucket captured
again by the next calls. Two workloads, each in this one process, one after
the other: a Layer with parameters (two Linears) over three buckets, and a
PaddleFormers Llama under ``GraphedCausalLM`` (prefill eager, decode at
three buckets). After each cycle the script records the process's OS threads
and resident memory (``/proc/self/status``) and checks that the replayed
decode after the reload matches the model's own forward at the last bucket.

Goal (issue 19): after 15 cycles, threads +4 at most and RSS +64 MiB at most.
Writes ``benchmarks/results/resets.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from graphcap import CaptureRegistry, GraphConfig
from graphcap.execute.backends.static import EXECUTORS

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1, 2, 4)


def process_status() -> dict[str, int]:
    """OS threads and resident set (MiB) of this process, from ``/proc/self/status``."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == "Threads":
                found["threads"] = int(value)
            elif key == "VmRSS":
                found["rss_mib"] = int(value.split()[0]) // 1024
    return found


def soak(cycle: Any, cycles: int) -> dict[str, Any]:
    """Run ``cycle()`` once to warm up, then ``cycles`` more, recording threads and RSS after each."""
    cycle()
    gc.collect()
    start = process_status()
    trail = []
    for _ in range(cycles):
        cycle()
        gc.collect()
        trail.append(process_status())
    end = trail[-1]
    return {"start": start, "end": end, "trail": trail,
            "threads_added": end["threads"] - start["threads"], "rss_added_mib": end["rss_mib"] - start["rss_mib"]}


def layer_workload(cycles: int) -> dict[str, Any]:
    """Two Linears graphed over three buckets; each cycle reloads weights and recaptures all three."""
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(32, 64), paddle.nn.ReLU(), paddle.nn.Linear(64, 32))
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="static", capture_sizes=SIZES))

    @reg.graphed("layer", batch_arg="x")
    def step(x: paddle.Tensor) -> paddle.Tensor:
        return model(x)

    inputs = paddle.randn([max(SIZES), 32])

    def cycle() -> None:
        with paddle.no_grad():
            for param in model.parameters():
                param.set_value(paddle.randn(param.shape))
        reg.reset()
        for rows in SIZES:
            got = step(inputs[:rows])
        np.testing.assert_array_equal(got.numpy(), model(inputs).numpy())  # last call: full largest bucket

    result = soak(cycle, cycles)
    result["captures"] = reg.stats()["captures"]
    return result


def llama_workload(cycles: int) -> dict[str, Any] | None:
    """A PaddleFormers Llama's decode under GraphedCausalLM; each cycle reloads its weights and resets."""
    try:
        from graphcap.integrations.paddleformers import GraphedCausalLM
        from graphcap.integrations.paddleformers.tiny import tiny_llama
    except ImportError as exc:
        print(f"llama workload skipped: {exc}")
        return None
    model = tiny_llama()
    lm = GraphedCausalLM(model, GraphConfig(use_graph=True, backend="static", capture_sizes=SIZES),
                         max_batch=max(SIZES), max_len=32)
    weights = {name: value.clone() for name, value in model.state_dict().items()}

    def cycle() -> None:
        model.set_state_dict(weights)
        lm.registry.reset()
        for slot in range(max(SIZES)):
            lm.prefill(slot, [1, 2, 3])
        for rows in SIZES:
            lm.decode(list(range(rows)), [5] * rows, [3] * rows)

    result = soak(cycle, cycles)
    result["captures"] = lm.registry.stats()["captures"]
    return result


def main() -> None:
    """Run both soaks, print their growth against the goal, write ``results/resets.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=15)
    parser.add_argument("--json", type=Path, default=RESULTS / "resets.json")
    args = parser.parse_args()
    paddle.set_device("cpu")
    result: dict[str, Any] = {"cycles": args.cycles, "goal": {"threads_added": 4, "rss_added_mib": 64},
                              "layer": layer_workload(args.cycles), "llama": llama_workload(args.cycles),
                              "executor_cache_clears": EXECUTORS.clears}
    for name in ("layer", "llama"):
        found = result[name]
        if found is None:
            continue
        print(f"{name}: {args.cycles} reset + recapture cycles ({found['captures']} captures): threads "
              f"{found['start']['threads']} -> {found['end']['threads']} ({found['threads_added']:+d}), RSS "
              f"{found['start']['rss_mib']} -> {found['end']['rss_mib']} MiB ({found['rss_added_mib']:+d} MiB); "
              f"goal +4 threads, +64 MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
