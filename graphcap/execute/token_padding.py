"""Padding along the token axis, and cutting results back to the call's tokens.

``pad_tokens`` builds a new tensor of ``size`` positions along ``axis`` from one
of ``tokens`` (the rules are ``graphcap.decide.token_buckets``'s);
``poison_tokens`` fills the padding positions of a ``zero``-rule argument
another way for the capture probe; ``cut_tokens`` cuts the outputs that follow
the tokens back to the call's count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import paddle

from graphcap.decide import pytree

__all__ = ["cut_tokens", "pad_tokens", "poison_tokens", "take_tokens"]

_FLOATS = (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)


def take_tokens(value: paddle.Tensor, axis: int, count: int) -> paddle.Tensor:
    """The first ``count`` positions of ``value`` along ``axis`` (a view)."""
    index = [slice(None)] * len(value.shape)
    index[axis] = slice(0, count)
    return value[tuple(index)]


def _last(value: paddle.Tensor, axis: int, repeat: int) -> paddle.Tensor:
    """The last position along ``axis`` repeated ``repeat`` times."""
    tokens = value.shape[axis]
    last = paddle.slice(value, axes=[axis], starts=[tokens - 1], ends=[tokens])
    times = [1] * len(value.shape)
    times[axis] = repeat
    return paddle.tile(last, times)


def pad_tokens(value: paddle.Tensor, axis: int, size: int, rule: str) -> paddle.Tensor:
    """``value`` padded from its token count to ``size`` positions along ``axis`` by ``rule`` (a new tensor)."""
    tokens = value.shape[axis]
    extra = size - tokens
    if extra == 0:
        return value.clone()
    if rule == "copy_last":
        padding = _last(value, axis, extra)
    elif rule == "continue":
        shape = [1] * len(value.shape)
        shape[axis] = extra
        steps = paddle.arange(1, extra + 1, dtype=value.dtype).reshape(shape)
        padding = _last(value, axis, extra) + steps
    else:
        shape = list(value.shape)
        shape[axis] = extra
        padding = paddle.zeros(shape, dtype=value.dtype)
    return paddle.concat([value, padding], axis=axis)


def poison_tokens(padded: paddle.Tensor, axis: int, tokens: int) -> paddle.Tensor:
    """``padded`` with its positions past ``tokens`` unlike zeros: the real positions repeated (plus 1 if floating).

    Repeated real values stay valid inputs (token ids in range); the +1 keeps
    them apart from zero padding even where the real values are zero.
    """
    size = padded.shape[axis]
    real = take_tokens(padded, axis, tokens)
    index = paddle.to_tensor([position % tokens for position in range(size - tokens)], dtype="int64")
    repeated = paddle.index_select(real, index, axis=axis)
    if repeated.dtype in _FLOATS:
        repeated = repeated + 1
    return paddle.concat([real, repeated], axis=axis)


def cut_tokens(result: Any, follows: Sequence[bool], tokens: int) -> Any:
    """``result`` with each tensor leaf that follows the tokens (``follows[i]``, axis 1) cut to ``tokens``."""
    leaves = pytree.output_leaves(result)
    if not any(follows):
        return result
    cut = [leaf[:, :tokens] if follow else leaf for leaf, follow in zip(leaves, follows)]
    return pytree.OutputTree(result).rebuild(cut)
