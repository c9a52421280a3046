"""Each protocol step written once, as pure code, for both engines: the simulator (memory,
simulated time) and the MPI runtime (windows and messages, wall time or lock-step).

Modules: :mod:`~pcasgd.protocol.reads` (a decentralized agent's reads of its neighbours),
:mod:`~pcasgd.protocol.ages` (snapshot ages), :mod:`~pcasgd.protocol.ring` (snapshot rings and
their sizing), :mod:`~pcasgd.protocol.pacing` (stragglers on wall time),
:mod:`~pcasgd.protocol.one_step_delay` (odsgd's reductions in flight and its step, which the
optimizer API calls too) and
:mod:`~pcasgd.protocol.server` (the versioned parameter server).
"""
