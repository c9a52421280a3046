#!/usr/bin/env bash
# The main job: a short decentralized PC-ASGD run on the bundled digits data (no download),
# 4 agents on a ring, neighbours' snapshots 2 iterations late and agent 3 twice as slow.
# Sets up or reuses the pinned environment first. Extra arguments go to `pcasgd train`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
bash "$root/.ci/env.sh"
cd "$root"
exec "$venv/bin/pcasgd" train --backend sim --agents 4 --mode pcasgd --topology ring \
  --delay "fixed:2+straggler:3=2.0" --dataset digits --model mlp --epochs 10 --seed 0 \
  --out runs/demo --overwrite "$@"
