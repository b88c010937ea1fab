# Two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each installs what it needs when missing: Debian's zookeeper and Curator
# jars and a JDK (apt-get), a virtualenv in .venv, the package and its extras.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= tf,dev
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := zookeeper libcurator-discovery-java default-jdk-headless
TORCH_WHEELS ?= /opt/wheels/torch-*+cpu-cp311-*.whl

.PHONY: deps system venv mlserver-venv test unit demo registry-demo bench lint proto clean

deps: system venv

system:
	@if ! dpkg -s zookeeper libcurator-discovery-java >/dev/null 2>&1 \
	    || ! command -v java >/dev/null || ! command -v javac >/dev/null; then \
	  echo "== installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "== installing weiserving[$(EXTRAS)] into $(VENV)"
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	@# The optional PyTorch backend: install a local CPU wheel when the machine has one
	@# (never a multi-GB CUDA download); without it its tests skip and say why.
	@wheel="$(firstword $(wildcard $(TORCH_WHEELS)))"; if [ -n "$$wheel" ]; then \
	  echo "== installing $$wheel (PyTorch backend)"; $(PY) -m pip install -q --disable-pip-version-check "$$wheel"; \
	else echo "== no local CPU torch wheel: the PyTorch backend tests will skip"; fi
	@touch $@

venv: $(VENV)/.installed-$(EXTRAS)

# MLServer, for the tests' real OIP pods (tests/mlserver), in a venv of its own: its pins are not ours.
MLSERVER_VENV := .venv-mlserver
MLSERVER_REQS := tests/mlserver/requirements.txt
$(MLSERVER_VENV)/.installed: $(MLSERVER_REQS)
	@test -x $(MLSERVER_VENV)/bin/python || python3 -m venv $(MLSERVER_VENV)
	@echo "== installing MLServer into $(MLSERVER_VENV)"
	$(MLSERVER_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(MLSERVER_REQS)
	@touch $@

mlserver-venv: $(MLSERVER_VENV)/.installed

test: deps mlserver-venv
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

demo: deps
	$(PY) examples/cluster_demo.py

registry-demo: deps
	$(PY) examples/registry_demo.py

bench: deps
	@command -v haproxy >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends haproxy; }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS),bench]'
	$(PY) bench/registry_latency.py
	$(PY) bench/overhead.py
	$(PY) bench/batching.py
	$(PY) bench/hetero.py --swap --plots bench/out
	$(PY) bench/overload.py --plots bench/out
	$(PY) bench/oip.py
	$(PY) bench/faults.py
	$(PY) bench/fleet_sim.py --plots bench/out
	$(PY) bench/fleet_zk.py

# The OIP messages (protocol/oip/grpc_predict_v2.proto) as Python, committed so that neither users nor
# wei-serve need protoc or grpcio-tools. Two edits to protoc's output: a private descriptor pool, so the
# module loads beside tritonclient's (the same 'inference.*' names in the default pool clash), and a
# ruff exemption. tests/unit/test_oip_proto.py checks the committed module against the .proto.
OIP_PB2 := protocol/oip/grpc_predict_v2_pb2
proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. protocol/oip/grpc_predict_v2.proto
	sed -i -e 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' $(OIP_PB2).py
	sed -i -e '1i # ruff: noqa' $(OIP_PB2).py $(OIP_PB2).pyi

lint: venv
	$(VENV)/bin/ruff check protocol registry weiclient serving server_agent tests bench examples

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) build *.egg-info .pytest_cache
