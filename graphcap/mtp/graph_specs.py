"""The MTP engine's graphs and their size rules, in one place.

``MTPEngine`` registers exactly these graphs, and ``python -m graphcap plan``
plans exactly these, so the plan cannot drift from what the engine captures.
"""

from __future__ import annotations

from graphcap.capture_plan import GraphSpec
from graphcap.config import GraphConfig


def mtp_graph_specs(config: GraphConfig) -> list[GraphSpec]:
    """The graphs an ``MTPEngine`` under ``config`` captures, with their capture sizes in rows.

    * ``target``, the verify step: 1+k rows per request (the last committed
      token and k drafts), sized by ``config.target_capture_sizes``;
    * with k > 0, ``draft``, the MTP head's first step over the same rows;
    * with k > 0, ``draft_next``, the head's later substeps: one row per
      request, so the same request counts as the target's, in rows of one.
    """
    verify_sizes, verify_rows = config.target_capture_sizes, config.rows_per_request
    specs = [GraphSpec(name="target", sizes=verify_sizes, rows_per_request=verify_rows)]
    if config.num_speculative_tokens:
        specs += [
            GraphSpec(name="draft", sizes=verify_sizes, rows_per_request=verify_rows),
            GraphSpec(name="draft_next", sizes=config.sizes_for(1), rows_per_request=1),
        ]
    return specs
