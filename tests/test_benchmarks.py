"""Smoke tests of the benchmark scripts: they import, and their small helpers work on tiny inputs.

Nothing is timed; the benchmarks run here are ``bench_trust --quick`` (two
row counts on one scale, about a second) and ``bench_speculative --quick``
(eager backend, batch 2, 4 new tokens, about 15 s).
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import paddle
import pytest
from conftest import paddleformers_transformers

from graphcap import CaptureRegistry, GraphConfig

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """Import a benchmark module by name from benchmarks/."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCH_DIR))


def _mode(tokens_per_second, decode_tokens_per_second=100.0):
    return {"tokens_per_second": tokens_per_second, "decode_tokens_per_second": decode_tokens_per_second}


@pytest.mark.parametrize(
    "name", ["bench_capture", "bench_mtp", "plot_results", "run_all", "bench_overhead", "bench_buckets", "bench_llama", "bench_ranks",
             "bench_trust", "bench_speculative", "bench_prefill"]
)
def test_benchmark_modules_import(bench, name):
    module = bench(name)
    assert callable(module.main)


def test_mtp_compare_ratio_and_target(bench):
    mtp = bench("bench_mtp")
    slower = mtp.compare(_mode(100.0, 200.0), _mode(85.0, 150.0))
    assert slower["ratio"] == pytest.approx(0.85)
    assert slower["decode_ratio"] == pytest.approx(0.75)
    assert slower["target_met"] is False
    at_limit = mtp.compare(_mode(100.0), _mode(90.0))
    assert at_limit["target_met"] is True
    assert mtp.compare(_mode(0.0, 0.0), _mode(10.0))["ratio"] == 0.0


def test_mtp_identical_compares_tokens_and_seed(bench):
    mtp = bench("bench_mtp")
    a = {"outputs": [[5, 6], [7]], "infer_seed": [1, 2]}
    assert mtp.identical([a, dict(a)], [dict(a)])
    assert not mtp.identical([a], [{**a, "outputs": [[5, 6], [8]]}])
    assert not mtp.identical([a], [{**a, "infer_seed": [1, 3]}])


def test_mtp_summarize_uses_medians(bench):
    mtp = bench("bench_mtp")
    passes = [
        {"wall_seconds": w, "decode_seconds": w / 2, "tokens": 100, "decode_tokens": 90, "decode_steps": 10,
         "acceptance_rate": 0.5}
        for w in (1.0, 2.0, 4.0)
    ]
    summary = mtp.summarize(passes)
    assert summary["wall_seconds"] == 2.0
    assert summary["tokens_per_second"] == pytest.approx(50.0)
    assert summary["decode_tokens_per_second"] == pytest.approx(90.0)


def test_mtp_table_has_one_line_per_row(bench):
    mtp = bench("bench_mtp")
    row = {"k": 2, "batch": 8, "off": _mode(100.0), "on": _mode(95.0), **mtp.compare(_mode(100.0), _mode(95.0)),
           "acceptance_rate": 0.42, "identical": True, "graphs": 9, "capture_seconds": 4.2}
    table = mtp.format_rows([row, {**row, "k": 0, "acceptance_rate": None, "identical": False}])
    lines = table.splitlines()
    assert len(lines) == 4
    assert "42.0%" in lines[2] and "yes" in lines[2]
    assert "NO" in lines[3]
    assert mtp.parse_ints("0, 1,3") == [0, 1, 3]


def test_capture_helpers(bench):
    capture = bench("bench_capture")
    assert capture.rss_kib() > 0  # Linux: /proc/self/status has VmRSS
    names = ["draft_next[8]", "target[24]", "draft[3]", "target[3]"]
    assert sorted(names, key=capture.bucket_order) == ["target[3]", "target[24]", "draft[3]", "draft_next[8]"]
    runs = [{"buckets": {"target[3]": {"seconds": s}}} for s in (0.1, 0.3, 0.2)]
    assert capture.bucket_medians(runs) == {"target[3]": 0.2}
    table = capture.format_table(["name", "s"], [["target[3]", "0.100"], ["draft[24]", "12.000"]])
    header, rule, first, second = table.splitlines()
    assert len(rule) == len(header) and first.startswith("target[3]") and second.endswith("12.000")


