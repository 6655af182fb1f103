"""Run every benchmark (``make bench``), each in its own process, then draw the plots.

    python benchmarks/run_all.py [--only NAME[,NAME...]]

Sizes are chosen so the whole run takes under 10 minutes on 2 CPU cores. Each
benchmark prints its table and writes JSON to ``benchmarks/results/``; a
benchmark that fails is reported and the rest still run (exit status 1 then).
The first step reruns the demo (``python -m graphcap demo``) into
``results/demo.json``: ``make demo`` writes to the ignored ``runs/`` instead, so
this is the only thing that changes the committed demo result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (name, script, arguments): a separate process each, so one benchmark's heap,
# gc state and to_static caches never leak into the next one's timings.
STEPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("demo", "run_demo.py", ()),
    ("overhead", "bench_overhead.py", ("--rounds", "20", "--inner", "150")),
    ("capture", "bench_capture.py", ("--repeats", "4")),
    ("buckets", "bench_buckets.py", ()),
    ("sampling_params", "bench_sampling_params.py", ("--rounds", "15", "--inner", "10")),
    ("mtp", "bench_mtp.py", ("--max-new-tokens", "24", "--passes", "5", "--profile")),
    ("llama", "bench_llama.py", ("--rounds", "5")),
    ("prefill", "bench_prefill.py", ("--rounds", "9")),
    ("speculative", "bench_speculative.py", ()),
    ("trust", "bench_trust.py", ()),
    ("ranks", "bench_ranks.py", ()),
    ("resets", "bench_resets.py", ()),
    ("replan", "bench_replan.py", ()),
    ("plots", "plot_results.py", ()),
)


def command(script: str, arguments: tuple[str, ...]) -> list[str]:
    """The command line that runs ``script`` with this interpreter."""
    return [sys.executable, str(HERE / script), *arguments]


def run_step(name: str, script: str, arguments: tuple[str, ...]) -> tuple[int, float]:
    """Run one benchmark with its output streamed through; returns (exit status, seconds)."""
    print(f"\n=== {name}: {' '.join([Path(script).name, *arguments])}", flush=True)
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ log lines drown the tables
    started = time.perf_counter()
    status = subprocess.run(command(script, arguments), cwd=HERE.parent, env=env, check=False).returncode
    return status, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the selected steps in order, print a summary with timings and where the results are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated step names: "
                        + ", ".join(name for name, _, _ in STEPS))
    args = parser.parse_args(argv)
    wanted = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = wanted - {name for name, _, _ in STEPS}
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}")
    started = time.perf_counter()
    summary = []
    for name, script, arguments in STEPS:
        if wanted and name not in wanted:
            continue
        status, seconds = run_step(name, script, arguments)
        summary.append((name, status, seconds))
    total = time.perf_counter() - started
    print("\n=== summary")
    for name, status, seconds in summary:
        print(f"{name:<16} {'ok' if status == 0 else f'FAILED (exit {status})':<18} {seconds:7.1f} s")
    print(f"{'total':<16} {'':<18} {total:7.1f} s")
    files = sorted(p.name for p in RESULTS.glob("*") if p.suffix in (".json", ".png", ".txt"))
    print(f"results in {RESULTS}: {', '.join(files) if files else '(none)'}")
    return 0 if all(status == 0 for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
