"""Horovod Elastic's names (``hvd.elastic``) for your own training loop that survives a dead rank.

Horovod Elastic fails the collective in flight, rolls every worker back to the last
``state.commit()`` and calls the decorated function again. pcasgd survives the death inside
``step()`` of a ``DistributedOptimizer(..., fault_tolerant=True)`` in a decentralized mode
(``pcasgd.runtime.recovery``): no collective failed, so nothing is rolled back. Every survivor
goes on from its own weights, the reset callbacks run there (``pcasgd.rank()`` and
``pcasgd.size()`` already answer for the new world), and the decorated function is called once.
``commit()`` then only keeps the state's own counters (epoch, batch) for ``restore()``; it copies
no weights, so committing every batch costs nothing.

A death outside ``step()`` (in a collective of your own, such as an ``allreduce`` of metrics
during training) is not survived: keep collectives after the loop, as Horovod's example does.
"""

from __future__ import annotations

import atexit
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from pcasgd.errors import ConfigError


class TorchState:
    """``hvd.elastic.TorchState``: the model, the optimizer and your counters (``epoch=1``,
    ``batch=0``: any keyword becomes an attribute) of a loop that survives a dead rank."""

    def __init__(self, model: nn.Module, optimizer: Any, **counters: Any) -> None:
        if not getattr(optimizer, "fault_tolerant", False):
            raise ConfigError(
                "pcasgd.elastic needs pcasgd.DistributedOptimizer(..., fault_tolerant=True) in a decentralized "
                "mode (pcasgd, asgd, dsgd, ...), launched under ULFM (launch/mpirun.sh ... --fault-tolerant)"
            )
        self.model, self.optimizer = model, optimizer
        self._committed = dict(counters)
        self.__dict__.update(counters)
        # The windows of a world that lost ranks cannot be freed collectively: close() ends the
        # process without MPI_Finalize, which would hang on them (Horovod's example never closes).
        atexit.register(optimizer.close)

    def register_reset_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        """Run ``callbacks`` on every survivor after a rank's death, in the new world."""
        self.optimizer.register_reset_callbacks(callbacks)

    def commit(self) -> None:
        """Keep the counters as they are now (for :meth:`restore`)."""
        self._committed = {name: getattr(self, name) for name in self._committed}

    def restore(self) -> None:
        """Put the counters back to the last :meth:`commit`."""
        self.__dict__.update(self._committed)


def run(func: Callable[..., Any]) -> Callable[..., Any]:
    """``@hvd.elastic.run``: call ``func(state, ...)`` once (a death is survived inside its
    ``step()`` calls), then join the optimizer, so that every survivor has stopped stepping
    before the collectives that follow (a test's ``allreduce``)."""

    @functools.wraps(func)
    def wrapper(state: TorchState, *args: Any, **kwargs: Any) -> Any:
        result = func(state, *args, **kwargs)
        state.optimizer.join()
        return result

    return wrapper