def test_capture_log_sees_every_real_capture(bench):
    # A real registry's captures, not a hand-made record: the benchmark broke
    # once when the log line's wording changed under it.
    capture = bench("bench_capture")
    log = capture.CaptureLog()
    logger = logging.getLogger("graphcap")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log)
    try:
        registry = CaptureRegistry(GraphConfig(use_graph=True, backend="eager", capture_sizes=(2, 4)))
        double = registry.graphed("double", batch_arg="x")(lambda x: x * 2)
        double(x=paddle.ones([3]))
        double(x=paddle.ones([1]))
        logger.info("something else %s", "x")
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    assert [(name, bucket) for name, bucket, _, _ in log.records] == [("double", 4), ("double", 2)]
    assert all(seconds > 0 for _, _, seconds, _ in log.records)


def test_plot_results_series_and_main(bench, tmp_path, capsys):
    plots = bench("plot_results")
    result = {"setup": {"backend": "static", "max_new_tokens": 8},
              "rows": [{"k": 1, "batch": 8, "off": _mode(10.0), "on": _mode(9.0), "ratio": 0.9}]}
    assert plots.mtp_series(result) == (["k=1 b=8"], [10.0], [9.0], [0.9])
    (tmp_path / "mtp.json").write_text(json.dumps(result))
    assert plots.main(["--results", str(tmp_path)]) == 0  # with or without matplotlib
    assert "plot_results:" in capsys.readouterr().out
    assert plots.load(tmp_path / "missing.json") is None


def test_trust_quick_writes_its_figures(bench, tmp_path, capsys):
    paddleformers_transformers()  # a skip without it, a failure under make test
    trust = bench("bench_trust")
    out = tmp_path / "trust.json"
    assert trust.main(["--quick", "--out", str(out)]) == 0  # tokens equal graphs off
    result = json.loads(out.read_text())
    (summary,) = result["summary"]
    assert (summary["scale"], summary["backend"], summary["total"]) == (4, "eager", 2)
    assert summary["captures_kept"] == f"{summary['kept']} of 2"
    assert 0.0 <= summary["graph_share"] <= 1.0
    assert 5.0 < result["max_abs_logit"]["x4"] < 20.0  # the 2-D weights were scaled x4
    runs = result["sweeps"][0]["runs"]
    assert [(run["rows"], run["bucket"], run["padded"]) for run in runs] == [(3, 4, True), (5, 8, True)]
    assert all(run["padding_difference"] is not None for run in runs)
    assert "   x4 eager " in capsys.readouterr().out  # the table's line for the one sweep
    assert trust.measured_in("x differs by 0.000123, beyond the 1e-05 that rounding") == \
        {"difference": 0.000123, "bound": 1e-05}
    assert trust.measured_in("beyond rounding: padding changes the result") is None
    assert trust.bucket_of(9) == 16 and len(trust.prompts_for(15, 512)) == 15


