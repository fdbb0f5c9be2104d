#!/bin/bash
# The jobs' environment on a cluster, by one of two routes:
#
# 1. On top of the site's PyTorch module (Alvis): a venv made with --system-site-packages, so torch,
#    torchvision and numpy stay those of the module (built for the nodes' CUDA driver); pip adds only mmhpc
#    and what the module lacks, and is never allowed to replace the site's torch/torchvision/numpy.
#      module purge && module load PyTorch-bundle/2.1.2-foss-2023a-CUDA-12.1.1   # module spider PyTorch
#      env/install-cluster.sh ~/mmhpc-venv        # or: make install-cluster MMHPC_VENV=~/mmhpc-venv
#
# 2. Without a site PyTorch module (Arrhenius, Berzelius): the venv is built ON a GPU node, inside an
#    allocation of the profile's (srun, 1 GPU, 30 min), from the pinned PyPI torch of env/requirements.txt
#    for that node's architecture (PyPI's aarch64 torch wheels are CUDA builds since 2.11):
#      env/install-cluster.sh --cluster arrhenius ~/mmhpc-venv   # or: make install-cluster CLUSTER=arrhenius
#    (a login node of another architecture cannot run that venv: it submits with its own .venv, `make
#    install`). `--pypi VENV` is the build itself, run on the node.
#
#   export MMHPC_VENV=~/mmhpc-venv             # jobs run ~/mmhpc-venv/bin/python
# Rerun after `git pull` to reinstall mmhpc itself (a non-editable install: the jobs never see a
# half-edited checkout).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CLUSTER= PYPI= ARCH=
while [ $# -gt 0 ]; do
    case $1 in
        --cluster) CLUSTER=$2; shift 2 ;;
        --pypi) PYPI=1; shift ;;
        --arch) ARCH=$2; shift 2 ;;
        *) break ;;
    esac
done
VENV=${1:-${MMHPC_VENV:-}}
[ -n "$VENV" ] || { echo "usage: env/install-cluster.sh [--cluster NAME|FILE] VENV_DIR (or set MMHPC_VENV)" >&2; exit 2; }
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac

pinned() { grep -E "^$1==" "$REPO/env/requirements.txt"; }

if [ -n "$PYPI" ]; then   # route 2, on the node: PyPI's torch for this machine's architecture
    if [ -n "$ARCH" ] && [ "$(uname -m)" != "$ARCH" ]; then
        echo "this node is $(uname -m), the cluster's GPU nodes are $ARCH: run the build on one of them" >&2
        exit 2
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$(pinned torch)" "$(pinned torchvision)"
    "$VENV/bin/python" -m pip install -q --upgrade-strategy only-if-needed "$REPO"
    "$VENV/bin/python" -m mmhpc.cli doctor --cluster "${CLUSTER:-none}" || true
    echo "done ($(uname -m)): export MMHPC_VENV=$VENV"
    exit 0
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    if [ -z "$CLUSTER" ]; then
        echo "no torch in $PYTHON: load the site's PyTorch module first (module spider PyTorch); without one," \
             "build on a GPU node: env/install-cluster.sh --cluster NAME VENV (make install-cluster" \
             "CLUSTER=NAME), or use the Apptainer image (env/apptainer/mmhpc.def)" >&2
        exit 2
    fi
    # route 2 from the login node: one allocation on a GPU node runs the build there
    LOGIN_PY=${LOGIN_PY:-$REPO/.venv/bin/python}
    ALLOC=$("$LOGIN_PY" -c "import shlex, sys
from mmhpc.errors import ConfigError
from mmhpc.launch.clusters import load_profile
from mmhpc.launch.submit import one_gpu_flags
try:
    p = load_profile(sys.argv[1]); p.check_account()
except ConfigError as e:
    sys.exit(f'install-cluster: {e}')
print(p.arch, shlex.join(one_gpu_flags(p)))" "$CLUSTER") || exit 2
    read -r ARCH FLAGS <<< "$ALLOC"
    echo "building $VENV on a $ARCH compute node of the profile: srun $FLAGS" >&2
    # shellcheck disable=SC2086  # FLAGS is a list of srun options
    exec srun $FLAGS "$REPO/env/install-cluster.sh" --pypi --arch "$ARCH" --cluster "$CLUSTER" "$VENV"
fi

# route 1: on top of the loaded module
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"

# Pin what the module provides: pip then installs only what is missing and fails (rather than replacing
# the site's build) if mmhpc needed another torch.
PINS=$(mktemp)
trap 'rm -f "$PINS"' EXIT
"$VENV/bin/python" - "$PINS" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

with open(sys.argv[1], "w") as out:
    for name in ("torch", "torchvision", "torchaudio", "numpy"):
        try:
            out.write(f"{name}=={version(name)}\n")
        except PackageNotFoundError:
            pass
PY
echo "site packages kept: $(tr '\n' ' ' < "$PINS")"
"$VENV/bin/python" -m pip install -q --upgrade-strategy only-if-needed -c "$PINS" "$REPO"
"$VENV/bin/python" -m mmhpc.cli doctor || true   # on a login node: says what a GPU node will have to give
echo "done: export MMHPC_VENV=$VENV"
