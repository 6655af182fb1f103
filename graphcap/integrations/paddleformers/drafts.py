"""The two kinds of draft ``GraphedCausalLM`` speculates with: the model's own MTP layers, or a draft model.

Both propose greedily, one row per draft position, into a ``StaticCache`` of
their own (``slots`` rows of ``max_len``, the last one the scratch slot
padding rows write into). They differ in what a row pairs and where it sits:

* ``MTPDraft`` (``draft="mtp"``, ERNIE-4.5's ``mtp_block``): row p pairs the
  target's last hidden state *before* the final norm at position p with the
  embedding of the token at p+1, as the model's training forward does, and
  sits at position p (``position_offset = 0``). Its cache at p holds the pair
  (h_p, x_{p+1}). Output: the shared final norm and lm_head. For more draft
  tokens than MTP layers the last layer is chained on its own hidden state.
* ``ModelDraft`` (a PaddleFormers causal LM sharing the vocabulary): row p is
  the token at position p itself, so it sits one position after the target's
  row that produced it (``position_offset = 1``); its cache at p holds x_p.

``forward`` is called inside the speculative engine's graphs and in its eager
prefill with the same shapes: token ids and positions ``[R, S]``, slots
``[R]`` (padding rows already mapped to the scratch slot), hidden states
``[R, S, hidden]`` for the MTP draft. It returns logits ``[R, S, vocab]`` and,
for the MTP draft, its own hidden states to chain.
"""

from __future__ import annotations

from typing import Any

import paddle

from graphcap.errors import ConfigError
from graphcap.integrations.paddleformers.cache import StaticCache

__all__ = ["MTPDraft", "ModelDraft", "at_positions", "causal_mask", "final_norm_input", "mtp_layer_count"]


def at_positions(values: paddle.Tensor, index: paddle.Tensor) -> paddle.Tensor:
    """``values[r, index[r]]`` for every row ``r`` of ``[R, S, W]``: ``[R, W]`` (a prompt's last real position)."""
    rows, _, width = values.shape
    picked = paddle.take_along_axis(values, index.reshape([rows, 1, 1]).expand([rows, 1, width]), axis=1)
    return picked.reshape([rows, width])


def causal_mask(position_ids: paddle.Tensor, max_len: int) -> paddle.Tensor:
    """Boolean ``[R, 1, S, max_len]``: row r's query s attends cache positions ``<= position_ids[r, s]``.

    Built on the device from the positions, so a graph computes it itself and
    no host mask needs staging. Positions written in the same forward (the
    earlier rows of a verify batch) are written before attention reads them.
    """
    span = paddle.arange(max_len, dtype=position_ids.dtype).reshape([1, 1, 1, max_len])
    return span <= position_ids.unsqueeze([1, 3])


class final_norm_input:  # noqa: N801 - used as a context function, like contextlib's
    """Context: a list that receives the input of ``model.model.norm`` (the last hidden state before the norm).

    The hook lives only inside the context: outside it the model is as the
    user built it, and no tensor of a finished forward stays referenced. A
    class, not a generator: ``paddle.jit.to_static`` converts generator
    functions called inside a traced step and breaks ``contextlib``'s protocol.
    """

    def __init__(self, model: paddle.nn.Layer) -> None:
        """Prepare to record ``model.model.norm``'s input; the hook goes on in ``__enter__``."""
        self.norm = model.model.norm
        self.recorded: list[paddle.Tensor] = []
        self.handle: Any = None

    def __enter__(self) -> list[paddle.Tensor]:
        self.handle = self.norm.register_forward_pre_hook(self._record)
        return self.recorded

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
        self.handle = None

    def _record(self, layer: paddle.nn.Layer, inputs: tuple[paddle.Tensor, ...]) -> None:
        self.recorded.append(inputs[0])


def mtp_layer_count(model: paddle.nn.Layer) -> int:
    """How many MTP layers ``model`` carries in ERNIE-4.5's layout (``model.model.mtp_block``); 0 if none."""
    block = getattr(getattr(model, "model", None), "mtp_block", None)
    return len(block) if block is not None else 0


