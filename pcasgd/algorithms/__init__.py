"""Every training mode's update rule as pure tensor code (no MPI, no I/O).

* :mod:`~pcasgd.algorithms.consensus`: dsgd, asgd, pcasgd, pcasgd-pv, predict, clip
* :mod:`~pcasgd.algorithms.server`: ps-asgd, dcasgd-c, dcasgd-a, sasgd
* :mod:`~pcasgd.algorithms.collective`: ssgd, odsgd
"""

from pcasgd.algorithms.collective import GlobalSGD, OneStepDelayAgent
from pcasgd.algorithms.config import (
    COLLECTIVE_MODES,
    DECENTRALIZED_MODES,
    MODES,
    SERVER_MODES,
    AlgorithmConfig,
)
from pcasgd.algorithms.consensus import ConsensusAgent, NeighbourRead, Snapshot, StepReport
from pcasgd.algorithms.server import ParameterServer, PushReport

__all__ = [
    "COLLECTIVE_MODES",
    "DECENTRALIZED_MODES",
    "MODES",
    "SERVER_MODES",
    "AlgorithmConfig",
    "ConsensusAgent",
    "GlobalSGD",
    "NeighbourRead",
    "OneStepDelayAgent",
    "ParameterServer",
    "PushReport",
    "Snapshot",
    "StepReport",
]
