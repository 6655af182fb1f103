"""The main job (``python -m graphcap demo``) and the Llama demo: modes agree and the JSON says what ran."""

from __future__ import annotations

import json

import pytest
from conftest import paddleformers_transformers

from graphcap.__main__ import main
from graphcap.demo import DemoOptions, run_demo
from graphcap.errors import ConfigError
from graphcap.interleave import interleaved_runs


def test_interleaved_rounds_alternate_the_order():
    calls: list[str] = []
    runs = interleaved_runs(lambda mode: calls.append(mode) or len(calls), ["off", "on"], rounds=3)
    assert calls == ["off", "on", "on", "off", "off", "on"]
    assert [timed.result for timed in runs["on"]] == [2, 3, 6]
    with pytest.raises(ConfigError, match="rounds=0"):
        interleaved_runs(lambda mode: None, ["off"], rounds=0)


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_mtp_demo_modes_agree_and_report_what_ran(tmp_path, backend, capsys):
    options = DemoOptions(num_prompts=4, batch_size=4, max_new_tokens=6, backend=backend, timed_passes=2)
    result = run_demo(options, json_path=tmp_path / "demo.json")
    assert result["identical"] is True
    off, on = result["rows"]
    assert off["mode"] == "graphs off" and off["graphs"] == 0 and off["padded_rows"] == 0
    assert on["backend"] == backend and on["graphs"] > 0 and on["eager_fallbacks"] == 0
    assert off["tokens"] == on["tokens"] == 4 * 6
    assert on["timed_passes"] == 2 and on["tokens_per_second"] > 0
    written = json.loads((tmp_path / "demo.json").read_text())
    assert written["rows"] == result["rows"] and written["options"]["backend"] == backend
    assert "median of 2 timed passes per mode, interleaved" in capsys.readouterr().out


def test_demo_cli_exit_status_and_bad_timed_passes(tmp_path):
    argv = ["demo", "--num-prompts", "2", "--batch-size", "2", "--max-new-tokens", "4", "--backend", "eager",
            "--timed-passes", "1", "--json", str(tmp_path / "out.json")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "out.json").read_text())["identical"] is True
    with pytest.raises(ConfigError, match="timed_passes=0"):
        main([*argv[:-4], "--timed-passes", "0"])


def test_llama_demo_modes_agree(tmp_path):
    paddleformers_transformers()
    from graphcap.integrations.paddleformers.demo import LlamaDemoOptions, run_llama_demo

    options = LlamaDemoOptions(batch_size=2, num_prompts=3, max_new_tokens=4, timed_passes=2)
    result = run_llama_demo(options, json_path=tmp_path / "llama.json")
    assert result["identical"] is True
    off, on = result["rows"]
    assert on["graphs"] > 0 and on["eager_fallbacks"] == 0 and on["replays"] > 0
    assert off["tokens"] == on["tokens"] == 3 * 4
