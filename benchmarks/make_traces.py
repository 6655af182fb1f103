"""Write the batch-size traces that bench_buckets.py measures padding on (deterministic, seeded).

    python benchmarks/make_traces.py            # writes benchmarks/traces/*.txt

Each trace is the row count of every decode step of a simulated continuous-batching
engine: requests arrive (Poisson), each decode step every running request emits one
token, and a request finishes after a geometric number of tokens. Three traces:

* ``steady.txt``: steady decode around 6, 24 and 48 concurrent requests (phases
  of a few hundred steps, revisited), requests finishing and arriving all the time;
* ``bursty.txt``: light background load with bursts of arrivals that lift the
  batch to ~100 requests, then decay as requests finish;
* ``spec_k3.txt``: speculative decoding with k=3 draft tokens: the verify step of
  n requests has n*4 rows, so every value is a multiple of 4.

And one prompt-length trace, ``prompts/prompt_lengths.txt`` (a subfolder, so
bench_buckets' batch-size glob does not read it): the token count of every
prompt admitted, for planning prefill token buckets (``bench_prefill.py``).
It is synthetic, not a recorded workload: a mixture of short chat turns
(log-normal, median 48 tokens), long documents with a question (log-normal,
median 600 tokens) and a few very short probes (1-8 tokens), capped at 2048.

Same seed, same files: the output is byte-identical from run to run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TRACE_DIR = Path(__file__).resolve().parent / "traces"
STEPS = 3000
SEED = 20240611


def _simulate(rng: np.random.Generator, arrival_rate: np.ndarray, mean_tokens: float, cap: int) -> list[int]:
    """Running-request count per step: arrivals ~ Poisson(rate[t]), each request ends w.p. 1/mean_tokens."""
    running = 0
    counts: list[int] = []
    finish_p = 1.0 / mean_tokens
    for rate in arrival_rate:
        running -= int(rng.binomial(running, finish_p)) if running else 0
        running = min(cap, running + int(rng.poisson(rate)))
        counts.append(running)
    return counts


def steady(rng: np.random.Generator) -> list[int]:
    """Phases at 6, 24 and 48 concurrent requests; the stationary mean is rate * mean_tokens."""
    mean_tokens = 150.0
    levels = [24, 6, 48, 24, 6, 48, 24]
    lengths = rng.integers(300, 560, size=len(levels))
    lengths[-1] = STEPS - int(lengths[:-1].sum())
    rate = np.concatenate(
        [np.full(int(n), level / mean_tokens) for level, n in zip(levels, lengths, strict=True)]
    )
    return _simulate(rng, rate, mean_tokens, cap=128)


def bursty(rng: np.random.Generator) -> list[int]:
    """Background of ~4 requests; every few hundred steps a burst of ~95 arrivals over a few steps."""
    mean_tokens = 120.0
    rate = np.full(STEPS, 4 / mean_tokens)
    t = int(rng.integers(50, 150))
    while t < STEPS - 10:
        width = int(rng.integers(2, 6))
        total = float(rng.uniform(80, 100))
        rate[t : t + width] += total / width
        t += int(rng.integers(250, 450))
    return _simulate(rng, rate, mean_tokens, cap=128)


def spec_k3(rng: np.random.Generator) -> list[int]:
    """Requests around 8 and 32 (slow ramps between), rows = requests * (k+1) with k=3."""
    mean_tokens = 100.0
    knots = np.array([0, 500, 900, 1500, 1900, 2500, STEPS])
    level = np.array([8, 8, 32, 32, 12, 40, 40], dtype=float)
    rate = np.interp(np.arange(STEPS), knots, level) / mean_tokens
    return [n * 4 for n in _simulate(rng, rate, mean_tokens, cap=64)]


PROMPT_COUNT = 4000
PROMPT_CAP = 2048


def prompt_lengths(rng: np.random.Generator) -> list[int]:
    """Tokens per prompt: 70% chat turns, 25% long documents, 5% probes of 1-8 tokens, at most PROMPT_CAP."""
    kind = rng.choice(3, size=PROMPT_COUNT, p=[0.70, 0.25, 0.05])
    chat = rng.lognormal(np.log(48.0), 0.8, size=PROMPT_COUNT)
    document = rng.lognormal(np.log(600.0), 0.5, size=PROMPT_COUNT)
    probe = rng.integers(1, 9, size=PROMPT_COUNT)
    lengths = np.select([kind == 0, kind == 1], [chat, document], probe)
    return [int(n) for n in np.clip(np.ceil(lengths), 1, PROMPT_CAP)]


TRACES = {
    "steady": (steady, "steady decode around 6, 24 and 48 concurrent requests"),
    "bursty": (bursty, "bursts of arrivals to ~100 requests over a light background, then decay"),
    "spec_k3": (spec_k3, "speculative decoding k=3: rows = requests * 4 (multiple_of=4)"),
}


def write_traces(directory: Path = TRACE_DIR) -> list[Path]:
    """Write every trace into ``directory`` (the prompt-length one into ``directory/prompts``); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_prompt_trace(directory / "prompts")]
    for offset, (name, (make, description)) in enumerate(TRACES.items()):
        rows = make(np.random.default_rng(SEED + offset))
        path = directory / f"{name}.txt"
        header = (
            f"# graphcap batch-size trace: {description}\n"
            f"# {len(rows)} decode steps, rows per step; generated by benchmarks/make_traces.py "
            f"(seed {SEED + offset})\n"
        )
        lines = [" ".join(str(n) for n in rows[i : i + 20]) for i in range(0, len(rows), 20)]
        path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


def write_prompt_trace(directory: Path) -> Path:
    """Write ``prompt_lengths.txt`` (tokens per prompt, seeded) into ``directory``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    seed = SEED + len(TRACES)
    lengths = prompt_lengths(np.random.default_rng(seed))
    path = directory / "prompt_lengths.txt"
    header = (
        "# graphcap prompt-length trace (synthetic): 70% chat turns (median 48 tokens), 25% long documents "
        "(median 600), 5% probes (1-8)\n"
        f"# {len(lengths)} prompts, tokens per prompt, at most {PROMPT_CAP}; generated by "
        f"benchmarks/make_traces.py (seed {seed})\n"
    )
    lines = [" ".join(str(n) for n in lengths[i : i + 20]) for i in range(0, len(lengths), 20)]
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=TRACE_DIR, help="directory to write the traces into")
    args = parser.parse_args()
    for path in write_traces(args.out):
        rows = [
            int(tok)
            for line in path.read_text().splitlines()
            if not line.startswith("#")
            for tok in line.split()
        ]
        print(f"{path}: {len(rows)} values, {min(rows)}..{max(rows)}, mean {sum(rows) / len(rows):.1f}")


if __name__ == "__main__":
    main()
