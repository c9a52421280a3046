"""Which device a rank computes on, and whether its MPI can read GPU memory.

``--device cuda`` puts each rank on GPU ``local_rank % device_count``, the local rank coming
from whichever launcher started it. ``--host-staging`` decides whether MPI sees GPU buffers or
pinned host copies of them (see :mod:`pcasgd.transport.staging`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping

import torch

from pcasgd.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")
HOST_STAGING = ("auto", "always", "never")
# The rank among the processes on this node, as each launcher names it.
LOCAL_RANK_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_RANK",  # Open MPI mpirun
    "MPI_LOCALRANKID",  # MPICH, Intel MPI
    "SLURM_LOCALID",  # srun
    "HOROVOD_LOCAL_RANK",  # horovodrun
    "LOCAL_RANK",  # torchrun and others
)


def local_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank on its node (0 when no launcher says)."""
    for name in LOCAL_RANK_VARIABLES:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def select_device(spec: str, env: Mapping[str, str] = os.environ) -> torch.device:
    """``cpu``; ``cuda`` (GPU ``local_rank % device_count``; an error without one); ``auto`` (cuda if any)."""
    if spec not in DEVICES:
        raise ConfigError(f"unknown device {spec!r}; available: {', '.join(DEVICES)}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is visible to this process (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    return torch.device("cuda", local_rank(env) % torch.cuda.device_count())


def mpi_is_cuda_aware() -> bool | None:
    """Whether the MPI library in this process accepts GPU buffers (Open MPI's ``MPIX_Query_cuda_support``).

    None where the library offers no such query (other MPIs): ``auto`` then stages, and
    ``--host-staging never`` is the user's word that it is CUDA-aware.
    """
    for name in ("libmpi.so.40", "libmpi.so"):
        try:
            library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return bool(library.MPIX_Query_cuda_support())
        except (OSError, AttributeError):
            continue
    return None


def stage_through_host(
    device: torch.device, host_staging: str, cuda_aware: Callable[[], bool | None] = mpi_is_cuda_aware
) -> bool:
    """``auto``: stage GPU buffers unless the MPI is CUDA-aware; ``always``: stage (even on the CPU,
    which exercises the copies); ``never``: hand MPI the device buffers, refused where the MPI says
    it cannot read them (it would crash in the first exchange)."""
    if host_staging not in HOST_STAGING:
        raise ConfigError(f"unknown host staging {host_staging!r}; available: {', '.join(HOST_STAGING)}")
    if host_staging == "always" or device.type == "cpu":
        return host_staging == "always"
    aware = cuda_aware()
    if host_staging == "never" and aware is False:
        raise ConfigError(
            "--host-staging never: this MPI is not CUDA-aware (MPIX_Query_cuda_support() is 0), so it cannot "
            "read GPU buffers; use --host-staging auto (pinned host copies) or a CUDA-aware MPI build"
        )
    return host_staging == "auto" and not aware
