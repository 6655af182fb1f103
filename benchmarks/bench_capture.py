"""Capture cost on the ``static`` backend: seconds per bucket, lazy vs start-up, gc frozen or not, RSS.

    python benchmarks/bench_capture.py [--repeats N] [--json PATH]

The built-in model through ``MTPEngine`` (k=2, max_batch 8), so the graphs are
``target`` and ``draft`` at 3, 6, 12, 24 rows and ``draft_next`` at 1, 2, 4, 8
rows: 12 graphs. Three ways to capture them, each on a fresh engine:

* ``lazy``: a small ``generate`` workload whose live batch shrinks from 8
  requests to 1, so every bucket is captured on its first call (gc as usual).
* ``capture_all``: ``engine.capture_all()``, start-up capture with the Python
  garbage collector frozen (graphcap's default).
* ``capture_all_gc``: the same examples with ``freeze_gc=False``.

Seconds per bucket come from graphcap's own ``captured NAME[BUCKET] in S s``
debug log line (warmups + trace of that bucket). Resident memory is VmRSS
from ``/proc/self/status`` before and after, divided by the graphs captured.
A first, *cold* ``capture_all`` pays the process's one-time costs (dy2static
conversion of the step functions, imports) and is reported apart. Variants
alternate their order round by round; medians are reported. Timings on a
shared 2-core machine are noisy: compare ratios within one run only.
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"

# to_static warns once per traced ``.place`` access; it says nothing about capture cost.
warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
warnings.filterwarnings("ignore", message="No ccache found")

import paddle  # noqa: E402

from graphcap.config import GraphConfig  # noqa: E402
from graphcap.models.corpus import make_prompts  # noqa: E402
from graphcap.models.tiny_lm import load_tiny_lm  # noqa: E402
from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions  # noqa: E402

K = 2
MAX_BATCH = 8
VARIANTS = ("lazy", "capture_all", "capture_all_gc")


def rss_kib() -> int:
    """Resident set size of this process in KiB (``VmRSS`` of ``/proc/self/status``); 0 if unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CaptureLog(logging.Handler):
    """Collects graphcap's per-capture debug records: (graph, bucket, seconds, RSS KiB after)."""

    def __init__(self) -> None:
        """An empty log; attach with ``watch()``."""
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, int, float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the records that carry ``graphcap_capture = (graph, bucket, seconds)`` (one per capture)."""
        capture = getattr(record, "graphcap_capture", None)
        if capture is not None:
            name, bucket, seconds = capture
            self.records.append((str(name), int(bucket), float(seconds), rss_kib()))


@functools.lru_cache(maxsize=1)
def _logger() -> logging.Logger:
    logger = logging.getLogger("graphcap")
    logger.setLevel(logging.DEBUG)
    # Our handler only; graphcap's debug lines must not reach the console.
    logger.propagate = False
    return logger


def make_engine(use_graph: bool = True, backend: str = "static") -> MTPEngine:
    """A fresh k=2, max_batch 8 engine over the built-in model."""
    config = GraphConfig(use_graph=use_graph, backend=backend, num_speculative_tokens=K, max_capture_size=MAX_BATCH)
    return MTPEngine(config, max_batch=MAX_BATCH, sampling=SamplingOptions(greedy=True), bundle=load_tiny_lm(MAX_BATCH))


def lazy_workload() -> list[Request]:
    """8 requests with staggered lengths: the live batch shrinks 8 -> 1, touching every bucket."""
    prompts = make_prompts(MAX_BATCH, seed=3)
    return [Request(prompt=p, max_new_tokens=3 + 4 * i, seed=10 + i) for i, p in enumerate(prompts)]


def run_variant(variant: str) -> dict[str, Any]:
    """Capture every graph of a fresh engine one way; seconds, RSS and per-bucket records."""
    engine = make_engine()
    log = CaptureLog()
    logger = _logger()
    logger.addHandler(log)
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    try:
        if variant == "lazy":
            engine.generate(lazy_workload())
        elif variant == "capture_all":
            engine.capture_all()
        elif variant == "capture_all_gc":
            engine.capture_all(freeze_gc=False)
        else:
            raise ValueError(f"unknown variant {variant!r}")
    finally:
        logger.removeHandler(log)
    wall = time.perf_counter() - started
    after = rss_kib()
    stats = engine.stats()
    buckets = {}
    previous = before
    for name, bucket, seconds, rss in log.records:
        buckets[f"{name}[{bucket}]"] = {"seconds": seconds, "rss_kib": rss - previous}
        previous = rss
    graphs = stats["graphs"]
    result = {
        "variant": variant,
        "wall_seconds": wall,
        "capture_seconds": sum(seconds for _, _, seconds, _ in log.records),
        "graphs": graphs,
        "rss_kib": after - before,
        "rss_kib_per_graph": (after - before) / graphs if graphs else 0.0,
        "buckets": buckets,
    }
    del engine
    gc.collect()
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over runs."""
    return statistics.median(run[key] for run in runs)


