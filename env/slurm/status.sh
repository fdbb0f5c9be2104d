#!/usr/bin/env bash
# Report the local SLURM cluster of this state dir: daemons, sinfo, accounting.
# Exit 0 when it can run jobs (all daemons up, node ready, sacct answering), 1 otherwise.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    local d pid ok=1
    echo "state: $STATE"
    for d in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$d"); then
            printf '  %-10s up (pid %s)\n' "$d" "$pid"
        else
            printf '  %-10s DOWN\n' "$d"
            ok=0
        fi
    done
    if [[ -f $SLURM_CONF_FILE ]] && daemon_up slurmctld; then
        timeout 10 sinfo || ok=0
    else
        echo "sinfo: slurmctld not running"
    fi
    if ((ok)) && node_ready && accounting_ok; then
        echo "cluster usable: export SLURM_CONF=$SLURM_CONF_FILE"
        return 0
    fi
    echo "cluster NOT usable (node state: '$(node_state)'); start it with env/slurm/start.sh"
    return 1
}

main "$@"
