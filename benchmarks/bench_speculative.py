"""Speculative decoding through GraphedCausalLM on PaddleFormers models: tokens/s, acceptance and host overhead.

    python benchmarks/bench_speculative.py [--rounds N] [--new-tokens N] [--k3] [--out PATH] [--quick]

Models are random and seeded, their weights scaled x4 so logits are realistic
(|logit| ~10): the tiny Llama target (4 layers, hidden 128, vocab 512) with
three draft models, and ERNIE-4.5 (MoE config, dense layers) with its own MTP
layer:

* ``copy``: the target itself (``tiny_llama(seed=0)``): every draft is
  accepted, the upper bound of what speculation can give;
* ``perturbed``: the target plus noise of 0.05 x each 2-D weight's std
  (``paddle.seed(7)``): accepted part of the time;
* ``smaller``: an unrelated 1-layer Llama (``seed=1``): near-zero acceptance;
* ``mtp``: ERNIE-4.5's MTP layer, random weights: near-zero acceptance (a
  figure to report, nothing to claim).

For each model class and batch (``max_batch`` 1 and 4; the same four prompts
of 2-12 tokens, greedy, 16 new tokens each) every configuration is built once
and warmed up by one ``generate`` (graphs are captured there), then the timed
``generate`` calls of all of them alternate round by round (the order reversed
every other round), medians: plain decode with graphs off and on, and per
draft (k=2; ``--k3`` adds k=3 for the copy draft) speculative decode with graphs off and
on (the ``static`` backend). Per (class, draft, k, batch) row: tokens/s end to
end (prefill is eager in all of them) and in decode steps only, the
acceptance rate, each graph's coverage, eager fallbacks (must be 0), and
whether every configuration's tokens equal plain greedy decoding with graphs
off on every call. The plain figures of a (class, batch) are one measurement,
repeated in each of its rows.

Then graphcap's host overhead on the speculative step: the Llama target with
the perturbed draft (k=2) on the ``eager`` backend with graphs on (a replay
is the same Python call on the staged buffers, plus graphcap's dispatch,
staging, padding and checks) against graphs off (the same step functions
called directly), interleaved, as the ratio of decode seconds per generate
(median of the per-round ratios). Target: <= 1.10x.

CPU figures: the ``static`` backend is a ``paddle.jit.to_static`` program,
which removes Python overhead, not a device graph. ``--quick`` (the smoke
test's run) uses the eager backend, two prompts, batch 2, 4 new tokens,
k=2 only and one round.

Exit status 1 when any tokens differ from plain greedy decoding or a graphed
configuration fell back to eager; an overhead ratio above the target is a
figure, not a failure.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from graphcap import GraphConfig
from graphcap.interleave import TimedRun, interleaved_runs, median_seconds

RESULTS = Path(__file__).resolve().parent / "results"
SCALE = 4.0
NOISE = 0.05  # the perturbed draft: noise of NOISE x each 2-D weight's std
BATCHES = (1, 4)
PROMPT_LENGTHS = (2, 5, 8, 12)
NEW_TOKENS = 16
ROUNDS = 3
OVERHEAD_ROUNDS = 4  # even: each mode goes first in half the rounds
OVERHEAD_TARGET = 1.10  # graphs on (eager backend) at most 10% more decode time than graphs off
MAX_LEN = 40  # the longest prompt + new tokens + k+1 draft positions, with room
QUICK = {"batches": (2,), "prompt_lengths": (2, 5), "new_tokens": 4, "rounds": 1, "overhead_rounds": 1,
         "backend": "eager", "k3": False}
# (class, draft, k): the Llama drafts, then ERNIE's own MTP layer.
SPECULATIVE = (("llama", "copy", 2), ("llama", "copy", 3), ("llama", "perturbed", 2), ("llama", "smaller", 2),
               ("ernie", "mtp", 2))
OVERHEAD_CASE = ("llama", "perturbed", 2)
ERNIE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=128, fuse_rms_norm=False, moe_layer_start_index=4,
             num_nextn_predict_layers=1, moe_num_experts=4, moe_intermediate_size=64)

# to_static warns on every traced ``.place`` access; noise for this table (as bench_mtp filters it).
warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
warnings.filterwarnings("ignore", message="No ccache found")


# Models ---------------------------------------------------------------------------
def scale_2d(model: paddle.nn.Layer, scale: float = SCALE) -> paddle.nn.Layer:
    """``model`` in eval mode with every 2-D weight times ``scale`` (norms untouched)."""
    model.eval()
    with paddle.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.set_value(param * scale)
    return model


def llama(seed: int = 0, **overrides: Any) -> paddle.nn.Layer:
    """The tiny Llama, seeded, ``scale=4.0`` (``tiny_llama``'s own scaling)."""
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    return tiny_llama(seed=seed, scale=SCALE, **overrides)


def perturbed_llama(noise: float = NOISE) -> paddle.nn.Layer:
    """The target's copy plus noise of ``noise`` x each 2-D weight's std (``paddle.seed(7)``), as the tests build it."""
    draft = llama(seed=0)
    paddle.seed(7)
    with paddle.no_grad():
        for param in draft.parameters():
            if param.ndim == 2:
                param.set_value(param + noise * param.std() * paddle.randn(param.shape))
    return draft


def ernie_mtp() -> paddle.nn.Layer:
    """ERNIE-4.5 MoE with one MTP layer, all layers dense (its MoE routing kernel is GPU-only), 2-D weights x4."""
    from paddleformers.transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    paddle.seed(0)
    return scale_2d(Ernie4_5_MoeForCausalLM(Ernie4_5_MoeConfig(**ERNIE)))


def build_models() -> dict[str, Any]:
    """Targets by class, drafts by name (``"mtp"`` is the string ``GraphedCausalLM`` takes)."""
    return {
        "targets": {"llama": llama(seed=0), "ernie": ernie_mtp()},
        "drafts": {"copy": llama(seed=0), "perturbed": perturbed_llama(), "smaller": llama(seed=1, num_hidden_layers=1),
                   "mtp": "mtp"},
    }


def prompts_for(lengths: tuple[int, ...], vocab_size: int, seed: int = 0) -> list[list[int]]:
    """One seeded prompt per length."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=length).tolist() for length in lengths]


# Engines and timing ---------------------------------------------------------------
class Engine:
    """A ``GraphedCausalLM`` and the seconds its decode steps took in the last ``generate``."""

    def __init__(self, target: paddle.nn.Layer, *, batch: int, use_graph: bool, backend: str, k: int = 0,
                 draft: str | paddle.nn.Layer | None = None) -> None:
        """Build the LM (plain decode for ``k=0``), its decode step timed from the start (before any capture)."""
        from graphcap.integrations.paddleformers import GraphedCausalLM

        config = GraphConfig(use_graph=use_graph, backend=backend, num_speculative_tokens=k,
                             max_capture_size=batch)
        self.lm = GraphedCausalLM(target, config, max_batch=batch, max_len=MAX_LEN, draft=draft)
        # Private: the step functions reach this object through the wrapper below, and graphcap's
        # Python-value guard watches every public scalar they reach (a public counter here made every
        # generate recapture its graphs).
        self._decode_seconds = 0.0
        step = self.lm._decode_step

        def timed_step(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            try:
                step(*args, **kwargs)
            finally:
                self._decode_seconds += time.perf_counter() - started

        self.lm._decode_step = timed_step

    def generate(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        """One greedy ``generate``: its decode seconds, tokens and outputs (``interleaved_runs`` times the wall)."""
        self._decode_seconds = 0.0
        outputs = self.lm.generate(prompts, new_tokens)
        tokens = sum(len(out) for out in outputs)
        # Each request's first token comes from the (eager) prefill.
        return {"decode": self._decode_seconds, "tokens": tokens, "decode_tokens": tokens - len(prompts),
                "outputs": outputs}


def interleave(engines: dict[str, Engine], prompts: list[list[int]], new_tokens: int,
               rounds: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[TimedRun]]]:
    """One warm-up ``generate`` each (graphs are captured there), then ``rounds`` timed ones, the configurations
    alternating round by round (``graphcap.interleave``: the order reversed every other round)."""
    warm = {name: engine.generate(prompts, new_tokens) for name, engine in engines.items()}
    runs = interleaved_runs(lambda name: engines[name].generate(prompts, new_tokens), list(engines), rounds)
    return warm, runs


def summarize(runs: list[TimedRun]) -> dict[str, float]:
    """Median tokens/s of the timed runs, end to end and in decode steps only, and the median seconds."""
    wall = median_seconds(runs)
    decode = statistics.median(run.result["decode"] for run in runs)
    first = runs[0].result
    return {"tokens_per_second": round(first["tokens"] / wall, 1),
            "decode_tokens_per_second": round(first["decode_tokens"] / decode, 1) if decode else 0.0,
            "wall_seconds": round(wall, 4), "decode_seconds": round(decode, 4)}


def same_tokens(warm: dict[str, Any], runs: list[TimedRun], reference: list[list[int]]) -> bool:
    """Whether the warm-up and every timed run produced ``reference``."""
    return warm["outputs"] == reference and all(run.result["outputs"] == reference for run in runs)


def graph_figures(engine: Engine) -> dict[str, Any]:
    """What a graphed configuration's ``stats()`` says about coverage and fallbacks."""
    stats = engine.lm.stats()
    return {"coverage": stats["coverage"], "graph_coverage": stats["graph_coverage"],
            "eager_fallbacks": stats["eager_fallbacks"], "fallback_reasons": [f["reason"] for f in stats["fallbacks"]],
            "recaptures": stats["recaptures"], "graphs": stats["graphs"],
            "capture_seconds": round(stats["capture_seconds"], 2), "replays_per_graph": stats["replays_per_graph"],
            "real_rows": stats["real_rows"], "padded_rows": stats["padded_rows"]}


# One (class, batch) group ----------------------------------------------------------
def group(family: str, batch: int, cases: list[tuple[str, int]], models: dict[str, Any], *, prompts: list[list[int]],
          new_tokens: int, rounds: int, backend: str) -> list[dict[str, Any]]:
    """Plain decode off/on and every (draft, k) speculative off/on over one target at one batch, interleaved;
    one row per (draft, k)."""
    target = models["targets"][family]
    started = time.perf_counter()
    engines = {"plain_off": Engine(target, batch=batch, use_graph=False, backend=backend),
               "plain_on": Engine(target, batch=batch, use_graph=True, backend=backend)}
    for draft, k in cases:
        for mode in ("off", "on"):
            engines[f"{draft}_k{k}_{mode}"] = Engine(target, batch=batch, use_graph=mode == "on", backend=backend, k=k,
                                                     draft=models["drafts"][draft])
    warm, runs = interleave(engines, prompts, new_tokens, rounds)
    reference = warm["plain_off"]["outputs"]
    plain = {mode: summarize(runs[f"plain_{mode}"]) for mode in ("off", "on")}
    plain_graphs = graph_figures(engines["plain_on"])
    rows = []
    for draft, k in cases:
        off, on = engines[f"{draft}_k{k}_off"], engines[f"{draft}_k{k}_on"]
        spec = {mode: summarize(runs[f"{draft}_k{k}_{mode}"]) for mode in ("off", "on")}
        tps = {"plain_off": plain["off"]["tokens_per_second"], "plain_on": plain["on"]["tokens_per_second"],
               "spec_off": spec["off"]["tokens_per_second"], "spec_on": spec["on"]["tokens_per_second"]}
        decode_tps = {"plain_off": plain["off"]["decode_tokens_per_second"],
                      "plain_on": plain["on"]["decode_tokens_per_second"],
                      "spec_off": spec["off"]["decode_tokens_per_second"],
                      "spec_on": spec["on"]["decode_tokens_per_second"]}
        stats_off, stats_on = off.lm.stats(), on.lm.stats()
        figures = graph_figures(on)
        rows.append({
            "class": family, "draft": draft, "k": k, "batch": batch,
            "tokens_per_second": tps, "decode_tokens_per_second": decode_tps,
            "spec_on_vs_plain_on": round(tps["spec_on"] / tps["plain_on"], 3),
            "spec_off_vs_plain_off": round(tps["spec_off"] / tps["plain_off"], 3),
            "spec_on_vs_spec_off": round(tps["spec_on"] / tps["spec_off"], 3),
            "acceptance_rate": stats_on["acceptance_rate"],
            "acceptance_rate_graphs_off": stats_off["acceptance_rate"],
            "proposed_drafts": stats_on["proposed_drafts"], "accepted_drafts": stats_on["accepted_drafts"],
            "coverage": {name: figures["coverage"].get(name) for name in ("target", "draft", "draft_next")},
            "graph_coverage": figures["graph_coverage"],
            "eager_fallbacks": figures["eager_fallbacks"],
            "tokens_equal": {name: same_tokens(warm[key], runs[key], reference)
                             for name, key in (("plain_on", "plain_on"), ("spec_off", f"{draft}_k{k}_off"),
                                               ("spec_on", f"{draft}_k{k}_on"))},
            "spec_on_graphs": {key: figures[key] for key in ("graphs", "capture_seconds", "replays_per_graph",
                                                              "fallback_reasons", "recaptures", "real_rows",
                                                              "padded_rows")},
            "plain_on_graphs": {key: plain_graphs[key] for key in ("coverage", "eager_fallbacks", "graphs",
                                                                    "capture_seconds", "fallback_reasons")},
            "seconds": {"plain": {mode: plain[mode] for mode in ("off", "on")}, "spec": spec},
        })
    for row in rows:
        row["group_seconds"] = round(time.perf_counter() - started, 1)
        print(f"  {family} batch {batch} {row['draft']} k={row['k']}: spec on {row['tokens_per_second']['spec_on']} "
              f"tok/s, acceptance {_share(row['acceptance_rate'])}, tokens equal {all(row['tokens_equal'].values())}",
              flush=True)
    return rows


# Host overhead ---------------------------------------------------------------------
def overhead(models: dict[str, Any], *, batches: tuple[int, ...], prompts: list[list[int]], new_tokens: int,
             rounds: int) -> dict[str, Any]:
    """Decode seconds per generate, eager backend graphs on vs graphs off, interleaved; per batch and overall."""
    family, draft, k = OVERHEAD_CASE
    per_batch = []
    for batch in batches:
        engines = {mode: Engine(models["targets"][family], batch=batch, use_graph=mode == "on", backend="eager", k=k,
                                draft=models["drafts"][draft]) for mode in ("off", "on")}
        warm, runs = interleave(engines, prompts, new_tokens, rounds)
        ratios = [on.result["decode"] / off.result["decode"] for off, on in zip(runs["off"], runs["on"])]
        ratio = statistics.median(ratios)
        figures = graph_figures(engines["on"])
        per_batch.append({
            "batch": batch,
            "decode_seconds": {mode: round(statistics.median(run.result["decode"] for run in values), 4)
                               for mode, values in runs.items()},
            "per_round_ratios": [round(value, 3) for value in ratios],
            "ratio": round(ratio, 3), "target_met": ratio <= OVERHEAD_TARGET,
            "tokens_equal": same_tokens(warm["on"], runs["on"], warm["off"]["outputs"]),
            "eager_fallbacks": figures["eager_fallbacks"], "recaptures": figures["recaptures"],
            "graph_coverage": figures["graph_coverage"], "real_rows": figures["real_rows"], "padded_rows": figures["padded_rows"],
        })
    return {"class": family, "draft": draft, "k": k, "backend": "eager", "rounds": rounds,
            "target_ratio": OVERHEAD_TARGET, "per_batch": per_batch,
            "target_met": all(entry["target_met"] for entry in per_batch)}


# Output ----------------------------------------------------------------------------
def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(rows: list[dict[str, Any]], over: dict[str, Any]) -> str:
    """One line per row, then the overhead per batch."""
    def coverage(row: dict[str, Any]) -> str:
        return "/".join(_share(row["coverage"][name]) for name in ("target", "draft", "draft_next"))

    lines = [f"{'class':<6} {'draft':<9} {'k':>1} {'batch':>5} {'plain off':>9} {'plain on':>8} {'spec off':>8} "
             f"{'spec on':>8} {'on/plain on':>11} {'accept':>6} {'coverage t/d/dn':>15} {'fallbacks':>9} equal"]
    for row in rows:
        tps = row["tokens_per_second"]
        lines.append(f"{row['class']:<6} {row['draft']:<9} {row['k']:>1} {row['batch']:>5} {tps['plain_off']:>9.1f} "
                     f"{tps['plain_on']:>8.1f} {tps['spec_off']:>8.1f} {tps['spec_on']:>8.1f} "
                     f"{row['spec_on_vs_plain_on']:>11.2f} {_share(row['acceptance_rate']):>6} {coverage(row):>15} "
                     f"{row['eager_fallbacks']:>9} {all(row['tokens_equal'].values())}")
    lines.append(f"host overhead, {over['class']} + {over['draft']} draft, k={over['k']}, eager backend graphs on vs off "
                 f"(decode seconds, target <= {over['target_ratio']:.2f}x):")
    for entry in over["per_batch"]:
        seconds = entry["decode_seconds"]
        lines.append(f"  batch {entry['batch']}: off {seconds['off']:.3f} s, on {seconds['on']:.3f} s, ratio "
                     f"{entry['ratio']:.3f} ({'met' if entry['target_met'] else 'NOT met'}; rounds "
                     f"{entry['per_round_ratios']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure every group and the overhead, print the table, write the JSON (``results/speculative.json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "speculative.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--overhead-rounds", type=int, default=OVERHEAD_ROUNDS)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--k3", action="store_true", help="add the copy draft's k=3 rows (about 40 s more)")
    parser.add_argument("--quick", action="store_true",
                        help="eager backend, two prompts, batch 2, 4 new tokens, k=2 only, one round")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    try:
        import paddleformers  # noqa: F401
    except ImportError as exc:
        print(f"bench_speculative needs paddleformers ({exc}); pip install 'graphcap[paddleformers]'")
        return 1
    if args.quick:
        batches, lengths, new_tokens = QUICK["batches"], QUICK["prompt_lengths"], QUICK["new_tokens"]
        rounds, overhead_rounds, backend, k3 = QUICK["rounds"], QUICK["overhead_rounds"], QUICK["backend"], QUICK["k3"]
    else:
        batches, lengths, new_tokens = BATCHES, PROMPT_LENGTHS, args.new_tokens
        rounds, overhead_rounds, backend, k3 = args.rounds, args.overhead_rounds, "static", args.k3
    cases = [case for case in SPECULATIVE if k3 or case[2] != 3]
    started = time.perf_counter()
    models = build_models()
    prompts = prompts_for(lengths, models["targets"]["llama"].config.vocab_size)
    rows: list[dict[str, Any]] = []
    for family in dict.fromkeys(family for family, _, _ in cases):
        for batch in batches:
            rows += group(family, batch, [(draft, k) for f, draft, k in cases if f == family], models, prompts=prompts,
                          new_tokens=new_tokens, rounds=rounds, backend=backend)
            gc.collect()  # the group's engines and graphs go before the next group is timed
    over = overhead(models, batches=batches, prompts=prompts, new_tokens=new_tokens, rounds=overhead_rounds)
    print(format_table(rows, over))
    tokens_equal = all(all(row["tokens_equal"].values()) for row in rows) and \
        all(entry["tokens_equal"] for entry in over["per_batch"])
    fallbacks = sum(row["eager_fallbacks"] + row["plain_on_graphs"]["eager_fallbacks"] for row in rows) + \
        sum(entry["eager_fallbacks"] for entry in over["per_batch"])
    result = {
        "setup": {"targets": {"llama": "tiny_llama(seed=0, scale=4.0)", "ernie": {**ERNIE, "weights_2d_scale": SCALE}},
                  "drafts": {"copy": "tiny_llama(seed=0, scale=4.0)",
                             "perturbed": f"copy + {NOISE} x std noise on every 2-D weight (paddle.seed(7))",
                             "smaller": "tiny_llama(seed=1, scale=4.0, num_hidden_layers=1)",
                             "mtp": "ERNIE-4.5's own MTP layer (random weights)"},
                  "backend": backend, "batches": list(batches), "prompt_lengths": list(lengths),
                  "new_tokens": new_tokens, "max_len": MAX_LEN, "greedy": True, "rounds": rounds,
                  "cases": [list(case) for case in cases], "quick": args.quick},
        "rows": rows,
        "overhead": over,
        "tokens_equal_everywhere": tokens_equal,
        "eager_fallbacks_total": fallbacks,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0 if tokens_equal and fallbacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
