#!/usr/bin/env bash
# Everything the test suite needs, installed before pytest starts (never inside a timed test):
# the pinned environment, Horovod built for it, Debian's Fashion-MNIST, a single-node Slurm, two
# test hosts with a Slurm of their own (network namespaces, launch/hosts.sh; .ci/test.sh removes
# them after the tests) and
# the decoded CIFAR-10 cache. Idempotent: each step does nothing when its component is there.
# Root is needed for the Debian packages and Slurm; without it those steps are skipped with a
# message, and the tests that need them skip with the reason (CI runs as root and skips nothing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
step() { echo "pcasgd setup: $*" >&2; }
bash "$root/.ci/env.sh"
step "Horovod"
PCASGD_VENV="$venv" bash "$root/launch/build-horovod.sh"
if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
  step "Fashion-MNIST"
  bash "$root/.ci/datasets.sh"
else
  step "not root: Fashion-MNIST (Debian package) not installed; its tests will skip"
fi
if [ "$(id -u)" = 0 ]; then
  step "Slurm"
  bash "$root/.ci/slurm.sh"
  step "test hosts node1, node2, and a Slurm over them"
  if ! bash "$root/launch/hosts.sh" status >/dev/null 2>&1; then
    bash "$root/launch/hosts.sh" up 2 || step "the kernel refused network namespaces: the multi-host tests will skip"
  fi
  if bash "$root/launch/hosts.sh" status >/dev/null 2>&1; then
    bash "$root/launch/hosts.sh" slurm up
  fi
else
  step "not root: no local Slurm and no test hosts; their tests will skip"
fi
archive="$root/../shared/data/cifar10-jpeg.tar.gz"
if [ -f "$archive" ]; then
  step "CIFAR-10 cache"
  "$venv/bin/python" -c "import sys; from pathlib import Path; from pcasgd.app.data import load; load('cifar10', Path(sys.argv[1]))" "$archive"
fi
step "done"
