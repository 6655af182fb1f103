# Two commands set up everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.graphcap-installed
# `cpu` installs the CPU Paddle wheel; on a GPU/XPU machine install
# paddlepaddle-gpu / paddlepaddle-xpu into the venv first and drop it
# (`make EXTRAS=test,paddleformers test`), or the CPU wheel lands on top.
EXTRAS ?= cpu,test,paddleformers
# `make demo` writes its JSON here (ignored by git); `make bench` is what
# regenerates the committed benchmarks/results/demo.json.
RUNS := runs

.PHONY: venv op test lint demo demo-llama bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# Builds the C++ custom ops once into the build cache (see graphcap/ops/_loader.py).
op: $(STAMP)
	$(PY) -m graphcap.ops.build

test: op
	GRAPHCAP_REQUIRE_PADDLEFORMERS=1 $(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check graphcap tests benchmarks examples

demo: op
	GLOG_minloglevel=2 $(PY) -m graphcap demo --json $(RUNS)/demo.json

# The same demo over a random PaddleFormers Llama through GraphedCausalLM.
demo-llama: op
	GLOG_minloglevel=2 $(PY) -m graphcap demo --model llama-tiny --json $(RUNS)/demo_llama.json

bench: op
	$(PY) -m pip install -q -e '.[$(EXTRAS),bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .graphcap_build $(RUNS) build *.egg-info
