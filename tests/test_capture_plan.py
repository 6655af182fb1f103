from __future__ import annotations

import paddle
import pytest

from graphcap import CaptureRegistry, GraphConfig
from graphcap.__main__ import main
from graphcap.decide.capture_plan import GraphSpec, format_capture_plan, make_capture_plan
from graphcap.mtp.graph_specs import mtp_graph_specs


def mtp_plan(*, trace=None, max_graphs=None, **config):
    """The plan of an MTP engine under ``GraphConfig(**config)``, as ``python -m graphcap plan`` makes it."""
    cfg = GraphConfig(**config)
    return make_capture_plan(mtp_graph_specs(cfg), num_speculative_tokens=cfg.num_speculative_tokens,
                             trace=trace, max_graphs=max_graphs)


def test_default_plan_lists_every_graph_of_the_mtp_engine():
    plan = mtp_plan(max_capture_size=8, num_speculative_tokens=2)
    assert [graph.name for graph in plan.graphs] == ["target", "draft", "draft_next"]
    assert plan.graphs[0].sizes == (3, 6, 12, 24)
    assert plan.graphs[2].sizes == (1, 2, 4, 8)
    assert plan.graph_count == 12
    assert plan.warnings == ()


def test_sizes_that_are_not_multiples_of_one_plus_k_are_flagged():
    plan = mtp_plan(capture_sizes=(2, 4, 5, 8), num_speculative_tokens=1)
    assert plan.graphs[0].not_multiples == (5,)
    assert any("[5] are not multiples of 2" in warning for warning in plan.warnings)


def test_trace_gives_expected_padding_waste_and_the_planner_beats_the_default():
    trace = [3, 3, 3, 5, 5, 6, 7, 9, 9, 9]
    plan = mtp_plan(max_capture_size=16, num_speculative_tokens=0, trace=trace, max_graphs=3)
    target = plan.graphs[0]
    # Default sizes 1, 2, 4, 8, 16: 3->4, 5->8, 6->8, 7->8, 9->16.
    assert target.waste["padded_rows"] == 3 * 1 + 2 * 3 + 2 + 1 + 3 * 7
    assert plan.planned is not None and len(plan.planned.sizes) <= 3
    assert plan.planned.waste["padded_rows"] < target.waste["padded_rows"]
    text = format_capture_plan(plan)
    assert "padding waste" in text and "planned" in text


def test_trace_above_the_largest_size_warns():
    plan = mtp_plan(max_capture_size=4, trace=[2, 8, 8])
    assert any("2 trace steps exceed the largest size 4" in warning for warning in plan.warnings)


def test_plan_takes_any_graph_specs_and_plans_sizes_for_the_first():
    specs = [
        GraphSpec(name="prefill", sizes=(16, 4, 8, 4), rows_per_request=4),
        GraphSpec(name="decode", sizes=(1, 2, 3), rows_per_request=1),
    ]
    plan = make_capture_plan(specs, trace=[1, 2, 2, 3], max_graphs=2)
    prefill, decode = plan.graphs
    assert (prefill.name, prefill.sizes, prefill.rows_per_request) == ("prefill", (4, 8, 16), 4)
    assert decode.not_multiples == () and plan.graph_count == 6
    # Requests 1, 2, 2, 3 are 4, 8, 8, 12 rows in "prefill": 12 pads to 16.
    assert prefill.waste["padded_rows"] == 4 and decode.waste["padded_rows"] == 0
    assert plan.planned.name == "prefill (planned, 2 graphs)" and plan.planned.sizes == (8, 12)
    assert plan.planned.waste["padded_rows"] == 4
    assert plan.warnings == ()


def test_registry_plan_reflects_its_graphs():
    reg = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2, 3, 4),
                                      num_speculative_tokens=1))
    reg.graphed("verify", batch_arg="x")(lambda x: x)
    reg.graphed("one", batch_arg="x", rows_per_request=1)(lambda x: x)
    plan = reg.plan(trace=[1, 2])
    verify, one = plan.graphs
    assert verify.not_multiples == (3,) and one.not_multiples == ()
    assert one.sizes == (1, 2)
    assert verify.waste["real_rows"] == 2 + 4


def test_auto_capture_sizes_come_from_the_trace():
    cfg = GraphConfig(capture_sizes="auto", trace=(1, 1, 3, 3, 3, 7), max_graphs=2)
    assert cfg.target_capture_sizes == (3, 7)
    cfg = GraphConfig(capture_sizes="auto", trace=(1, 3), max_graphs=4, num_speculative_tokens=1)
    assert cfg.target_capture_sizes == (2, 6)  # 1 and 3 requests, 2 rows each


def test_plan_cli_prints_the_table(capsys, tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("# requests per step\n1 2 3 4 5 6\n")
    assert main(["plan", "--max-capture-size", "8", "-k", "1", "--trace", str(trace), "--max-graphs", "2"]) == 0
    out = capsys.readouterr().out
    assert "target" in out and "draft_next" in out and "planned, 2 graphs" in out


def test_plan_cli_rejects_bad_input():
    with pytest.raises(SystemExit):
        main(["plan", "--max-capture-size", "x"])
    paddle.ones([1])  # paddle still usable after argparse exits
