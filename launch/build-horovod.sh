#!/usr/bin/env bash
# Build Horovod 0.28.1 (the last release, sdist only) for the environment's torch and MPI, cache
# the wheel outside the repository, and install it. The stock sdist hard-codes C++14, which
# torch >= 2.13 cannot compile with, so the build raises the C++ standard to 20.
#   launch/build-horovod.sh            # CPU build unless nvidia-smi finds a GPU
#   HOROVOD_DEVICE=cuda launch/build-horovod.sh
# Environment: PCASGD_VENV (default ./.venv), PCASGD_WHEEL_CACHE (default ~/.cache/pcasgd/wheels).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PCASGD_VENV:-$root/.venv}"
python="$venv/bin/python"
if "$python" -c "import horovod.torch" 2>/dev/null; then
  exit 0
fi
device="${HOROVOD_DEVICE:-$(command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)}"
torch_version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
mpi_version="$("$python" -c 'from mpi4py import MPI; print(MPI.Get_library_version().split(",")[0].replace(" ", "-"))')"
# The wheel's libraries find libmpi and torch's libraries through absolute paths into the venv it
# was built in (mpicc's and torch's run paths), so a wheel serves only the venv at that path: the
# cache key names it. (A wheel built for a clone since deleted failed CI with "libmpi.so.40: cannot
# open shared object file".)
venv_key="$(cd "$venv" && pwd -P | sha256sum | cut -c1-12)"
cache="${PCASGD_WHEEL_CACHE:-$HOME/.cache/pcasgd/wheels}/horovod-0.28.1-torch$torch_version-$mpi_version-$device-venv$venv_key"
mkdir -p "$cache"
if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
  echo "pcasgd: building Horovod 0.28.1 for torch $torch_version, $mpi_version, $device (5-10 minutes)..." >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip download -q --no-deps --no-binary :all: horovod==0.28.1 -d "$work" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  tar xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
  source_dir="$work/horovod-0.28.1"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$source_dir/CMakeLists.txt" \
    "$source_dir/horovod/torch/CMakeLists.txt"
  if [ "$device" = cpu ]; then
    # torch's CUDA build is installed here, and nvcc may be on the PATH: keep CUDA out of a CPU build.
    sed -i 's/^string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)$/set(Pytorch_CUDA FALSE)/' \
      "$source_dir/cmake/Modules/FindPytorch.cmake"
    export HOROVOD_WITHOUT_GPU=1 HOROVOD_GPU_OPERATIONS=
  else
    export HOROVOD_GPU_OPERATIONS="${HOROVOD_GPU_OPERATIONS:-NCCL}"
  fi
  # Build against the MPI that mpi4py uses, so both run in one process.
  PATH="$venv/bin:$PATH" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$python" -m pip wheel -q --no-build-isolation --no-deps -w "$cache" "$source_dir"
fi
"$python" -m pip install -q --disable-pip-version-check -c "$root/.ci/constraints.txt" "$cache"/horovod-*.whl psutil \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$python" -c "import horovod.torch as hvd; print('pcasgd: Horovod', __import__('horovod').__version__, 'ready', file=__import__('sys').stderr)"