def bucket_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median capture seconds per ``graph[bucket]`` over runs (buckets missing from a run are skipped)."""
    names: dict[str, list[float]] = {}
    for run in runs:
        for name, record in run["buckets"].items():
            names.setdefault(name, []).append(record["seconds"])
    return {name: statistics.median(values) for name, values in names.items()}


def bucket_order(name: str) -> tuple[int, int]:
    """Sort key for ``graph[bucket]`` labels: target, draft, draft_next; then bucket size."""
    graph, _, rest = name.partition("[")
    order = {"target": 0, "draft": 1, "draft_next": 2}
    return order.get(graph, 3), int(rest.rstrip("]") or 0)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: right-aligned columns, the first left-aligned, a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if index == 0 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        )

    out = [line(headers), "-" * len(line(headers))]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def bench(repeats: int) -> dict[str, Any]:
    """Cold capture_all, then ``repeats`` rounds of every variant in alternating order."""
    paddle.set_device("cpu")
    cold = run_variant("capture_all")
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for round_index in range(repeats):
        order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            runs[variant].append(run_variant(variant))
    per_bucket = {variant: bucket_medians(runs[variant]) for variant in VARIANTS}
    summary = {
        variant: {
            "wall_seconds": median_of(runs[variant], "wall_seconds"),
            "capture_seconds": median_of(runs[variant], "capture_seconds"),
            "graphs": min(run["graphs"] for run in runs[variant]),
            "rss_kib_per_graph": median_of(runs[variant], "rss_kib_per_graph"),
        }
        for variant in VARIANTS
    }
    frozen = summary["capture_all"]["capture_seconds"]
    ratios = {
        "capture_all_gc_vs_frozen": summary["capture_all_gc"]["capture_seconds"] / frozen if frozen else None,
        "lazy_vs_capture_all": summary["lazy"]["capture_seconds"] / frozen if frozen else None,
    }
    return {
        "benchmark": "bench_capture",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "paddle": paddle.__version__},
        "setup": {"backend": "static", "k": K, "max_batch": MAX_BATCH, "repeats": repeats},
        "cold_capture_all": cold,
        "summary": summary,
        "ratios": ratios,
        "per_bucket_seconds": per_bucket,
        "runs": runs,
    }


def report(result: dict[str, Any]) -> str:
    """The printed tables: per bucket, totals and ratios."""
    per_bucket = result["per_bucket_seconds"]
    cold = result["cold_capture_all"]
    names = sorted({name for values in per_bucket.values() for name in values} | set(cold["buckets"]),
                   key=bucket_order)
    rows = []
    for name in names:
        cells = [name]
        for variant in VARIANTS:
            value = per_bucket[variant].get(name)
            cells.append("-" if value is None else f"{value:.3f}")
        record = cold["buckets"].get(name)
        cells.append("-" if record is None else f"{record['seconds']:.3f}")
        cells.append("-" if record is None else f"{record['rss_kib']}")
        rows.append(cells)
    summary = result["summary"]
    rows.append(["total (capture)"] + [f"{summary[v]['capture_seconds']:.3f}" for v in VARIANTS]
                + [f"{cold['capture_seconds']:.3f}", f"{cold['rss_kib']}"])
    rows.append(["wall"] + [f"{summary[v]['wall_seconds']:.3f}" for v in VARIANTS]
                + [f"{cold['wall_seconds']:.3f}", ""])
    rows.append(["graphs"] + [str(summary[v]["graphs"]) for v in VARIANTS] + [str(cold["graphs"]), ""])
    rows.append(["RSS KiB / graph"] + [f"{summary[v]['rss_kib_per_graph']:.0f}" for v in VARIANTS]
                + [f"{cold['rss_kib_per_graph']:.0f}", ""])
    headers = ["graph[bucket] (s)", "lazy", "capture_all", "capture_all gc on", "cold", "cold RSS KiB"]
    ratios = result["ratios"]
    lines = [
        f"capture on the static backend: MTPEngine k={K}, max_batch {MAX_BATCH}; medians of "
        f"{result['setup']['repeats']} rounds (cold = first capture_all in the process)",
        format_table(headers, rows),
        f"capture_all with gc running / gc frozen: {ratios['capture_all_gc_vs_frozen']:.2f}x; "
        f"lazy (gc running) / capture_all (frozen): {ratios['lazy_vs_capture_all']:.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run, print the tables, write ``benchmarks/results/capture.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three variants (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS / "capture.json")
    args = parser.parse_args()
    result = bench(args.repeats)
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
