"""The main job: a batch of prompts through the MTP loop with graphs off and on, side by side.

Each mode gets its own engine over the same model. Every engine first runs
the requests once (graphs are captured lazily in that pass; its capture
seconds are reported), then ``timed_passes`` more times, interleaved with the
other modes round by round (``graphcap.interleave``); the table gives the
median pass. Tokens and the final ``infer_seed`` of every pass are compared
exactly across modes.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import attrs

from graphcap.config import GraphConfig
from graphcap.demo_table import report
from graphcap.interleave import interleaved_runs, median_seconds
from graphcap.models.corpus import make_prompts
from graphcap.models.tiny_lm import load_tiny_lm
from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions
from graphcap.validators import positive_int


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
    timed_passes: int = attrs.field(default=3, converter=lambda value: positive_int(value, "timed_passes"))


def _engine(options: DemoOptions, use_graph: bool) -> MTPEngine:
    config = GraphConfig(
        use_graph=use_graph,
        backend=options.backend,
        num_speculative_tokens=options.num_speculative_tokens,
        max_capture_size=options.batch_size,
        draft_use_graph=options.draft_use_graph,
    )
    return MTPEngine(
        config,
        max_batch=options.batch_size,
        num_model_steps=options.num_model_steps,
        sampling=SamplingOptions(greedy=options.greedy),
        bundle=load_tiny_lm(options.batch_size),
    )


def run_modes(options: DemoOptions) -> list[dict[str, Any]]:
    """Every mode's capture pass, then its timed passes interleaved with the others'; one row per mode."""
    prompts = make_prompts(options.num_prompts, seed=options.seed)
    requests = [
        Request(prompt=prompt, max_new_tokens=options.max_new_tokens, seed=1000 + index, top_p=0.9, top_k=32)
        for index, prompt in enumerate(prompts)
    ]
    engines = {mode: _engine(options, use_graph=(mode == "on")) for mode in options.modes}
    captures = {}
    for mode, engine in engines.items():
        engine.generate(requests)  # capture pass: graphs are captured lazily here
        captures[mode] = engine.stats()

    def timed_pass(mode: str) -> tuple[Any, Any, int]:
        tokens, run = engines[mode].generate(requests)
        return tokens, run, engines[mode].infer_seed()

    runs = interleaved_runs(timed_pass, options.modes, options.timed_passes)
    rows = []
    for mode, engine in engines.items():
        wall = median_seconds(runs[mode])
        decode = statistics.median(timed.result[1].decode_seconds for timed in runs[mode])
        _, run, _ = runs[mode][0].result
        stats = engine.stats()
        rows.append({
            "mode": "graphs on" if mode == "on" else "graphs off",
            "backend": stats["backend"] if mode == "on" else "none",
            "tokens": run.tokens,
            "timed_passes": options.timed_passes,
            "wall_seconds": round(wall, 3),
            "tokens_per_second": round(run.tokens / wall, 1),
            "decode_tokens_per_second": round((run.tokens - len(requests)) / max(decode, 1e-9), 1),
            "decode_steps": run.decode_steps,
            "mean_accepted_per_step": round(
                run.accepted_drafts / max(1, run.proposed_drafts) * options.num_speculative_tokens, 3),
            "acceptance_rate": round(run.acceptance_rate, 3),
            "graphs": stats["graphs"],
            "capture_seconds": captures[mode]["capture_seconds"],
            "eager_fallbacks": stats["eager_fallbacks"],
            "graph_coverage": stats["graph_coverage"],
            "padded_rows": stats["padded_rows"],
            # Every timed pass's (tokens, final infer_seed), compared across modes pass by pass.
            "_passes": [(timed.result[0], timed.result[2]) for timed in runs[mode]],
        })
    return rows


def run_demo(options: DemoOptions, json_path: Path | None = None) -> dict[str, Any]:
    """Run every mode, print the table and the identity line, write JSON; returns the result."""
    rows = run_modes(options)
    identical = all(row["_passes"] == rows[0]["_passes"] for row in rows)
    columns = [
        ("mode", "mode", "{}"), ("tokens", "tokens", "{}"), ("tok/s", "tokens_per_second", "{:.1f}"),
        ("graph coverage", "graph_coverage", "{:.1%}"),
        ("decode tok/s", "decode_tokens_per_second", "{:.1f}"), ("accepted/step", "mean_accepted_per_step", "{:.2f}"),
        ("accept rate", "acceptance_rate", "{:.1%}"), ("graphs", "graphs", "{}"),
        ("capture s", "capture_seconds", "{:.2f}"), ("eager fallbacks", "eager_fallbacks", "{}"),
        ("padded rows", "padded_rows", "{}"),
    ]
    title = (f"graphcap demo: MTP k={options.num_speculative_tokens}, batch {options.batch_size}, "
             f"{options.num_prompts} prompts x {options.max_new_tokens} new tokens, backend {options.backend}, "
             f"{'greedy' if options.greedy else 'top-p 0.9 / top-k 32 sampling'}; "
             f"median of {options.timed_passes} timed passes per mode, interleaved")
    return report(title, columns, rows, identical_line="tokens and final infer_seed identical across modes",
                  identical=identical, header={"options": attrs.asdict(options)}, json_path=json_path)
