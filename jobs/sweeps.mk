# Sweeps through SLURM (or none): included by the main Makefile, which provides VENV, PY and `install`.
#
#   make sweep-parallelism CLUSTER=arrhenius|berzelius|alvis|local|none|FILE [DRY_RUN=1] [SIZE=tiny|full]
#        [WAIT=1] [SWEEP_ARGS=...]
#
# CLUSTER=local installs and starts the project's single-host SLURM first (env/slurm, idempotent), submits,
# and waits for the sweep to finish; a cluster (a name or a profile FILE, e.g. from `mmhpc clusters
# discover -o FILE`) submits and returns (follow with `mmhpc sweep status`; WAIT=1 waits);
# CLUSTER=none runs the sweep here, one run after another. DRY_RUN=1 prints the sbatch scripts submitit
# would write and submits nothing. SIZE defaults to the cluster's (tiny on local/none, full on alvis).
CLUSTER    ?= none
DRY_RUN    ?=
SIZE       ?=
SWEEP_ARGS ?=
SWEEPS     := precision loader parallelism batch overall algorithms

# The interpreter that submits, on the login node: the cluster venv ($MMHPC_VENV, `make install-cluster`)
# when it runs on this machine, else the light login venv (`make install-login`) if built, else the project's .venv (`make install`, for this machine's architecture:
# on Arrhenius the login node is x86_64 and the venv of the jobs, built on a GH200 node, aarch64). Only
# CLUSTER=local/none build .venv first; on a cluster nothing is built unless asked. The jobs run the
# profile's interpreter (its venv or image), never this one.
_cluster_py := $(if $(MMHPC_VENV),$(shell $(MMHPC_VENV)/bin/python -c 'print(1)' >/dev/null 2>&1 && echo $(MMHPC_VENV)/bin/python))
# `make install-login`'s light venv (no torch) when the jobs have an interpreter of their own: it submits
# only (on local/none, and without a job interpreter, the jobs would run the submitting one)
_login_py := $(if $(filter local none,$(CLUSTER)),,$(if $(or $(MMHPC_VENV),$(MMHPC_PYTHON),$(MMHPC_APPTAINER)),$(wildcard $(LOGIN_VENV)/bin/python)))
SUBMIT_PY := $(or $(_cluster_py),$(_login_py),$(PY))
_build    := $(if $(filter $(PY),$(SUBMIT_PY)),$(if $(filter local none,$(CLUSTER)),install))

_dry   := $(filter 1 yes true,$(DRY_RUN))
_local := $(filter local,$(CLUSTER))
WAIT   ?= $(if $(filter local none,$(CLUSTER)),1)
_wait  := $(if $(filter 1 yes true,$(WAIT)),--wait)
_sweep_flags = --cluster $(CLUSTER) $(if $(SIZE),--size $(SIZE)) $(if $(_dry),--dry-run,$(_wait)) $(SWEEP_ARGS)

.PHONY: $(addprefix sweep-,$(SWEEPS))

# CLUSTER=local: the local SLURM of env/slurm first; both scripts do nothing when already done. The sweep
# takes SLURM_CONF from start.sh's last line, wherever the state lives (a long checkout path moves it:
# env/slurm/README.md).
_slurm_up := env/slurm/install.sh && slurm_env=$$(env/slurm/start.sh) && eval "$$slurm_env" &&

$(addprefix sweep-,$(SWEEPS)): sweep-%: $(_build)
	@test -x $(SUBMIT_PY) || { echo "no interpreter to submit with: set MMHPC_VENV to the venv of make install-cluster" \
		"(or run make install to build .venv here)"; exit 2; }
	$(if $(_local),$(if $(_dry),,$(_slurm_up) ))$(SUBMIT_PY) -m mmhpc.cli sweep submit sweeps/$*.yaml $(_sweep_flags)
