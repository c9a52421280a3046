#!/usr/bin/env bash
# Launch `pcasgd train --backend mpi` with Horovod's own launcher on N local processes:
#   launch/horovodrun.sh -n 2 --mode ssgd --comm horovod [pcasgd train flags...]
# With the Open MPI 5 wheel only `horovodrun --gloo` starts processes (its MPI mode passes
# Open MPI 4 flags that Open MPI 5's prterun misreads). Gloo-launched processes have no MPI
# world, so only `--mode ssgd --comm horovod` runs this way; every other mode needs an MPI world
# (launch/mpirun.sh, or srun --mpi=pmix) and says so on each rank if started here.
# HOROVOD_HOSTS overrides the host list (default localhost:N), e.g. "node1:4,node2:4".
# Needs Horovod in the environment: launch/build-horovod.sh builds it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
ranks=2
if [ "${1:-}" = "-n" ]; then ranks="$2"; shift 2; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS-1}"
exec "$venv/bin/horovodrun" --gloo -np "$ranks" -H "${HOROVOD_HOSTS:-localhost:$ranks}" \
  "$venv/bin/python" -m pcasgd.cli train --backend mpi "$@"
