# Sweeps through SLURM (or none): included by the main Makefile, which provides VENV, PY and `install`.
#
#   make sweep-parallelism CLUSTER=alvis|local|none [DRY_RUN=1] [SIZE=tiny|full] [SWEEP_ARGS=...]
#
# CLUSTER=local installs and starts the project's single-host SLURM first (env/slurm, idempotent), submits,
# and waits for the sweep to finish; CLUSTER=alvis submits and returns (follow with `mmhpc sweep status`);
# CLUSTER=none runs the sweep here, one run after another. DRY_RUN=1 prints the sbatch scripts submitit
# would write and submits nothing. SIZE defaults to the cluster's (tiny on local/none, full on alvis).
CLUSTER    ?= none
DRY_RUN    ?=
SIZE       ?=
SWEEP_ARGS ?=
SWEEPS     := precision loader parallelism batch overall algorithms

# The interpreter that submits: the cluster venv ($MMHPC_VENV, `make install-cluster`) when it exists, else the
# project's .venv. Only CLUSTER=local/none build .venv first; on a cluster nothing is built unless asked.
SUBMIT_PY := $(if $(and $(MMHPC_VENV),$(wildcard $(MMHPC_VENV)/bin/python)),$(MMHPC_VENV)/bin/python,$(PY))
_build    := $(if $(filter $(PY),$(SUBMIT_PY)),$(if $(filter local none,$(CLUSTER)),install))

_dry   := $(filter 1 yes true,$(DRY_RUN))
_local := $(filter local,$(CLUSTER))
_wait  := $(if $(filter alvis,$(CLUSTER)),,--wait)
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
