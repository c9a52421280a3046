"""The log of a ``--fault-tolerant`` run's recoveries, kept the same way by every runtime that
survives a death (decentralized, parameter server, Horovod Elastic).

An event is complete once the first step after it is taken: only then is it reported (one line
of ``events.jsonl`` on the recording rank). Deaths can follow each other faster than a step: a
second recovery before the first one's first step leaves both waiting, and that step completes
both (the time from each death to training again is what the event measures). A recovery
after which this rank takes no step (another rank had finished the run meanwhile) is reported
at the end with ``first_step_at`` null.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pcasgd.errors import TrainingFailedError


def lost_ranks(identity: int, before: list[int], now: list[int], how: str) -> list[int]:
    """The ranks of ``before`` missing from ``now`` (first ranks, in order), as rank ``identity``
    sees them after a recovery. Rank 0 writes the run's files: if it is gone (``how``: how it was
    lost), the survivors stop with a message."""
    lost = sorted(set(before) - set(now))
    if now[0] != 0:
        raise TrainingFailedError(
            f"rank {identity}: rank 0, which records the run, {how} (lost: ranks {lost}); the survivors stop "
            "(--fault-tolerant survives the loss of any rank but 0; every rank's last checkpoint is in the run "
            "directory, for --resume)"
        )
    return lost


class WorldChanges:
    """Every recovery of this rank, in order; ``report`` (the recording rank's, else None) takes
    each event once it is complete."""

    def __init__(self, report: Callable[[dict[str, Any]], None] | None) -> None:
        self.events: list[dict[str, Any]] = []
        self._report = report
        self._waiting: list[dict[str, Any]] = []  # recovered from, no step taken since

    def recovered(self, lost: list[int], world: list[int], iteration: int, noticed_at: float, topology: str) -> dict:
        """Log a recovery that ends now: ``lost`` died, ``world`` goes on from ``iteration``."""
        event = {
            "lost": lost,
            "world": world,
            "iteration": iteration,
            "noticed_at": noticed_at,
            "recovered_at": time.time(),
            "first_step_at": None,
            "topology": topology,
        }
        self.events.append(event)
        self._waiting.append(event)
        return event

    def stepped(self) -> None:
        """A step was taken: stamp and report the recoveries that waited for one."""
        if not self._waiting:
            return
        now = time.time()
        for event in self._waiting:
            event["first_step_at"] = now
            if self._report is not None:
                self._report(dict(event))
        self._waiting = []

    def ended(self) -> None:
        """Training is over for this rank: report the recoveries no step followed, as they are."""
        for event in self._waiting:
            if self._report is not None:
                self._report(dict(event))
        self._waiting = []
