# The two commands of the README. Each one sets itself up: a local venv, the package, then the job.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is only a test-time parity reference: the CPU build, pinned. Set TORCH_INDEX to a CPU wheel
# index (e.g. https://download.pytorch.org/whl/cpu) on machines whose default index would give CUDA.
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: demo test venv bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

## The main job: a tiny R1-Zero run on CPU.
demo: venv
	$(VENV)/bin/r1jax demo

## The test suite, on every core.
test: venv
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/gae.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
