"""pcasgd: decentralized, asynchronous training of PyTorch models (PC-ASGD and baselines)."""

__version__ = "0.1.0"
