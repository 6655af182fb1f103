"""``StaticCache``: a pre-allocated KV cache for PaddleFormers decoders, written in place.

PaddleFormers ships only ``DynamicCache``, which concatenates onto its tensors
every step: a growing shape no graph can hold, and a Python-held tensor the
pure-function check refuses. ``StaticCache`` allocates every layer's keys and
values once, ``[slots, num_kv_heads, max_len, head_dim]`` in the model's
dtype, and each ``update`` writes the new rows in place at their slot and
position (an indexed write, no concat, no re-allocation), then returns the
whole cache of the rows' slots for attention. Positions past a row's length
hold stale or zero data; the attention mask the caller passes hides them.

Which slot and position each row writes comes from ``bind(slot_ids,
position_ids)``, set around one forward: the decoder's own call,
``update(key_states, value_states, layer_idx)``, carries no positions. The
last slot is a scratch slot: padding rows of a graphed batch point at it, so
they write nothing any request reads.

The cache interface is PaddleFormers' ``Cache`` (``update``,
``get_seq_length``, ``get_max_cache_shape``, ``get_mask_sizes``,
``__len__``); the model must be called with explicit ``position_ids`` and a
4-D attention mask, since a static cache has no single sequence length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import paddle
from paddleformers.transformers.cache_utils import Cache, CacheLayerMixin

from graphcap.errors import ConfigError

__all__ = ["StaticCache", "StaticLayer"]


class StaticLayer(CacheLayerMixin):
    """One decoder layer's keys and values, ``[slots, num_kv_heads, max_len, head_dim]``, allocated once."""

    is_sliding = False
    is_compileable = True

    def __init__(self, *, slots: int, num_kv_heads: int, max_len: int, head_dim: int, dtype: Any) -> None:
        """Allocate zeroed keys and values; their addresses never change afterwards."""
        super().__init__()
        self.keys = paddle.zeros([slots, num_kv_heads, max_len, head_dim], dtype=dtype)
        self.values = paddle.zeros([slots, num_kv_heads, max_len, head_dim], dtype=dtype)
        self.max_len = max_len
        self.is_initialized = True

    def lazy_initialization(self, key_states: paddle.Tensor) -> None:
        """Nothing to do: a static layer is allocated up front."""

    def update(
        self, key_states: paddle.Tensor, value_states: paddle.Tensor, cache_kwargs: dict[str, Any] | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Write rows ``[R, heads, S, dim]`` at ``cache_kwargs``' slots and positions; return the rows' caches.

        ``cache_kwargs["slot_ids"]`` is int64 ``[R]``, ``["position_ids"]``
        int64 ``[R, S]``. The write indexes the whole tensor (never a slice of
        it first: ``to_static`` refuses an in-place write into a strided view).
        Returns keys and values ``[R, heads, max_len, dim]``.
        """
        if not cache_kwargs or cache_kwargs.get("slot_ids") is None:
            raise ConfigError(
                "StaticCache.update needs the rows' slots and positions; call the model inside "
                "cache.bind(slot_ids, position_ids) (GraphedCausalLM does)"
            )
        slot_ids = cache_kwargs["slot_ids"]
        position_ids = cache_kwargs["position_ids"]
        rows, steps = position_ids.shape[0], position_ids.shape[1]
        slots = slot_ids.reshape([-1, 1]).expand([rows, steps])
        # Advanced indices on dims 0 and 2 around a slice: the indexed view is
        # [R, S, heads, dim], so the states go in head-minor.
        self.keys[slots, :, position_ids] = key_states.transpose([0, 2, 1, 3]).astype(self.keys.dtype)
        self.values[slots, :, position_ids] = value_states.transpose([0, 2, 1, 3]).astype(self.values.dtype)
        return paddle.gather(self.keys, slot_ids), paddle.gather(self.values, slot_ids)

    def get_mask_sizes(self, cache_position: paddle.Tensor) -> tuple[int, int]:
        """``(kv_length, kv_offset)``: attention always spans the whole ``max_len``."""
        return self.max_len, 0

    def get_seq_length(self) -> int:
        """0: rows have lengths of their own, so the caller passes positions and the mask explicitly."""
        return 0

    def get_max_cache_shape(self) -> int:
        """The cache's length, ``max_len``."""
        return self.max_len


class StaticCache(Cache):
    """A PaddleFormers ``Cache`` of ``StaticLayer``\\ s: ``slots`` rows of ``max_len`` positions per layer.

    Build it with ``StaticCache.for_model(model, slots=..., max_len=...)``.
    Call the model inside ``with cache.bind(slot_ids, position_ids):`` so each
    layer's ``update`` knows where the rows go.
    """

    def __init__(self, *, num_layers: int, slots: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: Any) -> None:
        """Allocate every layer; see ``for_model`` for the usual constructor."""
        layers = [
            StaticLayer(slots=slots, num_kv_heads=num_kv_heads, max_len=max_len, head_dim=head_dim, dtype=dtype)
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.slots = slots
        self.max_len = max_len
        # (slot_ids, position_ids) of the forward in progress; None outside one.
        self._rows: tuple[paddle.Tensor, paddle.Tensor] | None = None

    @classmethod
    def for_model(cls, model: paddle.nn.Layer, *, slots: int, max_len: int,
                  num_layers: int | None = None) -> StaticCache:
        """A cache shaped for ``model``'s config (layers, kv heads, head dim) in its parameters' dtype.

        ``num_layers`` overrides the config's ``num_hidden_layers`` (an MTP
        draft's cache has one layer per MTP layer, with the same heads).
        """
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        dtype = next(iter(model.parameters())).dtype
        layers = config.num_hidden_layers if num_layers is None else num_layers
        return cls(num_layers=layers, slots=slots, num_kv_heads=kv_heads, max_len=max_len,
                   head_dim=head_dim, dtype=dtype)

    def tensors(self) -> Iterator[tuple[str, paddle.Tensor]]:
        """``(name, tensor)`` for every layer's keys and values: ``k0``, ``v0``, ``k1`` ..."""
        for index, layer in enumerate(self.layers):
            yield f"k{index}", layer.keys
            yield f"v{index}", layer.values

    def bind(self, slot_ids: paddle.Tensor, position_ids: paddle.Tensor) -> _Binding:
        """Context: the next forward's rows write at ``slot_ids`` [R] and ``position_ids`` [R, S]."""
        return _Binding(self, slot_ids, position_ids)

    def update(
        self, key_states: paddle.Tensor, value_states: paddle.Tensor, layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Write layer ``layer_idx``'s new keys and values at the bound rows; return the rows' whole caches."""
        rows = self._rows
        if rows is None:
            raise ConfigError(
                "StaticCache was used outside cache.bind(slot_ids, position_ids); a static cache needs "
                "each row's slot and position (GraphedCausalLM binds them for you)"
            )
        kwargs = {"slot_ids": rows[0], "position_ids": rows[1], **(cache_kwargs or {})}
        return self.layers[layer_idx].update(key_states, value_states, kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """0: see ``StaticLayer.get_seq_length``."""
        return 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        """``max_len``."""
        return self.max_len

    def reset(self) -> None:
        """Zero every layer in place (addresses kept)."""
        for _, tensor in self.tensors():
            tensor.zero_()


class _Binding:
    """``with cache.bind(slots, positions):`` sets the rows for one forward and always clears them."""

    __slots__ = ("cache", "rows")

    def __init__(self, cache: StaticCache, slot_ids: paddle.Tensor, position_ids: paddle.Tensor) -> None:
        self.cache = cache
        self.rows = (slot_ids, position_ids)

    def __enter__(self) -> StaticCache:
        self.cache._rows = self.rows
        return self.cache

    def __exit__(self, *exc: object) -> None:
        # Cleared after every forward: a graph captured over this cache must not
        # find the capture's own input views pinned in it afterwards.
        self.cache._rows = None
