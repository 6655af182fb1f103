"""The built-in model: a small decoder-only LM, a DeepSeek-style MTP draft head and a per-slot KV cache.

Two forwards share every weight:

- ``TinyLM.forward(token_ids[B, N])`` / ``MTPHead.forward(...)``: the *training
  forward*, plain full-sequence causal attention, no cache.
- ``TinyLM.forward_rows(...)`` / ``MTPHead.forward_rows(...)``: the *row forward*
  used for inference. Each row is one token of one request: it writes its key and
  value into the request's cache slot at its position, then attends to that slot's
  positions ``0..position``. One function serves the eager prefill (rows = all
  prompt tokens) and the captured verify / draft steps (rows = a padded bucket).

The row forward is graph-safe: no host reads (``.item()``, ``.numpy()``,
``bool(tensor)``), no value-dependent shapes, and the only writes are
``paddle.index_put_`` into the cache tensors. That is the one in-place scatter we
found that lands in the caller's tensor inside ``paddle.jit.to_static`` without
copying the cache (``cache[slot, pos] = kv`` also lands, but the program copies the
whole cache three times per write; ``Tensor.scatter_`` and ``index_put_`` on a
sliced view refuse to convert; ``paddle.assign(..., output=)`` onto a closure
tensor is rejected by PIR). See ``tests/test_models.py``.

The row forward is also *row-count-invariant*: a row's logits and hidden state
are bit-identical whatever else is in the call (more requests, padding rows), in
eager and in ``to_static`` alike, so an unpadded eager step equals the padded
replay of a bucket. Two CPU-kernel effects had to be avoided for that: GEMM rounds
rows in a partial tail block differently (``_apply_rows`` appends 8 zero rows) and
SIMD transcendental ops round a scalar tail differently (``RMSNorm`` applies
``rsqrt`` on a full-width tensor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import paddle
import paddle.nn.functional as F
from paddle import nn

from graphcap.config import attrs_from_dict
from graphcap.errors import ConfigError, GraphCapError

WEIGHTS_PATH = Path(__file__).with_name("tiny_lm.pdparams")
STATS_PATH = Path(__file__).with_name("tiny_lm.json")
REGENERATE_COMMAND = "python -m graphcap.models.train"


class WeightsNotFoundError(GraphCapError, FileNotFoundError):
    """The shipped weights of the built-in model are missing or do not match its config."""


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    """attrs validator: ``value`` must be a positive int."""
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"TinyLMConfig.{attribute.name}={value!r} must be a positive int; pass e.g. 128")


@attrs.frozen(kw_only=True)
class TinyLMConfig:
    """Shape of the built-in model (immutable; ``to_dict`` / ``from_dict`` round-trip through JSON)."""

    vocab_size: int = attrs.field(default=512, validator=_positive)
    hidden_size: int = attrs.field(default=128, validator=_positive)
    num_layers: int = attrs.field(default=4, validator=_positive)
    num_heads: int = attrs.field(default=4, validator=_positive)
    ffn_size: int = attrs.field(default=352, validator=_positive)
    max_seq_len: int = attrs.field(default=256, validator=_positive)
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6

    def __attrs_post_init__(self) -> None:
        """Check that the heads split the hidden size into an even head dimension (RoPE needs pairs)."""
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"hidden_size={self.hidden_size} must split into num_heads={self.num_heads} heads of an "
                "even size; pick hidden_size a multiple of 2*num_heads"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-able dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyLMConfig:
        """Build a config from ``to_dict`` output (unknown keys raise ``ConfigError``)."""
        return attrs_from_dict(cls, data)


class KVCache:
    """Contiguous per-slot key/value static buffers, allocated once.

    ``k`` and ``v`` are float32 ``[num_layers, max_batch + 1, num_heads,
    max_seq_len, head_dim]``. Slot ``max_batch`` is the *trash slot*: padding
    rows (slot id -1) write there, so they never touch a real request's slot.
    Heads sit before positions so the attention gather yields ``[R, H, T, D]``
    ready for a batched matmul.

    Lifetime: the tensors are created here and never rebound; the row forward
    writes them in place (``paddle.index_put_``), so their ``data_ptr()`` is stable
    and a captured graph may hold them. Stale entries need no clearing: a row at
    position p only reads positions ``0..p`` of its slot, and a request writes
    each position before (or in the same step as) any row reads it.
    """

    def __init__(
        self, *, num_layers: int, max_batch: int, max_seq_len: int, num_heads: int, head_dim: int
    ) -> None:
        """Allocate zeroed k and v buffers for ``max_batch`` slots plus the trash slot."""
        if max_batch <= 0 or max_seq_len <= 0 or num_layers <= 0:
            raise ConfigError(
                f"KVCache needs positive sizes, got num_layers={num_layers}, max_batch={max_batch}, "
                f"max_seq_len={max_seq_len}"
            )
        self.num_layers = num_layers
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.num_heads = num_heads
        self.head_dim = head_dim
        shape = [num_layers, max_batch + 1, num_heads, max_seq_len, head_dim]
        self.k = paddle.zeros(shape, dtype="float32")
        self.v = paddle.zeros(shape, dtype="float32")

    @classmethod
    def for_model(cls, config: TinyLMConfig, max_batch: int) -> KVCache:
        """Cache for the target ``TinyLM`` (``config.num_layers`` layers)."""
        return cls(
            num_layers=config.num_layers,
            max_batch=max_batch,
            max_seq_len=config.max_seq_len,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
        )

    @classmethod
    def for_draft(cls, config: TinyLMConfig, max_batch: int) -> KVCache:
        """Cache for the one-layer ``MTPHead``."""
        return cls(
            num_layers=1,
            max_batch=max_batch,
            max_seq_len=config.max_seq_len,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
        )

    @property
    def trash_slot(self) -> int:
        """Index of the slot that padding rows write into."""
        return self.max_batch

    def data_ptrs(self) -> tuple[int, int]:
        """Addresses of k and v (for address-stability checks)."""
        return self.k.data_ptr(), self.v.data_ptr()


class RMSNorm(nn.Layer):
    """Root-mean-square norm with a learned scale."""

    def __init__(self, size: int, eps: float) -> None:
        """Create the scale (ones) for vectors of length ``size``."""
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Normalise the last axis of ``x``.

        The mean square is broadcast back to ``x``'s shape before ``rsqrt``: CPU
        kernels run transcendental ops in SIMD packets of 8 with a scalar tail
        that rounds differently, so ``rsqrt`` on an [R, 1] tensor gave a row a
        result that depended on R. On [R, hidden] every element is in a full
        packet, whatever R is.
        """
        mean_sq = (x * x).mean(axis=-1, keepdim=True) + paddle.zeros_like(x)
        return x * paddle.rsqrt(mean_sq + self.eps) * self.weight


