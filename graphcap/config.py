"""``GraphConfig``: the one flag that turns graph mode on, and everything around it.

Capture sizes count *rows* of the graphed function's batch argument. Without
speculation a row is a request; with ``num_speculative_tokens = k`` a verify
batch of n requests has n·(1+k) rows, so the default list (FastDeploy's, over
requests) is multiplied by 1+k, as FastDeploy and vLLM do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from graphcap.errors import ConfigError
from graphcap.validators import ascending_sizes, positive_int

BACKENDS = ("auto", "eager", "static", "device")
ON_UNSAFE_CAPTURE = ("raise", "eager")
ON_CAPTURE_FAILURE = ("eager", "raise")
ON_REBIND = ("raise", "recapture")
ON_ROW_INTERACTION = ("eager_padded", "fail")
ON_VALUE_CHANGE = ("auto", "recapture", "eager", "raise")
RUN_COMPARISON = ("auto", "bitwise", "tolerance")
DEFAULT_MAX_CAPTURE_SIZE = 512


def _check_choice(allowed: tuple[str, ...]) -> Any:
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            raise ConfigError(f"'{attribute.name}' must be one of {', '.join(allowed)} (got {value!r})")

    return check


def _int_field(name: str, default: int, minimum: int) -> Any:
    """An integer field: numpy integers become ``int`` (the config is JSON-dumped), bad values a ``ConfigError``."""
    return attrs.field(default=default, converter=lambda value: positive_int(value, name, minimum=minimum))


def _float_field(name: str, default: float, *, low: float, high: float | None, low_open: bool) -> Any:
    """A float field in ``[low, high]`` (``(low, high]`` with ``low_open``), bad values a ``ConfigError``."""
    allowed = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"'{name}' must be a number in {allowed} (got {value!r})")
        number = float(value)
        if not (number > low if low_open else number >= low) or (high is not None and number > high) \
                or number != number:
            raise ConfigError(f"'{name}' must be a number in {allowed} (got {value!r})")
        return number

    return attrs.field(default=default, converter=convert)


def _check_bool(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"'{attribute.name}' must be True or False (got {value!r})")


def _convert_sizes(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.replace(" ", "").split(",") if part]
        except ValueError:
            raise ConfigError(
                f"'capture_sizes' must be a comma-separated list of positive integers or 'auto' (got {value!r})"
            ) from None
    try:
        sizes = tuple(value)
    except TypeError:
        raise ConfigError(
            f"'capture_sizes' must be a sequence of positive integers, 'auto' or None (got {value!r})"
        ) from None
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"'capture_sizes' must hold positive integers (got {size!r} in {value!r})")
    if not sizes:
        raise ConfigError("'capture_sizes' must not be empty; leave it None for the default list")
    return tuple(sorted(set(sizes)))


def _convert_prefill_sizes(value: Any) -> tuple[int, ...] | None:
    """``prefill_capture_sizes``: None (off), or token counts, positive and strictly ascending."""
    return None if value is None else ascending_sizes(value, "prefill_capture_sizes")


def _convert_trace(value: Any) -> Any:
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    return tuple(value)


@attrs.frozen(kw_only=True)
class GraphConfig:
    """How graphcap captures and replays graphs. Change it with ``attrs.evolve``.

    Fields:
        use_graph: the flag. False means every decorated function runs unchanged.
        backend: ``auto`` (``device`` where ``is_cuda_graph_supported()``, else
            ``static``), ``eager`` (the reference: replay re-runs Python),
            ``static`` (CPU graph through ``paddle.jit.to_static``), ``device``
            (CUDA / XPU graph).
        capture_sizes: explicit capture sizes in rows, ``"auto"`` to plan them
            from ``trace`` under ``max_graphs``, or None for the default list:
            FastDeploy's 1, 2, 4, 8..128 step 8, 144..256 step 16, 288..1024 step
            32 and the maximum, capped at ``max_capture_size`` requests, times 1+k.
        max_capture_size: the largest batch, in requests, of the default list.
        prefill_capture_sizes: token counts a prompt is padded to for a
            prefill graph (``GraphedCausalLM``: prompts admitted in one step
            are prefilled together, bucketed on rows and on tokens); None
            (default) prefills every prompt eagerly, one at a time, as
            FastDeploy does with its prefill list unset. Strictly ascending,
            each at most the engine's ``max_len``.
        num_speculative_tokens: k, the MTP draft tokens per step (0 = none).
        draft_use_graph: graphs for the draft steps, independently of the target's.
        num_warmups: eager runs before each capture (default 2, at least 1:
            the first teaches graphcap the output shapes, a second lets the
            pure-function check compare two runs).
        debug_checks: check on replay that static arguments and registry
            buffers are where they were at capture (on by default): identity
            and rebinding every replay; the full comparison of ``data_ptr``
            and shape every ``address_check_interval``-th replay (default 8,
            1 = every replay), which also catches in-place reallocation and
            reshaping by a different-shaped ``copy_``.
        on_unsafe_capture: ``raise`` a ``CaptureSafetyError`` (default) or run
            that graph eagerly and log it once. Covers host reads and
            value-dependent shapes during capture, and functions that keep
            state of their own (the pure-function check).
        on_capture_failure: when capturing itself fails (tracing, device
            capture): ``eager`` (default) runs that bucket eagerly, logs one
            warning naming the root cause and lists it in
            ``stats()["fallbacks"]``; ``raise`` raises ``CaptureError``.
        on_rebind: when a replay finds that something the graph reads was
            rebound or moved (a static argument, a Layer parameter, a tensor
            in a closure or argument object): ``raise`` an
            ``AddressStabilityError`` naming its path (default) or
            ``recapture`` that graph. Registry buffers always raise.
        sync_ranks: agree across the ranks of a ``paddle.distributed`` group,
            before staging, on one decision per step (the largest row count,
            which buckets replay, capture or run eagerly), so graphs holding
            collectives are replayed and captured in lockstep; see
            ``graphcap.decide.agreement``. Needs an initialized parallel environment.
        max_graphs_per_bucket: graphs one function may hold for one bucket
            (argument trees with other non-tensor values, shapes or roles);
            past it, calls run eagerly, counted with the arguments that vary.
        trace: batch sizes in requests per step (a sequence or a file) for
            ``capture_sizes="auto"``; the size planner
            (``graphcap.decide.size_planner``) picks the sizes.
        max_graphs: graph budget per graph name for ``capture_sizes="auto"``.
        on_row_interaction: when filling a bucket's padding rows two ways
            (the padding rule, and a poison) changes a real row at capture, the
            rows interact (``x - x.mean(0)``): ``eager_padded`` (default) runs
            that graph's padded calls eagerly with the reason and still replays
            full ones; ``fail`` fails the capture (the bucket runs eagerly, or
            ``CaptureError`` with ``on_capture_failure="raise"``). With
            ``sync_ranks`` it always fails (every rank then agrees on eager).
        on_value_change: a Python value the graph read at capture (a global
            float, an object's attribute, a closure cell) changed, checked on
            every replay: ``recapture`` the graph (counted in ``recaptures``
            with the value's path), run it ``eager`` from then on with the
            reason, or ``raise`` ``AddressStabilityError``; ``auto`` (default)
            is ``recapture``, or ``raise`` with ``sync_ranks``.
        run_comparison: how runs on the same inputs are compared at capture
            (warmups, padding filled two ways, the graph against its warmup):
            ``bitwise``, ``tolerance`` (see ``graphcap.trust.tolerance``), or
            ``auto`` (default): bitwise on CPU, the tolerance on the device
            backend, whose kernels are not bitwise run to run.
        tolerance_scale: multiplies every tolerance bound (default 1.0).
        shadow_check_interval: every N-th replay of each graph also runs the
            function eagerly on the same call and compares (0 = off, default);
            on a mismatch the call returns the eager result and that graph
            runs eagerly from then on, recorded in ``shadow_mismatches``.
        coverage_warn_below: warn once when the share of a function's calls
            served by a graph is below this, in [0, 1] (default 0.8; 0 = never)
            after ``coverage_warmup_calls`` calls (default 64).
        replan_every: re-plan the capture sizes from the observed traffic
            every N ``registry.step()`` calls (0 = never, default); see
            ``CaptureRegistry.replan``. Every rank steps together, so every
            rank re-plans in the same step.
        replan_min_gain: the automatic re-plan adopts new sizes only when
            they pad at least this fraction fewer rows than the current ones
            on the recent traffic (default 0.1), so a stable workload never
            recaptures.
    """

    use_graph: bool = attrs.field(default=False, validator=_check_bool)
    backend: str = attrs.field(default="auto", validator=_check_choice(BACKENDS))
    capture_sizes: tuple[int, ...] | str | None = attrs.field(default=None, converter=_convert_sizes)
    max_capture_size: int = _int_field("max_capture_size", DEFAULT_MAX_CAPTURE_SIZE, 1)
    prefill_capture_sizes: tuple[int, ...] | None = attrs.field(default=None, converter=_convert_prefill_sizes)
    num_speculative_tokens: int = _int_field("num_speculative_tokens", 0, 0)
    draft_use_graph: bool = attrs.field(default=True, validator=_check_bool)
    num_warmups: int = _int_field("num_warmups", 2, 1)
    debug_checks: bool = attrs.field(default=True, validator=_check_bool)
    address_check_interval: int = _int_field("address_check_interval", 8, 1)
    on_unsafe_capture: str = attrs.field(default="raise", validator=_check_choice(ON_UNSAFE_CAPTURE))
    on_capture_failure: str = attrs.field(default="eager", validator=_check_choice(ON_CAPTURE_FAILURE))
    on_rebind: str = attrs.field(default="raise", validator=_check_choice(ON_REBIND))
    max_graphs_per_bucket: int = _int_field("max_graphs_per_bucket", 8, 1)
    sync_ranks: bool = attrs.field(default=False, validator=_check_bool)
    trace: tuple[int, ...] | str | os.PathLike | None = attrs.field(default=None, converter=_convert_trace)
    max_graphs: int = _int_field("max_graphs", 16, 1)
    on_row_interaction: str = attrs.field(default="eager_padded", validator=_check_choice(ON_ROW_INTERACTION))
    on_value_change: str = attrs.field(default="auto", validator=_check_choice(ON_VALUE_CHANGE))
    run_comparison: str = attrs.field(default="auto", validator=_check_choice(RUN_COMPARISON))
    tolerance_scale: float = _float_field("tolerance_scale", 1.0, low=0.0, high=None, low_open=True)
    shadow_check_interval: int = _int_field("shadow_check_interval", 0, 0)
    coverage_warn_below: float = _float_field("coverage_warn_below", 0.8, low=0.0, high=1.0, low_open=False)
    coverage_warmup_calls: int = _int_field("coverage_warmup_calls", 64, 1)
    replan_every: int = _int_field("replan_every", 0, 0)
    replan_min_gain: float = _float_field("replan_min_gain", 0.1, low=0.0, high=0.99, low_open=False)

    def __attrs_post_init__(self) -> None:
        if self.sync_ranks and self.on_rebind == "recapture":
            raise ConfigError(
                "'on_rebind' is 'recapture' but 'sync_ranks' is True: a recapture on one rank would run the "
                "function more often than the other ranks' replays; use on_rebind='raise' with sync_ranks"
            )
        if self.sync_ranks and self.on_value_change == "recapture":
            raise ConfigError(
                "'on_value_change' is 'recapture' but 'sync_ranks' is True: a recapture on one rank would run the "
                "function more often than the other ranks' replays; use 'raise' or 'auto' with sync_ranks"
            )
        if self.capture_sizes == "auto" and self.trace is None:
            raise ConfigError(
                "'capture_sizes' is 'auto' but 'trace' is None; give a trace of batch sizes or explicit sizes"
            )

    @property
    def value_change_policy(self) -> str:
        """What a changed Python value does: ``recapture``, ``eager`` or ``raise`` (``auto`` resolved)."""
        if self.on_value_change != "auto":
            return self.on_value_change
        return "raise" if self.sync_ranks else "recapture"

    @property
    def rows_per_request(self) -> int:
        """Rows a decoding request occupies in a verify step: 1 + k."""
        return 1 + self.num_speculative_tokens

    def resolved_backend(self) -> str:
        """The backend ``auto`` stands for on this machine."""
        if self.backend != "auto":
            return self.backend
        from graphcap.execute.backends import device_graphs_supported

        return "device" if device_graphs_supported() else "static"

    def sizes_for(self, rows_per_request: int | None = None) -> tuple[int, ...]:
        """Capture sizes in rows for a graph whose requests occupy ``rows_per_request`` rows.

        ``None`` means 1+k (the target verify step). Explicit sizes are rows for
        the target step and are rescaled for other row counts per request.
        """
        from graphcap.decide import buckets

        rpr = self.rows_per_request if rows_per_request is None else rows_per_request
        if self.capture_sizes is None:
            return buckets.default_capture_sizes(self.max_capture_size, multiplier=rpr)
        if self.capture_sizes == "auto":
            from graphcap.decide import size_planner

            trace = self.trace
            requests = size_planner.load_trace(trace) if isinstance(trace, (str, os.PathLike)) else list(trace)
            rows = [n * self.rows_per_request for n in requests]
            target = size_planner.plan_capture_sizes(rows, self.max_graphs, multiple_of=self.rows_per_request)
            return _rescale(target, self.rows_per_request, rpr)
        return _rescale(self.capture_sizes, self.rows_per_request, rpr)

    @property
    def target_capture_sizes(self) -> tuple[int, ...]:
        """Capture sizes in rows for the target verify step."""
        return self.sizes_for(None)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GraphConfig:
        """Build a config from a mapping; unknown keys raise ``ConfigError`` naming them."""
        return attrs_from_dict(cls, values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GraphConfig:
        """Build a config from ``GRAPHCAP_*`` environment variables.

        ``GRAPHCAP_USE_GRAPH=1``, ``GRAPHCAP_BACKEND=static``,
        ``GRAPHCAP_CAPTURE_SIZES=1,2,4``, ``GRAPHCAP_MAX_CAPTURE_SIZE``,
        ``GRAPHCAP_NUM_SPECULATIVE_TOKENS``, ``GRAPHCAP_DRAFT_USE_GRAPH``,
        ``GRAPHCAP_NUM_WARMUPS``, ``GRAPHCAP_DEBUG_CHECKS``,
        ``GRAPHCAP_ON_UNSAFE_CAPTURE``, ``GRAPHCAP_ON_CAPTURE_FAILURE``,
        ``GRAPHCAP_ON_REBIND``, ... (every field but ``trace``). Keyword
        overrides win.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = env.get("GRAPHCAP_" + field.name.upper())
            if raw is None or field.name == "trace":
                continue
            values[field.name] = _parse_env(field.name, raw)
        values.update(overrides)
        return cls.from_dict(values)

    def to_json(self) -> str:
        """The config as JSON (for result files)."""
        return json.dumps(attrs.asdict(self), default=str)


def attrs_from_dict(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """``cls(**values)`` for an attrs class, with unknown keys raising ``ConfigError`` naming them."""
    known = {field.name for field in attrs.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {sorted(known)}")
    return cls(**dict(values))


def _rescale(sizes: tuple[int, ...] | str | None, from_rpr: int, to_rpr: int) -> tuple[int, ...]:
    assert isinstance(sizes, tuple)
    if from_rpr == to_rpr:
        return sizes
    requests = sorted({-(-size // from_rpr) for size in sizes})
    return tuple(n * to_rpr for n in requests)


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse_env(name: str, raw: str) -> Any:
    field = attrs.fields_dict(GraphConfig)[name]
    default = field.default
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word not in _BOOL_WORDS:
            raise ConfigError(f"GRAPHCAP_{name.upper()} must be 1/0/true/false (got {raw!r})")
        return _BOOL_WORDS[word]
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"GRAPHCAP_{name.upper()} must be an integer (got {raw!r})") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"GRAPHCAP_{name.upper()} must be a number (got {raw!r})") from None
    return raw.strip()
