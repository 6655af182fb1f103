"""Multi-rank agreement on ``paddle.distributed`` (2 CPU ranks, gloo over loopback).

``tests/rank_worker.py`` runs every scenario on each rank and writes what it
saw; one launch serves the whole module. The launch is bounded in time and
its process group killed on timeout, so an agreement bug (a rank waiting in a
collective forever) fails the tests instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from graphcap import CaptureRegistry, ConfigError, GraphConfig

WORKER = Path(__file__).with_name("rank_worker.py")
TIMEOUT_S = 300


def launch(tmp: Path, ranks: int, scenarios: str | None = None) -> list[dict]:
    """Run the worker on ``ranks`` ranks; returns each rank's results. Fails on timeout, killing every rank."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(ranks),
               "--log_dir", str(tmp / "log"), str(WORKER), str(tmp)]
    if scenarios:
        command.append(scenarios)
    env = {**os.environ, "GLOG_minloglevel": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        logs = "".join(path.read_text()[-2000:] for path in sorted((tmp / "log").glob("workerlog.*")))
        pytest.fail(f"the {ranks}-rank run did not finish in {TIMEOUT_S} s (a rank waits in a collective?)\n{logs}")
    results = []
    for rank in range(ranks):
        path = tmp / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no results:\n{output.decode(errors='replace')[-3000:]}"
        results.append(json.loads(path.read_text()))
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("ranks"), 2)


def scenario(results: list[dict], name: str) -> list[dict]:
    per_rank = [result[name] for result in results]
    for rank, got in enumerate(per_rank):
        assert "error" not in got, f"rank {rank} failed in {name}:\n{got['error']}"
    return per_rank


def test_different_rows_pad_to_one_bucket_and_count_the_same(two_ranks):
    zero, one = scenario(two_ranks, "different_rows")
    assert all(zero["correct"]) and all(one["correct"])
    # Both ranks count the agreed bucket, step for step (their real rows differ).
    steps = {rank: {bucket: usage["steps"] for bucket, usage in got["per_graph"]["t"].items()}
             for rank, got in enumerate((zero, one))}
    assert steps[0] == steps[1] == {"2": 2, "4": 2}
    assert zero["per_graph"]["t"]["4"]["real_rows"] == 7 and one["per_graph"]["t"]["4"]["real_rows"] == 5


def test_replan_adopts_one_plan_on_every_rank(two_ranks):
    zero, one = scenario(two_ranks, "replan_agrees")
    assert all(zero["correct"]) and all(one["correct"])
    # Each rank records its own rows: {1: 9, 3: 3} and {3: 9, 6: 3}. Their MAX is {1: 9, 3: 9, 6: 3},
    # and of two graphs keeping 8, (3, 8) pads least: 2*9 + 2*3 rows, against 51 for (1, 8).
    assert zero["sizes"] == one["sizes"] == [3, 8]
    assert zero["replans"] == one["replans"] == 1
    assert zero["eager_fallbacks"] == one["eager_fallbacks"] == 0


def test_one_rank_above_the_largest_bucket_makes_every_rank_eager(two_ranks):
    for got in scenario(two_ranks, "above_largest"):
        assert got["correct"] and got["replays"] == 0 and got["captures"] == 0
        assert got["fallbacks"][0]["reason"] == "more rows than the largest capture size 4 on some rank"


def test_a_rank_with_no_rows_still_replays(two_ranks):
    zero, one = scenario(two_ranks, "zero_rows")
    assert one["shapes"] == [[0, 5]] * 3 and all(one["correct"])
    assert zero["replays"] == one["replays"] == 3 and zero["captures"] == one["captures"] == 1
    assert one["per_graph"]["t"]["4"] == {"steps": 3, "real_rows": 0, "padded_rows": 12}


