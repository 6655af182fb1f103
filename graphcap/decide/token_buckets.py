"""Token buckets: which padded token count serves a call, and how each argument is padded along its token axis.

A function bucketed on tokens as well as rows (``CaptureRegistry.graphed_tokens``)
names its token arguments and the axis that holds the tokens in each
(``input_ids`` ``[R, S]``: axis 1; a mask ``[R, 1, S, L]``: axis 2). A call of
``S`` tokens runs at the smallest token size ``T >= S``: every token argument
is padded from ``S`` to ``T`` along its axis by its rule, and the rows are
bucketed as for every graphed function. Above the largest size it runs
eagerly, counted with the reason. This module only decides; padding and
cutting are ``graphcap.execute.token_padding``.

Rules, by what the padding positions hold:

* ``zero`` (default): zeros; *data* (token ids, features). The capture probe
  fills these padding positions a second way and requires the real positions
  of every output to stay the same.
* ``continue``: the last real value plus 1, 2, ... (positions, which must
  keep counting so that padding positions never overwrite a real one's cache
  entry);
* ``copy_last``: the last real slice repeated (a mask row that attends the
  real keys only).

``continue`` and ``copy_last`` are *structure*: the probe keeps them as the
rule fills them, since filling positions another way would make another
valid call, not the same call with other padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from graphcap.errors import ConfigError
from graphcap.validators import ascending_sizes

__all__ = ["STRUCTURAL_RULES", "TOKEN_RULES", "TokenPlan"]

TOKEN_RULES = ("zero", "continue", "copy_last")
STRUCTURAL_RULES = frozenset({"continue", "copy_last"})


@attrs.frozen
class TokenPlan:
    """The token sizes of one function, the argument whose axis counts the tokens, and each token argument's rule."""

    sizes: tuple[int, ...]
    count_arg: str
    axes: Mapping[str, int]
    rules: Mapping[str, str]

    @classmethod
    def build(cls, sizes: Sequence[int], count_arg: str, axes: Mapping[str, Any],
              padding: Mapping[str, str] | None = None) -> TokenPlan:
        """Validate and build; ``ConfigError`` names the bad value and what is allowed."""
        ordered = ascending_sizes(sizes, "token_sizes")
        checked: dict[str, int] = {}
        for name, axis in dict(axes).items():
            if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
                raise ConfigError(
                    f"token_args[{name!r}]={axis!r}: a token axis is an integer >= 1 (axis 0 holds the rows)")
            checked[name] = axis
        if count_arg not in checked:
            raise ConfigError(
                f"token_args={checked} does not name {count_arg!r}, the argument whose token axis counts the "
                f"call's tokens; add it, e.g. token_args={{{count_arg!r}: 1, ...}}")
        rules = {name: "zero" for name in checked}
        for name, rule in dict(padding or {}).items():
            if name not in checked:
                raise ConfigError(f"token_padding names {name!r}, which is not in token_args {sorted(checked)}")
            if rule not in TOKEN_RULES:
                raise ConfigError(f"token_padding[{name!r}]={rule!r}: the rules are {list(TOKEN_RULES)}")
            rules[name] = rule
        if rules[count_arg] in STRUCTURAL_RULES:
            raise ConfigError(
                f"token_padding[{count_arg!r}]={rules[count_arg]!r}: the counting argument holds data; its "
                f"padding must be 'zero', so that the capture probe can check padding positions stay apart")
        return cls(sizes=ordered, count_arg=count_arg, axes=checked, rules=rules)

    def size_for(self, tokens: int) -> int | None:
        """The smallest token size holding ``tokens``, or None above the largest."""
        index = bisect.bisect_left(self.sizes, tokens)
        return self.sizes[index] if index < len(self.sizes) else None
