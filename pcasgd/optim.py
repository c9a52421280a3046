"""Training inside your own loop: your torch optimizer, wrapped so that each ``step()`` also runs
one of pcasgd's modes over MPI, one rank per agent.

    pcasgd.init()
    model = Net()
    pcasgd.broadcast_parameters(model)                 # every rank starts from rank 0's weights
    opt = pcasgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                      model, mode="pcasgd", topology="ring")
    with opt:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        opt.join()                                     # no more data here (close() joins too)

:func:`DistributedOptimizer` gives a :class:`DecentralizedOptimizer` for the decentralized modes
and a :class:`CollectiveOptimizer` for ``ssgd`` and ``odsgd``. Both *are*
``torch.optim.Optimizer``\\ s whose ``param_groups`` and ``state`` are the wrapped optimizer's, so
torch's schedulers drive them and the rate they set reaches the algorithm at every step.

Decentralized, each ``step()``: your optimizer takes its step from the current weights ``x``
(that displacement is the local update ``v``), this rank publishes ``(x, g)`` in its MPI window,
reads its neighbours' snapshots, and sets the weights to the mode's mix of ``x`` and the
neighbours plus ``v``. With ``torch.optim.SGD(momentum=mu)`` this is exactly the update of
``pcasgd train``. With ``overlap=True`` the end of each ``step()`` publishes the new weights and
starts the next step's reads, which fly during your forward and backward pass (ALGORITHMS.md,
"Revision 2"); the next ``step()`` completes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from pcasgd import delays as delay_models
from pcasgd import topology as topologies
from pcasgd.algorithms.collective import OneStepDelayAgent
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import ConsensusAgent, StepReport
from pcasgd.collectives import init
from pcasgd.engine import check_finite
from pcasgd.errors import ConfigError, UsageError
from pcasgd.flat import copy_into_parameters, flat_device, parameter_offsets
from pcasgd.horovod_names import horovod_options
from pcasgd.protocol.one_step_delay import ReductionQueue, complete_reductions, one_step_delay_step
from pcasgd.runtime.launch import DEFAULT_DEADLINE
from pcasgd.sync_batchnorm import in_use as sync_batchnorm_in_use

NamedTensors = Iterable[tuple[str, Tensor]]


def DistributedOptimizer(  # noqa: N802 (Horovod's name, for a class chosen by the mode)
    optimizer: torch.optim.Optimizer, model: nn.Module | None = None, mode: str = "pcasgd", **options: Any
) -> DecentralizedOptimizer | CollectiveOptimizer:
    """The optimizer wrapper that runs ``mode``: :class:`DecentralizedOptimizer` (dsgd, asgd,
    pcasgd, pcasgd-pv, predict, clip) or :class:`CollectiveOptimizer` (ssgd, odsgd), with
    ``options`` passed on. The parameter-server modes need a server rank: run them with
    ``pcasgd train``."""
    family = AlgorithmConfig(mode=mode).family
    wrappers = {"decentralized": DecentralizedOptimizer, "collective": CollectiveOptimizer}
    if family not in wrappers:
        raise ConfigError(
            f"the {family} modes need a server rank and run only as `pcasgd train` (no optimizer wrapper)"
        )
    return wrappers[family](optimizer, model, mode=mode, **options)


def _trained_tensors(
    optimizer: torch.optim.Optimizer, model: nn.Module | None, named_parameters: NamedTensors | None
) -> list[Tensor]:
    """The tensors the wrapper trains: the model's (or ``named_parameters``') trainable parameters,
    else the optimizer's. The wrapped optimizer must step exactly those: the algorithm writes
    them, so an optimizer over other tensors would train nothing that is shared."""
    if model is not None and named_parameters is not None:
        raise ConfigError("pass the model or named_parameters, not both")
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be an nn.Module, not {type(model).__name__}: pass (name, tensor) pairs as named_parameters="
        )
    if model is not None:
        found = [p for p in model.parameters() if p.requires_grad]
    elif named_parameters is not None:
        found = [p for _, p in named_parameters if p.requires_grad]
    else:
        return [p for group in optimizer.param_groups for p in group["params"]]
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trained = {id(p) for p in found}
    if stepped != trained:
        raise ConfigError(
            "the torch optimizer must hold exactly the model's trainable parameters: "
            f"{len(stepped - trained)} of its {len(stepped)} tensors are not the model's, and "
            f"{len(trained - stepped)} of the model's {len(trained)} are not in it"
        )
    return found


def _flat(tensors: list[Tensor], out: Tensor | None = None) -> Tensor:
    """The tensors in one vector, on their device (a new one unless ``out``)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors], out=out)


