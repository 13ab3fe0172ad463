#!/usr/bin/env bash
# Start a real, single-machine Slurm cluster (slurmctld + N x slurmd + munged, slurm-wlm 22.05 from Debian)
# for tests and local experiments. Needs root (it installs packages, edits /etc/hosts, and runs SlurmUser=root).
#
# Usage:
#   eval "$(slurm/local/start_local_slurm.sh)"          # starts (or reuses) the cluster and exports SLURM_CONF
#   sbatch --wrap 'srun hostname'; squeue; ...
#   slurm/local/stop_local_slurm.sh [--purge]           # cancel jobs, stop daemons, undo /etc changes
#
# Settings (environment):
#   LOCAL_SLURM_DIR        state/config/logs folder               (default /tmp/mgen-local-slurm)
#   LOCAL_SLURM_NODES      number of emulated nodes node1..nodeN  (default 1)
#   LOCAL_SLURM_CPUS       CPUs advertised per node               (default: nproc; may exceed it, see config_overrides)
#   LOCAL_SLURM_MEM_MB     RealMemory per node in MB              (default: half of MemTotal)
#   LOCAL_SLURM_PORT_BASE  slurmctld port; slurmd of node i uses PORT_BASE+i   (default 16817)
#   LOCAL_SLURM_TIMEOUT    seconds to wait for the nodes to be idle            (default 60)
#   LOCAL_SLURM_SYSTEM_CONF=0  do not symlink /etc/slurm/slurm.conf (default 1: link it when no file is there)
#   LOCAL_SLURM_SMOKE=0    skip the final smoke job (default 1: one srun task per node must run)
#
# Output: progress goes to stderr; stdout is exactly one line, `export SLURM_CONF=<dir>/etc/slurm.conf`
# (also written to <dir>/env.sh), so `eval "$(start_local_slurm.sh)"` works.
#
# Idempotent: when the daemons recorded in <dir>/run/*.pid are alive and the requested settings equal the running
# ones, the cluster is reused as is. When the settings differ (e.g. 1 -> 2 nodes), the cluster is restarted with
# the new settings (running jobs are cancelled). A munged that was already running is reused and never stopped.
#
# Facts behind the settings: /work/shared/notes/local-slurm.md (MailProg, cred_expire, scheduler intervals,
# config_overrides for emulated nodes, hosts entries for node names).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${LOCAL_SLURM_DIR:-/tmp/mgen-local-slurm}"
NODES="${LOCAL_SLURM_NODES:-1}"
CPUS="${LOCAL_SLURM_CPUS:-$(nproc)}"
MEM_MB="${LOCAL_SLURM_MEM_MB:-$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 2 ))}"
PORT_BASE="${LOCAL_SLURM_PORT_BASE:-16817}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"
SYSTEM_CONF="${LOCAL_SLURM_SYSTEM_CONF:-1}"
SMOKE="${LOCAL_SLURM_SMOKE:-1}"
CONF="$DIR/etc/slurm.conf"
HOSTS_TAG="# mgen-local-slurm"
PACKAGES=(slurmctld slurmd slurm-client munge)
START_TIME=$(date +%s)

log() { echo "[local-slurm] $*" >&2; }
die() { echo "[local-slurm] ERROR: $*" >&2; exit 1; }

