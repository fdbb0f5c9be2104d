#!/usr/bin/env bash
# Stop the local SLURM cluster started by start.sh from the same state dir.
#
# Only daemons recorded in this state dir's pid files are signalled (TERM, then
# KILL after a timeout). State (config, accounting DB, job state) is kept, so a
# later start.sh resumes where this left off. Safe to run when nothing is up.
# Running jobs' slurmstepd processes are left alone, as with a real slurmd
# restart; slurmctld sorts them out when it comes back.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    if [[ ! -d $RUN_DIR ]]; then
        log "nothing to stop ($STATE has no run dir)"
        return 0
    fi
    # Reverse start order: slurmd/slurmctld still flush to slurmdbd, which needs
    # MariaDB, and everything needs munge until the end.
    stop_daemon slurmd 30
    stop_daemon slurmctld 30
    stop_daemon slurmdbd 30
    stop_daemon mariadbd 60   # InnoDB shutdown can take a while
    stop_daemon munged 10
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "stopped ($STATE)"
}

main "$@"
