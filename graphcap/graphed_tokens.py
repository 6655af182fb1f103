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
from graphcap.trust.tolerance import runs_are_bitwise

if TYPE_CHECKING:
    from graphcap.registry import CaptureRegistry

__all__ = ["TokenBucketedFunction", "TokenProbe"]


@attrs.frozen
class TokenProbe:
    """What the first call at one token size showed: which outputs follow the tokens, and why padding is unsafe."""

    follows: tuple[bool, ...]
    unsafe: str | None  # the reason padded calls at this size run eagerly, or None
    conclusive: bool = True  # False: this call could not test the padding; the next call at the size probes again


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
        self.bitwise = runs_are_bitwise(registry.config.run_comparison, registry.backend.name)
        self._counts = {"calls": 0, "tokens": 0, "padded_tokens": 0, "eager_calls": 0, "eager_tokens": 0}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Pad to the token size, replay (or capture) its graph, cut the outputs back; eagerly where it cannot.

        Outputs cut along the tokens are views of the graph's static outputs
        (overwritten by its next replay) and, unlike row cuts, not contiguous:
        ``.contiguous()`` one before ``view``/``reshape`` needs it.
        """
        bound = self.signature.bind(*args, **kwargs)
        arguments = bound.arguments
        missing = [name for name in self.plan.axes if not isinstance(arguments.get(name), paddle.Tensor)]
        if missing:
            self._counts["calls"] += 1
            return self._eager(args, kwargs, 0, f"token argument(s) {missing} are not tensors in this call; it "
                                                f"ran eagerly")
        counter = arguments[self.plan.count_arg]
        rows, tokens = counter.shape[0], counter.shape[self.plan.axes[self.plan.count_arg]]
        if rows == 0:  # nothing to run: not a call a graph or the probe could serve, and not counted
            return self.__wrapped__(*args, **kwargs)
        self._counts["calls"] += 1
        if tokens == 0:
            return self._eager(args, kwargs, rows * tokens, "a call of 0 tokens has nothing to pad; it ran eagerly")
        size = self.plan.size_for(tokens)
        if size is None:
            return self._eager(args, kwargs, rows * tokens, f"{tokens} tokens is more than the largest token size "
                                                            f"{self.plan.sizes[-1]}; the call ran eagerly")
        probe = self.probes.get(size)
        if probe is None:
            probe = self._probe(bound, tokens, size)
            if probe.conclusive:
                self.probes[size] = probe
        if probe.unsafe is not None and tokens < size:
            return self._eager(args, kwargs, rows * tokens, probe.unsafe)
        for name, axis in self.plan.axes.items():
            arguments[name] = pad_tokens(arguments[name], axis, size, self.plan.rules[name])
        result = self.sizes[size](*bound.args, **bound.kwargs)
        self._counts["tokens"] += rows * tokens
        self._counts["padded_tokens"] += rows * (size - tokens)
        return cut_tokens(result, probe.follows, tokens)

    def _eager(self, args: tuple[Any, ...], kwargs: dict[str, Any], tokens: int, reason: str) -> Any:
        """The original function on the call as given (``tokens``: rows x tokens), counted with ``reason``."""
        self._counts["eager_calls"] += 1
        self._counts["eager_tokens"] += tokens
        # The bucket field holds rows buckets elsewhere; a token size is named in the reason instead.
        self.registry.stats_counters.fallback(self.name, None, reason)
        return self.__wrapped__(*args, **kwargs)

    def _probe(self, bound: inspect.BoundArguments, tokens: int, size: int) -> TokenProbe:
        """Run the token probe of ``size`` on this call (see ``trust.at_capture_tokens``).

        The function runs three times, eagerly, on the call's own inputs; the
        restorable registry buffers (seeds) are put back after each run, and
        the graphed call that follows rewrites whatever the runs wrote.
        """
        probe = tokens if tokens < size else tokens - 1
        if probe < 1:  # a size of one token (called with one token, as the caller ensures) never pads
            return TokenProbe(follows=(), unsafe=None)
        arguments = bound.arguments
        real = {name: take_tokens(arguments[name], axis, probe) for name, axis in self.plan.axes.items()}
        by_rule = {name: pad_tokens(real[name], axis, size, self.plan.rules[name])
                   for name, axis in self.plan.axes.items()}
        poisoned = {name: value if self.plan.rules[name] in STRUCTURAL_RULES
                    else poison_tokens(value, self.plan.axes[name], probe) for name, value in by_rule.items()}
        if all(bool((poisoned[name] == by_rule[name]).all()) for name in poisoned):
            # The data padding filled "another way" came out the same (all-zero ids, a dummy warmup): this
            # call cannot show a leak. It is served eagerly and the next call at this size probes again.
            return TokenProbe(follows=(), unsafe=f"token size {size}: the probe could not fill the padding "
                              f"another way on this call (its data is all zeros); it ran eagerly and the next "
                              f"call at this size is probed again", conclusive=False)
        runs = {"direct": self._run(bound, real)}
        for what, values in (("poisoned", poisoned), ("by_rule", by_rule)):
            try:
                runs[what] = self._run(bound, values)
            except Exception as exc:  # noqa: BLE001 - the padded call raising is the finding, the call itself runs
                return TokenProbe(follows=(), unsafe=f"the function raises on {probe} tokens padded to token size "
                                  f"{size} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); padded calls at "
                                  f"this size run eagerly")
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

    @property
    def coverage(self) -> float | None:
        """The share of calls a graph served (eager calls counted, 0-row calls not), None before the first call."""
        calls = self._counts["calls"]
        return None if calls == 0 else sum(fn.graph_calls for fn in self.sizes.values()) / calls

    def stats(self) -> dict[str, Any]:
        """Calls, real and padded tokens of graphed calls and tokens of eager ones (rows x tokens), eager calls,
        coverage, and each size's probe verdict."""
        return {**self._counts, "coverage": self.coverage,
                "unsafe_sizes": {size: probe.unsafe for size, probe in self.probes.items() if probe.unsafe}}
