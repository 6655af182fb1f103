"""Online re-planning across a traffic shift: padding waste before and after, against the offline optimum.

    python benchmarks/bench_replan.py [--graphs 8] [--every 250]

One graphed function (eager backend, a Linear: the planner's decisions, not
the maths, are measured) serves the shipped ``steady`` trace, then the
``bursty`` one, through ``registry.step()`` with automatic re-planning every
``--every`` steps (``replan_every``, hysteresis ``replan_min_gain=0.1``),
starting from FastDeploy's default sizes cut to ``--graphs`` graphs. Reported,
as padded rows / real rows of the graph steps:

* each trace's second half, as served online (after the re-plans settled);
* the bursty trace's first window, served with the sizes planned for steady
  (the stale plan, before the first re-plan after the shift);
* the offline optimum for each trace with the same graph count and largest
  size (``plan_capture_sizes`` over the whole trace), on the whole trace and
  on the same second-half steps, and FastDeploy's default list cut the same way.

Writes ``benchmarks/results/replan.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import paddle

from graphcap import CaptureRegistry, GraphConfig
from graphcap.decide.capture_sizes import fastdeploy_sizes
from graphcap.decide.size_planner import load_trace, padding_waste, plan_capture_sizes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def ratio(padded: int, real: int) -> float:
    """Padded rows per real row (0.0 when nothing ran in a graph)."""
    return padded / real if real else 0.0


def totals(fn: Any) -> tuple[int, int]:
    """(padded rows, real rows) the function's graphs served so far (eager steps excluded)."""
    graph = [usage for bucket, usage in fn.padding.per_bucket.items() if bucket is not None]
    return sum(usage.padded_rows for usage in graph), sum(usage.real_rows for usage in graph)


def starting_sizes(graphs: int, largest: int) -> tuple[int, ...]:
    """FastDeploy's default list up to ``largest``, cut to ``graphs`` sizes evenly, keeping the largest."""
    default = [size for size in fastdeploy_sizes(largest) if size < largest]
    step = max(1, len(default) // max(graphs - 1, 1))
    return tuple(sorted({*default[::step][: graphs - 1], largest}))


def run(graphs: int, every: int) -> dict[str, Any]:
    """Serve steady then bursty with online re-planning; return the waste figures."""
    paddle.set_device("cpu")
    traces = {name: load_trace(HERE / "traces" / f"{name}.txt") for name in ("steady", "bursty")}
    largest = max(max(trace) for trace in traces.values())
    start = starting_sizes(graphs, largest)
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=start, replan_every=every,
                                      replan_min_gain=0.1))
    lin = paddle.nn.Linear(4, 4)

    @reg.graphed("decode", batch_arg="x")
    def decode(x: paddle.Tensor) -> paddle.Tensor:
        return lin(x)

    inputs = paddle.randn([largest, 4])
    phases: dict[str, Any] = {}
    sizes_seen: list[list[int]] = []
    for name, trace in traces.items():
        half = len(trace) // 2
        marks: dict[str, tuple[int, int]] = {"start": totals(decode)}
        for index, rows in enumerate(trace):
            if index == every:
                marks["first_window"] = totals(decode)
            if index == half:
                marks["half"] = totals(decode)
            with reg.step(rows=rows):
                decode(inputs[:rows])
            if not sizes_seen or list(decode.buckets.sizes) != sizes_seen[-1]:
                sizes_seen.append(list(decode.buckets.sizes))
        marks["end"] = totals(decode)

        def between(a: str, b: str, marks: dict[str, tuple[int, int]] = marks) -> float:
            return ratio(marks[b][0] - marks[a][0], marks[b][1] - marks[a][1])

        optimum = plan_capture_sizes(trace, graphs, max_size=largest)
        phases[name] = {
            "online_first_window": between("start", "first_window"),
            "online_second_half": between("half", "end"),
            "sizes_at_end": list(decode.buckets.sizes),
            "offline_optimum": padding_waste(trace, optimum)["waste_ratio"],
            "offline_optimum_second_half": padding_waste(trace[half:], optimum)["waste_ratio"],
            "offline_optimum_sizes": list(optimum),
            "fastdeploy_default_cut": padding_waste(trace, start)["waste_ratio"],
        }
    stats = reg.stats()
    return {"graphs": graphs, "replan_every": every, "largest": largest, "starting_sizes": list(start),
            "phases": phases, "replans": stats["replans"], "captures": stats["captures"],
            "sizes_over_time": sizes_seen}


def main() -> None:
    """Print the waste table and write ``results/replan.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=8)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--json", type=Path, default=RESULTS / "replan.json")
    args = parser.parse_args()
    result = run(args.graphs, args.every)
    print(f"{args.graphs} graphs, re-plan every {args.every} steps, start {result['starting_sizes']}: "
          f"{result['replans']} re-plans, {result['captures']} captures")
    print(f"{'trace':<8}{'stale/first window':>20}{'online 2nd half':>17}{'offline optimum':>17}"
          f"{'same steps':>12}{'FastDeploy cut':>16}")
    for name, phase in result["phases"].items():
        print(f"{name:<8}{phase['online_first_window']:>20.3f}{phase['online_second_half']:>17.3f}"
              f"{phase['offline_optimum']:>17.3f}{phase['offline_optimum_second_half']:>12.3f}"
              f"{phase['fastdeploy_default_cut']:>16.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
