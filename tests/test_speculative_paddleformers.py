"""Speculative decoding under graphs on PaddleFormers models: the model's own MTP layers, and draft models.

Every greedy run is compared with the target's own greedy decoding by full
recompute (no cache, one token at a time): speculation is lossless only if
the tokens are exactly those. Sampled runs are seeded and compared between
graphs off and on. Models are random (seeded) with 2-D weights x4, so logits
reach |logit| ~10 and argmax ties do not hide errors.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import full_recompute_greedy, paddleformers_transformers, scaled_2d

from graphcap import ConfigError, GraphConfig

PROMPTS = [[5, 9, 13], [7, 1], [2, 3, 4, 5, 6], [11]]
MAX_NEW = 8
MAX_LEN = 32
SCALE = 4.0


def _llama(seed: int = 0, layers: int = 2) -> paddle.nn.Layer:
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.tiny import tiny_llama

    return tiny_llama(seed=seed, scale=SCALE, num_hidden_layers=layers, vocab_size=256)


def _perturbed(model_seed: int, noise: float) -> paddle.nn.Layer:
    """The target's weights plus noise of ``noise`` x each matrix's std: a draft that is right part of the time."""
    draft = _llama(model_seed)
    paddle.seed(7)
    with paddle.no_grad():
        for parameter in draft.parameters():
            if len(parameter.shape) == 2:
                parameter.set_value(parameter + noise * parameter.std() * paddle.randn(parameter.shape))
    return draft


def _ernie_mtp(layers: int = 1) -> paddle.nn.Layer:
    """ERNIE-4.5 MoE with MTP layers, dense (its MoE routing kernel is GPU-only)."""
    transformers = paddleformers_transformers()
    config = transformers.Ernie4_5_MoeConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, fuse_rms_norm=False, moe_layer_start_index=2,
        num_nextn_predict_layers=layers, moe_num_experts=4, moe_intermediate_size=64,
    )
    paddle.seed(0)
    return scaled_2d(transformers.Ernie4_5_MoeForCausalLM(config))


@pytest.fixture(scope="module")
def models():
    target = _llama()
    ernie = _ernie_mtp()
    return {
        "target": target,
        "copy": _llama(),
        "perturbed": _perturbed(0, 0.05),
        "smaller": _llama(seed=1, layers=1),
        "ernie": ernie,
        "ernie2": _ernie_mtp(layers=2),
        "want": {name: [full_recompute_greedy(model, prompt, MAX_NEW) for prompt in PROMPTS]
                 for name, model in (("llama", target), ("ernie", ernie))},
    }


def _lm(models, kind: str, *, k: int = 2, **config):
    from graphcap.integrations.paddleformers import GraphedCausalLM

    graph_config = GraphConfig(num_speculative_tokens=k, **config)
    if kind in ("mtp", "mtp2"):
        model = models["ernie" if kind == "mtp" else "ernie2"]
        return GraphedCausalLM(model, graph_config, max_batch=2, max_len=MAX_LEN, draft="mtp"), "ernie"
    return GraphedCausalLM(models["target"], graph_config, max_batch=2, max_len=MAX_LEN, draft=models[kind]), "llama"


MODES = {
    "graphs_off": dict(use_graph=False),
    "eager": dict(use_graph=True, backend="eager"),
    "eager_draft_graphs_off": dict(use_graph=True, backend="eager", draft_use_graph=False),
    "static": dict(use_graph=True, backend="static"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind,k", [("copy", 2), ("perturbed", 3), ("smaller", 1), ("mtp", 1), ("mtp", 3),
                                    ("mtp2", 3)])
def test_greedy_speculation_equals_the_targets_own_recompute(models, kind, k, mode):
    if mode == "static" and (kind, k) in (("smaller", 1), ("mtp", 1)):
        pytest.skip("the static backend runs on the k=2/3 cases of each draft kind (about 8 s each)")
    lm, family = _lm(models, kind, k=k, **MODES[mode])
    assert lm.generate(PROMPTS, MAX_NEW) == models["want"][family]
    stats = lm.stats()
    assert stats["fallbacks"] == [] and stats["eager_fallbacks"] == 0
    replays = stats["replays_per_graph"]
    if MODES[mode]["use_graph"]:
        assert stats["coverage"]["target"] == 1.0 and replays["target"] > 0
        drafts_on = MODES[mode].get("draft_use_graph", True)
        assert (replays["draft"] > 0) == drafts_on
        assert (replays["draft_next"] > 0) == (drafts_on and k > 1)
    else:
        assert stats["graphs"] == 0 and sum(replays.values()) == 0


@pytest.mark.parametrize("kind", ["copy", "mtp"])
def test_sampled_speculation_is_seeded_and_equal_with_graphs_on_and_off(models, kind):
    runs = {}
    for mode in ("graphs_off", "eager", "static"):
        lm, family = _lm(models, kind, k=2, **MODES[mode])
        runs[mode] = lm.generate(PROMPTS, MAX_NEW, greedy=False, top_p=0.9, seed=3)
        assert lm.generate(PROMPTS, MAX_NEW, greedy=False, top_p=0.9, seed=3) != lm.generate(
            PROMPTS, MAX_NEW, greedy=False, top_p=0.9, seed=4)  # the seed matters
    assert runs["graphs_off"] == runs["eager"] == runs["static"]
    assert runs["graphs_off"] != models["want"][family]  # it sampled, not argmax


def test_a_draft_that_is_a_copy_of_the_target_is_always_accepted(models):
    lm, _ = _lm(models, "copy", k=3, use_graph=True, backend="eager")
    lm.generate(PROMPTS, MAX_NEW)
    stats = lm.stats()
    assert stats["proposed_drafts"] > 0 and stats["accepted_drafts"] == stats["proposed_drafts"]
    assert stats["acceptance_rate"] == 1.0
    # Accept-all: every step commits k+1 = 4 tokens, so 8 tokens (1 from prefill) take 2 steps.
    assert stats["replays_per_graph"]["target"] == 4  # 4 requests, 2 a step, 2 steps each


def test_a_perturbed_draft_is_accepted_part_of_the_time_and_random_mtp_weights_near_never(models):
    perturbed, _ = _lm(models, "perturbed", k=2, use_graph=False)
    perturbed.generate(PROMPTS, MAX_NEW)
    rate = perturbed.stats()["acceptance_rate"]
    assert 0.0 < rate < 1.0  # 0.275 measured with 16 tokens
    mtp, _ = _lm(models, "mtp", k=2, use_graph=False)
    assert mtp.stats()["acceptance_rate"] is None  # no step yet
    mtp.generate(PROMPTS, MAX_NEW)
    assert 0.0 <= mtp.stats()["acceptance_rate"] < 0.5  # random MTP weights: reported, nothing claimed


def test_the_mtp_layer_writes_its_own_cache_and_leaves_no_hook_on_the_model(models):
    lm, _ = _lm(models, "mtp", k=2, use_graph=True, backend="eager")
    before = [tensor.numpy().copy() for _, tensor in lm.cache.tensors()]
    lm.generate(PROMPTS, MAX_NEW)
    assert len(lm.cache.layers) == 2  # the target's layers only
    draft_cache = lm.speculative.pair.draft_model.cache
    assert len(draft_cache.layers) == 1 and all(np.abs(t.numpy()).max() > 0 for _, t in draft_cache.tensors())
    assert any(not np.array_equal(b, t.numpy()) for b, (_, t) in zip(before, lm.cache.tensors()))
    assert not models["ernie"].model.norm._forward_pre_hooks


def test_two_mtp_layers_chain_the_last_one_beyond_their_number(models):
    lm, _ = _lm(models, "mtp2", k=3, use_graph=False)
    draft = lm.speculative.pair.draft_model
    assert [draft.layer_for(substep) for substep in range(4)] == [0, 1, 1, 1]


def test_the_paddleformers_path_and_the_mtp_engine_run_one_speculative_step(models):
    # One engine for any target: GraphedCausalLM and MTPEngine both step through SpeculativeStep,
    # with the graphs (names, capped sizes, rows per request) mtp_graph_specs gives for their slots.
    from graphcap.models.tiny_lm import load_tiny_lm
    from graphcap.mtp import MTPEngine, SpeculativeStep, mtp_graph_specs

    config = GraphConfig(num_speculative_tokens=2, use_graph=True, backend="eager")
    lm, _ = _lm(models, "copy", k=2, use_graph=True, backend="eager")
    engine = MTPEngine(config, max_batch=2, bundle=load_tiny_lm(2))
    for step in (lm.speculative, engine.step):
        assert type(step) is SpeculativeStep
        graphed = [step.target, step.draft_first, step.draft_next]
        assert [(fn.name, fn.buckets.sizes, fn.rows_per_request) for fn in graphed] == [
            (spec.name, spec.sizes, spec.rows_per_request) for spec in mtp_graph_specs(config, max_batch=2)]
    assert type(lm.speculative.pair).__name__ == "PaddleFormersPair" and type(engine.step.pair).__name__ == "TinyLMPair"


def test_bad_speculative_input_is_refused_at_construction_with_the_fix(models):
    from graphcap.integrations.paddleformers import GraphedCausalLM

    def build(model, k, draft):
        return GraphedCausalLM(model, GraphConfig(num_speculative_tokens=k), max_batch=2, max_len=MAX_LEN,
                               draft=draft)

    with pytest.raises(ConfigError, match="draft='mtp' but LlamaForCausalLM has no MTP layers"):
        build(models["target"], 2, "mtp")
    other_vocab = _llama()
    other_vocab.config.vocab_size = 128  # what the check reads; the draft is refused before it runs
    with pytest.raises(ConfigError, match="vocab_size=128 but the target has 256"):
        build(models["target"], 2, other_vocab)
    with pytest.raises(ConfigError, match="a draft was given but num_speculative_tokens=0"):
        build(models["target"], 0, models["copy"])
    with pytest.raises(ConfigError, match="num_speculative_tokens=2 but no draft was given"):
        build(models["target"], 2, None)
    with pytest.raises(ConfigError, match="draft='eagle' is not a draft kind"):
        build(models["target"], 2, "eagle")
    with pytest.raises(ConfigError, match="neither 'mtp' nor a PaddleFormers causal LM"):
        build(models["target"], 2, object())
    lm = build(models["target"], 2, models["copy"])
    with pytest.raises(ConfigError, match=r"k\+1=3 for the drafts"):
        lm.generate([[1] * 20], MAX_LEN - 22)


@pytest.mark.parametrize("kind", ["copy", "mtp2"])
def test_capture_all_captures_every_graph_up_front_and_generation_then_only_replays(models, kind):
    lm, family = _lm(models, kind, k=3, use_graph=True, backend="eager")
    seeds = lm.registry.buffers.infer_seed.numpy().copy()
    captured = lm.capture_all()
    # target: buckets (4, 8) greedy and sampled; draft: (4, 8); draft_next: (1, 2) for the one layer the
    # substeps use (a draft model's; with 2 MTP layers, layer 1 for drafts 2 and 3: layer 0 is step 0's).
    assert captured == lm.stats()["captures"] == 2 * 2 + 2 + 2
    assert np.array_equal(lm.registry.buffers.infer_seed.numpy(), seeds)  # put back
    assert lm.generate(PROMPTS, MAX_NEW) == models["want"][family]
    assert lm.stats()["captures"] == captured and lm.stats()["eager_fallbacks"] == 0


# Prefill graphs with a draft: sizes (2, 4) over prompts of 1-5 tokens. The 5-token prompt is prefilled eagerly
# (target and draft); a draft model's sequence is one longer than its prompt, so the 2-token prompt's draft pass
# moves up to size 4 and the 4-token prompt's (5 tokens) runs eagerly; an MTP draft's stays in its prompt's size.
PREFILL_PROMPTS = [[5, 9, 13], [7, 1], [2, 3, 4, 5, 6], [11], [8, 9, 10, 12]]
PREFILL_SIZES = (2, 4)


@pytest.mark.parametrize("mode", ["eager", "eager_draft_graphs_off", "static"])
@pytest.mark.parametrize("kind", ["perturbed", "mtp"])
def test_prefill_graphs_with_a_draft_equal_recompute_and_propose_the_eager_prefills_drafts(models, kind, mode):
    lm, family = _lm(models, kind, k=2, prefill_capture_sizes=PREFILL_SIZES, **MODES[mode])
    eager, _ = _lm(models, kind, k=2, **MODES[mode])
    target = models["target" if family == "llama" else "ernie"]
    want = [full_recompute_greedy(target, prompt, MAX_NEW) for prompt in PREFILL_PROMPTS]
    assert lm.generate(PREFILL_PROMPTS, MAX_NEW) == want
    assert eager.generate(PREFILL_PROMPTS, MAX_NEW) == want
    stats, eager_stats = lm.stats(), eager.stats()
    # The same first drafts as the eager prefill's, so every step proposes and accepts the same.
    assert (stats["proposed_drafts"], stats["accepted_drafts"]) == (
        eager_stats["proposed_drafts"], eager_stats["accepted_drafts"])
    assert stats["recaptures"] == 0, stats["recapture_reasons"]
    model_draft = kind == "perturbed"
    assert stats["prefill"] == {"bucketed_prompts": 4, "too_long_prompts": 1, "tokens": 10,
                                "padded_tokens": 1 + 0 + 1 + 0, "bucketed_drafts": 3 if model_draft else 4,
                                "too_long_drafts": 1 if model_draft else 0}
    reasons = sorted(item["reason"] for item in stats["fallbacks"])
    assert len(reasons) == (2 if model_draft else 1)
    assert reasons[-1].startswith("a prompt of 5 tokens is longer than the largest prefill capture size 4")
    if model_draft:
        assert reasons[0].startswith("a draft sequence of 5 tokens (the prompt and its first token) is longer")
    replays = stats["replays_per_graph"]
    assert stats["coverage"]["prefill_2"] == stats["coverage"]["prefill_4"] == 1.0
    drafts_on = MODES[mode].get("draft_use_graph", True)
    assert (replays.get("draft_prefill_4", 0) > 0) == drafts_on


@pytest.mark.parametrize("kind", ["perturbed", "mtp"])
def test_sampled_prefill_graphs_with_a_draft_are_identical_to_the_eager_prefill(models, kind):
    graphed, _ = _lm(models, kind, k=2, prefill_capture_sizes=PREFILL_SIZES, use_graph=True, backend="eager")
    eager, family = _lm(models, kind, k=2, use_graph=True, backend="eager")
    runs = [engine.generate(PREFILL_PROMPTS, MAX_NEW, greedy=False, top_p=0.9, seed=5) for engine in (graphed, eager)]
    assert runs[0] == runs[1]
    assert graphed.stats()["accepted_drafts"] == eager.stats()["accepted_drafts"]


@pytest.mark.parametrize("backend", ["eager", "static"])
@pytest.mark.parametrize("kind", ["perturbed", "mtp"])
def test_the_bucketed_draft_pass_sets_the_drafts_of_the_eager_one(models, kind, backend):
    from graphcap.integrations.paddleformers.causal_lm import _Request
    from graphcap.integrations.paddleformers.speculative import prefill_with_draft

    lm, _ = _lm(models, kind, k=3, prefill_capture_sizes=PREFILL_SIZES, use_graph=True, backend=backend)
    # Two prompts of one step (sizes 4 and 2), then the same two prompts' slots swapped: capture, then replay;
    # then two prompts in one size, whose rows (and an MTP draft's hidden rows) must not trade places.
    for prompts in ([[5, 9, 13], [7, 1]], [[7, 1], [5, 9, 13]], [[8, 9, 10, 12], [11]], [[5, 9, 13], [60, 2, 33]]):
        bucketed = [_Request(index=slot, prompt=prompt, slot=slot) for slot, prompt in enumerate(prompts)]
        firsts = lm.prefill_graphs.run([0, 1], prompts, greedy=True, requests=bucketed)
        eager = [_Request(index=slot, prompt=prompt, slot=slot) for slot, prompt in enumerate(prompts)]
        assert firsts == [prefill_with_draft(lm, lm.speculative, request, greedy=True) for request in eager]
        assert [(r.length, r.drafts) for r in bucketed] == [(r.length, r.drafts) for r in eager]
        assert len({token for r in eager for token in r.drafts}) > 1  # drafts that vary: a wrong row would show
    assert lm.stats()["replays_per_graph"]["draft_prefill_4"] >= 2
