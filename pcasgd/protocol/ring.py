"""How many snapshots each agent's ring must keep, so that every read the protocol names is
still there when it is made.

* An injected lag of ``D`` reads ``D`` stamps behind the newest: ``D + 1`` slots, and one more so
  that the owner can write its next snapshot while the oldest is read (``max_lag + 2``).
* ``--overlap``: a read is in flight while its reader computes, and the owner may publish a step
  or two meanwhile: two more.
* Asynchronous ``dsgd`` names the stamp it mixes (``k``, or ``k - 1`` with overlap) and waits for
  it, but a neighbour that does not wait for this agent directly may already be further ahead: on
  a directed or time-varying graph (``exponential``, ``one-peer-exp``) as far as its path from
  this agent allows (:func:`dsgd_lead`). The ring keeps that lead and the named stamp.
"""

from __future__ import annotations

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.delays import DelayModel
from pcasgd.errors import TopologyError
from pcasgd.topology import Schedule


def dsgd_lead(schedule: Schedule, overlap: bool) -> int:
    """The most stamps an in-neighbour can have published beyond ``k`` while an agent, having
    published ``k``, waits in asynchronous ``dsgd``.

    An agent may publish ``p + 1`` once it has mixed at iteration ``p``, that is once every
    in-neighbour of iteration ``p`` has published ``p`` (``p - 1`` with overlap). Holding one
    agent at ``k`` and letting every other advance as far as these rules allow gives the lead; it
    is taken over every agent and every phase of a time-varying schedule.
    """
    size, period = schedule.size, getattr(schedule, "period", 1)
    behind = 1 if overlap else 0
    bound = 4 * size * period + 4
    graphs = [schedule.at(p) for p in range(period)]
    worst = 0
    for phase in range(period):
        for held in range(size):
            published = [phase] * size
            moved = True
            while moved:
                moved = False
                for j in range(size):
                    if j == held:
                        continue
                    step = published[j] - phase
                    if step > bound:
                        raise TopologyError(
                            f"agents of '{schedule.name}' can run without bound ahead of agent {held}: not connected"
                        )
                    graph = graphs[published[j] % period]
                    if all(published[m] >= published[j] - behind for m in graph.in_neighbours(j)):
                        published[j] += 1
                        moved = True
            lead = max((published[j] - phase for j in graphs[phase].in_neighbours(held)), default=0)
            worst = max(worst, lead)
    return worst


def ring_slots(config: AlgorithmConfig, delays: DelayModel, schedule: Schedule, deterministic: bool) -> int:
    """The slots of each agent's snapshot ring for this run (see the module's doc)."""
    slots = delays.max_lag + 2 + (2 if config.overlap else 0)
    if config.synchronous and not deterministic:
        overlap = 1 if config.overlap else 0
        slots = max(slots, dsgd_lead(schedule, config.overlap) + overlap + 1)
    return slots