def _flat_gradient(params: list[Tensor], out: Tensor) -> Tensor:
    """The parameters' gradients written into ``out`` (zeros where the loss did not reach)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params], out=out)


def _algorithm_config(mode: str, optimizer: torch.optim.Optimizer, options: dict[str, Any]) -> AlgorithmConfig:
    """The algorithm's configuration from a wrapper's remaining keywords; an unknown one is named."""
    known = {field.name for field in fields(AlgorithmConfig)} - {"mode", "lr"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option {', '.join(unknown)}; the algorithm's options: {', '.join(sorted(known))}")
    return AlgorithmConfig(mode=mode, lr=_base_lr(optimizer), **options)


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate the optimizer was made with (a scheduler's warm-up may have set the current one to 0)."""
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))


def _signature(tensors: list[Tensor]) -> str:
    return ";".join(f"{tuple(t.shape)}:{t.dtype}" for t in tensors)


class _RankOptimizer(torch.optim.Optimizer):
    """What both wrappers share: the wrapped optimizer's ``param_groups`` and ``state``, the trained
    tensors, this rank's watchdog, the agreement of all ranks on the configuration, and the end of
    the run (:meth:`join`, then :meth:`close`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[Tensor],
        config: AlgorithmConfig,
        family: str,
        comm: Any,
        deadline: float,
    ) -> None:
        from pcasgd.transport.deadline import Deadline

        if config.family != family:
            wanted = "DecentralizedOptimizer" if config.family == "decentralized" else "CollectiveOptimizer"
            raise ConfigError(
                f"{type(self).__name__} runs the {family} modes, not {config.mode!r}"
                + (f" (use {wanted}, or DistributedOptimizer)" if config.family != "server" else "")
            )
        self.optimizer = optimizer
        self.params = params
        self.config = config
        self.comm = comm if comm is not None else init()
        self.rank = self.comm.Get_rank()
        self.device = flat_device(params)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # the same dicts: a scheduler's change is the optimizer's
        self.state = optimizer.state
        self.deadline = Deadline(self.rank, deadline)
        self.iteration = 0
        self.joined = False
        self._skipping = False

    def _agree(self, settings: str, tensors: list[Tensor]) -> None:
        from pcasgd.runtime.checks import check_same_everywhere

        name = type(self).__name__
        with self.deadline.guard(f"agreeing on the {name} configuration with the other ranks (collective)"):
            check_same_everywhere(self.comm, f"the {name} configuration", f"{self.config.to_dict()} {settings}")
            check_same_everywhere(self.comm, "the trained tensors' shapes and dtypes", _signature(tensors))

    @property
    def lr(self) -> float:
        """This step's learning rate, as the schedulers set it."""
        return float(self.param_groups[0]["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def synchronize(self) -> None:
        """Make ``.grad`` what ``step()`` applies, before you act on it (``GradScaler.unscale_``,
        gradient clipping), as Horovod's ``synchronize()``. The decentralized modes and odsgd
        apply this rank's own gradient: nothing to wait for. ssgd averages it here."""

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Horovod's: ``step()`` inside applies ``.grad`` as it is (call :meth:`synchronize` first)."""
        self._skipping = True
        try:
            yield
        finally:
            self._skipping = False

    def _check_training(self, call: str) -> None:
        """``call`` needs this rank still training: not closed, not joined."""
        if self.closed:
            raise UsageError(f"{call} after close(): the MPI resources are freed; build a new {type(self).__name__}")
        if self.joined:
            raise UsageError(f"{call} after join(): this rank has left the training")

    def _start_step(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        self._check_training("step()")
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state, and what the algorithm needs to resume (the weights are
        the model's, which you save)."""
        state = {"iteration": self.iteration, "config": self.config.to_dict(), **self._algorithm_state()}
        return {"optimizer": self.optimizer.state_dict(), "pcasgd": state}

    def _state_keys(self) -> tuple[str, ...]:
        return ("iteration", "config")

    def _algorithm_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        name = type(self).__name__
        if not isinstance(state, Mapping) or not isinstance(state.get("pcasgd"), Mapping) or "optimizer" not in state:
            keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(
                f"not a {name} state (it holds {keys}): load what its state_dict() returned; "
                "a plain torch optimizer's state goes to .optimizer.load_state_dict()"
            )
        missing = [key for key in self._state_keys() if key not in state["pcasgd"]]
        if missing:
            raise ConfigError(f"this {name} state lacks {', '.join(missing)}")
        saved = state["pcasgd"]["config"]
        if saved != self.config.to_dict():
            differing = sorted(k for k in saved if saved[k] != self.config.to_dict().get(k))
            raise ConfigError(f"this state was saved with other options: {differing}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["pcasgd"]["iteration"])
        self._load_pcasgd_state(state["pcasgd"])

    def _load_pcasgd_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    # -- the end ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def join(self) -> None:
        raise NotImplementedError

    def _free(self) -> None:
        """Free this wrapper's MPI resources (collective; every rank has joined)."""
        raise NotImplementedError

    def close(self) -> None:
        """Join (if not yet), wait for every rank, free the MPI resources (collective)."""
        if self.closed:
            return
        try:
            self.join()
            self.deadline.wait(self.comm.Ibarrier(), "the other ranks' close()")
            self._free()
        finally:
            self.deadline.close()

    def __enter__(self) -> _RankOptimizer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:  # no collective call after a failure: other ranks may be gone
            self.deadline.close()


class DecentralizedOptimizer(_RankOptimizer):
    """Wraps a torch optimizer so that each ``step()`` also mixes this rank with its neighbours.

    ``mode``: ``dsgd``, ``asgd``, ``pcasgd``, ``pcasgd-pv``, ``predict`` or ``clip``; ``topology``
    and ``weights`` as for ``pcasgd train``; ``delay``: an injected lag spec (for experiments);
    ``deterministic``: lock-step ranks (reproducible); ``deadline``: seconds any wait may take;
    ``iterations_per_epoch``: needed by ``pcasgd-pv``'s warm-up, which is counted in epochs;
    ``progress_thread`` and ``host_staging``: as the ``pcasgd train`` flags (the exchange is built
    as ``pcasgd train --backend mpi`` builds it); ``overlap``: as ``--overlap``, the reads of the
    neighbours fly during the forward and backward pass that follow a ``step()``. The ``momentum``
    predictor continues a neighbour's trajectory with your optimizer's ``momentum`` (0 for one
    without, such as Adam) unless ``momentum=`` is given. ``model`` or ``named_parameters`` name the
    trained tensors (default: the optimizer's); ``mix_buffers``: mix the model's floating-point
    buffers (BatchNorm's running statistics) with the parameters, as weights whose gradient is
    zero. Other keyword arguments are :class:`~pcasgd.algorithms.AlgorithmConfig` options
    (``theta``, ``predictor``, ``lam``, ...). The flat vectors stay on the model's device.

    A rank with fewer batches calls :meth:`join` (or :meth:`close`): its neighbours mix its last
    snapshot until every rank has joined. Call :meth:`close` (or use ``with``) on every rank at the
    end: it frees the MPI windows, collectively.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        mode: str = "pcasgd",
        topology: str = "ring",
        weights: str = "auto",
        delay: str = "none",
        deterministic: bool = False,
        deadline: float = DEFAULT_DEADLINE,
        iterations_per_epoch: int | None = None,
        seed: int = 0,
        comm=None,
        progress_thread: bool = False,
        host_staging: str = "auto",
        named_parameters: NamedTensors | None = None,
        mix_buffers: bool = False,
        fault_tolerant: bool = False,
        **options: Any,
    ) -> None:
        from pcasgd.runtime.device import stage_through_host
        from pcasgd.runtime.exchange import ExchangeEndpoint, MpiOptions
        from pcasgd.runtime.recovery import DecentralizedWorld, Recovery
        from pcasgd.transport.staging import HostStaging

        options.setdefault("momentum", float(optimizer.param_groups[0].get("momentum", 0.0)))
        options, _ = horovod_options(options, mode)  # a sum is refused there: only ssgd sums
        config = _algorithm_config(mode, optimizer, options)
        params = _trained_tensors(optimizer, model, named_parameters)
        super().__init__(optimizer, params, config, "decentralized", comm, deadline)
        try:
            if mode == "pcasgd-pv" and config.pv_warmup_epochs > 0 and iterations_per_epoch is None:
                raise ConfigError("pcasgd-pv counts its warm-up in epochs: pass iterations_per_epoch")
            if mix_buffers and model is None:
                raise ConfigError("mix_buffers mixes the model's buffers: pass the model")
            if sync_batchnorm_in_use(model, params):
                raise ConfigError(
                    "SyncBatchNorm pools the batch statistics of identical models (ssgd, odsgd); decentralized "
                    "agents hold different models: use nn.BatchNorm with mix_buffers=True to mix their statistics, "
                    "or mode='ssgd' to keep SyncBatchNorm"
                )
            if fault_tolerant:
                from pcasgd.runtime.faults import check_enabled

                if deterministic:
                    raise ConfigError("fault_tolerant needs the asynchronous mode: lock-step ranks wait for a dead one")
                check_enabled()
            self.iterations_per_epoch = iterations_per_epoch
            self.deterministic = deterministic
            buffers = [b for b in model.buffers() if b.is_floating_point()] if mix_buffers else []
            self.mixed = params + buffers  # what the mix reads and writes, in this order
            schedule = topologies.build(topology, self.comm.Get_size(), weights, seed)
            lags = delay_models.parse(delay, seed)
            lags.check_fits(self.comm.Get_size())
            staging = HostStaging(self.device, stage_through_host(self.device, host_staging))
            self._agree(
                f"{topology} {weights} {delay} {deterministic} {iterations_per_epoch} {mix_buffers}", self.mixed
            )
            flat = _flat(self.mixed)
            self.agent = ConsensusAgent(config, flat, parameter_offsets(self.mixed))
            mpi = MpiOptions(
                deterministic, progress_thread=progress_thread, staging=staging, fault_tolerant=fault_tolerant
            )
            endpoint = ExchangeEndpoint(
                self.comm, flat, schedule, lags, config, mpi, self.deadline, final_snapshots=True
            )
            self.recovery = Recovery.on(self.comm, None, self.deadline, fault_tolerant)
        except BaseException:
            self.deadline.close()
            raise
        self.window, self.exchange = endpoint.window, endpoint.exchange
        self.world = DecentralizedWorld(self.comm, schedule, endpoint.exchange, endpoint.progress, self.agent)
        self.fault_tolerant, self.progress_thread = fault_tolerant, progress_thread
        self._reset_callbacks: list[Callable[[], None]] = []
        if fault_tolerant:
            # The process will end without MPI_Finalize: it hangs in ULFM's failure detector (which
            # launch/mpirun.sh --fault-tolerant arms), and after a recovery on the abandoned windows.
            # Registered now, so that it runs after a close() registered later (pcasgd.elastic's).
            from pcasgd.runtime.faults import end_without_finalize_at_exit

            end_without_finalize_at_exit()
        trained = sum(p.numel() for p in params)
        self._grad = torch.zeros_like(flat)  # buffers' part stays zero
        self._trained_grad = self._grad[:trained]
        self._update = torch.empty_like(flat)
        self.last_report: StepReport | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._start_step(closure)
        before = _flat(self.mixed)  # a new tensor: the agent keeps it as this step's own weights
        _flat_gradient(self.params, out=self._trained_grad)
        grad = self._grad
        lr = self.lr
        if not self.exchange.pending:  # blocking, or the first step with overlap: publish and read now
            published = self.agent.last_grad if self.config.overlap else grad  # overlap: the previous one
            self._surviving(lambda: self.exchange.start(self.iteration, before, published, self._displacement()))
        self.optimizer.step()
        local_update = _flat(self.mixed, out=self._update).sub_(before)
        gathered = self._surviving(self._finish_reads, lambda: self._read_again(before, grad))
        epoch = gathered.progress / self.iterations_per_epoch if self.iterations_per_epoch else 0.0
        self.agent.params = before
        self.last_report = self.agent.step(
            grad, gathered.reads, gathered.self_weight, epoch, local_update=local_update, lr=lr
        )
        check_finite(self.agent.params, f"rank {self.rank}", self.iteration)
        copy_into_parameters(self.mixed, self.agent.params)
        self.iteration += 1
        if self.config.overlap:  # the next step's reads fly during its forward and backward pass
            self._surviving(lambda: self.exchange.start(self.iteration, self.agent.params, grad, self._displacement()))
        return loss

    def _finish_reads(self):
        self.world.progress.poke()
        if self.fault_tolerant:
            from pcasgd.runtime.faults import notice_failures

            notice_failures(self.comm)
        return self.exchange.finish()

    def _read_again(self, before: Tensor, grad: Tensor):
        """After a recovery: publish and read in the new world (blocking)."""
        self.exchange.start(self.iteration, before, grad, self._displacement())
        return self._finish_reads()

    def _surviving(self, call: Callable[[], Any], after_recovery: Callable[[], Any] | None = None) -> Any:
        """``call()``; under ``fault_tolerant``, a rank's death there is survived: the world is
        rebuilt (:class:`~pcasgd.runtime.recovery.DecentralizedWorld`, as ``pcasgd train`` does),
        the reset callbacks run, and ``after_recovery()`` (default: nothing) is returned instead,
        retried through every further death."""
        if not self.fault_tolerant:
            return call()
        from mpi4py import MPI

        from pcasgd.errors import ProcessFailedError
        from pcasgd.runtime.faults import is_process_failure

        while True:
            try:
                return call()
            except (ProcessFailedError, MPI.Exception) as error:
                if not is_process_failure(error, self.comm):
                    raise
            self._survive()
            if after_recovery is None:
                return None
            call = after_recovery

    def _survive(self) -> None:
        from pcasgd import collectives

        old = self.comm
        ids, noticed = self.world.survive(self.recovery, self.deadline, self.progress_thread)
        self.comm, self.rank = self.world.comm, self.world.comm.Get_rank()
        collectives.world_changed(old, self.comm)
        goes_on = f"{len(ids)} ranks go on from step {self.iteration} over '{self.world.schedule.name}'"
        # no files to write: rank 0 of the new world says what happened on stderr, and every rank
        # keeps the events (world_changes), stamped as stepped now: this step goes on at once
        name = self.world.schedule.name
        self.recovery.lose(ids, self.iteration, noticed, name, "died", goes_on, recording_may_die=True)
        self.recovery.stepped()
        for callback in self._reset_callbacks:
            callback()

    def register_reset_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        """Horovod Elastic's name: ``callbacks`` run on every rank after a dead rank was survived
        (``fault_tolerant=True``), when :func:`pcasgd.rank` and :func:`pcasgd.size` already answer
        for the new world: re-shard your data there, rescale the learning rate."""
        self._reset_callbacks.extend(callbacks)

    @property
    def world_changes(self) -> list[dict[str, Any]]:
        """Every recovery so far (who died, the new world, when), as ``events.jsonl`` has them."""
        return self.recovery.events

    def _displacement(self) -> Tensor | None:
        """The last local step, for predictors that continue it (published with the weights)."""
        return self.agent.last_step if self.config.publishes_displacement else None

    def join(self) -> None:
        """This rank has no more batches: its weights stay as they are, and its neighbours mix its
        last snapshot (``dsgd`` stops waiting for it) until every rank has joined. Returns when
        every rank has joined. Collective (:meth:`close` joins first if needed)."""
        from pcasgd.transport.deadline import POLL_SECONDS
        from pcasgd.transport.windows import FLAG_FINISHED

        if self.joined or self.closed:
            return
        self.joined = True
        self.exchange.settle()  # overlap: the reads started for a step that will not come
        # its final weights, standing still from now on (no displacement to extrapolate)
        still = torch.zeros_like(self._grad) if self.agent.config.publishes_displacement else None
        k = self.iteration
        if self.deterministic:  # keep the lock step, publishing the same weights, until all have joined
            while True:
                self.exchange.publish(k, self.agent.params, self._grad, displacement=still)
                if self.exchange.lock_step(k, stepping=False) == 0:
                    return
                k += 1
        self.exchange.publish(k, self.agent.params, self._grad, displacement=still)
        self.window.set_flags(FLAG_FINISHED)

        def everyone_joined() -> None:  # in the world as it is: a death meanwhile is survived, then waited again
            everyone = self.comm.Ibarrier()
            while not everyone.Test():  # as long as the ranks still stepping make progress
                self.exchange.watch_neighbours(self.iteration)
                time.sleep(POLL_SECONDS)

        self._surviving(everyone_joined, everyone_joined)

    def _state_keys(self) -> tuple[str, ...]:
        return (*super()._state_keys(), "agent")

    def _algorithm_state(self) -> dict[str, Any]:
        """The agent's counters and the neighbours' gradient MeanSquares."""
        return {"agent": self.agent.state_dict(weights=False)}

    def _load_pcasgd_state(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])

    @property
    def closed(self) -> bool:
        return self.window.win is None

    def _free(self) -> None:
        self.world.progress.close()
        self.exchange.close()
        if self.recovery.events:  # freeing is collective over the dead ranks too, and would hang
            from pcasgd.runtime.faults import abandon

            abandon(self.window.win)
            self.window.win = None
            return
        with self.deadline.guard("freeing the windows (collective)"):
            self.window.close()


class _TorchGlobalStep:
    """odsgd's global optimizer as the wrapped torch optimizer: the global weights ``W`` go into
    the model, the torch optimizer steps them with the mean gradient, and ``W`` is read back."""

    def __init__(self, wrapper: CollectiveOptimizer, params: Tensor) -> None:
        self.wrapper = wrapper
        self.params = params.clone()

    def apply(self, mean_grad: Tensor, epoch: float = 0.0) -> None:
        wrapper = self.wrapper
        copy_into_parameters(wrapper.params, self.params)
        wrapper.set_gradients(mean_grad)
        wrapper.optimizer.step()
        _flat(wrapper.params, out=self.params)


class CollectiveOptimizer(_RankOptimizer):
    """Wraps a torch optimizer for the collective modes.

    ``ssgd``: each ``step()`` averages the gradients over the ranks (an MPI allreduce, started when
    ``step()`` is called) and then takes your optimizer's step: every rank holds the same weights,
    as with Horovod's ``DistributedOptimizer``. ``odsgd``: the model holds the local weights
    ``W~``; each ``step()`` starts the allreduce of this step's gradient, completes the one
    started the step before (its one-step delay) into the global weights ``W`` with your
    optimizer, and sets ``W~ = W - alpha_l g``; the first ``odsgd_warmup`` steps are ssgd.
    A rank with fewer batches calls :meth:`join` (or :meth:`close`): it then adds nothing to the
    reductions but applies them, so its weights stay those of the others.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        mode: str = "ssgd",
        deadline: float = DEFAULT_DEADLINE,
        comm=None,
        progress_thread: bool = False,
        host_staging: str = "auto",
        named_parameters: NamedTensors | None = None,
        **options: Any,
    ) -> None:
        from pcasgd.runtime.device import stage_through_host
        from pcasgd.transport.progress import MpiProgress
        from pcasgd.transport.staging import HostStaging

        options, self.summed = horovod_options(options, mode)  # op=Sum: the summed gradient
        config = _algorithm_config(mode, optimizer, options)
        params = _trained_tensors(optimizer, model, named_parameters)
        super().__init__(optimizer, params, config, "collective", comm, deadline)
        try:
            self._agree("", params)
            self.staging = HostStaging(self.device, stage_through_host(self.device, host_staging))
            self.progress = MpiProgress(self.comm, thread=progress_thread)
        except BaseException:
            self.deadline.close()
            raise
        flat = _flat(params)
        # Two send vectors (odsgd keeps one reduction in flight): the gradient, then 1 for a rank
        # that contributes, 0 for one that has joined; the mean divides by that count.
        self._send = [torch.zeros(flat.numel() + 1, dtype=flat.dtype, device=flat.device) for _ in range(2)]
        self.agent = OneStepDelayAgent(config, flat, _TorchGlobalStep(self, flat)) if mode == "odsgd" else None
        self.queue: ReductionQueue[Any] = ReductionQueue(config)
        self._closed = False
        self._synchronized = False

    def synchronize(self) -> None:
        """ssgd: average ``.grad`` over the ranks now (once per step), so that what you do to it
        before ``step()`` (unscaling, clipping) acts on the mean, as with Horovod."""
        if self.agent is None and not self._synchronized:
            self._check_training("synchronize()")
            self.set_gradients(self._mean(self._start_reduction(contributes=True), self.iteration))
            self._synchronized = True

    def set_gradients(self, flat_grad: Tensor) -> None:
        """Write ``flat_grad`` into the parameters' ``.grad``."""
        offset = 0
        for p in self.params:
            part = flat_grad[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.copy_(part)
            offset += p.numel()

    def _start_reduction(self, contributes: bool) -> Any:
        from pcasgd.runtime.collective import PendingMean

        send = self._send[self.iteration % 2]
        if contributes:
            _flat_gradient(self.params, out=send[:-1])
            send[-1] = 1.0
        else:
            send.zero_()
        self.progress.poke()
        return PendingMean(self.comm, send, self.staging, self.iteration, self.config.compression)

    def _mean(self, reduction: Any, started: int) -> Tensor | None:
        """The mean gradient of a reduction (None when no rank contributed: all have joined)."""
        if isinstance(reduction, Tensor):
            return reduction
        total = reduction.total(self.deadline, started)
        count = float(total[-1])
        if count == 0:
            return None
        return total[:-1] if self.summed else total[:-1].div(count)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._start_step(closure)
        t = self.iteration
        if self.agent is None:  # ssgd
            if not self._skipping:
                self.synchronize()
            self._synchronized = False
            self.optimizer.step()
            for param in self.params:  # one sum each: no model-sized copy
                check_finite(param, f"rank {self.rank}", t)
        else:
            self._odsgd_step(t, self._start_reduction(contributes=True))
        self.iteration += 1
        return loss

    def _odsgd_step(self, t: int, reduction: Any) -> None:
        grad = self._send[t % 2][:-1]  # MPI only reads it while the reduction is in flight
        one_step_delay_step([self.agent], [grad], self.queue, t, reduction, self._mean, lr=self.lr)
        check_finite(self.agent.global_params, f"rank {self.rank}", t)
        copy_into_parameters(self.params, self.agent.local_params)

    def join(self) -> None:
        """This rank has no more batches: it completes its reductions in flight, then adds zeros
        to the others' (and applies their means, so its weights stay theirs) until every rank has
        joined. odsgd's model then holds the global weights. Collective (:meth:`close` joins first)."""
        if self.joined or self.closed:
            return
        self.joined = True
        if self.agent is not None:
            complete_reductions([self.agent], self.queue.drain(), self._mean)
        while True:
            mean = self._mean(self._start_reduction(contributes=False), self.iteration)
            self.iteration += 1
            if mean is None:
                break
            if self.agent is None:
                self.set_gradients(mean)
                self.optimizer.step()
            else:
                self.agent.complete(mean)
        if self.agent is not None:
            self.agent.sync_local()
            copy_into_parameters(self.params, self.agent.local_params)

    def _state_keys(self) -> tuple[str, ...]:
        return (*super()._state_keys(), *(("global_params", "in_flight") if self.agent is not None else ()))

    def _algorithm_state(self) -> dict[str, Any]:
        """odsgd: the global weights and the reduction in flight (completed here: a local wait, no
        collective call, so rank 0 alone may save)."""
        if self.agent is None:
            return {}
        in_flight = self.queue.in_flight
        for index, (started, pending) in enumerate(in_flight):
            in_flight[index] = (started, self._mean(pending, started))
        return {"global_params": self.agent.global_params.clone(), "in_flight": list(in_flight)}

    def _load_pcasgd_state(self, state: Mapping[str, Any]) -> None:
        if self.agent is not None:
            self.agent.global_params.copy_(state["global_params"])
            self.queue = ReductionQueue(self.config, [(s, mean.to(self.device)) for s, mean in state["in_flight"]])

    @property
    def closed(self) -> bool:
        return self._closed

    def _free(self) -> None:
        self.progress.close()
        self._closed = True
