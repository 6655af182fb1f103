#!/usr/bin/env bash
# Device figures for graphcap: run on a machine with a CUDA build of Paddle and a GPU.
#
#   bash benchmarks/device_check.sh            # from anywhere; uses .venv/bin/python if present
#   PY=/path/to/python bash benchmarks/device_check.sh
#
# Steps (about 5 minutes on one GPU):
#   1. refuses to run, with a message, unless paddle.device.cuda.graphs.is_cuda_graph_supported();
#   2. builds the custom ops (python -m graphcap.ops.build; CUDA sources included on a CUDA build);
#   3. pytest tests/device -> benchmarks/results/device_tests.txt (environment header + pytest output);
#   4. bench_mtp.py --backend device (k 0 and 2, batches 1, 8, 32, 24 new tokens)
#      -> benchmarks/results/device_mtp.json, and its table in benchmarks/results/device_mtp.txt.
# Exit status: 0 when every step passed, 1 when one failed (the others still run), 2 without graph support.
# Not run on the CPU development machines; the README says so unless these result files exist.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export GLOG_minloglevel="${GLOG_minloglevel:-2}"
RESULTS="$ROOT/benchmarks/results"
mkdir -p "$RESULTS"

if ! "$PY" - <<'EOF'
import sys, warnings
warnings.filterwarnings("ignore", message="No ccache found")
try:
    import paddle
    from paddle.device.cuda.graphs import is_cuda_graph_supported
    supported = bool(is_cuda_graph_supported())
except Exception as exc:  # no paddle, or a build without the graphs module
    print(f"device_check: cannot query CUDA graph support ({exc!r})", file=sys.stderr)
    sys.exit(1)
if not supported:
    print(
        f"device_check: paddle {paddle.__version__} here has no CUDA graph support "
        f"(is_cuda_graph_supported() is False: a CPU build, or no GPU visible). "
        "Run this script on a machine with a CUDA build of Paddle (paddlepaddle-gpu) and a GPU.",
        file=sys.stderr,
    )
    sys.exit(1)
EOF
then
    exit 2
fi

failed=0

echo "== building the custom ops"
"$PY" -m graphcap.ops.build || failed=1

echo "== pytest tests/device -> $RESULTS/device_tests.txt"
{
    echo "# graphcap device tests, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "$PY" -c "import paddle, platform; print('# paddle', paddle.__version__, '| python', platform.python_version(), '| cuda', paddle.version.cuda(), '| gpus', paddle.device.cuda.device_count())"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/# gpu: /'
} > "$RESULTS/device_tests.txt" 2>&1
"$PY" -m pytest tests/device -v -p no:cacheprovider 2>&1 | tee -a "$RESULTS/device_tests.txt"
status=${PIPESTATUS[0]}
echo "# pytest exit status: $status" >> "$RESULTS/device_tests.txt"
[ "$status" -eq 0 ] || failed=1

echo "== bench_mtp.py --backend device -> $RESULTS/device_mtp.json"
"$PY" benchmarks/bench_mtp.py --backend device --ks 0,2 --batches 1,8,32 --max-new-tokens 24 --passes 2 \
    --json "$RESULTS/device_mtp.json" 2>&1 | tee "$RESULTS/device_mtp.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=1

if [ "$failed" -eq 0 ]; then
    echo "device_check: done; results in $RESULTS (device_tests.txt, device_mtp.json, device_mtp.txt)"
else
    echo "device_check: a step FAILED; see the output above and $RESULTS/device_tests.txt" >&2
fi
exit "$failed"
