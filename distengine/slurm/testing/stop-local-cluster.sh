#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by start-local-cluster.sh (slurmd, slurmctld,
# munged), by the process ids in their pid files. Idempotent: stopping a stopped cluster is a no-op.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "stop-local-cluster: error: must run as root; retry with sudo" >&2; exit 1; }

stop_pidfile() {
    local name=$1 pidfile=$2 pid
    if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "stop-local-cluster: $name not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { echo "stop-local-cluster: stopped $name ($pid)"; return 0; }
        sleep 0.2
    done
    echo "stop-local-cluster: error: $name ($pid) did not stop within 20 s" >&2
    return 1
}

stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
if [ "${1:-}" != "--keep-munge" ]; then
    stop_pidfile munged /run/munge/munged.pid
fi
