"""The main job: a batch of prompts through the MTP loop with graphs off and on, side by side.

Each configuration runs the same requests twice in one process: the first
pass captures graphs lazily (its capture seconds are reported), the second is
timed. Tokens and the final ``infer_seed`` of the runs are compared exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs

from graphcap.config import GraphConfig
from graphcap.models.corpus import make_prompts
from graphcap.models.tiny_lm import load_tiny_lm
from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions


@attrs.frozen(kw_only=True)
class DemoOptions:
    """What the demo runs; the CLI fills it from flags."""

    num_speculative_tokens: int = 2
    num_model_steps: int | None = None
    batch_size: int = 8
    num_prompts: int = 16
    max_new_tokens: int = 48
    backend: str = "static"
    greedy: bool = False
    draft_use_graph: bool = True
    modes: tuple[str, ...] = ("off", "on")
    seed: int = 0


def run_mode(options: DemoOptions, use_graph: bool) -> dict[str, Any]:
    """Run one configuration (a capture pass, then a timed pass); return its row of the table."""
    config = GraphConfig(
        use_graph=use_graph,
        backend=options.backend,
        num_speculative_tokens=options.num_speculative_tokens,
        max_capture_size=options.batch_size,
        draft_use_graph=options.draft_use_graph,
    )
    prompts = make_prompts(options.num_prompts, seed=options.seed)
    requests = [
        Request(prompt=prompt, max_new_tokens=options.max_new_tokens, seed=1000 + index, top_p=0.9, top_k=32)
        for index, prompt in enumerate(prompts)
    ]
    engine = MTPEngine(
        config,
        max_batch=options.batch_size,
        num_model_steps=options.num_model_steps,
        sampling=SamplingOptions(greedy=options.greedy),
        bundle=load_tiny_lm(options.batch_size),
    )
    engine.generate(requests)  # capture pass: graphs are captured lazily here
    capture = engine.stats()
    started = time.perf_counter()
    tokens, run = engine.generate(requests)
    wall = time.perf_counter() - started
    stats = engine.stats()
    return {
        "mode": "graphs on" if use_graph else "graphs off",
        "backend": stats["backend"] if use_graph else "none",
        "tokens": run.tokens,
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(run.tokens / wall, 1),
        "decode_tokens_per_second": round((run.tokens - len(requests)) / run.decode_seconds, 1)
        if run.decode_seconds
        else 0.0,
        "decode_steps": run.decode_steps,
        "mean_accepted_per_step": round(run.accepted_drafts / max(1, run.proposed_drafts) * options.num_speculative_tokens, 3),
        "acceptance_rate": round(run.acceptance_rate, 3),
        "graphs": stats["graphs"],
        "capture_seconds": capture["capture_seconds"],
        "eager_fallbacks": stats["eager_fallbacks"],
        "padded_rows": stats["padded_rows"],
        "_tokens": tokens,
        "_infer_seed": engine.infer_seed(),
    }


def run_demo(options: DemoOptions, json_path: Path | None = None) -> dict[str, Any]:
    """Run every mode, print the table and the identity line, write JSON; returns the result."""
    rows = [run_mode(options, use_graph=(mode == "on")) for mode in options.modes]
    reference = rows[0]
    identical = all(
        row["_tokens"] == reference["_tokens"] and row["_infer_seed"] == reference["_infer_seed"] for row in rows
    )
    columns = [
        ("mode", "mode", "{}"), ("tokens", "tokens", "{}"), ("tok/s", "tokens_per_second", "{:.1f}"),
        ("decode tok/s", "decode_tokens_per_second", "{:.1f}"), ("accepted/step", "mean_accepted_per_step", "{:.2f}"),
        ("accept rate", "acceptance_rate", "{:.1%}"), ("graphs", "graphs", "{}"),
        ("capture s", "capture_seconds", "{:.2f}"), ("eager fallbacks", "eager_fallbacks", "{}"),
        ("padded rows", "padded_rows", "{}"),
    ]
    header = " | ".join(title for title, _, _ in columns)
    print(f"graphcap demo: MTP k={options.num_speculative_tokens}, batch {options.batch_size}, "
          f"{options.num_prompts} prompts x {options.max_new_tokens} new tokens, backend {options.backend}, "
          f"{'greedy' if options.greedy else 'top-p 0.9 / top-k 32 sampling'}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(" | ".join(fmt.format(row[key]) for _, key, fmt in columns))
    print(f"tokens and final infer_seed identical across modes: {'yes' if identical else 'NO'}")
    result = {
        "options": attrs.asdict(options),
        "rows": [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows],
        "identical": identical,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
