#!/usr/bin/env bash
# The project's one test command (README, and .ci/run): install or reuse everything the tests
# need (.ci/setup.sh), check lint and formatting, run the whole test suite. Extra arguments go to
# pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
bash "$root/.ci/setup.sh"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
exec "$venv/bin/python" -m pytest "$@"
