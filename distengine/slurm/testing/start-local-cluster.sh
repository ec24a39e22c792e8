#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for distengine's SLURM tests.
#
# Needs root and Debian's `slurm-wlm` and `munge` packages (see .ci/slurm-setup.sh).
# Idempotent: when its slurm.conf is current, the daemons run and `sinfo` shows the node usable,
# it changes nothing; otherwise it (re)starts only what is missing.
#
#   sudo distengine/slurm/testing/start-local-cluster.sh          # start (or confirm) the cluster
#   sudo distengine/slurm/testing/stop-local-cluster.sh           # stop it again
#
# Environment:
#   DISTENGINE_SLURM_CONF         where slurm.conf goes      (default /etc/slurm/slurm.conf;
#                                 elsewhere, clients need SLURM_CONF set to it)
#   DISTENGINE_SLURM_WAIT         seconds to wait for idle   (default 60)
#   DISTENGINE_SLURM_FORCE_CONF=1 overwrite a slurm.conf this script did not write
set -euo pipefail

CONF="${DISTENGINE_SLURM_CONF:-/etc/slurm/slurm.conf}"
WAIT="${DISTENGINE_SLURM_WAIT:-60}"
MARKER="# written by distengine slurm/testing/start-local-cluster.sh"
RUN_DIR=/run/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm

die() { echo "start-local-cluster: error: $*" >&2; exit 1; }
say() { echo "start-local-cluster: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it starts munged, slurmctld and slurmd); retry with sudo"
for bin in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$bin" >/dev/null 2>&1 \
        || die "'$bin' not found; install the packages: apt-get install -y slurm-wlm munge"
done

HOST="$(hostname -s)"
[ -n "$HOST" ] || die "this machine has no hostname; set one with 'hostname NAME' and retry"
# Jobs use the first host of SLURM_JOB_NODELIST (this name) as the rendezvous address, so it
# must resolve; fresh CI containers sometimes have a hostname that is in no resolver.
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    say "hostname '$HOST' does not resolve; adding '127.0.0.1 $HOST' to /etc/hosts"
    echo "127.0.0.1 $HOST" >>/etc/hosts
fi

node_state() {
    # Prints the node's state (idle, mixed, allocated, down*, drained, ...) or nothing.
    SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true
}

usable() {
    case "$1" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac
}

# ---- 1. slurm.conf for this host ----------------------------------------------------------
NPROC="$(nproc)"
# The tests run 2-task jobs; on a 1-CPU machine declare 2 CPUs and let config_overrides
# stop slurmd from draining the node for having fewer than configured.
CPUS=$(( NPROC < 2 ? 2 : NPROC ))
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))

NEW_CONF="$(cat <<EOF
$MARKER
# A one-node test cluster; accounting is off, so sacct knows nothing (use squeue/scontrol).
ClusterName=distengine-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to scontrol/squeue for an hour (there is no accounting).
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL at a time limit or scancel.
KillWait=30
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---- 2. nothing to do when this cluster is already up -------------------------------------
# (sinfo alone is not enough: slurmctld reports a dead slurmd as idle until SlurmdTimeout)
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ] && alive "$RUN_DIR/slurmctld.pid" \
        && alive "$RUN_DIR/slurmd.pid" && usable "$(node_state)"; then
    say "cluster already running (node $HOST is $(node_state)); nothing to do"
    exit 0
fi

restart=0
if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF" && [ "${DISTENGINE_SLURM_FORCE_CONF:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script (set DISTENGINE_SLURM_FORCE_CONF=1 to replace it)"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$NEW_CONF" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    say "wrote $CONF (node $HOST, $CPUS CPUs, ${MEM_MB} MB)"
    restart=1
fi
export SLURM_CONF="$CONF"
mkdir -p "$RUN_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"

stop_pidfile() {
    local pidfile=$1 pid i
    alive "$pidfile" || return 0
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    die "process $pid from $pidfile did not stop within 10 s"
}

# ---- 3. munge -----------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    # munged refuses to run as root with a key owned by the munge user; run it as that user.
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start; see /var/log/munge/munged.log"
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munge does not answer; see /var/log/munge/munged.log"
fi

# ---- 4. slurmctld and slurmd --------------------------------------------------------------
if [ "$restart" = 1 ]; then
    stop_pidfile "$RUN_DIR/slurmd.pid"
    stop_pidfile "$RUN_DIR/slurmctld.pid"
fi
if ! alive "$RUN_DIR/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld -f "$CONF" || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
fi
for _ in $(seq 1 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP \
    || die "slurmctld does not answer 'scontrol ping'; last log lines: $(tail -n 5 $LOG_DIR/slurmctld.log 2>/dev/null)"
if ! alive "$RUN_DIR/slurmd.pid"; then
    say "starting slurmd"
    slurmd -f "$CONF" || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
fi

# ---- 5. wait for the node to be idle (bounded) --------------------------------------------
deadline=$(( $(date +%s) + WAIT ))
resumed=0
while :; do
    state="$(node_state)"
    usable "$state" && break
    # A node left down/drained by an earlier run comes back with an explicit resume.
    case "$state" in
        down* | drain* | fail*)
            if [ "$resumed" = 0 ]; then
                scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        die "node $HOST is '${state:-unknown}' after ${WAIT} s, not idle; $(scontrol show node "$HOST" 2>&1 | grep -i reason || true); logs: $LOG_DIR/slurmctld.log $LOG_DIR/slurmd.log"
    fi
    sleep 0.5
done
say "cluster up: node $HOST is $state (partition debug, $CPUS CPUs)"
