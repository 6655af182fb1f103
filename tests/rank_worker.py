"""One rank of tests/test_ranks.py: every multi-rank scenario in turn, results written as JSON.

Launched by ``python -m paddle.distributed.launch --nproc_per_node 2
tests/rank_worker.py OUT_DIR``; each rank writes ``OUT_DIR/rank{r}.json``.
Every scenario records what it saw (outputs compared with direct calls,
stats); the test asserts. A scenario that raises records the error instead,
so one broken scenario fails its own test, not the whole run.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist

from graphcap import CaptureRegistry, GraphConfig
from graphcap.execute.backends.eager import EagerBackend


def registry(backend: str = "eager", **overrides: Any) -> CaptureRegistry:
    options = {"use_graph": True, "backend": backend, "capture_sizes": (1, 2, 4), "sync_ranks": True} | overrides
    return CaptureRegistry(GraphConfig(**options))


def same(a: paddle.Tensor, b: paddle.Tensor) -> bool:
    return list(a.shape) == list(b.shape) and np.array_equal(a.numpy(), b.numpy())


def different_rows(rank: int) -> dict[str, Any]:
    """Each rank its own row counts; every rank pads to the bucket of the largest."""
    reg = registry()
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 3 + 1)
    plan = [(3, 1), (1, 2), (4, 4), (2, 1)]  # (rank 0 rows, rank 1 rows) per step
    correct = []
    for pair in plan:
        x = paddle.randn([pair[rank], 5])
        correct.append(same(graphed(x=x), x * 3 + 1))
    return {"correct": correct, "per_graph": reg.stats()["per_graph"], "collectives": reg.stats()["collectives"]}


def above_largest(rank: int) -> dict[str, Any]:
    """One rank above the largest bucket: every rank runs eagerly."""
    reg = registry()
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x - 2)
    x = paddle.randn([7 if rank == 0 else 2, 5])
    correct = same(graphed(x=x), x - 2)
    stats = reg.stats()
    return {"correct": correct, "replays": stats["replays"], "captures": stats["captures"],
            "fallbacks": stats["fallbacks"]}


def zero_rows(rank: int) -> dict[str, Any]:
    """A rank with no rows still replays the agreed bucket, on padding rows only."""
    reg = registry()
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    shapes, correct = [], []
    for _ in range(3):
        x = paddle.randn([3 if rank == 0 else 0, 5])
        out = graphed(x=x)
        shapes.append(list(out.shape))
        correct.append(same(out, x * 2))
    stats = reg.stats()
    return {"shapes": shapes, "correct": correct, "replays": stats["replays"], "captures": stats["captures"],
            "per_graph": stats["per_graph"]}


class FailOnRankOne(EagerBackend):
    """Capturing fails on rank 1 only, as a device capture can on one GPU."""

    def capture(self, run, label, reachable=None):
        if dist.get_rank() == 1:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported (simulated on rank 1)")
        return super().capture(run, label, reachable)


def capture_failure(rank: int) -> dict[str, Any]:
    """A capture failing on one rank makes that bucket eager on every rank, with no hang."""
    config = GraphConfig(use_graph=True, capture_sizes=(2, 4), sync_ranks=True)
    reg = CaptureRegistry(config, backend=FailOnRankOne())
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x + 5)
    correct = []
    for _ in range(3):
        x = paddle.randn([3, 2])
        correct.append(same(graphed(x=x), x + 5))
    stats = reg.stats()
    return {"correct": correct, "replays": stats["replays"], "graphs": stats["graphs"],
            "fallbacks": stats["fallbacks"], "capture_failures": stats["capture_failures"]}


def tp_all_reduce(rank: int, backend: str) -> dict[str, Any]:
    """A TP-style all-reduce inside the graphed function, every rank in lockstep."""
    reg = registry(backend)
    weight = paddle.full([5, 5], float(rank + 1))

    def row_parallel(*, x):
        partial = paddle.matmul(x, weight)
        dist.all_reduce(partial)
        return partial

    graphed = reg.graphed("tp", batch_arg="x")(row_parallel)
    correct = []
    for rows in (3, 4, 1, 3):
        paddle.seed(rows)  # the same activations on both ranks, as in tensor parallelism
        x = paddle.randn([rows, 5])
        want = paddle.matmul(x, paddle.full([5, 5], 3.0))  # weights 1 and 2 summed over the ranks
        correct.append(bool(np.allclose(graphed(x=x).numpy(), want.numpy(), rtol=1e-5)))
    stats = reg.stats()
    return {"correct": correct, "replays": stats["replays"], "captures": stats["captures"],
            "capture_failures": stats["capture_failures"], "fallbacks": stats["fallbacks"]}


def one_collective_per_step(rank: int) -> dict[str, Any]:
    """``registry.step`` agrees once for every graphed call inside it."""
    reg = registry(num_speculative_tokens=1, capture_sizes=(2, 4, 8))
    target = reg.graphed("target", batch_arg="x")(lambda x: x * 2)
    draft = reg.graphed("draft", batch_arg="x", rows_per_request=1)(lambda x: x + 1)
    correct, per_step = [], []
    for requests in ([2, 1], [1, 3], [0, 2], [2, 2]):
        n = requests[rank]
        before = reg.stats()
        with reg.step(rows=n * 2) as step:
            x = paddle.randn([n * 2, 3])
            correct.append(same(target(x=x), x * 2))
            y = paddle.randn([n, 3])
            correct.append(same(draft(x=y), y + 1))
        correct.append(step.rows == max(requests) * 2)
        after = reg.stats()
        # Collectives this step: one agreement, plus one outcome agreement per capture.
        per_step.append({"collectives": after["collectives"] - before["collectives"],
                         "captures": after["captures"] - before["captures"]})
    stats = reg.stats()
    return {"correct": correct, "per_step": per_step, "per_graph": stats["per_graph"], "fallbacks": stats["fallbacks"]}


def data_parallel_mtp(rank: int) -> dict[str, Any]:
    """The MTP engine on two ranks with different loads equals a one-rank run of each rank's own prompts."""
    from graphcap.models.corpus import make_prompts
    from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions

    prompts = make_prompts(6 if rank == 0 else 2, seed=10 + rank)
    requests = [Request(prompt=p, max_new_tokens=10 + 4 * i, seed=100 * rank + i, top_p=0.9, top_k=32)
                for i, p in enumerate(prompts)]
    options = dict(use_graph=True, backend="eager", num_speculative_tokens=2, max_capture_size=4)
    alone = MTPEngine(GraphConfig(**options), max_batch=4, sampling=SamplingOptions(greedy=False))
    want, _ = alone.generate(requests)
    synced = MTPEngine(GraphConfig(**options, sync_ranks=True), max_batch=4, sampling=SamplingOptions(greedy=False))
    got, run = synced.generate(requests)
    stats = synced.stats()
    return {"identical": got == want, "infer_seed_identical": synced.infer_seed() == alone.infer_seed(),
            "steps": run.steps, "collectives": stats["collectives"], "captures": stats["captures"],
            "per_graph": stats["per_graph"], "eager_fallbacks": stats["eager_fallbacks"], "fallbacks": stats["fallbacks"]}


