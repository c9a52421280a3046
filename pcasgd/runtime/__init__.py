"""Training on MPI: the engines of the three families (``decentralized``, ``parameter_server``,
``collective``; ``elastic`` for Horovod Elastic), the neighbour exchange they share, the checks
made before training, and surviving dead ranks (``recovery``, ``faults``)."""
