"""The verify rule every speculative engine in graphcap applies, in one place."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["accepted_prefix"]


def accepted_prefix(drafts: Sequence[int], verified: Sequence[int]) -> int:
    """How many drafts the target accepts: the longest prefix with ``drafts[j] == verified[j]``.

    ``verified`` holds the target's tokens for the k+1 verify rows (row j
    predicts what follows draft j); the caller commits ``verified[:a + 1]``
    for ``a = accepted_prefix(...)``, the accepted drafts plus the bonus token.
    """
    accepted = 0
    limit = min(len(drafts), len(verified) - 1)
    while accepted < limit and drafts[accepted] == verified[accepted]:
        accepted += 1
    return accepted
