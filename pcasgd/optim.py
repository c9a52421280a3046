"""Decentralized training inside your own training loop: one MPI rank per agent.

    comm = pcasgd.init()
    model = Net()
    pcasgd.broadcast_parameters(model)                 # every rank starts from rank 0's weights
    opt = pcasgd.DecentralizedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                        model, mode="pcasgd", topology="ring")
    with opt:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

:class:`DecentralizedOptimizer` holds your optimizer and shares its ``param_groups`` (so it is a
``torch.optim.Optimizer`` that torch's schedulers drive). Each
``step()``: your optimizer takes its step from the current weights ``x`` (that displacement is
the local update ``v``), this rank publishes ``(x, g)`` in its MPI window, reads its neighbours'
snapshots, and sets the weights to the mode's mix of ``x`` and the neighbours plus ``v``. With
``torch.optim.SGD(momentum=mu)`` this is exactly the update of ``pcasgd train``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pcasgd import delays as delay_models
from pcasgd import topology as topologies
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import ConsensusAgent, StepReport
from pcasgd.engine import check_finite
from pcasgd.errors import ConfigError, UsageError
from pcasgd.flat import copy_into_parameters, flat_device, parameter_offsets


def init():
    """Initialise MPI (through mpi4py) and return ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


Broadcastable = nn.Module | Mapping[str, Tensor] | Iterable[Tensor] | Iterable[tuple[str, Tensor]]


def broadcast_parameters(tensors: Broadcastable, root: int = 0, comm=None, *, root_rank: int | None = None) -> None:
    """Overwrite every rank's tensors with ``root``'s, in place (call once, before training).

    ``tensors``: a module (its parameters and its buffers, such as BatchNorm's running
    statistics), a ``state_dict()``, or an iterable of tensors or of ``(name, tensor)`` pairs
    (``named_parameters()``), as Horovod's ``broadcast_parameters`` takes them. ``root_rank`` is
    Horovod's name for ``root``. Tensors are sent in one message per dtype.
    """
    comm = comm if comm is not None else init()
    root = root if root_rank is None else root_rank
    if isinstance(tensors, nn.Module):
        found = [*tensors.parameters(), *tensors.buffers()]
    elif isinstance(tensors, Mapping):
        found = list(tensors.values())
    else:
        found = [item[1] if isinstance(item, tuple) else item for item in tensors]
    bad = [type(t).__name__ for t in found if not isinstance(t, Tensor)]
    if bad:
        raise ConfigError(f"broadcast_parameters takes tensors; got {', '.join(sorted(set(bad)))}")
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in found:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    with torch.no_grad():
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).cpu() for t in group])
            comm.Bcast(flat.numpy(), root=root)
            offset = 0
            for tensor in group:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


