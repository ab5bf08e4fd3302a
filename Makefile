# exec-gateway — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# the local kernels' own environment: the Docker kernel image's packages (the scientific stack),
# kept apart so the gateway's environment stays lean
KERNEL_VENV ?= .venv-kernel

.PHONY: run test lint bench kernel-image kernel-env test-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

# the client SDK, its CLI and MCP server (client/, its own distribution) for tests/test_client.py
$(VENV)/.installed-client: $(VENV)/.installed-test client/pyproject.toml
	$(PIP) install -e './client[mcp]'
	touch $@

## kernel-env: the local kernels' environment, from kernel_image/requirements.txt (once, ~250 MB)
kernel-env: $(KERNEL_VENV)/.installed

$(KERNEL_VENV)/.installed: kernel_image/requirements.txt
	@echo "make: building the local kernels' environment $(KERNEL_VENV): numpy, pandas, scipy," \
	      "sympy, matplotlib, scikit-learn, pinned as in the kernel image (~250 MB, once)"
	$(PYTHON) -m venv $(KERNEL_VENV)
	$(KERNEL_VENV)/bin/python -m pip --disable-pip-version-check install --progress-bar on \
	    -r kernel_image/requirements.txt
	touch $@

## run: install into .venv and serve on 127.0.0.1:8888 (local sandbox, in-memory registry)
run: $(VENV)/.installed $(KERNEL_VENV)/.installed
	GATEWAY_KERNEL_PYTHON="$${GATEWAY_KERNEL_PYTHON:-$(abspath $(KERNEL_VENV))/bin/python}" \
	    $(VENV)/bin/exec-gateway

## test: install test deps, build what the suite needs, lint, and run the whole suite
test: $(VENV)/.installed-test $(VENV)/.installed-client test-deps
	$(VENV)/bin/ruff check gateway tests bench client
	$(VENV)/bin/mypy
	cd client && ../$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

## test-deps: system packages and images the suite uses (installed/built when missing)
test-deps:
	bash scripts/test-deps.sh

lint: $(VENV)/.installed-test $(VENV)/.installed-client
	$(VENV)/bin/ruff check gateway tests bench client
	$(VENV)/bin/mypy
	cd client && ../$(VENV)/bin/mypy

## kernel-image: build the sandbox image (works with no registry; see kernel_image/README.md)
kernel-image:
	bash kernel_image/build.sh

## bench: benchmarks; prints JSON and a table, writes bench/results/latest.json
bench: $(VENV)/.installed-test $(VENV)/.installed-client
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(KERNEL_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
