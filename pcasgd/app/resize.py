"""Resuming an asynchronous decentralized run on another number of ranks (``--resume``).

The run goes on from epoch ``E``, the newest epoch its recording rank checkpointed (that
checkpoint also holds the records). The agents alive then (the checkpoint names them) keep their
order: new agent ``r`` below their count continues old agent ``alive[r]``; a new agent beyond them
starts from a copy of the state of its lowest-numbered in-neighbour below it in the new graph
(recursively, some old agent's), or of ``alive[r % len(alive)]`` where it has none. Old agents
beyond the new count are dropped, their weights with them (the others are within the consensus
distance of them). Each agent keeps its weights, momentum and pace; the data is sharded anew over
the new agents, and every agent starts at iteration ``E`` times the new iterations per epoch, so
the run's epochs go on from ``E``. The summary's ``resized`` says what was mapped to what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pcasgd.app import checkpoint as checkpoints
from pcasgd.app.run_config import RunConfig
from pcasgd.errors import ConfigError
from pcasgd.topology import Schedule


def saved_agents(out: Path) -> int | None:
    """The number of agents of the checkpointed run in ``out`` (None: no checkpoint is readable)."""
    for rank in checkpoints.checkpointed_ranks(out):
        payload = checkpoints.newest_readable(out, rank)
        if payload is not None:
            return int(payload["config"]["agents"])
    return None


def agent_sources(alive: list[int], agents: int, schedule: Schedule) -> list[int]:
    """The old agent whose state each of ``agents`` new agents starts from (module docstring)."""
    graph = schedule.at(0)
    sources: list[int] = []
    for agent in range(agents):
        if agent < len(alive):
            sources.append(alive[agent])
            continue
        below = [j for j in graph.in_neighbours(agent) if j < agent]
        sources.append(sources[below[0]] if below else alive[agent % len(alive)])
    return sources


def resized_payload(
    rank: int, config: RunConfig, out: Path, saved: int, schedule: Schedule | None, per_epoch: int
) -> dict[str, Any]:
    """What rank ``rank`` of a world of ``config.agents`` resumes from, in a run checkpointed by
    ``saved`` agents; a :class:`ConfigError` says why it cannot."""
    if config.algorithm.family != "decentralized" or config.deterministic or schedule is None:
        raise ConfigError(
            f"the run in {out} has {saved} agents and this one {config.agents}: only the asynchronous "
            f"decentralized modes resume onto another number of ranks (resume this one on {saved})"
        )
    newest = {old: payload for old in range(saved) if (payload := checkpoints.newest_readable(out, old)) is not None}
    recorder = max(newest.values(), key=lambda payload: (len(payload["records"]), payload["epoch"]))
    if not recorder["records"]:
        raise ConfigError(f"nothing to resume in {out}: no checkpoint holds a record of the run")
    checkpoints.check_same_run(recorder, {**config.record(), "agents": saved}, out)
    epoch = recorder["epoch"]
    alive = [old for old in recorder["engine"].get("ids", range(saved)) if old in newest]
    sources = agent_sources(alive, config.agents, schedule)
    source = newest[sources[rank]]
    from pcasgd.runtime.decentralized import resized_state

    carried = recorder["samples"] if rank == 0 else 0
    engine = resized_state(source["engine"], epoch * per_epoch, carried)
    resized = {"from_agents": saved, "to_agents": config.agents, "epoch": epoch, "alive": alive, "sources": sources}
    return {
        **source,
        "config": recorder["config"],
        "engine": engine,
        "oracle": None,  # the data is sharded anew: each agent starts its new shard afresh
        "records": recorder["records"],
        "wall_seconds": recorder["wall_seconds"],
        "samples": recorder["samples"],
        "epoch": epoch,
        "resized": resized,
    }
