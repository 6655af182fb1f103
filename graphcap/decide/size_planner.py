"""The size planner: choose the capture sizes that pad a real batch-size trace the least.

A *trace* is the row count of every decode step an engine ran (one integer per
step). A step of ``n`` rows runs in the graph of the smallest capture size
``s >= n`` and wastes ``s - n`` padded rows; a step above the largest size runs
eagerly; a step of 0 rows runs nothing. :func:`plan_capture_sizes` returns the
sizes that minimise the total padded rows of a trace under a budget of graphs,
exactly, by dynamic programming. The module also reads trace files
(:func:`load_trace`), measures the padding of any size list
(:func:`padding_waste`) and tabulates several lists side by side
(:func:`format_padding_table`), e.g. against the engines' default lists of
``graphcap.decide.capture_sizes`` (``benchmarks/bench_buckets.py``).
It imports numpy only, never paddle.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from graphcap.errors import ConfigError
from graphcap.validators import positive_int

__all__ = ["format_padding_table", "load_trace", "padding_waste", "plan_capture_sizes", "plan_capture_sizes_from_counts"]

_INT_TOKEN = re.compile(r"[+-]?\d+")
_SEPARATORS = re.compile(r"[\s,]+")


# --------------------------------------------------------------------------- traces


def load_trace(path: str | os.PathLike[str]) -> list[int]:
    """Read a trace of per-step row counts from ``path``.

    Two formats are accepted:

    * text: integers separated by whitespace and/or commas, any number per
      line; ``#`` starts a comment that runs to the end of the line;
    * JSON (a ``.json`` suffix, or text starting with ``[`` or ``{``): a list of
      integers, or an object whose ``"rows"`` key holds that list.

    Every value must be an integer >= 0. Raises ``ConfigError`` naming the file
    and the offending token (with its line, or its index in the JSON list) when
    the file is missing, unreadable, malformed or empty.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(
            f"trace file {name!r} cannot be read ({exc.strerror or exc}); pass an existing file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"trace file {name!r} is not UTF-8 text; write one integer row count per step"
        ) from exc

    stripped = text.lstrip()
    if name.lower().endswith(".json") or stripped.startswith(("[", "{")):
        rows = _parse_json_trace(name, text)
    else:
        rows = _parse_text_trace(name, text)
    if not rows:
        raise ConfigError(f"trace file {name!r} holds no row counts; write one integer >= 0 per decode step")
    return rows


def _parse_text_trace(name: str, text: str) -> list[int]:
    rows: list[int] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0]
        for token in _SEPARATORS.split(body):
            if not token:
                continue
            if _INT_TOKEN.fullmatch(token) is None:
                raise ConfigError(
                    f"trace file {name!r} line {line_number}: token {token!r} is not an integer; "
                    "write integer row counts separated by spaces, commas or newlines ('#' starts a comment)"
                )
            value = int(token)
            if value < 0:
                raise ConfigError(
                    f"trace file {name!r} line {line_number}: row count {value} is negative; "
                    "a step has 0 or more rows"
                )
            rows.append(value)
    return rows


def _parse_json_trace(name: str, text: str) -> list[int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"trace file {name!r} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'write a list of integers or {"rows": [...]}'
        ) from exc
    if isinstance(data, dict):
        if "rows" not in data:
            raise ConfigError(
                f"trace file {name!r} is a JSON object without a 'rows' key (keys: {sorted(data)}); "
                'write {"rows": [...]} or a plain list'
            )
        data = data["rows"]
    if not isinstance(data, list):
        raise ConfigError(
            f"trace file {name!r} holds JSON {type(data).__name__}, not a list of row counts; "
            'write a list of integers or {"rows": [...]}'
        )
    rows: list[int] = []
    for index, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"trace file {name!r} rows[{index}]={json.dumps(value)} is not an integer >= 0; "
                "every step's row count must be a non-negative integer"
            )
        rows.append(value)
    return rows


