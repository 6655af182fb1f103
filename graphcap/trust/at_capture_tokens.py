"""At the first call of a token size: padding positions never change a real position, and outputs are cut back.

The call path (``graphcap.graphed_tokens``) runs the function eagerly three
times on the call's first ``probe`` positions (all of them for a padded call;
all but the last for a call that fills its size, whose last position then
plays the padding): padded to the size by the rules, padded with the data
padding filled another way (``poison_tokens``), and unpadded. This module
decides what the runs must show, as ``at_capture_rows`` does for rows:

* ``token_outputs``: which outputs follow the tokens (axis 1 is the size in
  the padded runs and ``probe`` in the unpadded one; cut on replay) and which
  do not; an output whose shape changes otherwise cannot be served;
* ``token_leak``: the real positions of every output must be the same with
  the padding filled two ways (bitwise on CPU). They differ when positions
  interact (attention without a causal mask, a mean over the tokens): then
  padded calls at this size run eagerly, with the reason;
* ``token_padding_change``: the padded run cut back must equal the unpadded
  run within the rounding another token count explains (``tolerance``);
  beyond it, the padding rule is wrong for an argument (positions that
  restart at zero overwrite a real position's cache entry).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphcap.trust import tolerance
from graphcap.trust.at_capture_purity import same_constant
from graphcap.trust.at_capture_rows import RunRecord

__all__ = ["token_leak", "token_outputs", "token_padding_change"]


def token_outputs(paths: Sequence[str], padded: RunRecord, direct: RunRecord, size: int,
                  probe: int) -> tuple[bool, ...] | str:
    """Per output, whether it follows the tokens (cut along axis 1 on replay); or the reason none can serve."""
    if padded.structure != direct.structure:
        return (f"the result's structure differs between {probe} and {size} tokens; a graph returns one "
                f"structure for every call it serves")
    for (path, value), (_, small) in zip(padded.constants, direct.constants):
        if not same_constant(value, small):
            return (f"the non-tensor result {path} is {small!r} for {probe} tokens and {value!r} for {size}: a "
                    f"graph would return the padded call's value; return it as a tensor or compute it outside")
    follows = []
    for path, (shape, _), (small, _) in zip(paths, padded.specs, direct.specs):
        if shape == small:
            follows.append(False)
        elif len(shape) > 1 and len(small) > 1 and shape[1] == size and small[1] == probe \
                and shape[:1] + shape[2:] == small[:1] + small[2:]:
            follows.append(True)
        else:
            return (f"{path} has shape {small} for {probe} tokens and {shape} for {size}: its tokens are not "
                    f"its axis 1, along which graphcap cuts outputs back to the call's tokens; return it with "
                    f"the tokens on axis 1")
    return tuple(follows)


def _real(record: RunRecord, follows: Sequence[bool], probe: int) -> list[np.ndarray]:
    """``record``'s outputs with those that follow the tokens cut to the first ``probe`` positions."""
    return [value[:, :probe] if follow else value for value, follow in zip(record.values, follows)]


def token_leak(paths: Sequence[str], follows: Sequence[bool], by_rule: RunRecord, poisoned: RunRecord, size: int,
               probe: int, *, bitwise: bool, scale: float = 1.0) -> str | None:
    """The reason padded calls at ``size`` cannot replay when the padding reaches a real position, else None."""
    found = tolerance.first_mismatch(_real(by_rule, follows, probe), _real(poisoned, follows, probe),
                                     by_rule.dtypes, paths, bitwise=bitwise, scale=scale)
    if found is None:
        return None
    return (f"positions interact: {found.describe()} of the {probe} real positions changed when the "
            f"{size - probe} padding positions of token size {size} held other values, so a padded replay would "
            f"differ from the call on its own tokens (attention without a causal mask, a reduction over the "
            f"tokens); padded calls at this size run eagerly")


def token_padding_change(paths: Sequence[str], follows: Sequence[bool], by_rule: RunRecord, direct: RunRecord,
                         size: int, probe: int, *, scale: float = 1.0) -> str | None:
    """The reason padded calls cannot replay when padding by the rules changes the real result, else None."""
    for path, value, small, dtype in zip(paths, _real(by_rule, follows, probe), direct.values, by_rule.dtypes):
        found = tolerance.compare(value, small, dtype, bitwise=False, scale=scale)
        if found is not None:
            difference, limit = found
            return (f"{path} differs between {probe} tokens padded to {size} and the same {probe} tokens alone by "
                    f"{difference:.3g}, beyond the {limit:.3g} that rounding over another token count explains: "
                    f"the padding changes the result. A position argument needs token_padding 'continue', a mask "
                    f"'copy_last'; padded calls at this size run eagerly")
    return None
