#!/usr/bin/env bash
# Start a single-host SLURM cluster with accounting, all state under one directory.
#
#   eval "$(env/slurm/start.sh)"  # idempotent (a no-op when healthy); then sbatch/squeue/sacct talk to it
#   source env/slurm/state/env.sh # the same export, later
#
# Runs as root (SlurmUser=root). Private munged, MariaDB, slurmdbd, slurmctld and
# slurmd are started from config generated under $MMHPC_SLURM_STATE (default
# env/slurm/state, or a short path under /var/tmp when the checkout's path is too
# long for unix sockets: see lib.sh); /etc/slurm, /etc/munge and the system
# MariaDB are not touched. The last line printed is `export SLURM_CONF=...`.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

READY_TIMEOUT_S=${MMHPC_SLURM_READY_TIMEOUT:-60}

print_env() {
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
}

check_prerequisites() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (the local cluster uses SlurmUser=root)"
    local cmd
    for cmd in munged mungekey munge unmunge mariadbd mariadb-install-db mariadb mariadb-admin \
        slurmdbd slurmctld slurmd sacctmgr sinfo sacct scontrol setsid timeout; do
        command -v "$cmd" >/dev/null || die "'$cmd' not found: run env/slurm/install.sh first"
    done
    if (($(longest_socket "$STATE") > SOCKET_PATH_MAX)); then
        die "MMHPC_SLURM_STATE=$STATE is too long for the unix sockets below it ($(longest_socket "$STATE") >" \
            "$SOCKET_PATH_MAX bytes): set a shorter one, or unset it (a long checkout moves its state by itself)"
    fi
    check_ports
}

# Our ports must be free or ours: another cluster (e.g. the local SLURM of another checkout) may hold them.
check_ports() {
    local pair name port
    for pair in "slurmctld:$CTLD_PORT" "slurmd:$SLURMD_PORT" "slurmdbd:$DBD_PORT" "mariadbd:$DB_PORT"; do
        name=${pair%%:*} port=${pair##*:}
        daemon_up "$name" && continue
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port (for $name) is taken by another process$(other_clusters); stop that cluster" \
                "(env/slurm/stop.sh of its checkout) or move ours with MMHPC_SLURM_PORT_BASE"
        fi
    done
}

other_clusters() {
    local pid
    for pid in $(pgrep -x slurmctld 2>/dev/null); do
        printf ': slurmctld pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    done
}

# Write stdin to file $1 with mode $2; report (status 0) whether the content changed.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

make_dirs() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR" "$DB_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    # munged refuses keys and sockets in group/world-writable places.
    chmod 700 "$MUNGE_DIR" "$DB_DIR"
    chmod 755 "$STATE" "$RUN_DIR" "$LOG_DIR"
}

# ---------------------------------------------------------------- munge

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    chmod 600 "$MUNGE_KEY"
    if ! daemon_up munged; then
        log "starting munged"
        rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
        # --force: munged otherwise refuses to run as root and to use a key
        # outside /etc/munge owned by root; both are intended here.
        munged --force --num-threads=10 \
            --key-file="$MUNGE_KEY" \
            --socket="$MUNGE_SOCKET" \
            --pid-file="$(pid_file munged)" \
            --log-file="$(log_file munged)" \
            --seed-file="$MUNGE_DIR/munged.seed" \
            </dev/null >>"$(log_file munged)" 2>&1 ||
            { tail_log munged; die "munged failed to start"; }
    fi
    wait_for 10 munge_ok || { tail_log munged; die "munged does not answer on $MUNGE_SOCKET"; }
}

