# `make study` and `make test` each install what they need into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PROFILE ?= smoke
# Torch goes in first and pinned: anything that pulls a torch of its own brings gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install study test test-fast lab lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

study: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/synthembed study --profile $(PROFILE)

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -m "not slow and not notebook" $(PYTEST_ARGS)

lab: install
	$(PIP) install --quiet -e ".[dev,lab]"
	$(VENV)/bin/jupyter lab notebooks/

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