def paddleformers_lockstep(rank: int, draft_kind: str | None) -> dict[str, Any]:
    """GraphedCausalLM on two ranks with different loads (plain or speculative) equals each rank's own run."""
    from graphcap.integrations.paddleformers import GraphedCausalLM
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    target = tiny_llama(seed=0, scale=4.0, num_hidden_layers=2)
    draft = tiny_llama(seed=0, scale=4.0, num_hidden_layers=2) if draft_kind == "copy" else None
    k = 2 if draft is not None else 0
    # Rank 0 has three requests of different lengths, rank 1 one short one: rank 1 idles for most steps.
    prompts = [[5, 9, 13], [7, 1], [2, 3, 4, 5]] if rank == 0 else [[11, 4]]
    lengths = 10 if rank == 0 else 3
    options = dict(use_graph=True, backend="eager", num_speculative_tokens=k)

    def run(**extra: Any) -> tuple[list[list[int]], dict[str, Any]]:
        lm = GraphedCausalLM(target, GraphConfig(**options, **extra), max_batch=2, max_len=40, draft=draft)
        tokens = lm.generate(prompts, lengths, greedy=False, top_p=0.9, seed=7 + rank)
        return tokens, lm.stats()

    want, alone = run()
    got, stats = run(sync_ranks=True)
    return {"identical": got == want, "collectives": stats["collectives"], "per_graph": stats["per_graph"],
            "replays_per_graph": stats["replays_per_graph"], "eager_fallbacks": stats["eager_fallbacks"],
            "fallbacks": stats["fallbacks"], "alone_replays": alone["replays_per_graph"],
            "acceptance_rate": stats.get("acceptance_rate")}


def world_of_one(rank: int) -> dict[str, Any]:
    """sync_ranks with a single rank: no agreement object, no collective."""
    reg = registry()
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    with reg.step(rows=3):
        x = paddle.randn([3, 2])
        correct = same(graphed(x=x), x * 2)
    return {"correct": correct, "collectives": reg.stats()["collectives"], "agreement": reg.agreement is not None}


def replan_agrees(rank: int) -> dict[str, Any]:
    """Each rank saw other traffic; replan() agrees the histograms, so both adopt one plan in one step."""
    reg = registry(capture_sizes=(1, 2, 4, 8))
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 5 - 1)
    traffic = [1, 1, 1, 3] if rank == 0 else [3, 3, 6, 3]
    correct = []
    for rows in traffic * 3:
        x = paddle.randn([rows, 4])
        correct.append(same(graphed(x=x), x * 5 - 1))
    sizes = reg.replan(max_graphs=2)["t"]
    for rows in ([2, 5, 8, 0] if rank == 0 else [7, 1, 3, 3]):
        x = paddle.randn([rows, 4])
        correct.append(same(graphed(x=x), x * 5 - 1))
    stats = reg.stats()
    return {"correct": correct, "sizes": list(sizes), "replans": stats["replans"],
            "eager_fallbacks": stats["eager_fallbacks"]}


SCENARIOS = {
    "replan_agrees": replan_agrees,
    "different_rows": different_rows,
    "above_largest": above_largest,
    "zero_rows": zero_rows,
    "capture_failure": capture_failure,
    "tp_all_reduce_eager": lambda rank: tp_all_reduce(rank, "eager"),
    "tp_all_reduce_static": lambda rank: tp_all_reduce(rank, "static"),
    "one_collective_per_step": one_collective_per_step,
    "data_parallel_mtp": data_parallel_mtp,
    "world_of_one": world_of_one,
    "paddleformers_plain": lambda rank: paddleformers_lockstep(rank, None),
    "paddleformers_speculative": lambda rank: paddleformers_lockstep(rank, "copy"),
}


def main() -> None:
    out = Path(sys.argv[1])
    wanted = sys.argv[2].split(",") if len(sys.argv) > 2 else list(SCENARIOS)
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank = dist.get_rank()
    results: dict[str, Any] = {"world_size": dist.get_world_size()}
    for name in wanted:
        paddle.seed(1234)
        try:
            results[name] = SCENARIOS[name](rank)
        except Exception:  # recorded: the test names the scenario and shows the traceback
            results[name] = {"error": traceback.format_exc()}
        (out / f"rank{rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
