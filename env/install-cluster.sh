#!/bin/bash
# A virtual environment for the cluster, on top of the site's PyTorch: made with --system-site-packages,
# so torch, torchvision and numpy stay those of the module (built for the nodes' CUDA driver); pip adds only
# mmhpc and what the module lacks, and is never allowed to replace the site's torch/torchvision/numpy.
#
#   module purge && module load PyTorch-bundle/2.1.2-foss-2023a-CUDA-12.1.1   # list them: module spider PyTorch
#   env/install-cluster.sh ~/mmhpc-venv        # or: make install-cluster MMHPC_VENV=~/mmhpc-venv
#   export MMHPC_VENV=~/mmhpc-venv             # jobs load the profile's module and run ~/mmhpc-venv/bin/python
#
# Run it on a login node (it downloads the few missing pure-Python packages from PyPI). Rerun after
# `git pull` to reinstall mmhpc itself (a non-editable install: the jobs never see a half-edited checkout).
set -euo pipefail

VENV=${1:-${MMHPC_VENV:-}}
[ -n "$VENV" ] || { echo "usage: env/install-cluster.sh VENV_DIR (or set MMHPC_VENV)" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

# The site's torch must be importable and new enough (the floor is setup.cfg's torch>=...).
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "no torch in $PYTHON: load the site's PyTorch module first (module spider PyTorch), or use the" \
         "Apptainer image instead (env/apptainer/mmhpc.def)" >&2
    exit 2
fi

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
