# mmhpc: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: gpu-check gpu-wheels install install-cluster install-login system-deps demo demo-algorithms test check lint clean-venv demo-report report
RESULTS ?= $(or $(MMHPC_RESULTS),results)
SWEEP   ?=

install: $(STAMP)

# One venv, rebuilt only when the pinned requirements or the package metadata change.
$(STAMP): env/requirements.txt env/requirements-nodeps.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r env/requirements.txt
	$(PY) -m pip install -q --no-deps -r env/requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# On a cluster: a venv on top of the site's PyTorch module (torch/torchvision/numpy kept), only mmhpc and
# the missing packages installed: module load PyTorch-bundle/...; make install-cluster MMHPC_VENV=~/mmhpc-venv
install-cluster:
	LOGIN_PY=$(PY) env/install-cluster.sh $(if $(CLUSTER),--cluster $(CLUSTER)) $(MMHPC_VENV)

# The login node's venv for submitting only (no torch, a few MB): mmhpc without its dependencies plus the
# pure-Python part that `mmhpc config`, `sweep expand|submit|status|resume` and `clusters` import, pinned as
# in env/requirements.txt. `make sweep-*` submits with it when the jobs have their own interpreter
# (MMHPC_VENV, MMHPC_PYTHON or MMHPC_APPTAINER) that cannot run here (Arrhenius: x86_64 login, aarch64 nodes).
LOGIN_VENV ?= .venv-login
LOGIN_PKGS := submitit pydantic PyYAML psutil tqdm
install-login:
	test -x $(LOGIN_VENV)/bin/python || $(PYTHON) -m venv $(LOGIN_VENV)
	$(LOGIN_VENV)/bin/python -m pip install -q \
	  $(shell grep -iE '^($(subst $(eval) ,|,$(LOGIN_PKGS)))==' env/requirements.txt)
	$(LOGIN_VENV)/bin/python -m pip install -q --no-deps -e .


# Debian tools the tests use: pdftoppm renders report PDFs (the local SLURM installs itself, env/slurm).
system-deps:
	@command -v pdftoppm >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils >/dev/null; } || \
		echo "note: pdftoppm missing and not root: the PDF rendering test will be skipped"; }

demo: install
	$(VENV)/bin/mmhpc demo

# Naive, OGM-GE, Alternating, AMST and Reliability on synthetic CREMA-D (thesis Tables 4.1, 4.4, 4.5)
demo-algorithms: install
	$(VENV)/bin/mmhpc demo algorithms

# the whole suite, then the coverage of the GPU-only code (gpucheck.py, mmhpc/system/: lines and functions
# entered; the fake-CUDA tier, tests/system/test_gpu_fakes.py, reaches its CUDA branches on the CPU)
COVERAGE_JSON = reports/out/coverage-gpu.json
test: install system-deps
	$(PY) -m pytest -q --cov=mmhpc.gpucheck --cov=mmhpc.system --cov-report=term \
	  --cov-report=json:$(COVERAGE_JSON) $(PYTEST_ARGS); status=$$?; \
	$(PY) env/coverage_functions.py $(COVERAGE_JSON); exit $$status

# The fast tier (under 2 minutes on 2 cores): the linter, then everything but the slow and the SLURM tests.
check: lint
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

# ruff: pyflakes, pycodestyle, import order, pyupgrade (rules in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check .

# A tiny CPU sweep with no scheduler, then its report (built even when a run failed: it shows it; the
# target still fails then).
demo-report: install
	$(VENV)/bin/mmhpc sweep submit reports/demo-sweep.yaml --cluster none --tiny --wait --results $(RESULTS) -q; \
	status=$$?; $(VENV)/bin/mmhpc report $(RESULTS)/demo && exit $$status

# make report SWEEP=parallelism (under RESULTS) or SWEEP=some/dir; plus GPU records under reports/results/
report: install
	$(if $(SWEEP),$(VENV)/bin/mmhpc report $(if $(wildcard $(SWEEP)/.),$(SWEEP),$(RESULTS)/$(SWEEP)))
	@if [ -d reports/results ]; then $(VENV)/bin/mmhpc report reports/results --out reports/out/results; \
	elif [ -z "$(SWEEP)" ]; then echo "make report SWEEP=<sweep name or directory>: no SWEEP given, and no GPU records under reports/results/"; fi

# Check a GPU node in one command (records under reports/results/<gpu>/). No install needed: the venv's
# Python when there is one, else $(PYTHON) with torch, straight from the checkout.
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m mmhpc.gpucheck $(GPU_CHECK_ARGS)

# For a GPU node without network whose Python lacks what the trainer's checks need: fetch the wheels here
# (pinned as in env/requirements.txt, with their dependencies) into .whl/ and copy that along with the
# checkout; gpu-check installs the missing ones from it into a temporary directory. GPU_PYTHON_VERSION: the
# node's `python3 --version` (major.minor).
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORM ?= x86_64
WHEELS_DIR ?= .whl
GPU_WHEELS = pydantic PyYAML psutil tqdm pandas  # the wheels of mmhpc.gpucheck.WHEEL_MODULES
gpu-wheels:
	$(PYTHON) -m pip download -q --only-binary=:all: --implementation cp --python-version $(GPU_PYTHON_VERSION) \
	  $(foreach t,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(t)_$(GPU_PLATFORM)) -d $(WHEELS_DIR) \
	  $(shell grep -iE '^($(subst $(eval) ,|,$(GPU_WHEELS)))==' env/requirements.txt)
	@ls $(WHEELS_DIR)

clean-venv:
	rm -rf $(VENV)

include jobs/sweeps.mk
