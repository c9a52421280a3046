"""Decentralized consensus modes: dsgd, asgd, pcasgd, pcasgd-pv, predict, clip.

One :class:`ConsensusAgent` per agent. The engine (simulator or MPI runtime) hands it the
agent's gradient and the neighbour snapshots it read; the agent applies ALGORITHMS.md's update.
``dsgd`` and ``asgd`` share the plain mix: the difference is only whether the engine waits for
fresh snapshots (dsgd) or passes whatever it has (asgd).
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.prediction import (
    adaptive_lambda,
    predict_draft,
    predict_extrapolate,
    predict_momentum,
    predict_taylor,
    predict_trajectory,
    update_mean_square,
)
from pcasgd.algorithms.quality import PredictionQuality
from pcasgd.algorithms.sgd import momentum_velocity
from pcasgd.errors import ConfigError


@dataclass(frozen=True)
class Snapshot:
    """What an agent publishes: its parameters, the gradient computed at them, its iteration
    (``stamp``); when it published (``published``, simulated or wall time) and its recent mean
    step period (``period``, same unit), from which readers compute the snapshot's age; the run's
    progress as it knows it (``progress``: the largest iteration count it has seen, which sets
    every agent's epoch); and, for the ``extrapolate`` and ``momentum`` predictors, its last local
    step (its velocity ``v`` under momentum SGD: the step that brought it to ``params``).

    With ``--overlap`` a snapshot is published before its gradient is computed: ``grad`` is then
    the gradient of the publisher's previous iteration (zeros before the first)."""

    params: Tensor
    grad: Tensor | None  # None where no reader needs it (AlgorithmConfig.snapshot_vectors)
    stamp: int
    published: float = 0.0
    period: float = 1.0
    progress: int = 0
    displacement: Tensor | None = None


@dataclass(frozen=True)
class NeighbourRead:
    """One neighbour's snapshot as read by an agent, with its mixing weight, its stamp staleness
    ``tau = k - stamp`` (a metric), and its ages (ALGORITHMS.md, "Revision"): ``age`` in the
    neighbour's steps (``a_ij``, which decides delayed or fresh), ``own_age`` in the reader's
    (``b_ij``)."""

    source: int
    weight: float
    snapshot: Snapshot
    staleness: int
    age: float = 0.0
    own_age: float = 0.0


@dataclass(frozen=True)
class StepReport:
    """What one update did, for metrics: staleness and age per read, delayed count, pv choice."""

    staleness: tuple[int, ...]
    ages: tuple[tuple[int, float], ...]  # (source, age) per read
    delayed: int
    decision: str  # "mix" (dsgd/asgd/warm-up), "blend" (fixed theta), "predict" or "clip" (pv)
    predict_share: float  # fraction of the model (pv) or theta (fixed) that took the predict path
    # |x_hat - x| / |x_stale - x| of each earlier prediction this step's reads settled (quality.py)
    prediction_ratios: tuple[float, ...] = ()


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity; 0 when either vector is zero."""
    norm = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.dot(a, b)) / norm if norm > 0 else 0.0


class ConsensusAgent:
    """State and update rule of one decentralized agent.

    ``segments`` are the offsets of the model's tensors in the flat vector (for the per-tensor
    pv decision); without them the whole model is one segment. Each step replaces
    :attr:`params` with a new tensor and never writes into the old one, so the history, and the
    snapshots engines publish, may keep references instead of copies. The mixes in between are
    written into buffers kept from step to step: on a CPU, a fresh tensor as large as the model
    costs more in page faults than the arithmetic written into it.
    """

    def __init__(self, config: AlgorithmConfig, params: Tensor, segments: Sequence[int] | None = None) -> None:
        if config.family != "decentralized":
            raise ConfigError(f"mode {config.mode!r} is not a decentralized mode")
        self.config = config
        self.params = params.detach().clone()
        self.velocity = torch.zeros_like(self.params)
        self.last_step = torch.zeros_like(self.params)  # the local step of the last iteration (d_i)
        self.last_grad = torch.zeros_like(self.params)  # the gradient of the last iteration (--overlap publishes it)
        self._lr = config.lr  # the scheduled lr of the step being taken
        self.iteration = 0
        self.segments = list(segments) if segments is not None else [0, self.params.numel()]
        if self.segments[0] != 0 or self.segments[-1] != self.params.numel():
            raise ConfigError("segments must start at 0 and end at the parameter count")
        self._history: deque[tuple[int, Tensor]] = deque(maxlen=config.history + 1)  # draft only
        self.quality = PredictionQuality()
        self._seen: dict[int, deque[tuple[int, Tensor]]] = {}  # trajectory: the last two snapshots read
        self._mean_square: dict[int, Tensor] = {}
        self._last_stamp: dict[int, int] = {}
        self.decisions: Counter[str] = Counter()
        self._buffers: dict[str, Tensor] = {}

    # -- the update -----------------------------------------------------------------------------

    def step(
        self,
        grad: Tensor,
        reads: Sequence[NeighbourRead],
        self_weight: float,
        epoch: float = 0.0,
        local_update: Tensor | None = None,
        lr: float | None = None,
    ) -> StepReport:
        """Apply one iteration: the local step, then the mode's mix of self and neighbour snapshots.

        The local step is SGD with momentum (``v``), unless ``local_update`` is given: then it is
        that displacement (what a wrapped torch optimizer did to the parameters this step).
        ``lr``: this step's learning rate, for the predictor (default: the config's schedule at
        ``epoch``; a wrapped torch optimizer passes the rate its scheduler set).
        """
        config = self.config
        own = self.params
        self._lr = config.lr_at(epoch) if lr is None else lr
        if config.keeps_history:
            self._history.append((self.iteration, own))  # parameters are replaced, never modified in place
        if local_update is None:
            self.velocity = momentum_velocity(self.velocity, grad, self._lr, config.effective_momentum)
        step_vector = self.velocity if local_update is None else local_update
        self._track_mean_squares(reads)
        self._track_trajectories(reads)
        ratios = [self.quality.score(r.source, r.snapshot.stamp, r.snapshot.params) for r in reads]
        delayed = [r for r in reads if r.age > config.age_fresh]
        fresh = [r for r in reads if r.age <= config.age_fresh]
        mode = config.mode
        warming_up = mode == "pcasgd-pv" and epoch < config.pv_warmup_epochs
        if mode in ("dsgd", "asgd", "pcasgd-pv"):  # the plain stale mix: the update, or pv's reference
            neighbours = [(r.weight, r.snapshot.params) for r in reads]
            stale_mix = self._weighted_sum("stale mix", own, self_weight, neighbours)
        if mode in ("dsgd", "asgd") or warming_up:
            mixed, decision, share = stale_mix, "mix", 0.0
        elif mode == "pcasgd-pv":
            predicted = self._predict_mix(own, self_weight, fresh, delayed)
            clipped = self._clip_mix(own, self_weight, fresh)
            mixed, share, predicted_parts, parts = self._choose(predicted, clipped, stale_mix, grad)
            decision = "predict" if share >= 0.5 else "clip"
            # one decision per segment: per step with --pv-scope model, per tensor with tensor
            self.decisions["predict"] += predicted_parts
            self.decisions["clip"] += parts - predicted_parts
        else:
            theta = config.effective_theta
            decision, share = "blend", theta
            if theta == 0.0:  # clip only: no prediction to make
                mixed = self._clip_mix(own, self_weight, fresh)
            elif theta == 1.0:  # predict only
                mixed = self._predict_mix(own, self_weight, fresh, delayed)
            else:
                predicted = self._predict_mix(own, self_weight, fresh, delayed)
                mixed = predicted.mul_(theta).add_(self._clip_mix(own, self_weight, fresh), alpha=1.0 - theta)
        if decision not in ("predict", "clip"):
            self.decisions[decision] += 1
        self.params = torch.add(mixed, step_vector)  # a new tensor: the old one may be referenced
        if local_update is None:
            self.last_step = step_vector  # a new tensor each step, never modified in place
        elif config.publishes_displacement:
            self.last_step = local_update.clone()  # the caller may reuse its buffer
        self.last_grad = grad  # the engines never modify it in place (the API reuses its buffer: not read then)
        self.iteration += 1
        ages = tuple((r.source, r.age) for r in reads)
        scored = tuple(ratio for ratio in ratios if ratio is not None)
        return StepReport(tuple(r.staleness for r in reads), ages, len(delayed), decision, share, scored)

    # -- pieces ---------------------------------------------------------------------------------

    def _track_mean_squares(self, reads: Sequence[NeighbourRead]) -> None:
        """Adaptive lambda: fold each newly seen neighbour gradient into its MeanSquare once."""
        if not self.config.lam_adaptive:
            return
        for read in reads:
            if self._last_stamp.get(read.source) != read.snapshot.stamp:
                self._last_stamp[read.source] = read.snapshot.stamp
                self._mean_square[read.source] = update_mean_square(
                    self._mean_square.get(read.source), read.snapshot.grad, self.config.effective_ms_decay
                )

    def _track_trajectories(self, reads: Sequence[NeighbourRead]) -> None:
        """The trajectory predictor: keep each neighbour's last two distinct snapshots read."""
        if not (self.config.predicts and self.config.predictor == "trajectory"):
            return
        for read in reads:
            seen = self._seen.setdefault(read.source, deque(maxlen=2))
            if not seen or seen[-1][0] != read.snapshot.stamp:
                seen.append((read.snapshot.stamp, read.snapshot.params.clone()))

    def _trajectory_step(self, source: int) -> Tensor:
        """The neighbour's mean step between the last two of its snapshots read (zeros before)."""
        seen = self._seen[source]
        if len(seen) < 2:
            return torch.zeros_like(self.params)
        (older, before), (newer, after) = seen
        return torch.sub(after, before, out=self._buffer("trajectory")).div_(newer - older)

    def _lambda_for(self, source: int) -> float | Tensor:
        config = self.config
        if config.lam_adaptive:
            return adaptive_lambda(config.effective_lambda, self._mean_square[source], config.eps)
        return config.effective_lambda

    def _own_params_at(self, iteration: float) -> Tensor:
        """This agent's parameters at the last iteration not after ``iteration`` (fractional: an
        age in own steps), or the oldest kept if that is too far back."""
        for stamp, params in reversed(self._history):
            if stamp <= iteration:
                return params
        return self._history[0][1]

    def _buffer(self, name: str) -> Tensor:
        """A scratch vector shaped like the parameters, kept for the next step."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != self.params.shape or buffer.dtype != self.params.dtype:
            buffer = self._buffers[name] = torch.empty_like(self.params)
        return buffer

    def _weighted_sum(self, name: str, own: Tensor, own_weight: float, terms: Sequence[tuple[float, Tensor]]) -> Tensor:
        """``own_weight * own + sum(weight * vector)``, written into the buffer ``name``."""
        total = torch.mul(own, own_weight, out=self._buffer(name))
        for weight, vector in terms:
            total.add_(vector, alpha=weight)
        return total

    def _predicted(self, read: NeighbourRead, own: Tensor) -> Tensor:
        """The neighbour's predicted parameters, in the ``prediction`` buffer (valid until the next call)."""
        snapshot, lam, out = read.snapshot, self._lambda_for(read.source), self._buffer("prediction")
        predictor, age = self.config.predictor, min(read.age, self.config.age_max)
        if predictor == "draft":
            then = self._own_params_at(self.iteration - read.own_age)
            return predict_draft(snapshot.params, snapshot.grad, own, then, self._lr, lam, out=out)
        if predictor == "taylor":
            return predict_taylor(snapshot.params, snapshot.grad, own, age, self._lr, lam, out=out)
        if predictor == "trajectory":
            return predict_trajectory(snapshot.params, self._trajectory_step(read.source), age, out=out)
        if snapshot.displacement is None:
            raise ConfigError(f"the {predictor} predictor needs neighbour {read.source}'s displacement")
        if predictor == "momentum":
            mu = self.config.effective_momentum
            velocity = snapshot.displacement
            return predict_momentum(snapshot.params, snapshot.grad, velocity, own, age, self._lr, mu, lam, out=out)
        return predict_extrapolate(snapshot.params, snapshot.grad, snapshot.displacement, age, self._lr, lam, out=out)

    def _predict_mix(
        self, own: Tensor, self_weight: float, fresh: Sequence[NeighbourRead], delayed: Sequence[NeighbourRead]
    ) -> Tensor:
        mixed = self._weighted_sum("predict mix", own, self_weight, [(r.weight, r.snapshot.params) for r in fresh])
        for read in delayed:
            predicted = self._predicted(read, own)
            self.quality.follow(read.source, read.snapshot.stamp, read.age, predicted, read.snapshot.params)
            mixed.add_(predicted, alpha=read.weight)
        return mixed

    def _clip_mix(self, own: Tensor, self_weight: float, fresh: Sequence[NeighbourRead]) -> Tensor:
        if self.config.clip_weights == "uniform":
            share = 1.0 / (1 + len(fresh))
            weights = [share] * (1 + len(fresh))
        else:
            total = self_weight + sum(read.weight for read in fresh)
            weights = [self_weight / total] + [read.weight / total for read in fresh]
        terms = [(weight, read.snapshot.params) for weight, read in zip(weights[1:], fresh, strict=True)]
        return self._weighted_sum("clip mix", own, weights[0], terms)

    def _choose(
        self, predicted: Tensor, clipped: Tensor, stale_mix: Tensor, grad: Tensor
    ) -> tuple[Tensor, float, int, int]:
        """pcasgd-pv: per segment, predict when cos(x^P - x_bar, g) > cos(x^C - x_bar, g).

        Returns the chosen mix, the share of elements predicted, and how many of how many
        segments chose predict."""
        segments = self.segments if self.config.pv_scope == "tensor" else [0, predicted.numel()]
        chosen = clipped  # its buffer: the clipped mix is not needed after the choice
        predicted_elements, predicted_parts = 0, 0
        for start, end in itertools.pairwise(segments):
            part = slice(start, end)
            score_predict = cosine(predicted[part] - stale_mix[part], grad[part])
            score_clip = cosine(clipped[part] - stale_mix[part], grad[part])
            if score_predict > score_clip:
                chosen[part] = predicted[part]
                predicted_elements += end - start
                predicted_parts += 1
        return chosen, predicted_elements / predicted.numel(), predicted_parts, len(segments) - 1

    def renumber_neighbours(self, numbers: dict[int, int]) -> None:
        """The agents were renumbered (a rank died and the survivors closed ranks): what this
        agent keeps per neighbour follows ``numbers`` (old number -> new); neighbours missing from
        it are forgotten."""
        self._mean_square = {numbers[j]: v for j, v in self._mean_square.items() if j in numbers}
        self._last_stamp = {numbers[j]: stamp for j, stamp in self._last_stamp.items() if j in numbers}
        self.quality.renumber(numbers)
        self._seen = {numbers[j]: seen for j, seen in self._seen.items() if j in numbers}

    def start_over_at(self, iteration: int) -> None:
        """The run goes on with another number of agents (a resume onto a different size): keep
        the weights, momentum and last step, continue at ``iteration``, and forget what was kept
        per neighbour and per own iteration (those numbers no longer mean the same) and the
        decision counts (a copied agent would count its source's twice)."""
        self.iteration = iteration
        self._history.clear()
        self.renumber_neighbours({})
        self.decisions = Counter()

    # -- state for checkpoints ------------------------------------------------------------------

    def state_dict(self, weights: bool = True) -> dict:
        """What resumes this agent: counters, the neighbours' MeanSquares and, with ``weights``,
        its parameters, momentum, last local step, own-parameter history and the neighbours'
        snapshots the trajectory predictor keeps (without them, a caller that keeps the
        weights elsewhere, such as the optimizer API, saves several model-sized vectors; the draft
        predictor's history then refills over ``history`` steps, using the oldest snapshot kept
        meanwhile, as for a lag beyond the history)."""
        state = {
            "iteration": self.iteration,
            "mean_square": {k: v.clone() for k, v in self._mean_square.items()},
            "last_stamp": dict(self._last_stamp),
            "decisions": dict(self.decisions),
        }
        if weights:
            history = [(stamp, params.clone()) for stamp, params in self._history]
            state.update(
                params=self.params.clone(),
                velocity=self.velocity.clone(),
                last_step=self.last_step.clone(),
                last_grad=self.last_grad.clone(),
                history=history,
                seen={j: [(stamp, v.clone()) for stamp, v in seen] for j, seen in self._seen.items()},
            )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; without weights in it, the parameters stay as they are."""
        if "params" in state:
            self.params = state["params"].clone()
            self.velocity = state["velocity"].clone()
            self.last_step = state["last_step"].clone()
            self.last_grad = state["last_grad"].clone()
            self._seen = {
                int(j): deque(((s, v.clone()) for s, v in seen), maxlen=2) for j, seen in state["seen"].items()
            }
            self._history = deque(((s, p.clone()) for s, p in state["history"]), maxlen=self.config.history + 1)
        self.iteration = int(state["iteration"])
        self._mean_square = {int(k): v.clone() for k, v in state["mean_square"].items()}
        self._last_stamp = {int(k): int(v) for k, v in state["last_stamp"].items()}
        self.decisions = Counter(state["decisions"])
