"""pcasgd: decentralized, asynchronous training of PyTorch models (PC-ASGD and baselines).

The API for your own training loop (:mod:`pcasgd.collectives`: ``init``, ``rank``, ``size``,
``local_rank``, broadcasts, ``allreduce``, ``averaged_model``; :mod:`pcasgd.optim`: the optimizer
wrappers; :mod:`pcasgd.elastic`: Horovod Elastic's names) is imported on first use, so
``import pcasgd`` needs neither mpi4py nor an MPI library.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
OPTIMIZERS = ("CollectiveOptimizer", "DecentralizedOptimizer", "DistributedOptimizer")
COLLECTIVES = (
    "allreduce",
    "averaged_model",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "init",
    "local_rank",
    "local_size",
    "rank",
    "size",
)
HOROVOD_NAMES = ("Adasum", "Average", "Compression", "Sum", "gloo_built", "mpi_built", "nccl_built")
__all__ = [*OPTIMIZERS, *COLLECTIVES, *HOROVOD_NAMES, "SyncBatchNorm"]


def __getattr__(name: str) -> Any:
    if name in OPTIMIZERS:
        from pcasgd import optim

        return getattr(optim, name)
    if name in COLLECTIVES:
        from pcasgd import collectives

        return getattr(collectives, name)
    if name in HOROVOD_NAMES:
        from pcasgd import horovod_names

        return getattr(horovod_names, name)
    if name == "SyncBatchNorm":
        from pcasgd.sync_batchnorm import SyncBatchNorm

        return SyncBatchNorm
    if name == "elastic":  # Horovod Elastic's names: pcasgd.elastic.run, pcasgd.elastic.TorchState
        return importlib.import_module("pcasgd.elastic")
    raise AttributeError(f"module 'pcasgd' has no attribute {name!r}")
