from __future__ import annotations

import attrs
import pytest

from graphcap import ConfigError, GraphConfig


def test_defaults_are_graph_off_with_fastdeploy_sizes():
    cfg = GraphConfig()
    assert cfg.use_graph is False
    assert cfg.num_warmups == 2
    sizes = GraphConfig(max_capture_size=512).target_capture_sizes
    assert sizes[:5] == (1, 2, 4, 8, 16)
    assert {128, 144, 256, 288, 512} <= set(sizes)
    assert sizes[-1] == 512
    assert GraphConfig(max_capture_size=10).target_capture_sizes == (1, 2, 4, 8, 10)


def test_speculative_sizes_count_rows_in_multiples_of_one_plus_k():
    cfg = GraphConfig(max_capture_size=8, num_speculative_tokens=2)
    assert cfg.target_capture_sizes == (3, 6, 12, 24)
    assert all(size % 3 == 0 for size in cfg.target_capture_sizes)
    # A draft step with one row per request uses the request counts.
    assert cfg.sizes_for(1) == (1, 2, 4, 8)


def test_explicit_sizes_are_rows_and_rescale_for_other_graphs():
    cfg = GraphConfig(capture_sizes=(8, 2, 4, 4), num_speculative_tokens=1)
    assert cfg.capture_sizes == (2, 4, 8)
    assert cfg.target_capture_sizes == (2, 4, 8)
    assert cfg.sizes_for(1) == (1, 2, 4)


def test_from_env_reads_the_documented_variables():
    env = {"GRAPHCAP_USE_GRAPH": "1", "GRAPHCAP_BACKEND": "eager", "GRAPHCAP_CAPTURE_SIZES": "1,2,4",
           "GRAPHCAP_DRAFT_USE_GRAPH": "false", "GRAPHCAP_NUM_WARMUPS": "3"}
    cfg = GraphConfig.from_env(env)
    assert (cfg.use_graph, cfg.backend, cfg.capture_sizes, cfg.draft_use_graph, cfg.num_warmups) == (
        True, "eager", (1, 2, 4), False, 3)
    assert GraphConfig.from_env({}, use_graph=True).use_graph is True


def test_from_dict_and_evolve():
    cfg = GraphConfig.from_dict({"use_graph": True, "num_speculative_tokens": 3})
    assert cfg.rows_per_request == 4
    assert attrs.evolve(cfg, use_graph=False).use_graph is False


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"backend": "cuda"}, ["backend", "cuda", "eager"]),
        ({"capture_sizes": (0, 2)}, ["capture_sizes", "0"]),
        ({"capture_sizes": ()}, ["capture_sizes"]),
        ({"capture_sizes": "1,x"}, ["capture_sizes", "1,x"]),
        ({"max_capture_size": 0}, ["max_capture_size", ">= 1"]),
        ({"num_speculative_tokens": -1}, ["num_speculative_tokens", "-1"]),
        ({"num_warmups": 1.5}, ["num_warmups", "1.5"]),
        ({"use_graph": "yes"}, ["use_graph", "'yes'"]),
        ({"on_unsafe_capture": "ignore"}, ["on_unsafe_capture", "raise"]),
        ({"capture_sizes": "auto"}, ["trace"]),
        ({"no_such_field": 1}, ["no_such_field"]),
    ],
)
def test_bad_values_raise_config_error_naming_field_and_value(values, names):
    with pytest.raises(ConfigError) as info:
        GraphConfig.from_dict(values)
    for name in names:
        assert name in str(info.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="GRAPHCAP_USE_GRAPH"):
        GraphConfig.from_env({"GRAPHCAP_USE_GRAPH": "maybe"})


def test_auto_backend_is_static_without_a_device():
    assert GraphConfig(backend="auto").resolved_backend() == "static"
