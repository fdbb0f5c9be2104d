# Shared paths and helpers for env/slurm/{start,stop,status}.sh (sourced, not run).
#
# Everything the local cluster writes lives under one state directory:
#   $MMHPC_SLURM_STATE, else env/slurm/state next to this file, else (when that path is too long for the
#   unix sockets below it) /var/tmp/mmhpc-slurm-<hash of this checkout's path>, found again the same way
#     slurm.conf, slurmdbd.conf, env.sh   configuration (slurmdbd.conf must sit next to slurm.conf)
#     munge/      key and PRNG seed of the private munged
#     mariadb/    my.cnf, datadir, slurmdbd's DB password
#     spool/      StateSaveLocation (ctld) and SlurmdSpoolDir (slurmd)
#     run/        sockets and pid files
#     log/        one log per daemon
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this

SLURM_ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_NAME=mmhpc
PARTITION=debug
# Short hostname: slurmd and slurmctld identify themselves by it.
NODE=$(hostname -s)

# Unix socket paths hold at most 107 bytes. The longest of ours is slurmstepd's
# "<state>/spool/slurmd/<node>_<jobid>.<stepid>" (ids up to 10 digits each).
SOCKET_PATH_MAX=107
longest_socket() {
    local spool=$1/spool/slurmd/
    echo $((${#spool} + ${#NODE} + 22))
}

# The checkout's own state dir. Its env.sh is always kept current, wherever the state lives.
CHECKOUT_STATE=$SLURM_ENV_DIR/state
STATE_MOVED=
if [[ -n ${MMHPC_SLURM_STATE:-} ]]; then
    STATE=$MMHPC_SLURM_STATE
elif (($(longest_socket "$CHECKOUT_STATE") <= SOCKET_PATH_MAX)); then
    STATE=$CHECKOUT_STATE
else
    # A long checkout path: the same short directory for this checkout every time (so stop.sh and
    # status.sh find the daemons start.sh started), a different one for another checkout.
    short_root=/var/tmp
    [[ -d $short_root && -w $short_root ]] || short_root=/tmp
    STATE=$short_root/mmhpc-slurm-$(printf '%s' "$SLURM_ENV_DIR" | sha1sum | cut -c1-10)
    STATE_MOVED=1
fi
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)   # absolute: daemons chdir, and slurm needs absolute paths

# Ports, away from the SLURM defaults (6817-6819) and MariaDB's 3306 so that a
# system-wide SLURM or database on the same host does not clash with ours.
PORT_BASE=${MMHPC_SLURM_PORT_BASE:-16817}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))

SLURM_CONF_FILE=$STATE/slurm.conf
DBD_CONF_FILE=$STATE/slurmdbd.conf
ENV_FILE=$STATE/env.sh
RUN_DIR=$STATE/run
LOG_DIR=$STATE/log
MUNGE_DIR=$STATE/munge
MUNGE_KEY=$MUNGE_DIR/munge.key
MUNGE_SOCKET=$RUN_DIR/munge.socket
DB_DIR=$STATE/mariadb
DB_DATADIR=$DB_DIR/data
DB_CNF=$DB_DIR/my.cnf
DB_SOCKET=$RUN_DIR/mysqld.sock
DB_PASS_FILE=$DB_DIR/slurm.pass
CTLD_SPOOL=$STATE/spool/slurmctld
SLURMD_SPOOL=$STATE/spool/slurmd

# Daemons in start order; stop goes in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# Every client and daemon started from these scripts reads our config, never /etc/slurm.
export SLURM_CONF=$SLURM_CONF_FILE

log() { echo "[slurm-local] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

# Pid of daemon $1 if it runs from this state dir, else nothing (status 1).
# The process name is checked too, so a stale pid file whose pid got reused by
# some other process is not mistaken for our daemon.
daemon_pid() {
    local name=$1 file pid comm
    file=$(pid_file "$name")
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    echo "$pid"
}

daemon_up() { daemon_pid "$1" >/dev/null; }

# Stop daemon $1 by its pid file: TERM, wait up to $2 seconds (default 30), then KILL.
stop_daemon() {
    local name=$1 wait_s=${2:-30} pid i
    if ! pid=$(daemon_pid "$name"); then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit in ${wait_s}s: sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pid_file "$name")"
}

# State of our node as sinfo reports it ("idle", "down*", "drained", ...), empty if no answer.
node_state() {
    [[ -f $SLURM_CONF_FILE ]] || return 0
    timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true
}

# Ready for jobs: responding (no '*' suffix) and not down/drained.
node_ready() {
    case $(node_state) in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

accounting_ok() {
    timeout 10 sacct -n -X -S now-1minutes -o jobid >/dev/null 2>&1
}

# The whole cluster is usable: all daemons up, node ready, accounting answering.
cluster_healthy() {
    local d
    for d in "${DAEMONS[@]}"; do daemon_up "$d" || return 1; done
    node_ready && accounting_ok
}

tail_log() {
    local f
    f=$(log_file "$1")
    if [[ -s $f ]]; then
        echo "----- last lines of $f -----" >&2
        tail -n "${2:-25}" "$f" >&2
        echo "-----" >&2
    fi
}
