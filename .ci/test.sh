#!/usr/bin/env bash
# The project's one test command (README, and .ci/run): install or reuse everything the tests
# need (.ci/setup.sh), check lint and formatting, run the whole test suite. Extra arguments go to
# pytest. The test hosts the setup brings up are removed at the end (hosts that were up before
# are left up).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
if ! bash "$root/launch/hosts.sh" status >/dev/null 2>&1; then
  trap 'bash "$root/launch/hosts.sh" down >/dev/null 2>&1 || true' EXIT
fi
bash "$root/.ci/setup.sh"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/python" -m pytest "$@"
