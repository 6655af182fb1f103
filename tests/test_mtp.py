"""MTP decoding: graphs off / target graphs / target + draft graphs give identical tokens and seeds."""

from __future__ import annotations

import functools

import numpy as np
import paddle
import pytest

from graphcap import AddressStabilityError, GraphConfig
from graphcap.models.corpus import make_prompts
from graphcap.models.tiny_lm import load_tiny_lm
from graphcap.mtp.engine import MTPEngine, Request, SamplingOptions
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, layout_rows

MAX_BATCH = 4


@functools.cache
def requests(count: int = 6, max_new_tokens: int = 14) -> tuple[Request, ...]:
    prompts = make_prompts(count, seed=7)
    return tuple(
        Request(prompt=prompt, max_new_tokens=max_new_tokens - (index % 3) * 3, seed=17 + index, top_p=0.8, top_k=16)
        for index, prompt in enumerate(prompts)
    )


def run(config: GraphConfig, *, greedy: bool = False, capture_all: bool = False, engine_type=MTPEngine):
    engine = engine_type(config, max_batch=MAX_BATCH, sampling=SamplingOptions(greedy=greedy),
                         bundle=load_tiny_lm(MAX_BATCH))
    if capture_all:
        engine.capture_all()
    tokens, stats = engine.generate(requests())
    return tokens, engine.infer_seed(), stats, engine


@functools.cache
def reference(k: int, greedy: bool):
    tokens, seeds, stats, _ = run(GraphConfig(use_graph=False, num_speculative_tokens=k), greedy=greedy)
    return tokens, seeds, stats


def cfg(k: int = 2, **options) -> GraphConfig:
    return GraphConfig(use_graph=True, num_speculative_tokens=k, max_capture_size=MAX_BATCH, **options)


def test_the_reference_run_is_meaningful():
    tokens, seeds, stats = reference(2, False)
    for request, generated in zip(requests(), tokens):
        # Every request stops exactly at its limit or at the end token.
        assert len(generated) == request.max_new_tokens or (generated[-1] == 2 and len(generated) < request.max_new_tokens)
    assert stats.acceptance_rate > 0.2  # the draft head learned the corpus
    assert stats.accepted_drafts <= stats.proposed_drafts


@pytest.mark.parametrize(
    "options",
    [
        {"backend": "eager"},
        {"backend": "static"},
        {"backend": "static", "draft_use_graph": False},
        {"backend": "eager", "draft_use_graph": False},
    ],
    ids=["eager-both", "static-both", "static-target-only", "eager-target-only"],
)
def test_graph_modes_give_identical_tokens_and_seeds(options):
    want_tokens, want_seeds, _ = reference(2, False)
    tokens, seeds, stats, engine = run(cfg(**options))
    assert tokens == want_tokens
    assert seeds == want_seeds
    registry = engine.stats()
    assert registry["replays"] > 0 and registry["eager_fallbacks"] == 0
    if not options.get("draft_use_graph", True):
        assert "draft" not in {name for name, per in registry["per_graph"].items() if per}


def test_capture_all_equals_lazy_capture():
    want_tokens, want_seeds, _ = reference(2, False)
    tokens, seeds, _, engine = run(cfg(backend="static"), capture_all=True)
    assert tokens == want_tokens and seeds == want_seeds
    stats = engine.stats()
    # 3 buckets (1, 2, 4 requests) for each of target, draft, draft_next; no lazy capture afterwards.
    assert stats["graphs"] == 9 and stats["captures"] == 9


@pytest.mark.parametrize("k", [0, 1, 2])
def test_the_engine_captures_exactly_its_graph_specs(k):
    # The capture plan (python -m graphcap plan) lists the same specs, so it cannot drift from the engine.
    config = cfg(k=k, backend="eager", capture_sizes=(2, 4, 6) if k == 1 else None)
    engine = MTPEngine(config, max_batch=MAX_BATCH, bundle=load_tiny_lm(MAX_BATCH))
    graphed = [engine.target, engine.draft, engine.draft_next]
    registered = [(fn.name, fn.buckets.sizes, fn.rows_per_request) for fn in graphed if fn is not None]
    specs = mtp_graph_specs(config, max_batch=MAX_BATCH)
    assert registered == [(spec.name, spec.sizes, spec.rows_per_request) for spec in specs]
    assert [name for name, _, _ in registered] == (["target"] if k == 0 else ["target", "draft", "draft_next"])
    if k == 1:
        # 2, 4, 6 verify rows are 1, 2, 3 requests of one row each; MAX_BATCH=4 requests caps both lists.
        assert registered[0][1] == (2, 4, 6, 8)
        assert registered[2][1] == (1, 2, 3, 4)


def test_greedy_decoding_is_identical_too():
    want_tokens, want_seeds, _ = reference(2, True)
    tokens, seeds, _, _ = run(cfg(backend="static"), greedy=True)
    assert tokens == want_tokens and seeds == want_seeds