def _check_same_parameters(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> None:
    """The wrapped optimizer must step exactly the model's trainable parameters: the mix writes
    the model's, so an optimizer over other tensors would train nothing that is shared."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trained = {id(p) for p in params}
    if stepped != trained:
        raise ConfigError(
            "the torch optimizer must hold exactly the model's trainable parameters: "
            f"{len(stepped - trained)} of its {len(stepped)} tensors are not the model's, and "
            f"{len(trained - stepped)} of the model's {len(trained)} are not in it"
        )


class DecentralizedOptimizer(torch.optim.Optimizer):
    """Wraps a torch optimizer so that each ``step()`` also mixes this rank with its neighbours.

    It *is* a :class:`torch.optim.Optimizer` whose ``param_groups`` and ``state`` are the wrapped
    optimizer's, so torch's learning-rate schedulers drive it, and the rate they set reaches the
    predictor at every step. ``mode``: ``dsgd``, ``asgd``, ``pcasgd``, ``pcasgd-pv``,
    ``predict`` or ``clip``; ``topology`` and ``weights`` as for ``pcasgd train``; ``delay``:
    an injected lag spec (for experiments); ``deterministic``: lock-step ranks (reproducible);
    ``deadline``: seconds any wait may take; ``iterations_per_epoch``: needed by ``pcasgd-pv``'s
    warm-up, which is counted in epochs; ``progress_thread`` and ``host_staging``: as the
    ``pcasgd train`` flags (the exchange is built as ``pcasgd train --backend mpi`` builds it).
    Other keyword arguments are :class:`~pcasgd.algorithms.AlgorithmConfig` options (``theta``,
    ``predictor``, ``lam``, ...). The flat vectors stay on the model's device. Call
    :meth:`close` (or use ``with``) on every rank at the end: it frees the MPI windows,
    collectively.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        mode: str = "pcasgd",
        topology: str = "ring",
        weights: str = "auto",
        delay: str = "none",
        deterministic: bool = False,
        deadline: float = 60.0,
        iterations_per_epoch: int | None = None,
        seed: int = 0,
        comm=None,
        progress_thread: bool = False,
        host_staging: str = "auto",
        **options: Any,
    ) -> None:
        from pcasgd.runtime.checks import check_same_everywhere, model_signature
        from pcasgd.runtime.device import stage_through_host
        from pcasgd.runtime.exchange import ExchangeEndpoint, MpiOptions
        from pcasgd.transport.deadline import Deadline
        from pcasgd.transport.staging import HostStaging

        self.optimizer = optimizer
        self.model = model
        self.comm = comm if comm is not None else init()
        self.rank = self.comm.Get_rank()
        self.config = AlgorithmConfig(mode=mode, lr=float(optimizer.param_groups[0]["lr"]), **options)
        if self.config.family != "decentralized":
            raise ConfigError(f"DecentralizedOptimizer runs the decentralized modes, not {mode!r}")
        if mode == "pcasgd-pv" and self.config.pv_warmup_epochs > 0 and iterations_per_epoch is None:
            raise ConfigError("pcasgd-pv counts its warm-up in epochs: pass iterations_per_epoch")
        self.iterations_per_epoch = iterations_per_epoch
        self.params = [p for p in model.parameters() if p.requires_grad]
        _check_same_parameters(optimizer, self.params)
        self.device = flat_device(self.params)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # the same dicts: a scheduler's change is the optimizer's
        self.state = optimizer.state
        schedule = topologies.build(topology, self.comm.Get_size(), weights, seed)
        lags = delay_models.parse(delay, seed)
        lags.check_fits(self.comm.Get_size())
        staging = HostStaging(self.device, stage_through_host(self.device, host_staging))
        self.deadline = Deadline(self.rank, deadline)
        try:
            with self.deadline.guard("agreeing on the optimizer's configuration with the other ranks (collective)"):
                settings = (
                    f"{self.config.to_dict()} {topology} {weights} {delay} {deterministic} {iterations_per_epoch}"
                )
                check_same_everywhere(self.comm, "the DecentralizedOptimizer configuration", settings)
                check_same_everywhere(self.comm, "the model's parameter shapes and dtypes", model_signature(model))
            flat = self._flat_params()
            self.agent = ConsensusAgent(self.config, flat, parameter_offsets(self.params))
            mpi = MpiOptions(deterministic, progress_thread=progress_thread, staging=staging)
            endpoint = ExchangeEndpoint(self.comm, flat, schedule, lags, self.config, mpi, self.deadline)
        except BaseException:
            self.deadline.close()
            raise
        self.window, self.progress, self.exchange = endpoint.window, endpoint.progress, endpoint.exchange
        self.iteration = 0
        self.last_report: StepReport | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        if self.window.win is None:
            raise UsageError("step() after close(): the windows are freed; build a new DecentralizedOptimizer")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        before = self._flat_params()
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        lr = float(self.param_groups[0]["lr"])  # what a scheduler set for this step
        self.optimizer.step()
        local_update = self._flat_params().sub_(before)
        self.progress.poke()
        reads, self_weight = self.exchange.exchange(self.iteration, before, grad)
        epoch = self.iteration / self.iterations_per_epoch if self.iterations_per_epoch else 0.0
        self.agent.params = before
        self.last_report = self.agent.step(grad, reads, self_weight, epoch, local_update=local_update, lr=lr)
        check_finite(self.agent.params, f"rank {self.rank}", self.iteration)
        copy_into_parameters(self.params, self.agent.params)
        self.iteration += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state plus the algorithm's (history, MeanSquare, counters)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "pcasgd": {"agent": self.agent.state_dict(), "iteration": self.iteration, "config": self.config.to_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, Mapping) or not isinstance(state.get("pcasgd"), Mapping) or "optimizer" not in state:
            keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(
                f"not a DecentralizedOptimizer state (it holds {keys}): load what its state_dict() returned; "
                "a plain torch optimizer's state goes to .optimizer.load_state_dict()"
            )
        missing = [key for key in ("agent", "iteration", "config") if key not in state["pcasgd"]]
        if missing:
            raise ConfigError(f"this DecentralizedOptimizer state lacks {', '.join(missing)}")
        saved = state["pcasgd"]["config"]
        if saved != self.config.to_dict():
            differing = sorted(k for k in saved if saved[k] != self.config.to_dict().get(k))
            raise ConfigError(f"this state was saved with other options: {differing}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.agent.load_state_dict(state["pcasgd"]["agent"])
        self.iteration = int(state["pcasgd"]["iteration"])

    # -- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Tell the neighbours this rank is done, wait for every rank, free the windows (collective)."""
        from pcasgd.transport.windows import FLAG_FINISHED

        if self.window.win is None:
            return
        try:
            self.window.set_flags(FLAG_FINISHED)
            self.deadline.wait(self.comm.Ibarrier(), "the other ranks' close()")
            self.progress.close()
            with self.deadline.guard("freeing the windows (collective)"):
                self.window.close()
        finally:
            self.deadline.close()

    def __enter__(self) -> DecentralizedOptimizer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:  # no collective call after a failure: other ranks may be gone
            self.deadline.close()

    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])  # a new tensor, on the model's device