# Print the tails of every log we know about (called on any failure to come up).
dump_logs() {
    local f
    for f in "$DIR"/log/*.log /var/log/munge/munged.log; do
        [ -f "$f" ] || continue
        echo "----- tail -n 40 $f -----" >&2
        tail -n 40 "$f" >&2 || true
    done
    if command -v sinfo >/dev/null 2>&1; then
        echo "----- sinfo -N -l -----" >&2
        SLURM_CONF="$CONF" timeout 10 sinfo -N -l >&2 2>&1 || true
    fi
}

# "true" when the PID in file $1 is alive (not a zombie) and its /proc/PID/comm equals $2 (guards against reused
# PIDs).
pid_alive() {
    local file="$1" comm="$2" pid state
    [ -s "$file" ] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
    [ -n "$state" ] && [ "$state" != Z ]
}

# ---- 0. checks -------------------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (installs slurm/munge, edits /etc/hosts, SlurmUser=root); try sudo"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "LOCAL_SLURM_NODES must be a positive integer, got '$NODES'"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "LOCAL_SLURM_CPUS must be a positive integer, got '$CPUS'"
[[ "$MEM_MB" =~ ^[1-9][0-9]*$ ]] || die "LOCAL_SLURM_MEM_MB must be a positive integer, got '$MEM_MB'"
# shellcheck disable=SC2015  # "valid && in range || die" is intended
[[ "$PORT_BASE" =~ ^[1-9][0-9]*$ ]] && [ "$PORT_BASE" -lt $((65535 - NODES)) ] \
    || die "LOCAL_SLURM_PORT_BASE must be a port number below $((65535 - NODES)), got '$PORT_BASE'"

# ---- 1. packages (only the missing ones) --------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    log "installing ${missing[*]} (apt-get, --no-install-recommends)"
    # Without systemd, the postinst scripts would try to start munge/slurmd through invoke-rc.d with the
    # distribution's config. A policy-rc.d that exits 101 forbids that; add one only for the install.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    log "installed in $(( $(date +%s) - t0 )) s"
fi

# ---- 2. the configuration we want -----------------------------------------------------------------------------------
# Written to a temporary file first so that it can be compared with the running cluster's configuration.
mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/spool/node$i"; done
new_conf="$(mktemp "$DIR/etc/slurm.conf.XXXXXX")"
trap 'rm -f "$new_conf"' EXIT
{
    # Unquoted heredoc: \$VARS expand, so no backticks or \$( ) in the comments below.
    cat <<EOF
# Generated by slurm/local/start_local_slurm.sh: a local test cluster ($NODES node(s), $CPUS CPUs, $MEM_MB MB each).
ClusterName=mgen-local
SlurmctldHost=localhost
SlurmctldPort=$PORT_BASE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait cred_expire before they may run again (120 s by default).
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
# The default mail program does not exist on minimal systems and slurmctld refuses to start without it.
MailProg=/bin/true
# Schedule (and start requeued / dependent jobs) every 5 s instead of every 60 s.
SchedulerParameters=sched_interval=5,bf_interval=5
# Keep finished jobs visible in 'scontrol show job' for an hour (sacct needs slurmdbd, which we do not run).
MinJobAge=3600
# Let emulated nodes advertise more CPUs/memory than the machine has, instead of being marked INVAL.
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT_BASE + i)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} >"$new_conf"

export SLURM_CONF="$CONF"
daemons_alive() {
    pid_alive "$DIR/run/slurmctld.pid" slurmctld || return 1
    for i in $(seq 1 "$NODES"); do pid_alive "$DIR/run/slurmd-node$i.pid" slurmd || return 1; done
}
any_daemon_alive() {
    local f
    pid_alive "$DIR/run/slurmctld.pid" slurmctld && return 0
    for f in "$DIR"/run/slurmd-*.pid; do [ -e "$f" ] && pid_alive "$f" slurmd && return 0; done
    return 1
}

# ---- 3. reuse, or stop a cluster with other settings ------------------------------------------------------------------
reuse=0
if any_daemon_alive; then
    if [ -f "$CONF" ] && cmp -s "$new_conf" "$CONF" && daemons_alive && timeout 10 scontrol ping >/dev/null 2>&1; then
        log "reusing the running cluster in $DIR"
        reuse=1
    else
        log "a cluster with other settings (or a broken one) is running in $DIR: restarting it"
        # Keep a munged we did not start; the stop script only stops one recorded in run/munged.started.
        LOCAL_SLURM_DIR="$DIR" "$HERE/stop_local_slurm.sh" >&2
    fi
fi

if [ "$reuse" = 0 ]; then
    mv "$new_conf" "$CONF"
    chmod 0644 "$CONF"

    # ---- 4. ports must be free (another session's cluster, a real slurmd...) -------------------------------------
    for port in $(seq "$PORT_BASE" $((PORT_BASE + NODES))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is in use by another process; set LOCAL_SLURM_PORT_BASE to a free range"
        fi
    done

    # ---- 5. munged: reuse a working one, otherwise start it and remember that we did ----------------------------------
    if timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1; then
        log "munged already running: reusing it"
    else
        [ -s /etc/munge/munge.key ] || { log "creating /etc/munge/munge.key"; runuser -u munge -- mungekey --create; }
        install -d -o munge -g munge -m0755 /run/munge
        runuser -u munge -- /usr/sbin/munged
        # munged daemonizes and writes its PID file; record it so that stop_local_slurm.sh stops only this one.
        for _ in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
        cp /run/munge/munged.pid "$DIR/run/munged.started"
        timeout 10 munge -n | timeout 10 unmunge >/dev/null || { dump_logs; die "munged does not work"; }
        log "started munged (pid $(cat "$DIR/run/munged.started"))"
    fi

    # ---- 6. /etc/slurm/slurm.conf -> our config, only when there is none (so plain `sbatch` works) -------------------
    if [ "$SYSTEM_CONF" = 1 ]; then
        if [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
            mkdir -p /etc/slurm
            ln -s "$CONF" /etc/slurm/slurm.conf
            echo "/etc/slurm/slurm.conf" >"$DIR/run/symlink.created"
            log "linked /etc/slurm/slurm.conf -> $CONF"
        elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$(readlink -f "$CONF")" ]; then
            log "/etc/slurm/slurm.conf exists and is not ours: left alone (use SLURM_CONF=$CONF)"
        fi
    fi

    # ---- 7. daemons ---------------------------------------------------------------------------------------------------
    # -c: start from a clean state (no jobs recovered from an earlier run). Both daemonize and write PID files.
    rm -f "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd-*.pid
    slurmctld -c -f "$CONF" || { dump_logs; die "slurmctld failed to start"; }
    for i in $(seq 1 "$NODES"); do
        slurmd -f "$CONF" -N "node$i" || { dump_logs; die "slurmd node$i failed to start"; }
    done
    log "started slurmctld (port $PORT_BASE) and $NODES slurmd (ports $((PORT_BASE + 1))-$((PORT_BASE + NODES)))"
fi
trap - EXIT
rm -f "$new_conf"

# ---- 8. node names must resolve (Lightning uses the first node name as MASTER_ADDR) ---------------------------------
# Also on reuse, in case the line was lost. /etc/hosts is rewritten in place (same inode: works when it is a bind
# mount) with exactly one tagged line.
names="$(seq -f 'node%g' 1 "$NODES" | tr '\n' ' ')"
if ! grep -qxF "127.0.0.1 ${names}${HOSTS_TAG}" /etc/hosts; then
    hosts_tmp="$(mktemp)"
    grep -v -- "$HOSTS_TAG\$" /etc/hosts >"$hosts_tmp" || true
    echo "127.0.0.1 ${names}${HOSTS_TAG}" >>"$hosts_tmp"
    cat "$hosts_tmp" >/etc/hosts
    rm -f "$hosts_tmp"
fi

# ---- 9. wait until the controller answers and every node is usable ------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
until timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; do
    [ "$(date +%s)" -lt "$deadline" ] || { dump_logs; die "slurmctld did not answer within ${TIMEOUT}s (logs above)"; }
    sleep 0.5
done
# %t is the compact state; a suffix such as '*' (not responding) or '~' means not usable yet. A reused cluster may
# be running jobs, so alloc/mix count as ready too.
while true; do
    states="$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)"
    ready=$(echo "$states" | grep -cE '^node[0-9]+ (idle|mix|alloc|comp)$' || true)
    [ "$ready" -eq "$NODES" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || {
        dump_logs
        die "only $ready of $NODES node(s) became idle within ${TIMEOUT}s; states: $(echo "$states" | tr '\n' ';') (logs above)"
    }
    sleep 0.5
done

# ---- 10. smoke job: one task per node ------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ] && [ "$reuse" = 0 ]; then
    # shellcheck disable=SC2016  # $SLURMD_NODENAME expands in the task, not here
    if ! out="$(timeout "$TIMEOUT" srun --nodes="$NODES" --ntasks-per-node=1 --time=1 bash -c 'echo $SLURMD_NODENAME' 2>&1)"; then
        echo "$out" >&2
        dump_logs
        die "smoke job (srun --nodes=$NODES) failed (output and logs above)"
    fi
    [ "$(echo "$out" | sort -u | wc -l)" -eq "$NODES" ] || { echo "$out" >&2; die "smoke job did not run on $NODES nodes"; }
fi

echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"
log "ready in $(( $(date +%s) - START_TIME )) s: $NODES node(s) x $CPUS CPUs x $MEM_MB MB; SLURM_CONF=$CONF"
echo "export SLURM_CONF=$CONF"