munge_ok() {
    munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

# ---------------------------------------------------------------- MariaDB

write_db_cnf() {
    # A private instance: --defaults-file makes mariadbd and the clients read only
    # this file, never /etc/mysql. TCP on 127.0.0.1 because slurmdbd's MySQL plugin
    # connects by host and port only (it has no socket option).
    write_if_changed "$DB_CNF" 600 <<EOF
[mysqld]
user=root
datadir=$DB_DATADIR
socket=$DB_SOCKET
pid-file=$(pid_file mariadbd)
log-error=$(log_file mariadbd)
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
# slurmdbd logs an error below these values (SLURM accounting docs). The pool is
# reserved virtually and only grows with the (tiny) accounting data.
innodb_buffer_pool_size=1024M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
max_allowed_packet=64M

[client]
user=root
socket=$DB_SOCKET
port=$DB_PORT
EOF
}

db_ping() {
    mariadb-admin --defaults-file="$DB_CNF" ping >/dev/null 2>&1
}

start_mariadb() {
    # A changed my.cnf only takes effect on restart (slurmdbd reconnects by itself).
    if write_db_cnf && daemon_up mariadbd; then
        log "MariaDB config changed: restarting it"
        stop_daemon mariadbd 60
    fi
    if [[ ! -d $DB_DATADIR/mysql ]]; then
        log "initialising MariaDB datadir"
        rm -rf "$DB_DATADIR"
        mariadb-install-db --defaults-file="$DB_CNF" --auth-root-authentication-method=normal \
            --skip-test-db >>"$(log_file mariadb-install)" 2>&1 ||
            { tail_log mariadb-install; die "mariadb-install-db failed"; }
    fi
    if ! daemon_up mariadbd; then
        log "starting MariaDB on 127.0.0.1:$DB_PORT"
        # mariadbd does not daemonize itself; setsid -f detaches it from our session.
        setsid -f mariadbd --defaults-file="$DB_CNF" </dev/null >>"$(log_file mariadbd)" 2>&1
    fi
    wait_for 60 db_ping || { tail_log mariadbd; die "MariaDB did not come up"; }
    setup_db_user
}

# Database and user for slurmdbd; rerunnable (IF NOT EXISTS, password reset to the stored one).
setup_db_user() {
    local pass
    if [[ ! -s $DB_PASS_FILE ]]; then
        pass=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
        (umask 077 && echo "${pass:0:24}" >"$DB_PASS_FILE")
    fi
    pass=$(cat "$DB_PASS_FILE")
    mariadb --defaults-file="$DB_CNF" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

# ---------------------------------------------------------------- SLURM config

# CPU/board/socket/core/thread layout and RealMemory as slurmd detects them, e.g.
# "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105".
node_hardware() {
    env -u SLURM_CONF slurmd -C | head -n1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' '
}

write_dbd_conf() {
    local pass
    pass=$(cat "$DB_PASS_FILE")
    # slurmdbd refuses a config readable by others (it holds the DB password).
    write_if_changed "$DBD_CONF_FILE" 600 <<EOF
# Generated by env/slurm/start.sh; edits are overwritten.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$(log_file slurmdbd)
PidFile=$(pid_file slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
}

write_slurm_conf() {
    local hw cpus mem
    hw=$(node_hardware)
    [[ -n $hw ]] || die "slurmd -C printed no node configuration"
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    write_if_changed "$SLURM_CONF_FILE" 644 <<EOF
# Generated by env/slurm/start.sh; edits are overwritten.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our private munged, not the system one.
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=$(log_file slurmctld)
SlurmdLogFile=$(log_file slurmd)
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups: works in containers and VMs without a delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that does not ask for memory gets the whole node and
# jobs could never share it.
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
JobRequeue=1
MaxArraySize=10001
MaxJobCount=100000
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Clients and slurmctld authenticate to slurmdbd with this munge socket, not AuthInfo's.
AccountingStoragePass=socket=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

NodeName=$NODE NodeAddr=127.0.0.1 ${hw}State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

write_configs() {
    local changed=0
    write_dbd_conf && changed=1
    write_slurm_conf && changed=1
    print_env >"$ENV_FILE"
    if [[ -n $STATE_MOVED ]]; then
        # the checkout's path is too long for sockets: its env/slurm/state keeps the env file and the location
        mkdir -p "$CHECKOUT_STATE"
        print_env >"$CHECKOUT_STATE/env.sh"
        echo "$STATE" >"$CHECKOUT_STATE/location"
    fi
    # Running daemons would keep the old config: restart them with the new one.
    if ((changed)); then
        local d
        for d in slurmd slurmctld slurmdbd; do
            if daemon_up "$d"; then
                log "config changed: restarting $d"
                stop_daemon "$d"
            fi
        done
    fi
}

# ---------------------------------------------------------------- SLURM daemons

dbd_ok() {
    timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1
}

start_slurmdbd() {
    if ! daemon_up slurmdbd; then
        log "starting slurmdbd on port $DBD_PORT"
        # slurmdbd finds slurmdbd.conf in the directory of $SLURM_CONF.
        slurmdbd </dev/null >>"$(log_file slurmdbd)" 2>&1 || { tail_log slurmdbd; die "slurmdbd failed to start"; }
    fi
    wait_for 60 dbd_ok || { tail_log slurmdbd; die "slurmdbd does not answer on port $DBD_PORT"; }
}

register_cluster() {
    if ! timeout 10 sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        log "registering cluster $CLUSTER_NAME in accounting"
        timeout 30 sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null ||
            { tail_log slurmdbd; die "sacctmgr add cluster failed"; }
    fi
}

start_slurmctld() {
    if ! daemon_up slurmctld; then
        log "starting slurmctld on port $CTLD_PORT"
        slurmctld -f "$SLURM_CONF_FILE" </dev/null >>"$(log_file slurmctld)" 2>&1 ||
            { tail_log slurmctld; die "slurmctld failed to start"; }
    fi
}

start_slurmd() {
    if ! daemon_up slurmd; then
        log "starting slurmd on port $SLURMD_PORT"
        slurmd -f "$SLURM_CONF_FILE" -N "$NODE" </dev/null >>"$(log_file slurmd)" 2>&1 ||
            { tail_log slurmd; die "slurmd failed to start"; }
    fi
}

# ---------------------------------------------------------------- readiness

# Run "$2..." every 0.5 s until it succeeds or $1 seconds have passed.
wait_for() {
    local timeout_s=$1 deadline
    shift
    deadline=$((SECONDS + timeout_s))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Ready node; a node left DOWN/DRAINED by an earlier unclean stop is resumed.
node_ready_or_resume() {
    node_ready && return 0
    case $(node_state) in
        down* | drain* | fail*)
            log "node $NODE is $(node_state): resuming it"
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            ;;
    esac
    return 1
}

wait_until_ready() {
    local d
    for d in slurmctld slurmd; do
        wait_for 15 daemon_up "$d" || { tail_log "$d"; die "$d exited right after start"; }
    done
    if ! wait_for "$READY_TIMEOUT_S" node_ready_or_resume; then
        tail_log slurmctld
        tail_log slurmd
        die "node $NODE not ready after ${READY_TIMEOUT_S}s (state: '$(node_state)')"
    fi
    if ! wait_for "$READY_TIMEOUT_S" accounting_ok; then
        tail_log slurmdbd
        die "sacct does not work after ${READY_TIMEOUT_S}s"
    fi
}

main() {
    if [[ -f $SLURM_CONF_FILE ]] && cluster_healthy; then
        log "already running and healthy ($STATE)"
        print_env
        return 0
    fi
    check_prerequisites
    make_dirs
    start_munge
    start_mariadb
    write_configs
    start_slurmdbd
    register_cluster
    start_slurmctld
    start_slurmd
    wait_until_ready
    log "cluster $CLUSTER_NAME ready: node $NODE, partition $PARTITION, state in $STATE"
    print_env
}

main "$@"
