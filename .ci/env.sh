#!/usr/bin/env bash
# Create, or reuse, the project's environment (.venv, or $PCASGD_VENV) with the pinned
# development stack from .ci/constraints.txt, and install pcasgd into it (editable).
# Reuse is keyed by a hash of the constraints and pyproject.toml: change either and it rebuilds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
stamp="$venv/.pcasgd-stack"
want="$(cat "$root/.ci/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "pcasgd: the pinned stack (.ci/constraints.txt) is built for Python 3.11, which was not found" >&2
  exit 1
fi
echo "pcasgd: building $venv with the pinned stack (first time: about 2 minutes)..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# pip on this machine warns once per package about absent local index folders: drop that noise only.
quiet_pip() {
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/.ci/constraints.txt" "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip "setuptools>=64" wheel
quiet_pip --no-build-isolation -e "$root[dev]"
echo "$want" > "$stamp"
echo "pcasgd: environment ready at $venv" >&2
