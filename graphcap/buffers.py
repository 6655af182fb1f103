"""``StaticBuffers``: named tensors allocated once whose addresses never change.

A captured graph reads and writes the addresses it saw at capture, so every
tensor a graph touches must stay where it was. Three rules follow, and this
module enforces them:

* Writes go in place (``buf[:n] = x``). ``copy_`` / ``assign(output=)`` with a
  different-shaped source silently reshape, and may reallocate, the
  destination; they are never used here.
* Rows past the real count are filled by the buffer's padding rule on every
  write, so padding rows never carry a previous step's data.
* Rebinding a name (``bufs.x = t``, ``bufs["x"] = t``) raises
  ``AddressStabilityError``: the graph would keep reading the old tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import paddle

from graphcap.errors import AddressStabilityError, StaticBufferError

PAD_RULES = ("zero", "value", "copy_row0", "keep")
_data_ptr = paddle.Tensor.data_ptr


@attrs.frozen(kw_only=True)
class BufferSpec:
    """Shape, dtype and padding rule of one static buffer; dim 0 counts rows."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    pad: str = "zero"
    pad_value: float | int = 0
    # Snapshotted before warmups/capture and copied back after, so the extra
    # executions a capture needs leave no trace in it (infer_seed, counters).
    restore: bool = True

    @property
    def capacity(self) -> int:
        """Rows the buffer holds."""
        return self.shape[0]


def pad_rows(buf: paddle.Tensor, pad: str, pad_value: float | int, rows: int, end: int) -> None:
    """Fill rows ``[rows:end]`` of ``buf`` by the padding rule ``pad`` (see ``PAD_RULES``)."""
    if rows >= end or pad == "keep":
        return
    # Padding rows are rewritten on every staging, so they never hold a
    # previous step's data (a stale -1 or a stale token id).
    if pad == "zero":
        buf[rows:end] = 0
    elif pad == "value":
        buf[rows:end] = pad_value
    elif rows > 0:  # copy_row0: padding rows repeat row 0, a valid input
        buf[rows:end] = buf[0:1]
    else:
        buf[:end] = 0


def dtype_name(dtype: Any) -> str:
    """``paddle.int32`` / ``np.int32`` / ``"int32"`` -> ``"int32"``."""
    text = str(dtype)
    return text.rsplit(".", 1)[-1]