def _validate_trace(trace: Iterable[Any], field: str = "trace") -> np.ndarray:
    """The trace as an int64 array, or ``ConfigError`` naming the first bad step."""
    if isinstance(trace, (str, bytes)):
        raise ConfigError(f"{field} is a string; pass a sequence of row counts or use load_trace(path)")
    try:
        items = list(trace)
    except TypeError as exc:
        raise ConfigError(
            f"{field} of type {type(trace).__name__} is not iterable; pass a sequence of row counts"
        ) from exc
    if not items:
        raise ConfigError(f"{field} is empty; pass at least one step's row count")
    values: list[int] = []
    for index, item in enumerate(items):
        if isinstance(item, (bool, np.bool_)):
            raise ConfigError(f"{field}[{index}]={item!r} is a bool; row counts are integers >= 0")
        try:
            value = operator.index(item)
        except TypeError as exc:
            raise ConfigError(
                f"{field}[{index}]={item!r} is not an integer; row counts are integers >= 0"
            ) from exc
        if value < 0:
            raise ConfigError(f"{field}[{index}]={value} is negative; a step has 0 or more rows")
        values.append(value)
    return np.asarray(values, dtype=np.int64)


def _validate_sizes(sizes: Iterable[Any]) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)):
        raise ConfigError("sizes is a string; pass a sequence of positive capture sizes")
    checked = [positive_int(size, f"sizes[{index}]") for index, size in enumerate(sizes)]
    if not checked:
        raise ConfigError("sizes is empty; pass at least one capture size >= 1")
    return tuple(sorted(set(checked)))


# --------------------------------------------------------------------------- the size planner


