"""``python -m graphcap demo --model llama-tiny``: a PaddleFormers Llama generating with graphs off and on.

Each mode builds its own ``GraphedCausalLM`` over the same model and runs the
prompts once (graphs are captured lazily in that pass, its capture seconds
reported), then ``timed_passes`` more times, interleaved with the other modes
round by round (``graphcap.interleave``); the table gives the median pass.
Generated tokens of every pass are compared exactly across modes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs

from graphcap.config import GraphConfig
from graphcap.demo_table import report
from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM
from graphcap.integrations.paddleformers.tiny import TINY_LLAMA, tiny_llama
from graphcap.interleave import interleaved_runs, median_seconds
from graphcap.validators import positive_int


@attrs.frozen(kw_only=True)
class LlamaDemoOptions:
    """What the Llama demo runs."""

    batch_size: int = 8
    num_prompts: int = 16
    max_new_tokens: int = 24
    backend: str = "static"
    greedy: bool = False
    modes: tuple[str, ...] = ("off", "on")
    seed: int = 0
    timed_passes: int = attrs.field(default=3, converter=lambda value: positive_int(value, "timed_passes"))


def demo_prompts(count: int, *, seed: int, vocab_size: int = TINY_LLAMA["vocab_size"]) -> list[list[int]]:
    """``count`` random prompts of 3 to 12 tokens (a fixed seed gives the same prompts)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(3, 12))] for _ in range(count)]


def run_modes(model: Any, options: LlamaDemoOptions) -> list[dict[str, Any]]:
    """Every mode's capture pass, then its timed passes interleaved with the others'; one row per mode."""
    max_len = TINY_LLAMA["max_position_embeddings"]
    lms = {
        mode: GraphedCausalLM(model, GraphConfig(use_graph=(mode == "on"), backend=options.backend,
                                                 max_capture_size=options.batch_size),
                              max_batch=options.batch_size, max_len=max_len)
        for mode in options.modes
    }
    prompts = demo_prompts(options.num_prompts, seed=options.seed)
    sampling: dict[str, Any] = {} if options.greedy else {"greedy": False, "top_p": 0.9, "top_k": 32, "seed": 1000}
    captures = {}
    for mode, lm in lms.items():
        lm.generate(prompts, options.max_new_tokens, **sampling)  # capture pass
        captures[mode] = lm.stats()
    runs = interleaved_runs(lambda mode: lms[mode].generate(prompts, options.max_new_tokens, **sampling),
                            options.modes, options.timed_passes)
    rows = []
    for mode, lm in lms.items():
        wall = median_seconds(runs[mode])
        generated = sum(len(row) for row in runs[mode][0].result)
        stats = lm.stats()
        rows.append({
            "mode": "graphs on" if mode == "on" else "graphs off",
            "backend": stats["backend"] if mode == "on" else "none",
            "tokens": generated,
            "timed_passes": options.timed_passes,
            "wall_seconds": round(wall, 3),
            "tokens_per_second": round(generated / wall, 1),
            "graphs": stats["graphs"],
            "capture_seconds": captures[mode]["capture_seconds"],
            "replays": stats["replays"],
            "eager_fallbacks": stats["eager_fallbacks"],
            "graph_coverage": stats["graph_coverage"],
            "padded_rows": stats["padded_rows"],
            "_passes": [timed.result for timed in runs[mode]],
        })
    return rows


def run_llama_demo(options: LlamaDemoOptions, json_path: Path | None = None) -> dict[str, Any]:
    """Run every mode over one tiny Llama, print the table and the identity line, write JSON."""
    model = tiny_llama(seed=options.seed)
    rows = run_modes(model, options)
    identical = all(row["_passes"] == rows[0]["_passes"] for row in rows)
    columns = [
        ("mode", "mode", "{}"), ("tokens", "tokens", "{}"), ("tok/s", "tokens_per_second", "{:.1f}"),
        ("graph coverage", "graph_coverage", "{:.1%}"),
        ("graphs", "graphs", "{}"), ("capture s", "capture_seconds", "{:.2f}"), ("replays", "replays", "{}"),
        ("eager fallbacks", "eager_fallbacks", "{}"), ("padded rows", "padded_rows", "{}"),
    ]
    sizes = ", ".join(f"{key}={value}" for key, value in TINY_LLAMA.items())
    title = (f"graphcap demo: PaddleFormers LlamaForCausalLM (random, {sizes}), {options.batch_size} slots, "
             f"{options.num_prompts} prompts x {options.max_new_tokens} new tokens, backend {options.backend}, "
             f"{'greedy' if options.greedy else 'top-p 0.9 / top-k 32 sampling'}; "
             f"median of {options.timed_passes} timed passes per mode, interleaved")
    return report(title, columns, rows, identical_line="tokens identical across modes", identical=identical,
                  header={"model": "llama-tiny", "options": attrs.asdict(options)}, json_path=json_path)
