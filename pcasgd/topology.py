"""Communication graphs and mixing matrices (pure numpy).

A graph is an ``n x n`` boolean adjacency matrix ``A`` with ``A[i, j]`` true when agent ``i``
reads agent ``j`` (``j`` is an in-neighbour of ``i``); the diagonal is always false. A mixing
matrix ``W`` is row ``i`` = the weights agent ``i`` gives to itself and its in-neighbours. For
consensus it must be non-negative, doubly stochastic, zero off the graph, and strongly connected;
:func:`validate` checks all of that and returns the spectral gap ``1 - ||W - 11^T/n||_2``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pcasgd.errors import TopologyError

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Topology:
    """A named graph with its mixing matrix (``weights[i, j]`` > 0 only on edges and diagonal)."""

    name: str
    adjacency: np.ndarray
    weights: np.ndarray

    @property
    def size(self) -> int:
        return int(self.adjacency.shape[0])

    def in_neighbours(self, agent: int) -> list[int]:
        """Agents whose parameters ``agent`` mixes in, in increasing order."""
        return [int(j) for j in np.flatnonzero(self.adjacency[agent])]

    def spectral_gap(self) -> float:
        return spectral_gap(self.weights)

    def at(self, step: int) -> Topology:
        """The graph used at ``step``: always this one (static)."""
        return self


# ---------------------------------------------------------------------------------------------
# Graphs


def _check_size(n: int, minimum: int = 1) -> None:
    if not isinstance(n, (int, np.integer)) or n < minimum:
        raise TopologyError(f"a topology needs at least {minimum} agent(s), got {n!r}")


def _from_offsets(n: int, offsets: list[int]) -> np.ndarray:
    """Circulant graph: agent i reads agents (i + o) mod n for each offset o."""
    adjacency = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for offset in offsets:
            j = (i + offset) % n
            if j != i:
                adjacency[i, j] = True
    return adjacency


def ring(n: int) -> np.ndarray:
    """Undirected ring: each agent reads its left and right neighbour."""
    _check_size(n)
    return _from_offsets(n, [1, -1])


def torus(rows: int, cols: int) -> np.ndarray:
    """Undirected 2-D torus of ``rows x cols`` agents (4 neighbours, fewer on thin tori)."""
    _check_size(rows)
    _check_size(cols)
    n = rows * cols
    adjacency = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                j = ((r + dr) % rows) * cols + (c + dc) % cols
                if j != i:
                    adjacency[i, j] = True
    return adjacency


def square_torus_shape(n: int) -> tuple[int, int]:
    """The most square ``rows x cols`` factorization of ``n`` (rows <= cols)."""
    _check_size(n)
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    return rows, n // rows


def exponential(n: int, base: int = 2) -> np.ndarray:
    """Directed static exponential graph: agent i reads agents i - base^k for base^k < n."""
    _check_size(n)
    if base < 2:
        raise TopologyError(f"exponential graph base must be >= 2, got {base}")
    offsets = []
    hop = 1
    while hop < n:
        offsets.append(-hop)
        hop *= base
    return _from_offsets(n, offsets)


def star(n: int) -> np.ndarray:
    """Undirected star centred on agent 0."""
    _check_size(n)
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[0, 1:] = True
    adjacency[1:, 0] = True
    return adjacency


def fully_connected(n: int) -> np.ndarray:
    _check_size(n)
    return ~np.eye(n, dtype=bool)


def random_regular(n: int, degree: int, seed: int) -> np.ndarray:
    """Connected undirected ``degree``-regular graph, seeded.

    Starts from a circulant ``degree``-regular graph and applies random double-edge swaps,
    which keep every degree; retries until the result is connected.
    """
    _check_size(n, 2)
    if not 1 <= degree < n or (n * degree) % 2:
        raise TopologyError(f"a random {degree}-regular graph on {n} agents needs 1 <= k < n and n*k even")
    offsets = [s * h for h in range(1, degree // 2 + 1) for s in (1, -1)]
    if degree % 2:
        offsets.append(n // 2)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        adjacency = _from_offsets(n, offsets)
        edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(adjacency)), strict=True)]
        for _ in range(10 * len(edges) if len(edges) >= 2 else 0):  # one edge (2 agents, k=1): nothing to swap
            a, b = rng.choice(len(edges), size=2, replace=False)
            (u, v), (x, y) = edges[a], edges[b]
            if rng.random() < 0.5:
                x, y = y, x
            if len({u, v, x, y}) < 4 or adjacency[u, x] or adjacency[v, y]:
                continue
            adjacency[u, v] = adjacency[v, u] = adjacency[x, y] = adjacency[y, x] = False
            adjacency[u, x] = adjacency[x, u] = adjacency[v, y] = adjacency[y, v] = True
            edges[a], edges[b] = (u, x), (v, y)
        if not _unreachable(adjacency):
            return adjacency
    raise TopologyError(f"could not draw a connected {degree}-regular graph on {n} agents")


# ---------------------------------------------------------------------------------------------
# Mixing weights


def _require_undirected(adjacency: np.ndarray, scheme: str) -> None:
    if not np.array_equal(adjacency, adjacency.T):
        raise TopologyError(f"{scheme} weights need an undirected graph; use 'uniform' instead")


def uniform_weights(adjacency: np.ndarray) -> np.ndarray:
    """Each agent gives ``1 / (in-degree + 1)`` to itself and to each in-neighbour."""
    share = 1.0 / (adjacency.sum(axis=1) + 1.0)
    return (adjacency | np.eye(len(adjacency), dtype=bool)) * share[:, None]


def metropolis_hastings_weights(adjacency: np.ndarray) -> np.ndarray:
    """``w_ij = 1 / (1 + max(d_i, d_j))`` on edges, the rest on the diagonal (undirected graphs)."""
    _require_undirected(adjacency, "Metropolis-Hastings")
    degree = adjacency.sum(axis=1).astype(float)
    weights = np.where(adjacency, 1.0 / (1.0 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


def max_degree_weights(adjacency: np.ndarray) -> np.ndarray:
    """``w_ij = 1 / (1 + d_max)`` on edges, the rest on the diagonal (undirected graphs)."""
    _require_undirected(adjacency, "max-degree")
    weights = adjacency / (1.0 + adjacency.sum(axis=1).max())
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


WEIGHT_SCHEMES = {
    "uniform": uniform_weights,
    "metropolis": metropolis_hastings_weights,
    "max-degree": max_degree_weights,
}


def default_weight_scheme(adjacency: np.ndarray) -> str:
    """``uniform`` for regular graphs (doubly stochastic there), else Metropolis-Hastings."""
    in_degree = adjacency.sum(axis=1)
    out_degree = adjacency.sum(axis=0)
    regular = len(set(in_degree.tolist())) == 1 and np.array_equal(in_degree, out_degree)
    return "uniform" if regular else "metropolis"


# ---------------------------------------------------------------------------------------------
# Validation


def _unreachable(support: np.ndarray) -> list[int]:
    """Agents not reachable from agent 0 along edges, in either direction (strong connectivity)."""
    n = len(support)
    missing: set[int] = set()
    for graph in (support, support.T):
        seen = {0}
        frontier = [0]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(graph[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    frontier.append(int(j))
        missing.update(set(range(n)) - seen)
    return sorted(missing)


# Up to this many agents the gap comes from a dense SVD (O(n^3): 0.1 s at 256, minutes at 10,000);
# above it, from a few sparse matrix-vector products.
DENSE_SPECTRAL_GAP_AGENTS = 256


def spectral_gap(weights: np.ndarray) -> float:
    """``1 - ||W - 11^T/n||_2``: the per-step contraction of disagreement (``1 - |lambda_2|``
    for symmetric or circulant ``W``)."""
    n = len(weights)
    if n == 1:
        return 1.0
    if n <= DENSE_SPECTRAL_GAP_AGENTS:
        deviation = weights - np.full((n, n), 1.0 / n)
        return float(1.0 - np.linalg.norm(deviation, ord=2))
    return 1.0 - _largest_singular_value_without_mean(weights)


def _largest_singular_value_without_mean(weights: np.ndarray) -> float:
    """``||W - 11^T/n||_2`` by Lanczos on the sparse ``W``, never forming the dense difference."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import ArpackError, LinearOperator, svds

    sparse = csr_matrix(weights)
    transposed = sparse.T.tocsr()
    n = sparse.shape[0]

    def times(x: np.ndarray) -> np.ndarray:
        return sparse @ x - x.sum(axis=0) / n

    def times_transposed(x: np.ndarray) -> np.ndarray:
        return transposed @ x - x.sum(axis=0) / n

    operator = LinearOperator((n, n), matvec=times, rmatvec=times_transposed, matmat=times, dtype=float)
    start = np.random.default_rng(0).standard_normal(n)
    if np.linalg.norm(times(start)) <= 1e-12 * np.linalg.norm(start):
        return 0.0  # W = 11^T/n (a full graph, or a time-varying period that averages exactly)
    try:
        return float(svds(operator, k=1, v0=start, ncv=min(n, 24), return_singular_vectors=False, tol=1e-10)[0])
    except ArpackError:  # a spectrum ARPACK cannot restart on: the dense decomposition, slow but sure
        return float(np.linalg.norm(weights - np.full((n, n), 1.0 / n), ord=2))


