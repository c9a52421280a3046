"""Training on MPI: one agent per rank (decentralized modes), with checks made before training."""