def test_no_speculation_plain_sampling_path_under_graphs_equals_eager():
    want_tokens, want_seeds, _ = reference(0, False)
    tokens, seeds, stats, engine = run(cfg(k=0, backend="static"))
    assert tokens == want_tokens and seeds == want_seeds
    assert stats.proposed_drafts == 0
    assert set(engine.stats()["per_graph"]["target"]) - {"eager"}


@pytest.mark.parametrize("k", [0, 2])
def test_infer_seed_advances_once_per_step_by_k_plus_one_times_four(k):
    batch = requests()[:MAX_BATCH]  # all admitted in the first (prefill) step, so no seed is reset later
    engine = MTPEngine(cfg(k=k, backend="eager"), max_batch=MAX_BATCH, sampling=SamplingOptions(greedy=False),
                       bundle=load_tiny_lm(MAX_BATCH))
    _, stats = engine.generate(batch)
    # Every step, prefill or decode, advances every slot (finished ones too) exactly once.
    assert engine.infer_seed() == [request.seed + stats.steps * (k + 1) * 4 for request in batch]


def test_draft_graphs_can_be_toggled_between_steps():
    want_tokens, want_seeds, _ = reference(2, False)
    engine = MTPEngine(cfg(backend="static"), max_batch=MAX_BATCH, bundle=load_tiny_lm(MAX_BATCH),
                       sampling=SamplingOptions(greedy=False))
    original = engine._decode
    calls = {"n": 0}

    def toggling(active, stats, **agreed):
        calls["n"] += 1
        engine.draft.enabled = engine.draft_next.enabled = calls["n"] % 2 == 0
        original(active, stats, **agreed)

    engine._decode = toggling
    tokens, _ = engine.generate(requests())
    assert tokens == want_tokens and engine.infer_seed() == want_seeds
    assert calls["n"] > 2


def test_preprocess_layout():
    layout, ids, positions = layout_rows(
        [SlotRows(slot=2, tokens=(5, 6, 7), start=10), SlotRows(slot=0, tokens=(9, 8, 7, 6), start=0, prefill=True)],
        max_batch=4,
    )
    assert layout.cu_seqlens_q_output.tolist() == [0, 1, 1, 4, 4]
    assert layout.seq_lens_this_time.tolist() == [4, 0, 3, 0]
    assert layout.batch_id_per_token_output.tolist() == [0, 0, 0, 0, 2, 2, 2]
    assert ids.tolist() == [9, 8, 7, 6, 5, 6, 7]
    assert positions.tolist() == [0, 1, 2, 3, 10, 11, 12]
    assert layout.row_start == {0: 0, 2: 4}


# The stale-buffer bug, in the engine ---------------------------------------------


class RebindingEngine(MTPEngine):
    """A deliberately broken pre-process: it rebinds cu_seqlens_q_output instead of writing it in place."""

    def _decode(self, active, stats, **agreed):
        bufs = self.registry.buffers
        original_write = bufs.write

        def rebinding_write(name, value, **kw):
            if name == "cu_seqlens_q_output":
                bufs._unsafe_rebind(name, paddle.to_tensor(np.asarray(value, dtype=np.int32)))
            else:
                original_write(name, value, **kw)

        object.__setattr__(bufs, "write", rebinding_write)
        try:
            super()._decode(active, stats, **agreed)
        finally:
            object.__delattr__(bufs, "write")


def test_a_rebinding_preprocess_is_caught_naming_the_buffer():
    with pytest.raises(AddressStabilityError, match="cu_seqlens_q_output"):
        run(cfg(backend="static"), engine_type=RebindingEngine)


def test_a_rebinding_preprocess_gives_wrong_tokens_when_unchecked():
    # Slot 1 finishes first and nothing waits, so cu_seqlens_q_output changes
    # from [0, 3, 6, 9, 12] to [0, 3, 3, 6, 9] while the step stays in bucket 12.
    batch = [
        Request(prompt=prompt, max_new_tokens=4 if index == 1 else 16, seed=5 + index, top_p=0.9, top_k=0)
        for index, prompt in enumerate(make_prompts(4, seed=3))
    ]

    def tokens_of(config, engine_type):
        engine = engine_type(config, max_batch=MAX_BATCH, sampling=SamplingOptions(greedy=False),
                             bundle=load_tiny_lm(MAX_BATCH))
        return engine.generate(batch)[0]

    want = tokens_of(GraphConfig(use_graph=False, num_speculative_tokens=2), MTPEngine)
    # Eager re-reads the attribute every step, so rebinding happens to be harmless there.
    assert tokens_of(GraphConfig(use_graph=False, num_speculative_tokens=2), RebindingEngine) == want
    assert tokens_of(cfg(backend="static"), MTPEngine) == want
    # The graph keeps reading the tensor it was captured with: wrong rows get wrong seeds.
    assert tokens_of(cfg(backend="static", debug_checks=False), RebindingEngine) != want
