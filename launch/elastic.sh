#!/usr/bin/env bash
# Keep a training job at the size its hosts allow, restarting it from its newest checkpoints when
# the hosts change or when it lost ranks (pcasgd/app/supervisor.py):
#   launch/elastic.sh --hosts-script discover.sh [--min-ranks 2] [--max-restarts 3] -- [pcasgd train flags...]
# discover.sh prints one 'host:slots' line per host (Horovod's host-discovery format); the ranks
# run on this machine through launch/mpirun.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
exec "$venv/bin/python" -m pcasgd.cli supervise "$@"
