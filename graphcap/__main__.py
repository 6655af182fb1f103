"""``python -m graphcap``: the demo and the capture planner from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Paddle's C++ logging (glog) is read once at import: keep its INFO/WARNING
# chatter out of the demo's table unless the user asked for it.
os.environ.setdefault("GLOG_minloglevel", "2")


def _demo(args: argparse.Namespace) -> int:
    import warnings

    from graphcap.demo import DemoOptions, run_demo

    # to_static tracing warns about a PIR detail once per traced op; it says
    # nothing about the user's model, and it would bury the demo's table.
    warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface", category=UserWarning)

    warnings.filterwarnings("ignore", message="Tensor do not have 'contiguous' interface", category=UserWarning)
    warnings.filterwarnings("ignore", message="Find variable `kwargs` defined in global scope", category=UserWarning)

    modes = ("off", "on") if args.use_graph is None else (("on",) if args.use_graph else ("off",))
    if args.compare:
        modes = ("off", "on")
    if args.model == "llama-tiny":
        from graphcap.integrations.paddleformers.demo import LlamaDemoOptions, run_llama_demo

        llama = LlamaDemoOptions(
            batch_size=args.batch_size, num_prompts=args.num_prompts,
            max_new_tokens=24 if args.max_new_tokens is None else args.max_new_tokens,
            backend=args.backend, greedy=args.greedy, modes=modes, timed_passes=args.timed_passes,
        )
        return 0 if run_llama_demo(llama, json_path=args.json)["identical"] else 1
    options = DemoOptions(
        num_speculative_tokens=args.num_speculative_tokens,
        num_model_steps=args.num_model_steps,
        batch_size=args.batch_size,
        num_prompts=args.num_prompts,
        max_new_tokens=48 if args.max_new_tokens is None else args.max_new_tokens,
        backend=args.backend,
        greedy=args.greedy,
        draft_use_graph=not args.no_draft_graph,
        modes=modes,
        timed_passes=args.timed_passes,
    )
    result = run_demo(options, json_path=args.json)
    return 0 if result["identical"] else 1


def _plan(args: argparse.Namespace) -> int:
    from graphcap.config import GraphConfig
    from graphcap.decide.capture_plan import format_capture_plan, make_capture_plan
    from graphcap.mtp.graph_specs import mtp_graph_specs

    # The MTP engine's graphs under this config; with --max-graphs the size planner's sizes for its target.
    config = GraphConfig(
        max_capture_size=args.max_capture_size,
        num_speculative_tokens=args.num_speculative_tokens,
        capture_sizes=args.capture_sizes,
    )
    plan = make_capture_plan(
        mtp_graph_specs(config),
        num_speculative_tokens=config.num_speculative_tokens,
        trace=args.trace,
        max_graphs=args.max_graphs,
    )
    print(format_capture_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (``demo`` and ``plan`` subcommands)."""
    parser = argparse.ArgumentParser(prog="python -m graphcap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run prompts through the MTP loop (or a PaddleFormers Llama) with graphs "
                                       "off and on")
    demo.add_argument("--model", default="mtp-tiny", choices=("mtp-tiny", "llama-tiny"),
                      help="mtp-tiny: the built-in LM with its MTP head; llama-tiny: a random PaddleFormers "
                           "LlamaForCausalLM through GraphedCausalLM (needs graphcap[paddleformers])")
    switch = demo.add_mutually_exclusive_group()
    switch.add_argument("--use-graph", dest="use_graph", action="store_true", default=None,
                        help="run only with graphs on")
    switch.add_argument("--no-graph", dest="use_graph", action="store_false", help="run only with graphs off")
    demo.add_argument("--compare", action="store_true", help="run graphs off and on (the default)")
    demo.add_argument("--num-speculative-tokens", "-k", type=int, default=2)
    demo.add_argument("--num-model-steps", type=int, default=None, help="draft steps per decode step (1..k)")
    demo.add_argument("--batch-size", type=int, default=8, help="request slots (max batch)")
    demo.add_argument("--num-prompts", type=int, default=16)
    demo.add_argument("--max-new-tokens", type=int, default=None, help="default 48 (mtp-tiny), 24 (llama-tiny)")
    demo.add_argument("--backend", default="static", choices=("auto", "eager", "static", "device"))
    demo.add_argument("--greedy", action="store_true", help="argmax instead of seeded top-p/top-k sampling")
    demo.add_argument("--no-draft-graph", action="store_true", help="keep the draft steps eager")
    demo.add_argument("--timed-passes", type=int, default=3,
                      help="timed passes per mode, interleaved across modes; the table gives the median")
    demo.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    demo.set_defaults(run=_demo)

    plan = sub.add_parser("plan", help="list the capture sizes and graphs a config would capture")
    plan.add_argument("--max-capture-size", type=int, default=512, help="largest batch in requests")
    plan.add_argument("--num-speculative-tokens", "-k", type=int, default=0)
    plan.add_argument("--capture-sizes", default=None, help="explicit sizes in rows, e.g. 1,2,4,8")
    plan.add_argument("--trace", type=Path, default=None, help="batch sizes per step (text or JSON)")
    plan.add_argument("--max-graphs", type=int, default=None,
                      help="with --trace: plan this many sizes with the exact planner")
    plan.set_defaults(run=_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m graphcap`` and the ``graphcap`` script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
