#!/usr/bin/env bash
# Launch `pcasgd train --backend mpi` on N local ranks with Open MPI:
#   launch/mpirun.sh -n 4 [pcasgd train flags...]
# or a Python program of your own (one process per rank; `python` is this environment's):
#   launch/mpirun.sh -n 4 [python] examples/digits_own_loop.py [its flags...]
#   launch/mpirun.sh -n 4 python -m my_package.train [its flags...]
# Anything else is refused before anything starts.
# Sets what Open MPI 5 (the PyPI wheel) needs here: running as root when we are root, more ranks
# than cores, the shared-memory one-sided component, and yielding instead of busy-polling while
# a rank waits (busy-polling steals the CPU from the other ranks when they share cores).
# With --fault-tolerant among the flags it also turns on Open MPI's ULFM (--with-ft ulfm) and the
# components ULFM needs (tcp transport, ftagree collectives, osc/rdma windows; docs/mpi.md),
# and fails (status 1) a training job that ended without its summary.json.
# PCASGD_MPIRUN picks the mpirun binary (default: the one next to the environment's python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
ranks=4
if [ "${1:-}" = "-n" ] || [ "${1:-}" = "-np" ]; then ranks="${2:?launch/mpirun.sh: $1 needs a number of ranks}"; shift 2; fi
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/mpirun.sh: -n $ranks: expected a number of ranks" >&2
  exit 2
fi
# What runs on each rank: a Python program (script.py ..., python script.py ..., python -m module
# ...; a bare python or python3 is this environment's) or `pcasgd train` flags (--mode ...).
program=("$venv/bin/python")
own=1
case "${1:-}" in
  "" | -*) program+=(-m pcasgd.cli train --backend mpi); own=0 ;;
  *.py) ;;
  python | python3) shift ;;
  */python | */python3 | */python3.[0-9]*) program=("$1"); shift ;;
  *)
    echo "launch/mpirun.sh: does not know how to run '$1' on each rank: give a Python program" \
      "(script.py ..., python script.py ..., python -m module ...) or pcasgd train flags (--mode ...)" >&2
    exit 2
    ;;
esac
mpirun="${PCASGD_MPIRUN:-$venv/bin/mpirun}"
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export PRTE_MCA_rmaps_default_mapping_policy="${PRTE_MCA_rmaps_default_mapping_policy-:oversubscribe}"
export OMPI_MCA_osc="${OMPI_MCA_osc-sm,rdma}"
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle-1}"
# One compute thread per rank when ranks share the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS-1}"
ft=()
rejoin=0
for flag in "$@"; do
  if [ "$flag" = "--fault-tolerant" ]; then
    ft=(--with-ft ulfm)
    export OMPI_MCA_btl=tcp,self OMPI_MCA_coll=basic,self,libnbc,ftagree OMPI_MCA_osc=rdma
  fi
  if [ "$flag" = "--rejoin" ]; then
    rejoin=1
  fi
done
if [ "$own" = 1 ] && [ ${#ft[@]} -gt 0 ]; then
  # Your own program under ULFM: arm Open MPI's failure detector, as pcasgd train does from its
  # --deadline, for the optimizer's default deadline (60 s: a rank silent for 30 s, a stopped one
  # too, is declared dead and survived). Your own settings of these variables win.
  while IFS='=' read -r name value; do
    if [ -z "${!name:-}" ]; then export "$name=$value"; fi
  done < <("$venv/bin/python" -c 'from pcasgd.runtime.launch import failure_detector_settings as s
for item in s().items(): print("=".join(item))')
fi
# A session directory a killed mpirun left behind fails the next mpirun given its pid
# (pcasgd.runtime.launch.remove_stale_session_dirs): remove those first.
"$venv/bin/python" -c 'from pcasgd.runtime.launch import remove_stale_session_dirs as r; r()'
if [ "$own" = 1 ]; then
  exec "$mpirun" "${ft[@]}" -n "$ranks" "${program[@]}" "$@"
fi
if [ ${#ft[@]} -eq 0 ]; then
  exec "$mpirun" -n "$ranks" "${program[@]}" "$@"
fi
# Under ULFM mpirun exits 0 whatever became of the ranks (outliving a death is the point; with
# every rank crashed it still exits 0, measured): the run's summary.json says whether it ended.
# Bad flags leave no directory to name: the ranks then say what is wrong themselves.
out="$("$venv/bin/python" -c 'import sys; from pcasgd.cli import run_directory; print(run_directory(sys.argv[2:], int(sys.argv[1])))' \
  "$ranks" --backend mpi "$@" 2>/dev/null)" || out=""
# shellcheck source=launch/forward.sh
source "$root/launch/forward.sh"
launched="$(mktemp)"
trap 'rm -f "$launched"' EXIT
run_forwarding "$mpirun" "${ft[@]}" -n "$ranks" "${program[@]}" "$@"
# --rejoin: a replacement runs in a job of its own that ULFM's flag does not cover, and mpirun
# exits with its death's status (137 for a SIGKILL) although the others survived it and
# finished (measured): a summary.json written by this launch then says the run finished.
if [ "$rejoin" = 1 ] && [ "$status" != 0 ] && [ -n "$out" ] && [ "$out/summary.json" -nt "$launched" ]; then
  echo "launch/mpirun.sh: mpirun exited $status (a replacement process died) but the run finished:" \
    "$out/summary.json was written" >&2
  status=0
fi
if [ "$status" = 0 ] && [ -n "$out" ] && [ ! -f "$out/summary.json" ]; then
  echo "launch/mpirun.sh: mpirun exited 0 but the run wrote no $out/summary.json: it did not finish" \
    "(rank 0, or every rank, died or crashed: see the ranks' messages above)" >&2
  status=1
fi
exit "$status"
