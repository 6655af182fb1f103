"""Per-step pre-processing for the MTP verify step, written in place into static buffers.

The host decides which slots decode this step and with which tokens; this
module turns that into the forward metadata a captured graph reads:

* ``seq_lens_this_time`` int32 [max_bs]: rows of each slot this step (k+1 for
  a decoding slot, the prompt length for a prefill slot, 0 for an empty one);
* ``seq_lens_encoder`` int32 [max_bs]: prompt length while prefilling, else 0;
* ``cu_seqlens_q_output`` int32 [max_bs+1]: exclusive prefix sum of *output*
  rows (0 empty, 1 prefill, ``seq_lens_this_time`` decode);
* ``batch_id_per_token_output`` int32 [max_rows]: slot of each output row,
  padding rows -1;
* ``input_ids`` int64 / ``positions`` int64 [max_rows]: the rows' tokens and
  positions.

Every write goes through ``StaticBuffers.write`` (in place, padded by the
buffer's rule); nothing is ever rebound.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from graphcap.buffers import StaticBuffers


@attrs.frozen
class SlotRows:
    """The rows one slot feeds this step: tokens at consecutive positions from ``start``."""

    slot: int
    tokens: tuple[int, ...]
    start: int
    prefill: bool = False


@attrs.frozen
class StepLayout:
    """Host-side copy of what ``write_step_inputs`` put into the buffers."""

    rows: int
    row_start: dict[int, int]
    seq_lens_this_time: np.ndarray
    cu_seqlens_q_output: np.ndarray
    batch_id_per_token_output: np.ndarray


def declare_step_buffers(bufs: StaticBuffers, *, max_batch: int, max_rows: int, prefix: str = "") -> None:
    """Declare the pre-processing buffers once, with their padding rules.

    ``prefix`` starts every name (``spec_input_ids`` ...), for a registry
    that already holds buffers of these names for another step.
    """
    bufs.declare(f"{prefix}seq_lens_this_time", [max_batch], "int32", pad="zero")
    bufs.declare(f"{prefix}seq_lens_encoder", [max_batch], "int32", pad="zero")
    bufs.declare(f"{prefix}cu_seqlens_q_output", [max_batch + 1], "int32", pad="keep")
    # -1 marks padding rows: the model maps them to its trash KV slot and the
    # sampler's rows past cu[B] are padding, so they never touch a request.
    bufs.declare(f"{prefix}batch_id_per_token_output", [max_rows], "int32", pad="value", pad_value=-1)
    bufs.declare(f"{prefix}input_ids", [max_rows], "int64", pad="zero")
    bufs.declare(f"{prefix}positions", [max_rows], "int64", pad="zero")


def layout_rows(slot_rows: Sequence[SlotRows], *, max_batch: int) -> tuple[StepLayout, np.ndarray, np.ndarray]:
    """Compute the step's metadata on the host: (layout, input ids, positions).

    Rows are laid out in slot order. A prefill slot outputs one row (its
    last position); a decode slot outputs all of its rows.
    """
    ordered = sorted(slot_rows, key=lambda item: item.slot)
    seq_lens = np.zeros(max_batch, dtype=np.int32)
    output_rows = np.zeros(max_batch, dtype=np.int32)
    ids: list[int] = []
    positions: list[int] = []
    batch_ids: list[int] = []
    row_start: dict[int, int] = {}
    for item in ordered:
        count = len(item.tokens)
        seq_lens[item.slot] = count
        output_rows[item.slot] = 1 if item.prefill else count
        row_start[item.slot] = len(ids)
        ids.extend(item.tokens)
        positions.extend(range(item.start, item.start + count))
        batch_ids.extend([item.slot] * count)
    cu = np.zeros(max_batch + 1, dtype=np.int32)
    np.cumsum(output_rows, out=cu[1:])
    layout = StepLayout(
        rows=len(ids),
        row_start=row_start,
        seq_lens_this_time=seq_lens,
        cu_seqlens_q_output=cu,
        batch_id_per_token_output=np.asarray(batch_ids, dtype=np.int32),
    )
    return layout, np.asarray(ids, dtype=np.int64), np.asarray(positions, dtype=np.int64)


def write_step_inputs(
    bufs: StaticBuffers, slot_rows: Sequence[SlotRows], *, max_batch: int, prefix: str = ""
) -> StepLayout:
    """Lay out this step's rows and write every pre-processing buffer in place (names as declared, ``prefix``)."""
    layout, ids, positions = layout_rows(slot_rows, max_batch=max_batch)
    encoder = np.zeros(max_batch, dtype=np.int32)
    for item in slot_rows:
        if item.prefill:
            encoder[item.slot] = len(item.tokens)
    bufs.write(f"{prefix}seq_lens_this_time", layout.seq_lens_this_time)
    bufs.write(f"{prefix}seq_lens_encoder", encoder)
    bufs.write(f"{prefix}cu_seqlens_q_output", layout.cu_seqlens_q_output)
    bufs.write(f"{prefix}batch_id_per_token_output", layout.batch_id_per_token_output)
    bufs.write(f"{prefix}input_ids", ids)
    bufs.write(f"{prefix}positions", positions)
    return layout