def test_a_capture_failing_on_one_rank_is_eager_everywhere(two_ranks):
    zero, one = scenario(two_ranks, "capture_failure")
    for got in (zero, one):
        assert all(got["correct"]) and got["replays"] == 0 and got["graphs"] == 0
        assert got["fallbacks"][0]["bucket"] == 4 and got["fallbacks"][0]["calls"] == 3
    assert one["capture_failures"] == 1 and "simulated on rank 1" in one["fallbacks"][0]["reason"]
    assert zero["fallbacks"][0]["reason"] == "capture failed on another rank"


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_tensor_parallel_all_reduce_inside_a_graph(two_ranks, backend):
    for got in scenario(two_ranks, f"tp_all_reduce_{backend}"):
        assert all(got["correct"]) and got["capture_failures"] == 0 and got["fallbacks"] == []
        assert got["captures"] == 2 and got["replays"] == 4  # buckets 4 and 1, every call replayed


def test_one_collective_per_engine_step(two_ranks):
    for got in scenario(two_ranks, "one_collective_per_step"):
        assert all(got["correct"])
        for step in got["per_step"]:
            assert step["collectives"] == 1 + step["captures"]  # the step's agreement + each capture's outcome
        assert [step["captures"] for step in got["per_step"]][2:] == [0, 0]


def test_data_parallel_mtp_equals_each_ranks_own_run(two_ranks):
    zero, one = scenario(two_ranks, "data_parallel_mtp")
    for got in (zero, one):
        assert got["identical"] and got["infer_seed_identical"]
        assert got["eager_fallbacks"] == 0
    assert zero["steps"] == one["steps"]  # the idle rank steps until the busy one is done
    target = {rank: {b: u["steps"] for b, u in got["per_graph"]["target"].items()} for rank, got in enumerate((zero, one))}
    assert target[0] == target[1]


def test_a_world_of_one_rank_pays_no_collective(tmp_path):
    [got] = launch(tmp_path, 1, "world_of_one")
    assert got["world_of_one"] == {"correct": True, "collectives": 0, "agreement": False}


def test_sync_ranks_without_a_parallel_environment_names_the_fix():
    with pytest.raises(ConfigError, match=r"paddle.distributed.init_parallel_env\(\)"):
        CaptureRegistry(GraphConfig(use_graph=True, sync_ranks=True))


def test_recapture_on_rebind_is_refused_with_sync_ranks():
    with pytest.raises(ConfigError, match="on_rebind='raise' with sync_ranks"):
        GraphConfig(use_graph=True, sync_ranks=True, on_rebind="recapture")


@pytest.mark.parametrize("name", ["paddleformers_plain", "paddleformers_speculative"])
def test_graphed_causal_lm_in_lockstep_equals_each_ranks_own_run(two_ranks, name):
    """A PaddleFormers Llama, plain or speculative (a copy as draft, k=2), sampled, rank 1 idle most steps."""
    zero, one = scenario(two_ranks, name)
    for got in (zero, one):
        assert got["identical"]  # tokens equal the rank's own single-rank run
        assert got["eager_fallbacks"] == 0 and got["fallbacks"] == []
    # The same graphs replay the same number of steps on both ranks, bucket by bucket.
    steps = [{graph: {b: u["steps"] for b, u in buckets.items()} for graph, buckets in got["per_graph"].items()}
             for got in (zero, one)]
    assert steps[0] == steps[1]
    assert zero["collectives"] == one["collectives"]
    # The idle rank replays padding rows where it has none of its own.
    graph = "target" if name.endswith("speculative") else "decode"
    assert sum(u["padded_rows"] for u in one["per_graph"][graph].values()) > 0
    assert one["replays_per_graph"][graph] > one["alone_replays"][graph]
    if name.endswith("speculative"):
        # The draft followed the target on every rank: one draft step per target step.
        for got in (zero, one):
            assert got["replays_per_graph"]["draft"] == got["replays_per_graph"]["target"]
        # A sampled target against a greedy copy of itself: most drafts, not all (0.73 measured).
        assert 0.5 < zero["acceptance_rate"] <= 1.0
