"""The size planner: exactness against brute force, options, trace files, padding waste, the table."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import numpy as np
import pytest

from graphcap.decide.capture_sizes import fastdeploy_sizes
from graphcap.decide.size_planner import format_padding_table, load_trace, padding_waste, plan_capture_sizes
from graphcap.errors import ConfigError


def cost(trace: list[int], sizes: tuple[int, ...], cap: int | None = None) -> int:
    """Padded rows, by definition; steps above ``cap`` (or above the largest size) run eagerly."""
    total = 0
    for rows in trace:
        if rows == 0 or (cap is not None and rows > cap):
            continue
        total += min(s for s in sizes if s >= rows) - rows
    return total


def brute_force(trace: list[int], max_graphs: int, multiple_of: int, max_size: int | None) -> tuple[int, int]:
    """(least padding, fewest graphs reaching it) over every subset of every allowed size."""
    if max_size is None:
        top = -(-max(trace) // multiple_of) * multiple_of
    else:
        top = (max_size // multiple_of) * multiple_of
    candidates = list(range(multiple_of, top, multiple_of))
    best: tuple[int, int] | None = None
    for extra in range(0, max_graphs):
        for subset in itertools.combinations(candidates, extra):
            key = (cost(trace, (*subset, top), None if max_size is None else top), extra + 1)
            if best is None or key < best:
                best = key
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(60))
def test_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    multiple_of = rng.choice([1, 1, 2, 3])
    length = rng.randint(1, 14)
    trace = [rng.choice([0, *range(1, 13)]) * rng.choice([1, multiple_of]) for _ in range(length)]
    if not any(trace):
        trace.append(rng.randint(1, 12))
    max_size = rng.choice([None, None, rng.randint(multiple_of, 14)])
    max_graphs = rng.randint(1, 4)

    plan = plan_capture_sizes(trace, max_graphs, multiple_of=multiple_of, max_size=max_size)

    best_cost, fewest = brute_force(trace, max_graphs, multiple_of, max_size)
    cap = None if max_size is None else (max_size // multiple_of) * multiple_of
    assert cost(trace, plan, cap) == best_cost
    assert len(plan) == fewest
    assert list(plan) == sorted(set(plan))
    assert all(size % multiple_of == 0 for size in plan)
    if max_size is not None:
        assert plan[-1] == (max_size // multiple_of) * multiple_of
        stats = padding_waste(trace, plan)
        assert stats["padded_rows"] == best_cost
        assert stats["eager_steps"] == sum(1 for rows in trace if rows > plan[-1])


def test_larger_trace_matches_enumeration_over_trace_values() -> None:
    rng = np.random.default_rng(7)
    trace = [int(x) for x in rng.integers(0, 40, size=300)]
    plan = plan_capture_sizes(trace, 4)
    top = max(trace)
    weights = Counter(trace)
    values = sorted(n for n in weights if 0 < n < top)

    def weighted_cost(sizes: tuple[int, ...]) -> int:
        return sum(count * (min(s for s in sizes if s >= n) - n) for n, count in weights.items() if n > 0)

    best = min(
        weighted_cost((*subset, top)) for k in range(4) for subset in itertools.combinations(values, k)
    )
    assert cost(trace, plan) == best


def test_cost_never_increases_with_more_graphs() -> None:
    rng = np.random.default_rng(3)
    trace = [int(x) for x in rng.poisson(20, size=500)]
    costs = [padding_waste(trace, plan_capture_sizes(trace, g))["padded_rows"] for g in range(1, 30)]
    assert all(a >= b for a, b in itertools.pairwise(costs))
    assert costs[-1] == 0  # as many graphs as distinct values: no padding at all
    assert len(plan_capture_sizes(trace, 1000)) == len({n for n in trace if n > 0})


def test_multiple_of_respected_and_covers_rounded_max() -> None:
    trace = [4, 8, 12, 40, 44, 3, 0, 17]
    plan = plan_capture_sizes(trace, 3, multiple_of=4)
    assert all(size % 4 == 0 for size in plan)
    assert plan[-1] == 44
    assert plan_capture_sizes([17], 1, multiple_of=4) == (20,)


def test_max_size_caps_plan_and_leaves_larger_steps_eager() -> None:
    trace = [1, 2, 2, 3, 50, 60, 7]
    plan = plan_capture_sizes(trace, 3, max_size=10)
    assert plan[-1] == 10 and len(plan) <= 3
    assert plan == (2, 3, 10)
    stats = padding_waste(trace, plan)
    assert stats["eager_steps"] == 2 and stats["eager_rows"] == 110
    # rounded down to the multiple; a trace entirely above the cap still gets the one cap graph
    assert plan_capture_sizes(trace, 2, multiple_of=4, max_size=11)[-1] == 8
    assert plan_capture_sizes([100, 200], 3, max_size=16) == (16,)


def test_ties_prefer_fewer_graphs_and_are_deterministic() -> None:
    assert plan_capture_sizes([5, 5, 5, 0], 8) == (5,)
    trace = [3, 3, 3, 3, 6, 9, 9]
    assert plan_capture_sizes(trace, 2) == plan_capture_sizes(list(trace), 2)


def test_accepts_numpy_traces() -> None:
    trace = np.array([1, 2, 3, 8], dtype=np.int32)
    assert plan_capture_sizes(trace, 2) == plan_capture_sizes([1, 2, 3, 8], 2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"trace": [1, 2], "max_graphs": 0}, "max_graphs=0"),
        ({"trace": [1, 2], "max_graphs": 2, "multiple_of": 0}, "multiple_of=0"),
        ({"trace": [], "max_graphs": 2}, "trace is empty"),
        ({"trace": [1, -3], "max_graphs": 2}, "trace[1]=-3"),
        ({"trace": [1, 2.5], "max_graphs": 2}, "trace[1]=2.5"),
        ({"trace": [1, True], "max_graphs": 2}, "trace[1]=True"),
        ({"trace": [0, 0], "max_graphs": 2}, "no step with rows > 0"),
        ({"trace": [1, 2], "max_graphs": 2, "multiple_of": 4, "max_size": 3}, "max_size=3"),
        ({"trace": [1, 2], "max_graphs": "3"}, "max_graphs='3'"),
    ],
)
def test_plan_rejects_bad_input(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_capture_sizes(**kwargs)
    assert fragment in str(info.value)


def test_load_text_trace(tmp_path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("# header\n1 2, 3\n\n4,5  # trailing comment\n 6\n")
    assert load_trace(path) == [1, 2, 3, 4, 5, 6]
    assert load_trace(str(path)) == [1, 2, 3, 4, 5, 6]


def test_load_json_traces(tmp_path) -> None:
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps([3, 0, 7]))
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"rows": [1, 2]}))
    sniffed = tmp_path / "c.trace"
    sniffed.write_text("  [4, 5]")
    assert load_trace(plain) == [3, 0, 7]
    assert load_trace(wrapped) == [1, 2]
    assert load_trace(sniffed) == [4, 5]


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("bad.txt", "1 2\n3 x4\n", ["bad.txt", "line 2", "'x4'"]),
        ("neg.txt", "1\n-2\n", ["neg.txt", "line 2", "-2"]),
        ("float.txt", "1 2.5", ["float.txt", "'2.5'"]),
        ("empty.txt", "# nothing\n\n", ["empty.txt", "no row counts"]),
        ("bad.json", "[1, 2.5]", ["bad.json", "rows[1]=2.5"]),
        ("str.json", '[1, "2"]', ["str.json", 'rows[1]="2"']),
        ("broken.json", "[1, 2", ["broken.json", "not valid JSON"]),
        ("obj.json", '{"steps": [1]}', ["obj.json", "'rows'"]),
        ("scalar.json", "5", ["scalar.json", "int"]),
    ],
)
def test_load_trace_rejects_bad_files(tmp_path, name: str, content: str, fragments: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_load_trace_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.txt"):
        load_trace(tmp_path / "missing.txt")


def test_padding_waste_hand_example() -> None:
    trace = [1, 3, 4, 5, 0, 9, 8]
    stats = padding_waste(trace, [8, 4])
    assert stats["sizes"] == [4, 8] and stats["num_graphs"] == 2 and stats["largest"] == 8
    assert stats["steps"] == 7 and stats["zero_steps"] == 1
    assert stats["graph_steps"] == 5 and stats["eager_steps"] == 1 and stats["eager_rows"] == 9
    assert stats["real_rows"] == 1 + 3 + 4 + 5 + 8
    assert stats["padded_rows"] == 3 + 1 + 0 + 3 + 0
    assert stats["waste_ratio"] == pytest.approx(7 / 21)
    assert stats["per_bucket"] == {
        4: {"steps": 3, "real_rows": 8, "padded_rows": 4},
        8: {"steps": 2, "real_rows": 13, "padded_rows": 3},
    }
    with pytest.raises(ConfigError, match="sizes"):
        padding_waste(trace, [])
    with pytest.raises(ConfigError, match=r"sizes\[1\]=0"):
        padding_waste(trace, [4, 0])


def test_format_padding_table() -> None:
    trace = [1, 2, 3, 9]
    text = format_padding_table(
        trace, {"planner": plan_capture_sizes(trace, 2), "fastdeploy": fastdeploy_sizes(9)}
    )
    lines = text.splitlines()
    assert "policy" in lines[1] and "waste" in lines[1]
    assert lines[3].startswith("planner") and lines[4].startswith("fastdeploy")
    assert "1,2,4,8,9" in lines[4]
