"""A graphed function bucketed on tokens as well as rows: the call path of ``CaptureRegistry.graphed_tokens``.

A call of ``S`` tokens (the token axis of the counting argument) runs at
token size ``T = TokenPlan.size_for(S)``: its token arguments are padded to
``T`` (``execute.token_padding``), the padded call goes to the graphed
function of that size (``<name>[tokens=T]``, bucketed on rows as every
graphed function, so each (rows bucket, ``T``) pair is one graph), and the
outputs that follow the tokens are cut back to ``S``. The first call at each
``T`` runs the token probe first (``trust.at_capture_tokens``): a size whose
padding positions reach a real one serves only calls that fill it; its
padded calls, and calls above the largest size, run the original function
eagerly, counted with the reason. Padded tokens are counted per size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import paddle

from graphcap.decide import pytree
from graphcap.decide.token_buckets import STRUCTURAL_RULES, TokenPlan
from graphcap.execute.token_padding import cut_tokens, pad_tokens, poison_tokens, take_tokens
from graphcap.trust.at_capture_rows import RunRecord
from graphcap.trust.at_capture_tokens import token_leak, token_outputs, token_padding_change

if TYPE_CHECKING:
    from graphcap.registry import CaptureRegistry

__all__ = ["TokenBucketedFunction", "TokenProbe"]


@attrs.frozen
class TokenProbe:
    """What the first call at one token size showed: which outputs follow the tokens, and why padding is unsafe."""

    follows: tuple[bool, ...]
    unsafe: str | None  # the reason padded calls at this size run eagerly, or None


class TokenBucketedFunction:
    """A function run through graphs bucketed on (rows, tokens); call it like the original.

    ``__wrapped__`` is the original function; ``sizes[T]`` the graphed function
    of token size ``T``; ``stats()`` the calls, tokens and padding per size.
    """

    def __init__(self, name: str, fn: Callable[..., Any], registry: CaptureRegistry, plan: TokenPlan,
                 graphed: dict[str, Any]) -> None:
        """One graphed function per token size, each ``registry.graphed(**graphed)``."""
        self.name = name
        self.__wrapped__ = fn
        self.plan = plan
        self.registry = registry
        self.signature = inspect.signature(fn)
        self.sizes = {size: registry.graphed(f"{name}[tokens={size}]", **graphed)(fn) for size in plan.sizes}
        self.probes: dict[int, TokenProbe] = {}
        comparison = registry.config.run_comparison
        self.bitwise = comparison == "bitwise" or (
            comparison == "auto" and registry.backend.name != "device" and paddle.get_device().startswith("cpu"))
        self._counts = {"calls": 0, "tokens": 0, "padded_tokens": 0, "eager_calls": 0}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Pad to the token size, replay (or capture) its graph, cut the outputs back; eagerly where it cannot."""
        bound = self.signature.bind(*args, **kwargs)
        arguments = bound.arguments
        tokens = arguments[self.plan.count_arg].shape[self.plan.axes[self.plan.count_arg]]
        size = self.plan.size_for(tokens)
        self._counts["calls"] += 1
        if size is None:
            return self._eager(args, kwargs, None, f"{tokens} tokens is more than the largest token size "
                                                   f"{self.plan.sizes[-1]}; the call ran eagerly")
        probe = self.probes.get(size)
        if probe is None:
            probe = self.probes[size] = self._probe(bound, tokens, size)
        if probe.unsafe is not None and tokens < size:
            return self._eager(args, kwargs, size, probe.unsafe)
        for name, axis in self.plan.axes.items():
            arguments[name] = pad_tokens(arguments[name], axis, size, self.plan.rules[name])
        result = self.sizes[size](*bound.args, **bound.kwargs)
        rows = bound.arguments[self.plan.count_arg].shape[0]
        self._counts["tokens"] += rows * tokens
        self._counts["padded_tokens"] += rows * (size - tokens)
        return cut_tokens(result, probe.follows, tokens)

    def _eager(self, args: tuple[Any, ...], kwargs: dict[str, Any], size: int | None, reason: str) -> Any:
        """The original function on the call as given, counted as an eager fallback of this function."""
        self._counts["eager_calls"] += 1
        self.registry.stats_counters.fallback(self.name, size, reason)
        return self.__wrapped__(*args, **kwargs)

    def _probe(self, bound: inspect.BoundArguments, tokens: int, size: int) -> TokenProbe:
        """Run the token probe of ``size`` on this call (see ``trust.at_capture_tokens``).

        The function runs three times, eagerly, on the call's own inputs; the
        restorable registry buffers (seeds) are put back after each run, and
        the graphed call that follows rewrites whatever the runs wrote.
        """
        probe = tokens if tokens < size else tokens - 1
        if probe < 1:  # a size of one token never pads
            return TokenProbe(follows=(), unsafe=None)
        arguments = bound.arguments
        real = {name: take_tokens(arguments[name], axis, probe) for name, axis in self.plan.axes.items()}
        by_rule = {name: pad_tokens(real[name], axis, size, self.plan.rules[name])
                   for name, axis in self.plan.axes.items()}
        poisoned = {name: value if self.plan.rules[name] in STRUCTURAL_RULES
                    else poison_tokens(value, self.plan.axes[name], probe) for name, value in by_rule.items()}
        runs = {what: self._run(bound, values) for what, values in
                (("poisoned", poisoned), ("by_rule", by_rule), ("direct", real))}
        paths = pytree.OutputTree(runs["by_rule"][1]).paths
        follows = token_outputs(paths, runs["by_rule"][0], runs["direct"][0], size, probe)
        if isinstance(follows, str):
            return TokenProbe(follows=(), unsafe=follows)
        scale = self.registry.config.tolerance_scale
        unsafe = token_leak(paths, follows, runs["by_rule"][0], runs["poisoned"][0], size, probe,
                            bitwise=self.bitwise, scale=scale) \
            or token_padding_change(paths, follows, runs["by_rule"][0], runs["direct"][0], size, probe, scale=scale)
        return TokenProbe(follows=follows, unsafe=unsafe)

    def _run(self, bound: inspect.BoundArguments, tokens: dict[str, Any]) -> tuple[RunRecord, Any]:
        """One eager run with ``tokens`` in place of the token arguments; the seeds it advanced put back."""
        call = inspect.BoundArguments(self.signature, {**bound.arguments, **tokens})
        restorable = [tensor for _, tensor in self.registry.buffers.restorable_items()]
        saved = [tensor.clone() for tensor in restorable]
        result = self.__wrapped__(*call.args, **call.kwargs)
        record = RunRecord.of(result, [])
        for tensor, copy in zip(restorable, saved):
            paddle.assign(copy, output=tensor)  # same shape: the buffer keeps its address
        return record, result

    def coverage(self) -> float | None:
        """The share of calls a graph served (eager calls included in the count), None before the first call."""
        calls = self._counts["calls"]
        return None if calls == 0 else sum(fn.graph_calls for fn in self.sizes.values()) / calls

    def stats(self) -> dict[str, Any]:
        """Calls, real and padded tokens (rows x tokens), eager calls, coverage, and each size's probe verdict."""
        return {**self._counts, "coverage": self.coverage(),
                "unsafe_sizes": {size: probe.unsafe for size, probe in self.probes.items() if probe.unsafe}}