def plan_capture_sizes(
    trace: Iterable[int],
    max_graphs: int,
    multiple_of: int = 1,
    max_size: int | None = None,
) -> tuple[int, ...]:
    """The capture sizes (ascending) that minimise the padded rows of ``trace`` with at most ``max_graphs`` graphs.

    Args:
        trace: row count of every decode step (integers >= 0). Steps of 0 rows
            run nothing and cost nothing.
        max_graphs: graph budget, >= 1. Fewer sizes are returned when more
            would not lower the padding (e.g. the trace has fewer distinct values).
        multiple_of: every size is a multiple of this (1+k for a target verify
            step with k draft tokens, whose n requests occupy n*(1+k) rows).
        max_size: largest size allowed. ``None``: the largest size is
            ``max(trace)`` rounded up to ``multiple_of``, so every step runs in
            a graph. Given: it is rounded *down* to ``multiple_of`` and always
            becomes the largest size (the graphs then cover as many batches as
            the cap allows, including ones the trace has not seen); steps above
            it run eagerly and are left out of the padding (they pad nothing).

    The result is exact, not heuristic. A bucket at size ``s`` serves every step
    with rows in ``(previous size, s]``, so the cost splits into independent
    contiguous groups, and moving a boundary down to the largest (rounded) trace
    value it serves never adds padding. The optimum therefore places its
    boundaries on the distinct trace values rounded up to ``multiple_of`` (plus
    ``max_size``), and a dynamic programme over those V values with G graphs
    finds it in O(V^2 * G) time. Ties go to fewer graphs, then to the smaller
    boundaries, chosen from the largest size down.

    Raises ``ConfigError`` naming the field and value for a bad argument, an
    empty trace, or a trace with no step a graph could serve.
    """
    graphs = positive_int(max_graphs, "max_graphs")
    step = positive_int(multiple_of, "multiple_of")
    rows = _validate_trace(trace)

    cap: int | None = None
    if max_size is not None:
        limit = positive_int(max_size, "max_size")
        cap = (limit // step) * step
        if cap < step:
            raise ConfigError(
                f"max_size={limit} is smaller than multiple_of={step}, so no capture size fits; "
                f"pass max_size >= {step}"
            )

    distinct, steps = np.unique(rows, return_counts=True)
    return _plan_counts(distinct, steps.astype(np.int64), graphs, step, cap)


def plan_capture_sizes_from_counts(
    counts: Mapping[int, int],
    max_graphs: int,
    multiple_of: int = 1,
    max_size: int | None = None,
) -> tuple[int, ...]:
    """``plan_capture_sizes`` over a histogram: ``counts`` maps a row count to its number of steps (a weight).

    The online re-planner's form (``CaptureRegistry.replan``): the traffic a
    registry observed, recent steps weighted more, without a trace of every
    step. Equal to ``plan_capture_sizes`` of the trace that repeats each row
    count ``counts[rows]`` times.
    """
    graphs = positive_int(max_graphs, "max_graphs")
    step = positive_int(multiple_of, "multiple_of")
    cap = None if max_size is None else (positive_int(max_size, "max_size") // step) * step
    if cap is not None and cap < step:
        raise ConfigError(f"max_size={max_size} is smaller than multiple_of={step}, so no capture size fits; "
                          f"pass max_size >= {step}")
    items = sorted((operator.index(rows), operator.index(weight)) for rows, weight in counts.items() if weight)
    if any(rows < 0 or weight < 0 for rows, weight in items):
        raise ConfigError(f"counts must map row counts >= 0 to step counts >= 0 (got {dict(items)!r})")
    distinct = np.asarray([rows for rows, _ in items], dtype=np.int64)
    steps = np.asarray([weight for _, weight in items], dtype=np.int64)
    return _plan_counts(distinct, steps, graphs, step, cap)


def _plan_counts(distinct: np.ndarray, steps: np.ndarray, graphs: int, step: int, cap: int | None) -> tuple[int, ...]:
    """The exact plan for ``steps[i]`` steps of ``distinct[i]`` rows (see ``plan_capture_sizes``)."""
    keep = distinct > 0
    if cap is not None:
        keep &= distinct <= cap
    served, weight = distinct[keep], steps[keep]
    rounded = -(-served // step) * step
    values, inverse = np.unique(rounded, return_inverse=True)
    counts = np.bincount(inverse, weights=weight, minlength=len(values))
    counts = np.rint(counts).astype(np.int64)
    sums = np.bincount(inverse, weights=served * weight, minlength=len(values))
    sums = np.rint(sums).astype(np.int64)

    if cap is not None and (len(values) == 0 or values[-1] != cap):
        values = np.append(values, np.int64(cap))
        counts = np.append(counts, np.int64(0))
        sums = np.append(sums, np.int64(0))
    if len(values) == 0:
        raise ConfigError(
            "trace has no step with rows > 0, so there is nothing to capture; "
            "pass a trace of decode steps or give max_size"
        )
    return _solve(values.astype(np.int64), counts, sums, min(graphs, len(values)))


# Far above any real cost (steps * rows stays below 2**50) yet safe to add to in int64.
_INF = np.int64(1) << np.int64(60)


def _solve(values: np.ndarray, counts: np.ndarray, sums: np.ndarray, graphs: int) -> tuple[int, ...]:
    """Exact DP; ``values`` ascending, the last one must be the largest size."""
    n = len(values)
    cum_count = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    cum_rows = np.concatenate(([0], np.cumsum(sums))).astype(np.int64)
    # Padding of one bucket at values[j] serving groups i..j is
    #   values[j] * (cum_count[j+1] - cum_count[i]) - (cum_rows[j+1] - cum_rows[i]).
    tail = values * cum_count[1:] - cum_rows[1:]
    best = [tail.copy()]  # best[g-1][j]: least padding of groups 0..j with exactly g buckets, the last at j
    parents: list[np.ndarray] = []
    chunk = max(1, 1_000_000 // n)
    lower = np.arange(n)[:, None]
    for _ in range(2, graphs + 1):
        previous = best[-1]
        # Predecessor i (last bucket of the other g-1) contributes previous[i] + cum_rows[i+1]
        # - values[j] * cum_count[i+1]; only i < j is allowed.
        base = previous + cum_rows[1:]
        current = np.full(n, _INF, dtype=np.int64)
        parent = np.full(n, -1, dtype=np.int64)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            cols = np.arange(start, stop)
            cand = base[:, None] - cum_count[1:, None] * values[None, start:stop]
            cand = np.where((lower < cols[None, :]) & (previous[:, None] < _INF), cand, _INF)
            pick = np.argmin(cand, axis=0)  # first minimum: the smallest predecessor among ties
            low = cand[pick, np.arange(stop - start)]
            ok = low < _INF
            current[start:stop] = np.where(ok, low + tail[start:stop], _INF)
            parent[start:stop] = np.where(ok, pick, -1)
        best.append(current)
        parents.append(parent)

    finals = [int(level[-1]) for level in best]
    used = finals.index(min(finals)) + 1  # fewest graphs reaching the minimum
    chosen = [n - 1]
    for level in range(used - 1, 0, -1):
        chosen.append(int(parents[level - 1][chosen[-1]]))
    return tuple(int(values[j]) for j in reversed(chosen))


def padding_waste(trace: Iterable[int], sizes: Iterable[int]) -> dict[str, Any]:
    """Padding statistics of running ``trace`` with capture ``sizes``.

    Returns a dict with

    * ``steps``, ``zero_steps`` (0 rows: nothing runs), ``graph_steps``,
      ``eager_steps`` (rows above the largest size: eager fallback);
    * ``real_rows``: rows of the graph steps; ``eager_rows``: rows run eagerly;
    * ``padded_rows``: extra rows added by padding, sum of ``bucket(n) - n``;
    * ``waste_ratio``: ``padded_rows / real_rows`` (0.0 when no step ran in a graph);
    * ``num_graphs``, ``largest``, ``sizes``;
    * ``per_bucket``: ``{size: {"steps", "real_rows", "padded_rows"}}`` for every size, used or not.
    """
    rows = _validate_trace(trace)
    ordered = _validate_sizes(sizes)
    table = np.asarray(ordered, dtype=np.int64)
    positive = rows[rows > 0]
    index = np.searchsorted(table, positive, side="left")
    in_graph = index < len(table)
    graph_rows = positive[in_graph]
    graph_index = index[in_graph]
    buckets = table[graph_index]
    step_counts = np.bincount(graph_index, minlength=len(table))
    real_per = np.bincount(graph_index, weights=graph_rows, minlength=len(table))
    padded_per = np.bincount(graph_index, weights=buckets - graph_rows, minlength=len(table))
    real_rows = int(graph_rows.sum())
    padded_rows = int((buckets - graph_rows).sum())
    return {
        "steps": int(rows.size),
        "zero_steps": int((rows == 0).sum()),
        "graph_steps": int(graph_rows.size),
        "eager_steps": int((~in_graph).sum()),
        "real_rows": real_rows,
        "eager_rows": int(positive[~in_graph].sum()),
        "padded_rows": padded_rows,
        "waste_ratio": padded_rows / real_rows if real_rows else 0.0,
        "num_graphs": len(ordered),
        "largest": ordered[-1],
        "sizes": list(ordered),
        "per_bucket": {
            size: {
                "steps": int(step_counts[i]),
                "real_rows": int(round(real_per[i])),
                "padded_rows": int(round(padded_per[i])),
            }
            for i, size in enumerate(ordered)
        },
    }


# --------------------------------------------------------------------------- reporting


def _short_sizes(sizes: Sequence[int], limit: int) -> str:
    if len(sizes) <= limit:
        return ",".join(map(str, sizes))
    head = max(1, limit - 3)
    return ",".join(map(str, sizes[:head])) + ",...," + ",".join(map(str, sizes[-2:]))


def format_padding_table(
    trace: Iterable[int],
    policies: Mapping[str, Iterable[int]],
    *,
    title: str | None = None,
    max_sizes_shown: int = 10,
) -> str:
    """A terminal table comparing the padding of ``trace`` under each policy's capture sizes.

    ``policies`` maps a label (e.g. ``"planner"``, ``"fastdeploy"``) to its
    sizes; one row per label in the given order, with the graph count, largest
    size, real and padded rows, waste ratio, eager-fallback steps and the sizes
    (abbreviated past ``max_sizes_shown``).
    """
    rows = _validate_trace(trace)
    header = ("policy", "graphs", "largest", "real rows", "padded rows", "waste", "eager steps", "sizes")
    body: list[tuple[str, ...]] = []
    for label, sizes in policies.items():
        stats = padding_waste(rows, sizes)
        body.append(
            (
                str(label),
                str(stats["num_graphs"]),
                str(stats["largest"]),
                str(stats["real_rows"]),
                str(stats["padded_rows"]),
                f"{stats['waste_ratio']:.2%}",
                str(stats["eager_steps"]),
                _short_sizes(stats["sizes"], max_sizes_shown),
            )
        )
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    numeric = {1, 2, 3, 4, 5, 6}

    def render(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ]
        return "  ".join(cells).rstrip()

    positive = rows[rows > 0]
    summary = (
        f"{rows.size} steps, {positive.size} with rows > 0, "
        f"rows {int(positive.min()) if positive.size else 0}..{int(rows.max())}"
    )
    lines = [title] if title else []
    lines += [summary, render(header), "  ".join("-" * width for width in widths)]
    lines += [render(line) for line in body]
    return "\n".join(lines)
