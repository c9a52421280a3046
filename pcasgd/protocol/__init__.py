"""Each protocol step written once, as pure code, for both engines: the simulator (memory,
simulated time) and the MPI runtime (windows and messages, wall time or lock-step).

Modules: :mod:`~pcasgd.protocol.server` (the versioned parameter server), :mod:`~pcasgd.protocol.reads`
(a decentralized agent's reads of its neighbours).
"""