def _rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    """RoPE helper: ``[x1, x2] -> [-x2, x1]`` on the last axis."""
    x1, x2 = paddle.chunk(x, 2, axis=-1)
    return paddle.concat([-x2, x1], axis=-1)


# Zero rows appended to every row-forward matmul. CPU GEMM computes the rows of a
# partial tail block (and all rows when there are fewer than 8) with different
# kernels, so a row's result depended on how many rows were in the call. With 8
# zero rows appended every real row sits in a full block and its output is
# bit-identical for any R (measured for R = 1..520): an unpadded eager step equals
# the padded bucket replay of the same rows.
_ROW_PAD = 8


def _apply_rows(linear: nn.Linear, x: paddle.Tensor) -> paddle.Tensor:
    """``linear(x)`` for x [R, in], computed so each row's result does not depend on R."""
    padded = paddle.concat([x, paddle.zeros([_ROW_PAD, x.shape[-1]], dtype=x.dtype)], axis=0)
    return linear(padded)[:-_ROW_PAD]


def _linear(in_size: int, out_size: int, std: float) -> nn.Linear:
    """Bias-free linear layer initialised from N(0, std)."""
    return nn.Linear(
        in_size,
        out_size,
        weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, std)),
        bias_attr=False,
    )


class DecoderLayer(nn.Layer):
    """Pre-norm transformer block: RoPE multi-head attention and a SiLU-gated MLP."""

    def __init__(self, config: TinyLMConfig) -> None:
        """Create the projections and norms for ``config``."""
        super().__init__()
        c, f = config.hidden_size, config.ffn_size
        out_std = 0.02 / math.sqrt(2 * config.num_layers)
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.attn_norm = RMSNorm(c, config.rms_eps)
        self.qkv = _linear(c, 3 * c, 0.02)
        self.out = _linear(c, c, out_std)
        self.mlp_norm = RMSNorm(c, config.rms_eps)
        self.gate_up = _linear(c, 2 * f, 0.02)
        self.down = _linear(f, c, out_std)

    def _mlp(self, x: paddle.Tensor) -> paddle.Tensor:
        """Residual SiLU-gated MLP (training forward)."""
        gate, up = paddle.chunk(self.gate_up(self.mlp_norm(x)), 2, axis=-1)
        return x + self.down(F.silu(gate) * up)

    def _mlp_rows(self, x: paddle.Tensor) -> paddle.Tensor:
        """Residual SiLU-gated MLP for x [R, C] (row-count-invariant matmuls)."""
        gate, up = paddle.chunk(_apply_rows(self.gate_up, self.mlp_norm(x)), 2, axis=-1)
        return x + _apply_rows(self.down, F.silu(gate) * up)

    def forward(self, x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
        """Training forward: ``x`` [B, N, C], ``cos``/``sin`` [N, D]; full causal attention."""
        h = self.attn_norm(x)
        qkv = self.qkv(h).reshape([0, 0, 3, self.num_heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k, v = paddle.unbind(qkv, axis=0)  # [B, H, N, D] each
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim))
        n = scores.shape[-1]
        causal = paddle.tril(paddle.ones([n, n], dtype="bool"))
        scores = paddle.where(causal, scores, paddle.full_like(scores, -1e30))
        att = paddle.matmul(F.softmax(scores, axis=-1), v)  # [B, H, N, D]
        x = x + self.out(att.transpose([0, 2, 1, 3]).reshape([0, 0, -1]))
        return self._mlp(x)

    def forward_rows(
        self,
        x: paddle.Tensor,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        cache: KVCache,
        layer: int,
        slots: paddle.Tensor,
        positions: paddle.Tensor,
        key_mask: paddle.Tensor,
    ) -> paddle.Tensor:
        """Row forward: ``x`` [R, C]; writes k/v at (layer, slot, position), then attends to the slot.

        ``slots`` and ``positions`` are int64 [R], already mapped to the trash slot
        and clipped; ``key_mask`` is bool [R, 1, 1, T] (key position <= row position).
        """
        h = self.attn_norm(x)
        qkv = _apply_rows(self.qkv, h).reshape([-1, 3, self.num_heads, self.head_dim])
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [R, H, D]
        cos_r, sin_r = cos.unsqueeze(1), sin.unsqueeze(1)  # [R, 1, D]
        q = q * cos_r + _rotate_half(q) * sin_r
        k = k * cos_r + _rotate_half(k) * sin_r
        # Index tensors [R, H] built by broadcasting only (no shape reads): each
        # (row, head) addresses one [D] vector of the cache.
        heads = paddle.arange(self.num_heads, dtype="int64").unsqueeze(0)  # [1, H]
        zero = heads * 0
        s2 = slots.unsqueeze(1) + zero
        p2 = positions.unsqueeze(1) + zero
        h2 = heads + s2 * 0
        l2 = zero + s2 * 0 + layer
        # Ordering: the write comes first and the read gathers from the value the
        # write returned, so rows of one request in this step see each other's
        # fresh keys. index_put_ writes the caller's tensor in place (eager and
        # to_static alike); the returned tensor aliases it.
        k_all = paddle.index_put_(cache.k, (l2, s2, h2, p2), k)
        v_all = paddle.index_put_(cache.v, (l2, s2, h2, p2), v)
        idx = paddle.stack([slots * 0 + layer, slots], axis=1)  # [R, 2]
        keys = paddle.gather_nd(k_all, idx)  # [R, H, T, D]
        values = paddle.gather_nd(v_all, idx)
        scores = paddle.matmul(q.unsqueeze(2), keys, transpose_y=True) * (1.0 / math.sqrt(self.head_dim))
        scores = paddle.where(key_mask, scores, scores * 0.0 - 1e30)  # [R, H, 1, T]
        att = paddle.matmul(F.softmax(scores, axis=-1), values)  # [R, H, 1, D]
        x = x + _apply_rows(self.out, att.reshape([-1, self.num_heads * self.head_dim]))
        return self._mlp_rows(x)


def _row_indices(
    cache: KVCache, positions: paddle.Tensor, slot_ids: paddle.Tensor
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Map row inputs to safe cache indices and the attention key mask (graph-safe).

    Slot ids outside ``[0, max_batch)`` (padding rows use -1) go to the trash
    slot; positions are clipped to ``[0, max_seq_len)`` so a bad position can
    never index out of bounds. Returns ``(slots int64 [R], positions int64 [R],
    key_mask bool [R, 1, 1, T])``.
    """
    slots = slot_ids.astype("int64")
    invalid = paddle.logical_or(slots < 0, slots >= cache.max_batch)
    slots = paddle.where(invalid, slots * 0 + cache.trash_slot, slots)
    pos = paddle.clip(positions.astype("int64"), 0, cache.max_seq_len - 1)
    key_pos = paddle.arange(cache.max_seq_len, dtype="int64").unsqueeze(0)  # [1, T]
    key_mask = (key_pos <= pos.unsqueeze(1)).unsqueeze(1).unsqueeze(1)  # [R, 1, 1, T]
    return slots, pos, key_mask


class TinyLM(nn.Layer):
    """Decoder-only LM: embedding, ``num_layers`` decoder layers, final RMSNorm, LM head.

    ``forward`` is the training forward; ``forward_rows`` the cached row forward.
    Both return the last hidden state *before* the final norm, which is what the
    MTP head consumes.
    """

    def __init__(self, config: TinyLMConfig) -> None:
        """Create the weights (N(0, 0.02)) and the RoPE tables for ``config.max_seq_len`` positions."""
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(
            config.vocab_size,
            config.hidden_size,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, 0.02)),
        )
        self.layers = nn.LayerList([DecoderLayer(config) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.lm_head = _linear(config.hidden_size, config.vocab_size, 0.02)
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (paddle.arange(0, d, 2, dtype="float32") / d))
        angles = paddle.arange(config.max_seq_len, dtype="float32").unsqueeze(1) * inv_freq.unsqueeze(0)
        angles = paddle.concat([angles, angles], axis=-1)  # [T, D]
        # Not persistable: rebuilt from the config, never saved with the weights.
        self.register_buffer("rope_cos", paddle.cos(angles), persistable=False)
        self.register_buffer("rope_sin", paddle.sin(angles), persistable=False)

    def logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """Shared output path (final norm + LM head), also used by the MTP head (training forward)."""
        return self.lm_head(self.final_norm(hidden))

    def logits_rows(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """``logits`` for hidden [R, C] with row-count-invariant matmuls (row forward)."""
        return _apply_rows(self.lm_head, self.final_norm(hidden))

    def forward(self, token_ids: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Training forward: ``token_ids`` int64 [B, N] (positions 0..N-1) -> (logits [B, N, V], hidden [B, N, C])."""
        n = token_ids.shape[1]
        cos, sin = self.rope_cos[:n], self.rope_sin[:n]
        x = self.embed(token_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.logits(x), x

    def forward_rows(
        self,
        token_ids: paddle.Tensor,
        positions: paddle.Tensor,
        slot_ids: paddle.Tensor,
        cache: KVCache,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Row forward over R rows; graph-safe, writes ``cache`` in place.

        Args:
            token_ids: int64 [R], the token of each row.
            positions: int64 [R], its position in its request (0-based).
            slot_ids: int32 [R], the request slot of each row; -1 for padding rows
                (they write the trash slot and their outputs are garbage).
            cache: the target's ``KVCache`` (``KVCache.for_model``).

        Returns:
            ``(logits float32 [R, vocab], hidden float32 [R, hidden])``; row r's
            logits predict the token at ``positions[r] + 1`` and ``hidden`` is the
            last hidden state before the final norm (the MTP head's input).

        Each row writes its k/v at ``(slot, position)`` of every layer's cache,
        then attends to the slot's positions ``0..position``. Rows of one request
        in one call must have distinct positions; together with the rows of
        earlier calls they must cover ``0..position`` (causal by position).
        """
        slots, pos, key_mask = _row_indices(cache, positions, slot_ids)
        cos = paddle.gather(self.rope_cos, pos)  # [R, D]
        sin = paddle.gather(self.rope_sin, pos)
        x = self.embed(token_ids)
        for i, layer in enumerate(self.layers):
            x = layer.forward_rows(x, cos, sin, cache, i, slots, pos, key_mask)
        return self.logits_rows(x), x


class MTPHead(nn.Layer):
    """DeepSeek-style multi-token-prediction draft head sharing the target's embedding, final norm and LM head.

    Input for position p: the target's hidden state at p and the embedding of
    the token at p+1 -> RMSNorm each, concat, linear projection -> one decoder
    layer (its own one-layer ``KVCache``) -> the target's final norm and LM head
    -> logits for the token at p+2. The shared modules are referenced, not
    copied and not registered as sublayers, so ``state_dict()`` holds only the
    head's own weights.
    """

    def __init__(self, config: TinyLMConfig, target: TinyLM) -> None:
        """Create the head's own weights and keep a (non-owning) reference to ``target``."""
        super().__init__()
        c = config.hidden_size
        self.config = config
        self.hidden_norm = RMSNorm(c, config.rms_eps)
        self.embed_norm = RMSNorm(c, config.rms_eps)
        self.proj = _linear(2 * c, c, 0.02)
        self.layer = DecoderLayer(config)
        # object.__setattr__ bypasses Layer's sublayer registration: the target's
        # parameters stay owned (and saved) by the target alone.
        object.__setattr__(self, "_target", target)

    @property
    def target(self) -> TinyLM:
        """The target model whose embedding, final norm and LM head this head shares."""
        return self._target

    def _combine(self, prev_hidden: paddle.Tensor, token_ids: paddle.Tensor) -> paddle.Tensor:
        """``concat(norm(prev_hidden), norm(embed(token_ids)))``; ``proj`` is applied by the caller."""
        e = self.target.embed(token_ids)
        return paddle.concat([self.hidden_norm(prev_hidden), self.embed_norm(e)], axis=-1)

    def forward(
        self, prev_hidden: paddle.Tensor, token_ids: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Training forward: ``prev_hidden`` [B, M, C] (target hidden at positions 0..M-1), ``token_ids`` [B, M]
        (tokens at positions 1..M) -> (logits [B, M, V] for tokens at 2..M+1, hidden [B, M, C])."""
        m = token_ids.shape[1]
        x = self.layer(
            self.proj(self._combine(prev_hidden, token_ids)),
            self.target.rope_cos[:m],
            self.target.rope_sin[:m],
        )
        return self.target.logits(x), x

    def forward_rows(
        self,
        prev_hidden: paddle.Tensor,
        token_ids: paddle.Tensor,
        positions: paddle.Tensor,
        slot_ids: paddle.Tensor,
        draft_cache: KVCache,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Row forward of the draft head; graph-safe, writes ``draft_cache`` in place.

        Args:
            prev_hidden: float32 [R, hidden], the target's hidden at position p
                (from ``TinyLM.forward_rows``), or for a chained draft substep the
                hidden this head returned for position p.
            token_ids: int64 [R], the token at position p+1.
            positions: int64 [R], p (the position of ``prev_hidden``, not of the token).
            slot_ids: int32 [R], request slot per row, -1 for padding rows.
            draft_cache: the head's one-layer ``KVCache`` (``KVCache.for_draft``).

        Returns:
            ``(logits float32 [R, vocab] for the token at p+2, hidden float32 [R, hidden])``.
        """
        slots, pos, key_mask = _row_indices(draft_cache, positions, slot_ids)
        cos = paddle.gather(self.target.rope_cos, pos)
        sin = paddle.gather(self.target.rope_sin, pos)
        x = _apply_rows(self.proj, self._combine(prev_hidden, token_ids))
        x = self.layer.forward_rows(x, cos, sin, draft_cache, 0, slots, pos, key_mask)
        return self.target.logits_rows(x), x


@attrs.frozen
class TinyLMBundle:
    """The loaded built-in model: target, draft head, their caches and the training stats.

    Unpacks as ``model, mtp_head, cache, draft_cache = bundle``.
    """

    config: TinyLMConfig
    model: TinyLM
    mtp_head: MTPHead
    cache: KVCache
    draft_cache: KVCache
    stats: dict[str, Any]

    def __iter__(self) -> Iterator[Any]:
        """Yield ``model, mtp_head, cache, draft_cache``."""
        return iter((self.model, self.mtp_head, self.cache, self.draft_cache))


def build_models(config: TinyLMConfig) -> tuple[TinyLM, MTPHead]:
    """Create a randomly initialised target and its MTP head (uses paddle's global seed)."""
    model = TinyLM(config)
    return model, MTPHead(config, model)


def state_dict_for_saving(model: TinyLM, mtp_head: MTPHead) -> dict[str, paddle.Tensor]:
    """One flat state dict: ``target.*`` and ``mtp.*`` keys (the shared modules appear once, under target)."""
    out = {f"target.{k}": v for k, v in model.state_dict().items()}
    out.update({f"mtp.{k}": v for k, v in mtp_head.state_dict().items()})
    return out


def load_tiny_lm(
    max_batch: int,
    *,
    max_seq_len: int | None = None,
    weights_path: str | Path | None = None,
) -> TinyLMBundle:
    """Load the shipped weights and allocate the caches for ``max_batch`` request slots.

    ``max_seq_len`` (default: the trained config's, 256) sets the cache length and
    the RoPE table. Training used 64-token windows; RoPE is relative, and held-out
    accuracy on 256-token contexts is as good as on 64-token ones. Parameters are
    frozen (``stop_gradient=True``) and the layers are in eval mode. Raises
    ``WeightsNotFoundError`` naming the file and the command that regenerates it.
    """
    weights = Path(weights_path) if weights_path is not None else WEIGHTS_PATH
    stats_file = weights.with_suffix(".json")
    if not weights.is_file() or not stats_file.is_file():
        raise WeightsNotFoundError(
            f"built-in model weights {weights} (or its {stats_file.name}) not found; "
            f"regenerate them with `{REGENERATE_COMMAND}`"
        )
    stats = json.loads(stats_file.read_text())
    config = TinyLMConfig.from_dict(stats["config"])
    if max_seq_len is not None:
        config = attrs.evolve(config, max_seq_len=max_seq_len)
    model, mtp_head = build_models(config)
    state = paddle.load(str(weights))
    expected = state_dict_for_saving(model, mtp_head)
    if set(state) != set(expected):
        raise WeightsNotFoundError(
            f"weights {weights} do not match TinyLMConfig {config.to_dict()} (missing "
            f"{sorted(set(expected) - set(state))[:3]}, unexpected {sorted(set(state) - set(expected))[:3]}); "
            f"regenerate them with `{REGENERATE_COMMAND}`"
        )
    model.set_state_dict({k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")})
    mtp_head.set_state_dict({k[len("mtp.") :]: v for k, v in state.items() if k.startswith("mtp.")})
    for p in list(model.parameters()) + list(mtp_head.parameters()):
        p.stop_gradient = True
    model.eval()
    mtp_head.eval()
    return TinyLMBundle(
        config=config,
        model=model,
        mtp_head=mtp_head,
        cache=KVCache.for_model(config, max_batch),
        draft_cache=KVCache.for_draft(config, max_batch),
        stats=stats,
    )
