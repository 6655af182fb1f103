"""Data-parallel MTP on 2 CPU ranks with graphcap's agreement: equality, agreement cost, padding.

    python benchmarks/bench_ranks.py [--steps N] [--json PATH]

Launches itself on 2 ranks (``python -m paddle.distributed.launch``, gloo
over loopback). Each rank:

1. decodes its own prompts (rank 0 six requests, rank 1 two: different loads)
   with the MTP engine, ``sync_ranks=True``, and again alone with
   ``sync_ranks=False``; the tokens must be identical;
2. measures one engine step with and without agreement, interleaved round
   by round in lockstep on both ranks: a ``registry.step`` holding one
   replayed graph, on a registry with ``sync_ranks`` and on one without;
3. reports the padding agreement added (the idle rank replays padding rows
   while the other decodes; every rank pads to the largest rows).

Writes ``results/ranks.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(out: Path, steps: int, rounds: int) -> None:
    """One rank's part (run under paddle.distributed.launch)."""
    import paddle
    import paddle.distributed as dist

    from graphcap import CaptureRegistry, GraphConfig
    from graphcap.models.corpus import make_prompts
    from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions

    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank = dist.get_rank()

    # 1. Equality and padding: different loads per rank.
    prompts = make_prompts(6 if rank == 0 else 2, seed=20 + rank)
    requests = [Request(prompt=p, max_new_tokens=16, seed=1000 * rank + i, top_p=0.9, top_k=32)
                for i, p in enumerate(prompts)]
    options = dict(use_graph=True, backend="eager", num_speculative_tokens=2, max_capture_size=4)
    alone = MTPEngine(GraphConfig(**options), max_batch=4, sampling=SamplingOptions(greedy=False))
    want, alone_run = alone.generate(requests)
    synced = MTPEngine(GraphConfig(**options, sync_ranks=True), max_batch=4, sampling=SamplingOptions(greedy=False))
    got, synced_run = synced.generate(requests)
    alone_stats, synced_stats = alone.stats(), synced.stats()

    # 2. Cost of one step's agreement, interleaved, the same calls on both ranks.
    def one_step_registry(sync: bool) -> tuple[CaptureRegistry, object]:
        reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(4,), sync_ranks=sync))
        graphed = reg.graphed("t", batch_arg="x")(lambda x: x + 1)
        return reg, graphed

    cases = {"agreement": one_step_registry(True), "none": one_step_registry(False)}
    x = paddle.ones([3 if rank == 0 else 1, 8])
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (reg, graphed) in cases.items():
            dist.barrier()  # both ranks start each timed block together
            started = time.perf_counter()
            for _ in range(steps):
                with reg.step(rows=x.shape[0]):
                    graphed(x=x)
            samples[name].append((time.perf_counter() - started) / steps * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {
        "rank": rank,
        "requests": len(requests),
        "identical_to_single_rank": got == want,
        "infer_seed_identical": synced.infer_seed() == alone.infer_seed(),
        "steps_alone": alone_run.steps,
        "steps_synced": synced_run.steps,
        "real_rows": synced_stats["real_rows"],
        "padded_rows_alone": alone_stats["padded_rows"],
        "padded_rows_synced": synced_stats["padded_rows"],
        "collectives": synced_stats["collectives"],
        "graph_coverage": synced_stats["graph_coverage"],
        "step_us": {name: round(value, 1) for name, value in medians.items()},
        "agreement_us": round(medians["agreement"] - medians["none"], 1),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Launch 2 ranks, merge their results, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=RESULTS / "ranks.json")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.steps, args.rounds)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                   str(Path(tmp) / "log"), __file__, "--worker", tmp, "--steps", str(args.steps),
                   "--rounds", str(args.rounds)]
        env = {**os.environ, "GLOG_minloglevel": "2"}
        status = subprocess.run(command, env=env, timeout=args.timeout, check=False,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        paths = [Path(tmp) / f"rank{rank}.json" for rank in (0, 1)]
        if status != 0 or not all(path.exists() for path in paths):
            logs = "".join(path.read_text()[-3000:] for path in sorted((Path(tmp) / "log").glob("workerlog.*")))
            print(f"bench_ranks: the 2-rank run failed (exit {status})\n{logs}")
            return 1
        ranks = [json.loads(path.read_text()) for path in paths]
    print(f"{'rank':>4} {'requests':>8} {'identical':>9} {'steps':>6} {'real rows':>9} {'padded alone':>12} "
          f"{'padded synced':>13} {'step µs agreed':>14} {'step µs none':>12} {'agreement µs':>12} {'coverage':>8}")
    for rank in ranks:
        print(f"{rank['rank']:>4} {rank['requests']:>8} {str(rank['identical_to_single_rank']):>9} "
              f"{rank['steps_synced']:>6} {rank['real_rows']:>9} {rank['padded_rows_alone']:>12} "
              f"{rank['padded_rows_synced']:>13} {rank['step_us']['agreement']:>14.1f} {rank['step_us']['none']:>12.1f} "
              f"{rank['agreement_us']:>12.1f} {rank['graph_coverage']:>8.1%}")
    result = {"ranks": ranks, "steps_per_block": args.steps, "rounds": args.rounds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(rank["identical_to_single_rank"] for rank in ranks) else 1


if __name__ == "__main__":
    sys.exit(main())
