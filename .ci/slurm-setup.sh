#!/usr/bin/env bash
# Prepare a single-node Slurm cluster for the SLURM tests (tests/slurm/), as root.
# Idempotent: installs slurm-wlm and munge only when missing, and start-local-cluster.sh is a
# no-op when the cluster is already up. Non-interactive (CI runs with no standard input).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-setup: not root; skipping the local Slurm cluster (tests/slurm will be skipped)" >&2
    exit 0
fi

missing=0
for bin in slurmctld slurmd sinfo munged; do
    command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 1 ]; then
    command -v apt-get >/dev/null 2>&1 || { echo "slurm-setup: error: Slurm is not installed and apt-get is unavailable" >&2; exit 1; }
    echo "slurm-setup: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq slurm-wlm munge </dev/null >/dev/null
fi

exec distengine/slurm/testing/start-local-cluster.sh
