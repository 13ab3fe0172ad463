#!/usr/bin/env bash
# Stop the local Slurm cluster started by slurm/local/start_local_slurm.sh and undo its system changes.
#
# Usage: slurm/local/stop_local_slurm.sh [--purge]
#   1. cancels every job and waits (up to 20 s) for them to leave the queue;
#   2. TERMs the daemons recorded in $LOCAL_SLURM_DIR/run/*.pid (slurmd first, then slurmctld), each only after
#      checking /proc/PID/comm, and KILLs what is still alive after LOCAL_SLURM_STOP_TIMEOUT seconds (default 30);
#      step daemons (slurmstepd) left behind are found by their working directory / open files under the folder;
#   3. stops munged only if start_local_slurm.sh started it (run/munged.started); a munged that was running
#      before is left alone;
#   4. removes the '# mgen-local-slurm' line from /etc/hosts and /etc/slurm/slurm.conf if it is our symlink;
#   5. --purge: deletes $LOCAL_SLURM_DIR (config, state, logs).
# Safe to run when nothing is running. Settings: LOCAL_SLURM_DIR (default /tmp/mgen-local-slurm).
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/tmp/mgen-local-slurm}"
CONF="$DIR/etc/slurm.conf"
STOP_TIMEOUT="${LOCAL_SLURM_STOP_TIMEOUT:-30}"
HOSTS_TAG="# mgen-local-slurm"
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
    esac
done

log() { echo "[local-slurm] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root (the daemons run as root)"; exit 1; }
export SLURM_CONF="$CONF"

# PID from file $1 if that process is alive, not a zombie, and its comm is $2; empty otherwise.
live_pid() {
    local file="$1" comm="$2" pid
    [ -s "$file" ] || return 0
    pid="$(tr -dc '0-9' <"$file")"
    if [ -n "$pid" ] && is_alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
        echo "$pid"
    fi
}
# Alive = /proc entry exists and the process is not a zombie.
is_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}
# TERM the given PIDs, wait up to STOP_TIMEOUT seconds, then KILL the survivors.
stop_pids() {
    local label="$1"; shift
    [ $# -gt 0 ] || return 0
    log "stopping $label (pid $*)"
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$(( $(date +%s) + STOP_TIMEOUT )) pid alive
    while true; do
        alive=()
        for pid in "$@"; do is_alive "$pid" && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$label still alive after ${STOP_TIMEOUT}s: KILL ${alive[*]}"
            kill -KILL "${alive[@]}" 2>/dev/null || true
            sleep 0.5
            return 0
        fi
        sleep 0.2
    done
}

ctld_pid="$(live_pid "$DIR/run/slurmctld.pid" slurmctld)"

# ---- 1. cancel jobs while the controller is still up ---------------------------------------------------------------------
if [ -n "$ctld_pid" ] && command -v squeue >/dev/null 2>&1; then
    jobs="$(timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)"
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$(( $(date +%s) + 20 ))
        while [ -n "$(timeout 10 squeue -h -o '%i' 2>/dev/null || true)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
            sleep 0.5
        done
    fi
fi

# ---- 2. daemons: slurmd(s) first, then slurmctld --------------------------------------------------------------------------
slurmd_pids=()
for f in "$DIR"/run/slurmd-*.pid; do
    [ -e "$f" ] || continue
    pid="$(live_pid "$f" slurmd)"
    [ -n "$pid" ] && slurmd_pids+=("$pid")
done
stop_pids slurmd "${slurmd_pids[@]}"
[ -n "$ctld_pid" ] && stop_pids slurmctld "$ctld_pid"

# Step daemons of jobs that did not end. slurmstepd overwrites its environment (process title), but it keeps
# slurmd's working directory ($DIR/log) and slurmd's log file open, which identifies our cluster's ones.
stepd_pids=()
for comm_file in /proc/[0-9]*/comm; do
    [ "$(cat "$comm_file" 2>/dev/null)" = slurmstepd ] || continue
    pid="${comm_file#/proc/}"; pid="${pid%/comm}"
    is_alive "$pid" || continue     # zombies wait for PID 1 to reap them; nothing to stop
    # Ours when its working directory or an open file (slurmd's log) lies in $DIR.
    for link in "/proc/$pid/cwd" "/proc/$pid"/fd/*; do
        case "$(readlink "$link" 2>/dev/null)" in
            "$DIR"/*) stepd_pids+=("$pid"); break ;;
        esac
    done
done
# Their job processes (descendants, found through /proc/PID/stat's parent field) go with them; slurmstepd
# ignores TERM, so this group gets a short grace period.
descendants() {
    local parent="$1" stat child ppid
    for stat in /proc/[0-9]*/stat; do
        ppid="$(awk '{print $4}' "$stat" 2>/dev/null)" || continue
        if [ "$ppid" = "$parent" ]; then
            child="${stat#/proc/}"; child="${child%/stat}"
            echo "$child"
            descendants "$child"
        fi
    done
}
if [ ${#stepd_pids[@]} -gt 0 ]; then
    job_pids=()
    for pid in "${stepd_pids[@]}"; do
        while read -r child; do [ -n "$child" ] && job_pids+=("$child"); done < <(descendants "$pid")
    done
    STOP_TIMEOUT=5 stop_pids "leftover job steps (slurmstepd and their tasks)" "${job_pids[@]}" "${stepd_pids[@]}"
fi
rm -f "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd-*.pid

# ---- 3. munged, only if we started it ---------------------------------------------------------------------------------
if [ -f "$DIR/run/munged.started" ]; then
    munged_pid="$(live_pid "$DIR/run/munged.started" munged)"
    [ -n "$munged_pid" ] && stop_pids munged "$munged_pid"
    rm -f "$DIR/run/munged.started"
fi

# ---- 4. undo /etc changes ---------------------------------------------------------------------------------------------
if grep -q -- "$HOSTS_TAG\$" /etc/hosts 2>/dev/null; then
    hosts_tmp="$(mktemp)"
    grep -v -- "$HOSTS_TAG\$" /etc/hosts >"$hosts_tmp" || true
    cat "$hosts_tmp" >/etc/hosts     # in place: keeps the inode (bind-mounted /etc/hosts)
    rm -f "$hosts_tmp"
    log "removed the node names from /etc/hosts"
fi
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
    rmdir /etc/slurm 2>/dev/null || true     # only if empty
    log "removed the /etc/slurm/slurm.conf symlink"
fi
rm -f "$DIR/run/symlink.created"

# ---- 5. --purge --------------------------------------------------------------------------------------------------------
if [ "$PURGE" = 1 ] && [ -d "$DIR" ]; then
    # Refuse obviously wrong targets: the folder must look like ours.
    case "$(readlink -f "$DIR")" in
        /|/root|/home|/tmp|/etc|/usr|/var) log "ERROR: refusing to purge $DIR"; exit 1 ;;
    esac
    if [ -f "$CONF" ] || [ -d "$DIR/run" ]; then
        rm -rf "$DIR"
        log "purged $DIR"
    else
        log "not purging $DIR: it does not look like a local-slurm folder (no etc/slurm.conf, no run/)"
    fi
fi
log "stopped"
