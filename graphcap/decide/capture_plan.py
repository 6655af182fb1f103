"""The capture plan: what a set of graphs would capture, before anything is captured.

Each graph comes as a ``GraphSpec``: its name, its capture sizes in rows and
the rows one request occupies in it. For each the plan lists the buckets, the
graph count, sizes that are not multiples of the rows per request (a verify
batch of n requests has n·(1+k) rows, so such a size only ever serves padded
batches; a vLLM user lost 5x throughput to a dropped verify size), and, given
a trace of batch sizes, the padding waste to expect. ``CaptureRegistry.plan()``
plans a live registry's graphed functions; ``python -m graphcap plan`` plans
the MTP engine's graphs (``graphcap.mtp.graph_specs``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from graphcap.decide import size_planner


def _ascending(sizes: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(sizes)))


@attrs.frozen(kw_only=True)
class GraphSpec:
    """One graph name as a configuration would capture it: its sizes in rows and the rows of one request."""

    name: str
    sizes: tuple[int, ...] = attrs.field(converter=_ascending)
    rows_per_request: int


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


def make_capture_plan(
    specs: Iterable[GraphSpec],
    *,
    num_speculative_tokens: int = 0,
    trace: str | os.PathLike[str] | Sequence[int] | None = None,
    max_graphs: int | None = None,
) -> CapturePlan:
    """The plan of the graphs in ``specs``, in their order.

    ``trace`` holds request counts per step, as a file (read by
    ``size_planner.load_trace``) or a sequence; each graph sees them times its
    rows per request, and gets its padding waste and a warning for steps above
    its largest size. With ``max_graphs`` too, the size planner's sizes under
    that budget for the first spec (the engine's main graph: the MTP engine's
    ``target``) are shown beside the configured ones.
    ``num_speculative_tokens`` (k) is reported in the plan's header.
    """
    specs = tuple(specs)
    requests: list[int] | None = None
    if trace is not None:
        requests = size_planner.load_trace(trace) if isinstance(trace, (str, os.PathLike)) else list(trace)
    graphs = []
    warnings: list[str] = []
    for spec in specs:
        graph = _plan_graph(spec, requests)
        graphs.append(graph)
        warnings.extend(_warnings(graph))
    planned = None
    if specs and requests is not None and max_graphs is not None:
        primary = specs[0]
        rows = [n * primary.rows_per_request for n in requests]
        best = size_planner.plan_capture_sizes(rows, max_graphs, multiple_of=primary.rows_per_request)
        planned = GraphPlan(
            name=f"{primary.name} (planned, {max_graphs} graphs)", sizes=best,
            rows_per_request=primary.rows_per_request, not_multiples=(),
            waste=size_planner.padding_waste(rows, best),
        )
    return CapturePlan(
        graphs=tuple(graphs), num_speculative_tokens=num_speculative_tokens, warnings=tuple(warnings),
        planned=planned,
    )


def _plan_graph(spec: GraphSpec, requests: Sequence[int] | None) -> GraphPlan:
    rpr = spec.rows_per_request
    waste = None
    if requests is not None:
        waste = size_planner.padding_waste([n * rpr for n in requests], spec.sizes)
    return GraphPlan(
        name=spec.name, sizes=spec.sizes, rows_per_request=rpr,
        not_multiples=tuple(size for size in spec.sizes if size % rpr), waste=waste,
    )


def _warnings(graph: GraphPlan) -> list[str]:
    rpr = graph.rows_per_request
    warnings = []
    if graph.not_multiples:
        warnings.append(
            f"{graph.name}: capture sizes {list(graph.not_multiples)} are not multiples of {rpr} rows per "
            f"request; a batch of n requests has n*{rpr} rows, so these graphs only serve padded batches "
            f"and the sizes just above them carry the load"
        )
    if graph.waste is not None and graph.waste["eager_steps"]:
        warnings.append(
            f"{graph.name}: {graph.waste['eager_steps']} trace steps exceed the largest size "
            f"{graph.sizes[-1]} and run eagerly"
        )
    return warnings


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
