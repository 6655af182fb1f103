"""Plots from ``benchmarks/results/*.json`` (needs matplotlib: ``pip install -e '.[bench]'``).

    python benchmarks/plot_results.py [--results DIR]

* ``mtp.json`` -> ``mtp.png``: tokens/s with graphs off and on per (k, batch),
  the on/off ratio written over each pair (and ``device_mtp.json`` ->
  ``device_mtp.png`` when a device run left one).
* ``capture.json`` -> ``capture.png``: capture seconds per bucket, lazy vs
  ``capture_all`` with gc frozen and running.
* ``llama.json`` -> ``llama.png``: a PaddleFormers Llama's tokens/s with graphs
  off, on the eager backend and on the static backend, per batch.
* ``buckets.png`` (padding waste per policy) is drawn by ``bench_buckets.py``;
  it is reused when present and redrawn from ``buckets.json`` otherwise.

Without matplotlib it prints a one-line note and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def load(path: Path) -> dict[str, Any] | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mtp_series(result: dict[str, Any]) -> tuple[list[str], list[float], list[float], list[float]]:
    """From a bench_mtp result: labels ``k=K b=B``, tokens/s off, tokens/s on, on/off ratios."""
    labels, off, on, ratios = [], [], [], []
    for row in result.get("rows", []):
        labels.append(f"k={row['k']} b={row['batch']}")
        off.append(float(row["off"]["tokens_per_second"]))
        on.append(float(row["on"]["tokens_per_second"]))
        ratios.append(float(row["ratio"]))
    return labels, off, on, ratios


def plot_mtp(plt: Any, result: dict[str, Any], path: Path) -> str:
    """Grouped bars of tokens/s off vs on per configuration; returns a one-line note."""
    labels, off, on, ratios = mtp_series(result)
    if not labels:
        return f"no rows in the MTP result; skipped {path.name}"
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(labels) + 2), 4.5))
    positions = list(range(len(labels)))
    width = 0.38
    ax.bar([p - width / 2 for p in positions], off, width, label="graphs off (eager)")
    ax.bar([p + width / 2 for p in positions], on, width, label=f"graphs on ({result['setup']['backend']})",
           hatch="//")
    for p, high, ratio in zip(positions, [max(a, b) for a, b in zip(off, on)], ratios):
        ax.annotate(f"{ratio:.2f}x", (p, high), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, labels, rotation=30, ha="right")
    ax.set_ylabel("tokens / s (end to end)")
    setup = result["setup"]
    ax.set_title(f"MTP decode, graphs off vs on ({setup['backend']} backend, {setup['max_new_tokens']} new "
                 f"tokens/request); label = on/off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def plot_capture(plt: Any, result: dict[str, Any], path: Path) -> str:
    """Bars of capture seconds per bucket for each capture variant; returns a one-line note."""
    per_bucket = result.get("per_bucket_seconds", {})
    variants = [v for v in ("lazy", "capture_all", "capture_all_gc") if v in per_bucket]
    names = sorted({name for v in variants for name in per_bucket[v]},
                   key=lambda n: ({"target": 0, "draft": 1, "draft_next": 2}.get(n.split("[")[0], 3),
                                  int(n.split("[")[1].rstrip("]"))))
    if not names:
        return f"no buckets in the capture result; skipped {path.name}"
    titles = {"lazy": "lazy (first call)", "capture_all": "capture_all, gc frozen",
              "capture_all_gc": "capture_all, gc running"}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        positions = [p + (index - (len(variants) - 1) / 2) * width for p in range(len(names))]
        ax.bar(positions, [per_bucket[variant].get(n, 0.0) for n in names], width, label=titles[variant])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("capture seconds (median)")
    ax.set_title("Capture cost per bucket, static backend (MTPEngine k=2, max_batch 8)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def plot_llama(plt: Any, result: dict[str, Any], path: Path) -> str:
    """Grouped bars of tokens/s per mode at each batch size; returns a one-line note."""
    rows = result.get("tokens_per_second", [])
    if not rows:
        return f"no rows in the llama result; skipped {path.name}"
    modes = (("off", "graphs off"), ("eager", "graphs on, eager backend"), ("static", "graphs on, static backend"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(modes)
    for index, (mode, label) in enumerate(modes):
        positions = [p + (index - 1) * width for p in range(len(rows))]
        ax.bar(positions, [row["tokens_per_second"][mode] for row in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [f"batch {row['batch']}" for row in rows])
    ax.set_ylabel("tokens / s (greedy, median)")
    ax.set_title("PaddleFormers LlamaForCausalLM (tiny, random) through GraphedCausalLM, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def buckets_note(results_dir: Path) -> str:
    """Reuse ``buckets.png`` when present; redraw it from ``buckets.json`` with bench_buckets' plot otherwise."""
    png = results_dir / "buckets.png"
    if png.is_file():
        return f"kept {png} (drawn by bench_buckets.py)"
    data = load(results_dir / "buckets.json")
    if data is None or "results" not in data:
        return "no buckets.json; run benchmarks/bench_buckets.py for the padding-waste plot"
    sys.path.insert(0, str(HERE))
    import bench_buckets

    return bench_buckets.plot(data["results"], png)


def main(argv: list[str] | None = None) -> int:
    """Draw every plot whose JSON exists; returns the exit code (0 also without matplotlib)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI machines
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_results: matplotlib is not installed (pip install -e '.[bench]'); no plots written")
        return 0
    notes = []
    for name, plotter in (("mtp", plot_mtp), ("device_mtp", plot_mtp), ("capture", plot_capture),
                          ("llama", plot_llama)):
        data = load(args.results / f"{name}.json")
        if data is not None:
            notes.append(plotter(plt, data, args.results / f"{name}.png"))
        elif name != "device_mtp":
            notes.append(f"no {name}.json in {args.results}; skipped {name}.png")
    notes.append(buckets_note(args.results))
    for note in notes:
        print(f"plot_results: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
