"""Choosing the checkpoint a run resumes from: the newest readable one (every rank's, or each
rank's own in asynchronous decentralized runs), never one that would cut a run short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pcasgd import log
from pcasgd.app import checkpoint as checkpoints
from pcasgd.app.resize import resized_payload, saved_agents
from pcasgd.app.run_config import RunConfig
from pcasgd.errors import ConfigError
from pcasgd.topology import Schedule

LOG = log.get("resume")


def _readable_checkpoints(out: Path, rank: int) -> tuple[dict[int, dict[str, Any]], str | None]:
    """This rank's checkpoints that load whole, by epoch; one that does not is skipped with a
    warning (a crash or a full disk while it was written), so an older one is used instead.
    Also the newest one's problem if none loads (raised after the ranks compared notes)."""
    readable, problems = {}, []
    for epoch in reversed(checkpoints.available_epochs(out, rank)):
        try:
            readable[epoch] = checkpoints.load(out, rank, epoch)
        except ConfigError as error:
            problems.append(str(error))
    if problems and readable:
        newest = max(readable)
        LOG.warning(f"{problems[0]}; resuming rank {rank} from epoch {newest} instead")
    return readable, (problems[0] if problems and not readable else None)


def _resume_length_problem(out: Path, checkpoint_epoch: int, epochs: int) -> str | None:
    """Why resuming to ``epochs`` would cut a run short (its checkpoint, or its finished summary,
    is further on), or None."""
    short = (
        f"the checkpoint in {out} has trained {checkpoint_epoch} epochs; --epochs {epochs} goes no further "
        f"(resuming continues a run: pass --epochs {checkpoint_epoch + 1} or more)"
    )
    if checkpoint_epoch > epochs:
        return short
    try:
        finished = json.loads((out / "summary.json").read_text())["config"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        finished = None  # not finished (or no summary this rank can read)
    if finished is not None and epochs <= finished:
        return (
            f"the run in {out} has finished its {finished} epochs; resuming it needs more: pass --epochs "
            f"{finished + 1} or more (or --overwrite without --resume to train it again)"
        )
    return short if checkpoint_epoch == epochs else None  # equal: the last record would be made twice


def _agree(comm, deadline, problem: str | None) -> None:
    """Raise the first rank's problem on every rank (None: no rank has one)."""
    if comm is not None:
        with deadline.guard("agreeing that every rank can resume (collective)"):
            problems = [p for p in comm.allgather(problem) if p is not None]
        problem = problems[0] if problems else None
    if problem is not None:
        raise ConfigError(problem)


def resume_payload(
    comm, deadline, config: RunConfig, out: Path, schedule: Schedule | None, per_epoch: int
) -> dict[str, Any] | None:
    """This rank's checkpoint to resume from; a problem on any rank is raised on every rank.

    Asynchronous decentralized ranks each take their own newest checkpoint; a rank that wrote
    none (a straggler stopped before its first epoch ended) starts again from the beginning. A
    run checkpointed by another number of agents is resized (app/resize.py).
    """
    rank = 0 if comm is None else comm.Get_rank()
    saved = None if comm is None else saved_agents(out)  # the simulator resumes as many agents
    if saved is not None and saved != config.agents:
        problem, payload = None, None
        try:
            payload = resized_payload(rank, config, out, saved, schedule, per_epoch)
        except ConfigError as error:
            problem = str(error)
        _agree(comm, deadline, problem or _resume_length_problem(out, payload["epoch"], config.epochs))
        return payload
    readable, unreadable = _readable_checkpoints(out, rank)
    epochs = sorted(readable)
    independent = comm is not None and not config.deterministic and config.algorithm.family == "decentralized"
    fresh = False
    if comm is not None:
        with deadline.guard("agreeing on the checkpoint to resume from (collective)"):
            held = comm.allgather(epochs)
        if not independent:
            epochs = sorted(set.intersection(*(set(e) for e in held)))
        elif not epochs and any(held):
            LOG.warning(f"rank {rank} has no checkpoint in {out}: it starts again from the beginning")
            fresh = True
    problem, payload = unreadable, None
    if problem is None and not epochs and not fresh:
        problem = (
            f"nothing to resume in {out}: no checkpoints/rank-{rank}/epoch-*.pt common to every rank "
            "(the run wrote none: --checkpoint-every 0, or it stopped before its first checkpoint)"
        )
    elif problem is None and epochs:
        payload = readable[epochs[-1]]
        try:
            checkpoints.check_same_run(payload, config.record(), out)
        except ConfigError as error:
            problem = str(error)
        problem = problem or _resume_length_problem(out, payload["epoch"], config.epochs)
    _agree(comm, deadline, problem)
    if independent:
        payload = _with_the_recorders_records(comm, deadline, payload, per_epoch)
    return payload


def _with_the_recorders_records(comm, deadline, payload: dict[str, Any] | None, per_epoch: int) -> dict | None:
    """Rank 0's payload with the records of the rank that recorded longest (collective).

    In an asynchronous decentralized run the recording may have passed on (rank 0 died under
    ``--fault-tolerant`` and the lowest survivor recorded on; with ``--rejoin`` a newcomer then
    checkpoints as agent 0 without records): the records, their wall time and samples, and the
    samples the recorder counted for lost agents, go on from the checkpoint that holds the most
    records, and rank 0 records only after its last one."""
    held = -1 if payload is None else len(payload["records"])
    with deadline.guard("finding the checkpoint with the run's records (collective)"):
        counts = comm.allgather(held)
        owner = counts.index(max(counts))
        mine = None
        if comm.Get_rank() == owner and payload is not None:
            mine = {key: payload[key] for key in ("records", "wall_seconds", "samples")}
            mine["lost_samples"] = payload["engine"].get("lost_samples", {})
        recorded = comm.bcast(mine, root=owner)
    if comm.Get_rank() != 0 or payload is None or recorded is None or owner == 0:
        return payload
    engine = {**payload["engine"], "lost_samples": recorded.pop("lost_samples")}
    if recorded["records"]:  # no record is made twice
        engine["recorded"] = max(engine["recorded"], recorded["records"][-1]["epoch"] * per_epoch)
    return {**payload, **recorded, "engine": engine}