class MTPDraft:
    """ERNIE-4.5's MTP layers as the draft: ``mtp_linear_proj(concat(mtp_emb_norm(emb), mtp_hidden_norm(h)))``."""

    needs_hidden = True
    position_offset = 0

    def __init__(self, model: paddle.nn.Layer, *, slots: int, max_len: int) -> None:
        """Check ``model`` has MTP layers in ERNIE-4.5's layout and allocate their cache (one layer each)."""
        layers = mtp_layer_count(model)
        if not layers:
            raise ConfigError(
                f"draft='mtp' but {type(model).__name__} has no MTP layers (no model.mtp_block, or "
                f"num_nextn_predict_layers=0); build it with num_nextn_predict_layers >= 1 (ERNIE-4.5), or pass "
                f"a draft model: draft=<a PaddleFormers causal LM sharing the vocabulary>"
            )
        self.model = model
        self.layers = layers
        self.max_len = max_len
        self.cache = StaticCache.for_model(model, slots=slots, max_len=max_len, num_layers=layers)

    def layer_for(self, substep: int) -> int:
        """The MTP layer proposing draft ``substep + 1``: its own, or the last one chained."""
        return min(substep, self.layers - 1)

    def forward(
        self, token_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: paddle.Tensor | None, layer: int,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """MTP layer ``layer`` over rows ``[R, S]``; ``(logits [R, S, vocab], its hidden states [R, S, h])``."""
        from paddleformers.transformers.masking_utils import create_causal_mask_and_row_indices

        base = self.model.model
        embeddings = base.embed_tokens(token_ids).astype(base.embed_tokens.weight.dtype)
        joined = paddle.concat([base.mtp_emb_norm[layer](embeddings), base.mtp_hidden_norm[layer](hidden)], axis=-1)
        states = base.mtp_linear_proj[layer](joined)
        rows, steps = token_ids.shape[0], token_ids.shape[1]
        # The mask as the model's own forward converts it for its decoder layers.
        mask, _ = create_causal_mask_and_row_indices(
            config=base.config, inputs_embeds=states, batch_size=rows, seq_length=steps, cache_length=0,
            attention_mask=causal_mask(position_ids, self.max_len),
            prepare_decoder_attention_mask=base._prepare_decoder_attention_mask,
        )
        # The MTP layer's attention has layer_idx = its index in mtp_block, so
        # it writes that layer of this cache, never the target's.
        with self.cache.bind(slot_ids, position_ids):
            out = base.mtp_block[layer](
                states, attention_mask=mask, position_ids=position_ids,
                position_embeddings=base.rotary_emb(states, position_ids), past_key_values=self.cache,
                use_cache=True,
            )
        states = out[0] if isinstance(out, (tuple, list)) else out
        return self.model.lm_head(base.norm(states)), states


class ModelDraft:
    """A separate PaddleFormers causal LM as the draft, decoding through its own static cache."""

    needs_hidden = False
    position_offset = 1

    def __init__(self, model: paddle.nn.Layer, *, target: paddle.nn.Layer, slots: int, max_len: int) -> None:
        """Check the draft shares ``target``'s vocabulary and allocate its cache."""
        draft_vocab, target_vocab = model.config.vocab_size, target.config.vocab_size
        if draft_vocab != target_vocab:
            raise ConfigError(
                f"the draft model {type(model).__name__} has vocab_size={draft_vocab} but the target has "
                f"{target_vocab}; a draft must share the target's vocabulary (the same tokenizer), so pick a "
                f"draft of the same family"
            )
        self.model = model
        self.layers = 1
        self.max_len = max_len
        self.cache = StaticCache.for_model(model, slots=slots, max_len=max_len)

    def layer_for(self, substep: int) -> int:
        """0: a draft model is one network for every substep."""
        return 0

    def forward(
        self, token_ids: paddle.Tensor, position_ids: paddle.Tensor, slot_ids: paddle.Tensor,
        hidden: Any, layer: int,
    ) -> tuple[paddle.Tensor, None]:
        """The draft model over rows ``[R, S]`` through its cache; ``(logits [R, S, vocab], None)``."""
        with self.cache.bind(slot_ids, position_ids):
            out = self.model(input_ids=token_ids, position_ids=position_ids,
                             attention_mask=causal_mask(position_ids, self.max_len), past_key_values=self.cache,
                             use_cache=True, return_dict=True)
        return out.logits, None
