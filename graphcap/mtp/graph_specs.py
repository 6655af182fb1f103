"""The speculative step's graphs and their size rules, in one place.

``SpeculativeStep`` (so ``MTPEngine`` and a speculative ``GraphedCausalLM``)
registers exactly these graphs, and ``python -m graphcap plan`` plans exactly
these, so the plan cannot drift from what an engine captures.
"""

from __future__ import annotations

from graphcap.config import GraphConfig
from graphcap.decide.buckets import capped_sizes
from graphcap.decide.capture_plan import GraphSpec


def mtp_graph_specs(config: GraphConfig, *, max_batch: int | None = None) -> list[GraphSpec]:
    """The graphs a speculative engine under ``config`` captures, with their capture sizes in rows.

    With ``max_batch`` (the engine's slots), each graph's sizes are capped at
    ``max_batch`` requests (``buckets.capped_sizes``), as the engine registers them.

    * ``target``, the verify step: 1+k rows per request (the last committed
      token and k drafts), sized by ``config.target_capture_sizes``;
    * with k > 0, ``draft``, the MTP head's first step over the same rows;
    * with k > 0, ``draft_next``, the head's later substeps: one row per
      request, so the same request counts as the target's, in rows of one.
    """
    def sizes(rows_per_request: int) -> tuple[int, ...]:
        listed = config.sizes_for(rows_per_request)
        return listed if max_batch is None else capped_sizes(listed, max_batch * rows_per_request)

    verify_rows = config.rows_per_request
    specs = [GraphSpec(name="target", sizes=sizes(verify_rows), rows_per_request=verify_rows)]
    if config.num_speculative_tokens:
        specs += [
            GraphSpec(name="draft", sizes=sizes(verify_rows), rows_per_request=verify_rows),
            GraphSpec(name="draft_next", sizes=sizes(1), rows_per_request=1),
        ]
    return specs