def validate(weights: np.ndarray, adjacency: np.ndarray | None = None, connected: bool = True) -> float:
    """Check that ``weights`` can drive consensus over ``adjacency``; return its spectral gap.

    ``connected=False`` skips the strong-connectivity check (one step of a time-varying graph).
    Raises :class:`TopologyError` naming the first offending row, column, or entry.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise TopologyError(f"mixing matrix must be square, got shape {weights.shape}")
    n = weights.shape[0]
    if adjacency is not None and adjacency.shape != weights.shape:
        raise TopologyError(
            f"mixing matrix is {weights.shape[0]}x{weights.shape[1]} but the graph has {len(adjacency)} agents"
        )
    if not np.all(np.isfinite(weights)):
        i, j = np.argwhere(~np.isfinite(weights))[0]
        raise TopologyError(f"mixing matrix entry ({i}, {j}) is {weights[i, j]}")
    if np.any(weights < -TOLERANCE):
        i, j = np.argwhere(weights < -TOLERANCE)[0]
        raise TopologyError(f"mixing matrix entry ({i}, {j}) is negative: {weights[i, j]:.6g}")
    rows = weights.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(rows - 1.0) > 1e-6)
    if bad_rows.size:
        i = bad_rows[0]
        raise TopologyError(f"mixing matrix row {i} sums to {rows[i]:.6g}, not 1 (not row-stochastic)")
    cols = weights.sum(axis=0)
    bad_cols = np.flatnonzero(np.abs(cols - 1.0) > 1e-6)
    if bad_cols.size:
        j = bad_cols[0]
        raise TopologyError(
            f"mixing matrix column {j} sums to {cols[j]:.6g}, not 1 "
            "(row-stochastic only: consensus would drift from the average)"
        )
    support = weights > TOLERANCE
    np.fill_diagonal(support, False)
    if adjacency is not None:
        off_graph = support & ~adjacency
        if off_graph.any():
            i, j = np.argwhere(off_graph)[0]
            raise TopologyError(
                f"mixing matrix entry ({i}, {j}) = {weights[i, j]:.6g}, "
                f"but agent {i} does not read agent {j} in the graph"
            )
    missing = _unreachable(support) if connected and n > 1 else []
    if missing:
        raise TopologyError(f"graph is not strongly connected: agents {missing} are cut off from agent 0")
    return spectral_gap(weights)


# ---------------------------------------------------------------------------------------------
# Construction from a spec string

TOPOLOGY_FORMS = "ring, torus, torus:RxC, exponential (or exp), star, full, random:K, one-peer-exp"


def build(spec: str, n: int, weights: str = "auto", seed: int = 0) -> Schedule:
    """Build and validate a topology from a spec such as ``ring``, ``torus:4x4``, ``one-peer-exp``."""
    name, colon, argument = spec.partition(":")
    if colon and name not in ("torus", "random"):  # the others take no argument: never ignore one
        raise TopologyError(f"topology {spec!r}: {name!r} takes no ':' argument; accepted: {TOPOLOGY_FORMS}")
    if name == "one-peer-exp":
        if weights not in ("auto", "uniform"):
            raise TopologyError("one-peer-exp always uses uniform weights (1/2 self, 1/2 peer)")
        schedule = OnePeerExponential(n)
        for step in range(schedule.period):
            validate(schedule.at(step).weights, schedule.at(step).adjacency, connected=False)
        return schedule
    if name == "ring":
        adjacency = ring(n)
    elif name == "torus":
        if argument:
            try:
                rows, cols = (int(part) for part in argument.lower().split("x"))
            except ValueError:
                raise TopologyError(f"torus spec {spec!r} must look like torus:RxC") from None
            if rows * cols != n:
                raise TopologyError(f"torus {rows}x{cols} has {rows * cols} agents, the run has {n}")
        else:
            rows, cols = square_torus_shape(n)
        adjacency = torus(rows, cols)
    elif name in ("exponential", "exp"):
        adjacency = exponential(n)
    elif name == "star":
        adjacency = star(n)
    elif name == "full":
        adjacency = fully_connected(n)
    elif name == "random":
        try:
            degree = int(argument)
        except ValueError:
            raise TopologyError(f"random graph spec {spec!r} must look like random:K") from None
        adjacency = random_regular(n, degree, seed)
    else:
        raise TopologyError(f"unknown topology {spec!r}; accepted: {TOPOLOGY_FORMS}")
    scheme = default_weight_scheme(adjacency) if weights == "auto" else weights
    if scheme not in WEIGHT_SCHEMES:
        raise TopologyError(f"unknown mixing weights {weights!r}; accepted: auto, {', '.join(WEIGHT_SCHEMES)}")
    matrix = WEIGHT_SCHEMES[scheme](adjacency)
    validate(matrix, adjacency)
    return Topology(name=spec, adjacency=adjacency, weights=matrix)


def survivors(schedule: Schedule, alive: list[int]) -> Topology:
    """The graph over the agents in ``alive`` after the others died (or over all of them again,
    in a new order, once replacements joined), numbered in ``alive``'s order.

    It keeps the edges of ``schedule`` between survivors (for a time-varying schedule, the union
    over one period), made undirected so that Metropolis-Hastings weights are doubly stochastic
    on it whatever the original weighting; where the losses cut the graph, it joins each
    component's first agent to the next component's (a chain of new edges). Validated.
    """
    if not alive or len(set(alive)) != len(alive) or not all(0 <= a < schedule.size for a in alive):
        raise TopologyError(f"the survivors must be distinct agents of 0..{schedule.size - 1}, got {alive}")
    period = getattr(schedule, "period", 1)
    union = np.zeros((schedule.size, schedule.size), dtype=bool)
    for step in range(period):
        union |= schedule.at(step).adjacency
    index = np.array(alive)
    adjacency = union[np.ix_(index, index)]
    adjacency = adjacency | adjacency.T
    for first, second in itertools.pairwise(_components(adjacency)):
        adjacency[first[0], second[0]] = adjacency[second[0], first[0]] = True
    weights = metropolis_hastings_weights(adjacency)
    validate(weights, adjacency)
    missing = sorted(set(range(schedule.size)) - set(alive))
    name = getattr(schedule, "name", "graph")
    name = f"{name} without {missing}" if missing else f"{name} over agents {list(alive)}"  # whole again (--rejoin)
    return Topology(name=name, adjacency=adjacency, weights=weights)


def _components(adjacency: np.ndarray) -> list[list[int]]:
    """The connected components of an undirected graph, each sorted, in order of first agent."""
    seen: set[int] = set()
    components = []
    for start in range(len(adjacency)):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            for j in np.flatnonzero(adjacency[frontier.pop()]):
                if int(j) not in component:
                    component.add(int(j))
                    frontier.append(int(j))
        seen |= component
        components.append(sorted(component))
    return components


@dataclass(frozen=True)
class OnePeerExponential:
    """Time-varying one-peer exponential graph: at step k agent i averages with i - 2^(k mod log2 n).

    Each step's matrix is ``(I + P_k) / 2`` (doubly stochastic, one neighbour); one step's graph
    is not connected, but the union over ``ceil(log2 n)`` consecutive steps is, and for ``n`` a
    power of two the product of those steps is exact averaging. Iterating yields step 0, 1, ...
    """

    size: int
    name: str = "one-peer-exp"

    def __post_init__(self) -> None:
        _check_size(self.size, 2)

    @property
    def period(self) -> int:
        return max(1, math.ceil(math.log2(self.size)))

    def at(self, step: int) -> Topology:
        hop = 2 ** (step % self.period)
        adjacency = _from_offsets(self.size, [-hop])
        return Topology(
            name=f"{self.name}[{step % self.period}]", adjacency=adjacency, weights=uniform_weights(adjacency)
        )

    def __iter__(self) -> Iterator[Topology]:
        step = 0
        while True:
            yield self.at(step)
            step += 1

    def spectral_gap(self) -> float:
        """Gap of one full period's product matrix."""
        product = np.eye(self.size)
        for step in range(self.period):
            product = self.at(step).weights @ product
        return spectral_gap(product)


Schedule = Topology | OnePeerExponential