class StaticBuffers:
    """Named static buffers with in-place, padded, checked writes.

    Lifetime: a buffer lives as long as this object; its address is fixed at
    ``declare`` and every graph captured over it may read it until the owning
    registry is reset. Read a buffer as ``bufs.name`` or ``bufs["name"]``;
    write it only with ``write`` (or in place, ``bufs.name[:n] = x``).
    """

    def __init__(self, owner: str = "buffers") -> None:
        """Create an empty set; ``owner`` appears in error messages."""
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_tensors", {})
        object.__setattr__(self, "_specs", {})
        # name -> (tensor, spec, paddle dtype, trailing shape): what write() needs, looked up once.
        object.__setattr__(self, "_slots", {})
        # Bumped whenever the name -> tensor mapping changes, so a replay can
        # tell in O(1) that nothing was rebound since capture.
        object.__setattr__(self, "_generation", 0)
        # name -> n: the buffer's rows [n:] hold its padding rule, as write() or stage() left them
        # (GraphedFunction.replay skips padding such a buffer again for a batch of n rows).
        object.__setattr__(self, "_padded_from", {})

    # Declaration ---------------------------------------------------------
    def declare(
        self,
        name: str,
        shape: Sequence[int],
        dtype: str | Any,
        *,
        pad: str = "zero",
        pad_value: float | int = 0,
        restore: bool = True,
    ) -> paddle.Tensor:
        """Allocate buffer ``name`` once, filled with its padding, and return it.

        ``pad`` is the padding rule for rows past the real count on each write:
        ``zero``, ``value`` (the sentinel ``pad_value``, e.g. -1 for
        ``batch_id_per_token_output``), ``copy_row0`` or ``keep``. Declaring
        an existing name with the same spec returns the existing tensor;
        with another spec it raises ``StaticBufferError``. ``restore`` (the
        default) snapshots the buffer around each capture and copies it back,
        so warmups that advance it in place do not count.
        """
        if pad not in PAD_RULES:
            raise StaticBufferError(f"buffer {name!r}: pad={pad!r} is not one of {PAD_RULES}")
        shape = tuple(int(dim) for dim in shape)
        if not shape or min(shape) < 1:
            raise StaticBufferError(f"buffer {name!r}: shape {shape} must have rank >= 1 and positive dims")
        spec = BufferSpec(
            name=name, shape=shape, dtype=dtype_name(dtype), pad=pad, pad_value=pad_value, restore=restore
        )
        existing = self._specs.get(name)
        if existing is not None:
            if existing != spec:
                raise StaticBufferError(
                    f"buffer {name!r} is already declared as {existing}; it cannot be redeclared as {spec}"
                )
            return self._tensors[name]
        fill = pad_value if pad == "value" else 0
        tensor = paddle.full(shape, fill, dtype=spec.dtype)
        self._specs[name] = spec
        self._tensors[name] = tensor
        self._slots[name] = (tensor, spec, tensor.dtype, list(shape[1:]), shape[0])
        self._bump()
        return tensor

    def adopt(
        self,
        name: str,
        tensor: paddle.Tensor,
        *,
        pad: str = "keep",
        pad_value: float | int = 0,
        restore: bool = False,
    ) -> None:
        """Register an existing tensor (e.g. a model's KV cache) as static buffer ``name``.

        From then on its address is recorded at capture and compared on
        replay like any declared buffer, and rebinding the name raises.
        ``restore`` is off by default: adopted tensors are usually large (a
        KV cache), and a snapshot per capture would double their memory on
        a device; a KV cache needs none, since warmups rewrite the same
        positions with the same values.
        """
        if name in self._specs:
            raise StaticBufferError(f"buffer {name!r} already exists in {self._owner}; adopt it under another name")
        if pad not in PAD_RULES:
            raise StaticBufferError(f"buffer {name!r}: pad={pad!r} is not one of {PAD_RULES}")
        shape = tuple(tensor.shape)
        spec = BufferSpec(
            name=name, shape=shape, dtype=dtype_name(tensor.dtype), pad=pad, pad_value=pad_value, restore=restore
        )
        self._specs[name] = spec
        self._tensors[name] = tensor
        self._slots[name] = (tensor, spec, tensor.dtype, list(shape[1:]), shape[0])
        self._bump()

    # Writes --------------------------------------------------------------
    def write(
        self, name: str, value: paddle.Tensor | np.ndarray | Sequence[Any], *, rows: int | None = None
    ) -> None:
        """Copy ``value`` into rows ``[:n]`` of buffer ``name`` in place and pad the rest.

        Read the result as ``bufs.name[:n]`` (a view at the buffer's address;
        nothing is returned, since building a view costs microseconds on the
        replay path). When
        ``value`` already is that view (same ``data_ptr``) the copy is
        skipped; the padding rule still runs. Raises ``StaticBufferError`` for
        the wrong dtype, trailing shape, more rows than the capacity, or a row
        count other than ``rows`` when given.
        """
        slot = self._slots.get(name)
        if slot is None:
            self._buffer(name)  # raises, naming the known buffers
        buf, spec, dtype, trailing, capacity = slot  # type: ignore[misc]
        if not isinstance(value, paddle.Tensor):
            value = paddle.to_tensor(np.asarray(value))
        shape = value.shape
        # `is` first: paddle dtypes are singletons and `==` costs a microsecond.
        if (value.dtype is not dtype and value.dtype != dtype) or shape[1:] != trailing or not shape:
            self._reject(spec, value, shape)
        count = shape[0]
        if count > capacity or (rows is not None and count != rows):
            too_many = count > capacity
            raise StaticBufferError(
                f"buffer {name!r} takes {f'{capacity} rows' if too_many else f'exactly {rows} rows (the batch)'} "
                f"but the write has {count}; "
                + ("declare it with a larger capacity" if too_many else "give every batched input the batch's rows")
            )
        if buf.shape[0] != capacity:
            raise AddressStabilityError(
                f"buffer {name!r} now has shape {list(buf.shape)} but was declared {list(spec.shape)}: a copy_ or "
                f"assign from a different-shaped tensor reshaped it in place; write it only with write()"
            )
        if count and value.data_ptr() != buf.data_ptr():
            buf[:count] = value
        elif count and not value.is_contiguous():
            buf[:count] = value.clone()  # a strided view of this very buffer: copy before overwriting it
        if count < capacity and spec.pad != "keep":
            self._pad(buf, spec, count)
        self._padded_from[name] = count

    def stage(self, name: str, value: paddle.Tensor, rows: int, end: int) -> None:
        """Copy ``value`` (``rows`` rows) into buffer ``name`` in place and pad rows ``[rows:end]``.

        The replay path's write: the caller guarantees ``value``'s dtype and
        row shape (a graph key holds them), so only an in-place reshape that
        would strand a graph is checked. A ``value`` that already is the
        buffer's prefix (zero-copy) is not copied; the padding still runs.
        """
        buf, spec, _, _, capacity = self._slots[name]
        if buf.shape[0] != capacity:
            raise AddressStabilityError(
                f"buffer {name!r} now has shape {list(buf.shape)} but was declared {list(spec.shape)}: a copy_ or "
                f"assign from a different-shaped tensor reshaped it in place; write it only with write()"
            )
        if rows and value.data_ptr() != buf.data_ptr():
            buf[:rows] = value
        elif rows and not value.is_contiguous():
            buf[:rows] = value.clone()  # a strided view of this very buffer: copy before overwriting it
        if rows < end and spec.pad != "keep":
            self._pad(buf, spec, rows, end)
        if end >= capacity:
            self._padded_from[name] = rows
        else:
            self._padded_from.pop(name, None)

    def padded_from(self, name: str) -> int | None:
        """``n`` when rows ``[n:]`` of ``name`` hold its padding rule as the last ``write``/``stage`` left them.

        None when no write padded the whole buffer. A write in place by hand
        (``bufs.name[:m] = x``) is not seen: the number then is the last
        ``write``'s, so write buffers that ``GraphedFunction.replay`` reads
        with ``write``.
        """
        return self._padded_from.get(name)

    def padded_from_all(self, names: tuple[str, ...]) -> tuple[int | None, ...]:
        """``padded_from`` of each of ``names``, in one C-level pass (``GraphedFunction.replay``'s test)."""
        return tuple(map(self._padded_from.get, names))

    @staticmethod
    def _reject(spec: BufferSpec, value: paddle.Tensor, shape: list[int]) -> None:
        if dtype_name(value.dtype) != spec.dtype:
            raise StaticBufferError(
                f"buffer {spec.name!r} holds {spec.dtype} but the write is {dtype_name(value.dtype)}; "
                f"cast it first (x.astype('{spec.dtype}'))"
            )
        trailing = ", ".join(map(str, spec.shape[1:]))
        raise StaticBufferError(
            f"buffer {spec.name!r} has rows of shape {list(spec.shape[1:])} but the write has shape "
            f"{list(shape)}; reshape it to [n{', ' + trailing if trailing else ''}]"
        )

    @staticmethod
    def _pad(buf: paddle.Tensor, spec: BufferSpec, rows: int, end: int | None = None) -> None:
        pad_rows(buf, spec.pad, spec.pad_value, rows, spec.capacity if end is None else end)

    # Reads ---------------------------------------------------------------
    def _buffer(self, name: str) -> paddle.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise StaticBufferError(
                f"{self._owner} has no buffer {name!r}; declare it first (known: {sorted(self._tensors)})"
            ) from None

    def __getattr__(self, name: str) -> paddle.Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._tensors[name]
        except KeyError:
            raise AttributeError(f"{self._owner} has no buffer {name!r}") from None

    def __getitem__(self, name: str) -> paddle.Tensor:
        return self._buffer(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def spec(self, name: str) -> BufferSpec:
        """The declared spec of buffer ``name``."""
        self._buffer(name)
        return self._specs[name]

    def restorable_items(self) -> list[tuple[str, paddle.Tensor]]:
        """``(name, tensor)`` of every buffer declared with ``restore=True``."""
        return [(name, self._tensors[name]) for name, spec in self._specs.items() if spec.restore]

    def tensors(self) -> dict[str, paddle.Tensor]:
        """A copy of the name -> tensor mapping (the tensors themselves, not copies)."""
        return dict(self._tensors)

    def addresses(self) -> dict[str, int]:
        """name -> ``data_ptr()`` of every buffer."""
        return {name: tensor.data_ptr() for name, tensor in self._tensors.items()}

    def shapes(self) -> list[list[int]]:
        """Current shape of every buffer in declaration order (the replay check compares them)."""
        return [tensor.shape for tensor in self._tensors.values()]

    def data_ptrs(self) -> tuple[int, ...]:
        """``data_ptr()`` of every buffer in declaration order, in one pass (the replay check)."""
        return tuple(map(_data_ptr, self._tensors.values()))

    # Rebinding is the bug class graphcap exists for -----------------------
    def _refuse(self, name: str) -> None:
        raise AddressStabilityError(
            f"{self._owner}.{name} is a static buffer; rebinding it would leave captured graphs reading "
            f"the old tensor. Write in place instead: {self._owner}.write({name!r}, value) or "
            f"buf[:n] = value"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._refuse(name)

    def __delattr__(self, name: str) -> None:
        self._refuse(name)

    def __delitem__(self, name: str) -> None:
        self._refuse(name)

    def _unsafe_rebind(self, name: str, tensor: paddle.Tensor) -> None:
        """Rebind ``name`` behind the guard. Exists only to demonstrate the stale-buffer bug in tests."""
        self._buffer(name)
        self._tensors[name] = tensor
        spec = self._specs[name]
        self._slots[name] = (tensor, spec, tensor.dtype, list(spec.shape[1:]), spec.capacity)
        self._bump()

    def _bump(self) -> None:
        object.__setattr__(self, "_generation", self._generation + 1)

    @property
    def generation(self) -> int:
        """Changes whenever a name is added or rebound; equal generations mean the same tensors."""
        return self._generation

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}{list(s.shape)}:{s.dtype}" for n, s in self._specs.items())
        return f"StaticBuffers({self._owner}: {inner})"
