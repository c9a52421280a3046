#!/usr/bin/env bash
# The main job: a short decentralized PC-ASGD run on 4 MPI ranks (mpirun, one-sided weight
# exchange, asynchronous) on the bundled digits data (no download): a ring, neighbours'
# snapshots read 2 iterations late, and rank 3 three times slower than the others.
# Sets up or reuses the pinned environment first. Extra arguments go to `pcasgd train`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/.ci/env.sh"
cd "$root"
exec bash "$root/launch/mpirun.sh" -n 4 --mode pcasgd --topology ring --delay "fixed:2+straggler:3=3.0" \
  --dataset digits --model mlp --epochs 10 --seed 0 --out runs/demo --overwrite "$@"
