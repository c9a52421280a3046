"""pcasgd: decentralized, asynchronous training of PyTorch models (PC-ASGD and baselines).

The MPI-facing API (:func:`init`, :func:`broadcast_parameters`, :class:`DecentralizedOptimizer`)
is imported on first use, so ``import pcasgd`` needs neither mpi4py nor an MPI library.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DecentralizedOptimizer", "broadcast_parameters", "init"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pcasgd import optim

        return getattr(optim, name)
    raise AttributeError(f"module 'pcasgd' has no attribute {name!r}")
