"""The capture plan: what a config would capture, before anything is captured.

For each graph name it lists the buckets, the graph count, sizes that are not
multiples of 1+k (a verify batch of n requests has n·(1+k) rows, so such a
size only ever serves padded batches; a vLLM user lost 5x throughput to a
dropped verify size), and, given a trace of batch sizes, the padding waste to
expect. ``python -m graphcap plan`` prints it; ``CaptureRegistry.plan()``
returns it for a live registry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from graphcap import planner
from graphcap.config import GraphConfig


@attrs.frozen(kw_only=True)
class GraphPlan:
    """The buckets of one graph name and what they would cost on a trace."""

    name: str
    sizes: tuple[int, ...]
    rows_per_request: int
    not_multiples: tuple[int, ...]
    waste: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class CapturePlan:
    """Every graph a configuration would capture, with warnings and expected waste."""

    graphs: tuple[GraphPlan, ...]
    num_speculative_tokens: int
    warnings: tuple[str, ...]
    planned: GraphPlan | None = None

    @property
    def graph_count(self) -> int:
        """Graphs captured by ``capture_all`` (all buckets of all names)."""
        return sum(len(graph.sizes) for graph in self.graphs)


def plan_graphs(
    sizes_by_name: Mapping[str, Sequence[int]],
    *,
    num_speculative_tokens: int,
    rows_per_request: Mapping[str, int] | None = None,
    trace: Sequence[int] | None = None,
) -> tuple[tuple[GraphPlan, ...], tuple[str, ...]]:
    """Build the per-graph plans and warnings for explicit size lists (rows).

    ``rows_per_request[name]`` (default 1+k) is how many rows one request
    occupies in that graph; sizes that are not multiples of it are flagged.
    ``trace`` holds request counts per step; it is scaled to each graph's rows.
    """
    default_rpr = 1 + num_speculative_tokens
    graphs = []
    warnings = []
    for name, sizes in sizes_by_name.items():
        rpr = (rows_per_request or {}).get(name, default_rpr)
        ordered = tuple(sorted(set(sizes)))
        odd = tuple(size for size in ordered if size % rpr)
        if odd:
            warnings.append(
                f"{name}: capture sizes {list(odd)} are not multiples of {rpr} rows per request; "
                f"a batch of n requests has n*{rpr} rows, so these graphs only serve padded batches "
                f"and the sizes just above them carry the load"
            )
        waste = planner.padding_waste([n * rpr for n in trace], ordered) if trace is not None else None
        if waste is not None and waste["eager_steps"]:
            warnings.append(
                f"{name}: {waste['eager_steps']} trace steps exceed the largest size {ordered[-1]} and run eagerly"
            )
        graphs.append(GraphPlan(name=name, sizes=ordered, rows_per_request=rpr, not_multiples=odd, waste=waste))
    return tuple(graphs), tuple(warnings)


def make_capture_plan(
    *,
    max_capture_size: int = 512,
    num_speculative_tokens: int = 0,
    capture_sizes: str | Sequence[int] | None = None,
    trace: str | os.PathLike[str] | Sequence[int] | None = None,
    max_graphs: int | None = None,
) -> CapturePlan:
    """The plan for an MTP engine configured like this (what ``python -m graphcap plan`` prints).

    Graph names follow graphcap's MTP engine: ``target`` (verify, 1+k rows
    per request) and, with k > 0, ``draft`` (same rows) and ``draft_next``
    (one row per request). With ``trace`` (request counts per step, a file
    or a sequence) each graph's padding waste is reported; with
    ``max_graphs`` too, the exact planner's sizes for the target under that
    budget are shown beside the configured ones.
    """
    config = GraphConfig(
        max_capture_size=max_capture_size, num_speculative_tokens=num_speculative_tokens, capture_sizes=capture_sizes
    )
    requests: list[int] | None = None
    if trace is not None:
        requests = planner.load_trace(trace) if isinstance(trace, (str, os.PathLike)) else list(trace)
    k = num_speculative_tokens
    sizes = {"target": config.target_capture_sizes}
    rows_per_request = {"target": 1 + k}
    if k:
        sizes["draft"] = config.target_capture_sizes
        sizes["draft_next"] = config.sizes_for(1)
        rows_per_request.update(draft=1 + k, draft_next=1)
    graphs, warnings = plan_graphs(
        sizes, num_speculative_tokens=k, rows_per_request=rows_per_request, trace=requests
    )
    planned = None
    if requests is not None and max_graphs is not None:
        rows = [n * (1 + k) for n in requests]
        best = planner.plan_capture_sizes(rows, max_graphs, multiple_of=1 + k)
        planned = GraphPlan(
            name=f"target (planned, {max_graphs} graphs)", sizes=best, rows_per_request=1 + k,
            not_multiples=(), waste=planner.padding_waste(rows, best),
        )
    return CapturePlan(graphs=graphs, num_speculative_tokens=k, warnings=warnings, planned=planned)


def format_capture_plan(plan: CapturePlan) -> str:
    """The plan as a terminal table, warnings last."""
    lines = [f"capture plan: k={plan.num_speculative_tokens}, {plan.graph_count} graphs in all"]
    rows = list(plan.graphs) + ([plan.planned] if plan.planned is not None else [])
    for graph in rows:
        shown = ", ".join(map(str, graph.sizes[:12])) + (" ..." if len(graph.sizes) > 12 else "")
        line = f"  {graph.name:<28} {len(graph.sizes):>3} graphs  rows/request {graph.rows_per_request}  [{shown}]"
        if graph.waste is not None:
            line += (
                f"  padding waste {graph.waste['waste_ratio']:.1%}"
                f" ({graph.waste['padded_rows']} padded / {graph.waste['real_rows']} real rows)"
            )
        lines.append(line)
    lines.extend(f"warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)
