"""The README's examples run and say what the README says they say.

Each example runs as a user would run it (a fresh interpreter, from the
repository root), so an API change that breaks one fails here instead of in a
reader's terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import paddleformers_transformers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> str:
    """Run ``examples/<name>`` and return its standard output; fails with its stderr when it fails."""
    env = {**os.environ, "GLOG_minloglevel": "2"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_what_graphcap_catches_raises_each_documented_error():
    lines = {line.split("->")[0].strip(): line.split("->", 1)[1].strip()
             for line in run_example("what_graphcap_catches.py").splitlines() if "->" in line}
    expected = {
        "rebinding a static buffer": "AddressStabilityError: registry.buffers.cu_seqlens_q_output",
        "host read during capture": "CaptureSafetyError: Tensor.item()",
        "value-dependent shape in capture": "CaptureSafetyError: paddle.repeat_interleave with Tensor repeats",
        "moved/reallocated buffer at replay": "AddressStabilityError: lookup[bucket 4]: registry buffer 'table'",
        "batch above the largest bucket": "ran eagerly: 7 rows, eager_fallbacks=1",
        "stale padding rows": "refilled by rule",
        "parameter rebound by weight reload": "AddressStabilityError: forward[bucket 4]: self.lin.weight",
        "cache.keys[0] re-allocated": "AddressStabilityError: attend[bucket 4]: static argument 'cache.keys[0]'",
        "Python-held tensor replaced": "CaptureSafetyError: decode[bucket 4]: the function rebinds past[0]",
        "undeclared in-place counter": "CaptureSafetyError: step[bucket 4]: the function changed its static "
                                       "argument 'step_count'",
        "unhashable non-tensor leaf": "CaptureError: mix: argument 'kv[1]'",
        "capture fails on the backend": "WARNING: double[bucket 4]: capture failed on the eager backend",
        "reload with on_rebind='recapture'": "recaptures=1, result is the new weights' result: True",
    }
    for section, start in expected.items():
        assert lines.get(section, "").startswith(start), (section, lines.get(section))
    assert "sum over the bucket = 2.0 (not 202.0)" in lines["stale padding rows"]


def test_paddleformers_example_gives_the_same_tokens_with_graphs_off_and_on():
    paddleformers_transformers()
    out = run_example("paddleformers_decode.py")
    assert "identical: True" in out
    assert "fallbacks=[]" in out and "replays=14" in out


def test_speculative_example_equals_plain_decoding_for_both_draft_kinds():
    paddleformers_transformers()
    lines = [line for line in run_example("speculative_decode.py").splitlines() if "identical" in line]
    assert len(lines) == 2 and all("identical to plain decoding: True" in line for line in lines)
    assert lines[0].startswith("ernie-4.5 draft='mtp'") and "coverage 1.00" in lines[0]
    assert lines[1].startswith("llama draft=<copy>") and "acceptance 1.00" in lines[1]
