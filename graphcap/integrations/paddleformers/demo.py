"""``python -m graphcap demo --model llama-tiny``: a PaddleFormers Llama generating with graphs off and on.

Each mode builds its own ``GraphedCausalLM`` over the same model, runs the
prompts once (graphs are captured lazily in that pass, its capture seconds
reported), then again timed. Generated tokens are compared exactly.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import attrs

from graphcap.config import GraphConfig
from graphcap.integrations.paddleformers.causal_lm import GraphedCausalLM
from graphcap.integrations.paddleformers.tiny import TINY_LLAMA, tiny_llama


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


def demo_prompts(count: int, *, seed: int, vocab_size: int = TINY_LLAMA["vocab_size"]) -> list[list[int]]:
    """``count`` random prompts of 3 to 12 tokens (a fixed seed gives the same prompts)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(3, 12))] for _ in range(count)]


def run_mode(model: Any, options: LlamaDemoOptions, use_graph: bool) -> dict[str, Any]:
    """One configuration: a capture pass, then a timed pass; returns its row of the table."""
    config = GraphConfig(use_graph=use_graph, backend=options.backend, max_capture_size=options.batch_size)
    lm = GraphedCausalLM(model, config, max_batch=options.batch_size, max_len=TINY_LLAMA["max_position_embeddings"])
    prompts = demo_prompts(options.num_prompts, seed=options.seed)
    sampling: dict[str, Any] = {} if options.greedy else {"greedy": False, "top_p": 0.9, "top_k": 32, "seed": 1000}
    lm.generate(prompts, options.max_new_tokens, **sampling)  # capture pass
    capture = lm.stats()
    started = time.perf_counter()
    tokens = lm.generate(prompts, options.max_new_tokens, **sampling)
    wall = time.perf_counter() - started
    stats = lm.stats()
    generated = sum(len(row) for row in tokens)
    return {
        "mode": "graphs on" if use_graph else "graphs off",
        "backend": stats["backend"] if use_graph else "none",
        "tokens": generated,
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(generated / wall, 1),
        "graphs": stats["graphs"],
        "capture_seconds": capture["capture_seconds"],
        "replays": stats["replays"],
        "eager_fallbacks": stats["eager_fallbacks"],
        "padded_rows": stats["padded_rows"],
        "_tokens": tokens,
    }


def run_llama_demo(options: LlamaDemoOptions, json_path: Path | None = None) -> dict[str, Any]:
    """Run every mode over one tiny Llama, print the table and the identity line, write JSON."""
    model = tiny_llama(seed=options.seed)
    rows = [run_mode(model, options, use_graph=(mode == "on")) for mode in options.modes]
    identical = all(row["_tokens"] == rows[0]["_tokens"] for row in rows)
    columns = [
        ("mode", "mode", "{}"), ("tokens", "tokens", "{}"), ("tok/s", "tokens_per_second", "{:.1f}"),
        ("graphs", "graphs", "{}"), ("capture s", "capture_seconds", "{:.2f}"), ("replays", "replays", "{}"),
        ("eager fallbacks", "eager_fallbacks", "{}"), ("padded rows", "padded_rows", "{}"),
    ]
    header = " | ".join(title for title, _, _ in columns)
    sizes = ", ".join(f"{key}={value}" for key, value in TINY_LLAMA.items())
    print(f"graphcap demo: PaddleFormers LlamaForCausalLM (random, {sizes}), {options.batch_size} slots, "
          f"{options.num_prompts} prompts x {options.max_new_tokens} new tokens, backend {options.backend}, "
          f"{'greedy' if options.greedy else 'top-p 0.9 / top-k 32 sampling'}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(" | ".join(fmt.format(row[key]) for _, key, fmt in columns))
    print(f"tokens identical across modes: {'yes' if identical else 'NO'}")
    result = {
        "model": "llama-tiny",
        "options": attrs.asdict(options),
        "rows": [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows],
        "identical": identical,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
