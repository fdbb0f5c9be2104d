#!/usr/bin/env bash
# Install the Debian packages for a single-host SLURM cluster with accounting.
#
# Installs only what is missing, so rerunning is a fast no-op. Configuration and
# daemons are handled by start.sh; this script touches nothing but the packages.
set -euo pipefail

# slurm-wlm pulls in slurmctld, slurmd and slurm-client; slurmdbd pulls in the
# MySQL plugin; mariadb-server provides mariadbd and mariadb-install-db; munge
# provides munged/mungekey.
PACKAGES=(slurm-wlm slurm-client slurmdbd munge mariadb-server mariadb-client)

log() { echo "[slurm-install] $*" >&2; }

# dpkg -s reports "install ok installed" only for fully configured packages,
# which is the state we need (a half-configured package would fail later).
is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        is_installed "$p" || echo "$p"
    done
}

main() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -eq 0 ]] && command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null \
        && command -v munged >/dev/null && command -v mariadbd >/dev/null; then
        log "all packages already installed"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "need root to install: ${missing[*]}"
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        log "apt-get not found: install ${missing[*]} by hand"
        return 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be empty on a fresh image; refresh them only then,
    # so that a rerun does not hit the network.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        log "install failed; refreshing package lists and retrying"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    log "done"
}

main "$@"