def test_speculative_quick_writes_its_figures(bench, tmp_path, capsys):
    paddleformers_transformers()  # a skip without it, a failure under make test
    speculative = bench("bench_speculative")
    out = tmp_path / "speculative.json"
    assert speculative.main(["--quick", "--out", str(out)]) == 0  # tokens equal, no eager fallback
    result = json.loads(out.read_text())
    assert result["setup"]["quick"] is True and result["setup"]["backend"] == "eager"
    rows = {(row["class"], row["draft"], row["k"], row["batch"]): row for row in result["rows"]}
    assert set(rows) == {("llama", "copy", 2, 2), ("llama", "perturbed", 2, 2), ("llama", "smaller", 2, 2),
                         ("ernie", "mtp", 2, 2)}
    for row in rows.values():
        assert row["tokens_equal"] == {"plain_on": True, "spec_off": True, "spec_on": True}
        assert row["eager_fallbacks"] == 0 and row["plain_on_graphs"]["eager_fallbacks"] == 0
        assert row["spec_on_graphs"]["recaptures"] == 0  # the benchmark's own timing is invisible to the guard
        assert row["coverage"]["target"] == 1.0
        assert set(row["tokens_per_second"]) == {"plain_off", "plain_on", "spec_off", "spec_on"}
        assert all(value > 0 for value in row["tokens_per_second"].values())
        assert row["acceptance_rate"] == row["acceptance_rate_graphs_off"]
    assert rows[("llama", "copy", 2, 2)]["acceptance_rate"] == 1.0  # the draft is the target
    assert 0.0 < rows[("llama", "perturbed", 2, 2)]["acceptance_rate"] < 1.0
    assert result["tokens_equal_everywhere"] is True and result["eager_fallbacks_total"] == 0
    (entry,) = result["overhead"]["per_batch"]
    assert entry["batch"] == 2 and entry["tokens_equal"] and entry["eager_fallbacks"] == 0
    assert entry["ratio"] > 0 and isinstance(entry["target_met"], bool)  # a figure, not asserted
    assert "llama  copy      2     2" in capsys.readouterr().out  # the table's line for the copy draft


def test_prefill_quick_writes_its_figures(bench, tmp_path, capsys):
    paddleformers_transformers()  # a skip without it, a failure under make test
    prefill = bench("bench_prefill")
    out = tmp_path / "prefill.json"
    assert prefill.main(["--quick", "--json", str(out)]) == 0  # first tokens identical in the three modes
    result = json.loads(out.read_text())
    assert [(row["batch"], row["size"]) for row in result["buckets"]] == [(2, 4), (2, 8)]
    for row in result["buckets"]:
        assert row["identical"] and row["coverage"] == 1.0 and row["recaptures"] == 0
        assert row["padded_tokens"] == 2 * row["size"] - sum(row["prompt_lengths"]) and max(row["prompt_lengths"]) == row["size"]
        assert row["capture_seconds"] > 0 and all(value > 0 for value in row["tokens_per_second"].values())
    for comparison in result["plans"]["comparisons"]:
        engine, same = comparison["engine"], comparison["planner_same_largest"]
        # The exact planner at the same graph count and largest size never pads more, and leaves the same eager.
        assert same["graphs"] <= engine["graphs"] and same["waste_ratio"] <= engine["waste_ratio"]
        assert same["eager_token_share"] == engine["eager_token_share"]
        assert comparison["planner"]["eager_token_share"] == 0.0
    table = prefill.markdown(result)
    assert "| 2 | 8 | 14 | 2 |" in table and "| fastdeploy_default | 1, 2, 4, 8 | 4 |" in table


def test_prefill_plan_figures_on_a_known_trace(bench):
    prefill = bench("bench_prefill")
    served = prefill._served([3, 9, 16, 4], (4, 8))  # 3 pads to 4; 9 and 16 are above the largest size
    assert served["padded_tokens"] == 1 and served["eager_prompts"] == 2
    assert served["waste_ratio"] == round(1 / 7, 4) and served["eager_token_share"] == round(25 / 32, 4)
    assert prefill.bucket_prompts(16, 8, 4, 512) and [len(p) for p in prefill.bucket_prompts(16, 8, 4, 512)] == [16, 14, 12, 10]


def test_run_all_steps_exist_and_reject_unknown_names(bench):
    run_all = bench("run_all")
    names = [name for name, _, _ in run_all.STEPS]
    assert len(names) == len(set(names))
    for _, script, _ in run_all.STEPS:
        assert (BENCH_DIR / script).is_file()
    assert run_all.command("bench_mtp.py", ("--ks", "0"))[-2:] == ["--ks", "0"]
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_step"])


def test_device_check_script_parses():
    script = BENCH_DIR / "device_check.sh"
    assert script.is_file()
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
