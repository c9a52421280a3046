"""A tiny problem and hand-written NumPy re-implementations of every mode (from ALGORITHMS.md).

These loops are written independently of ``pcasgd.algorithms`` and of the simulator: lock-step
agents of equal speed, iteration by iteration, so each test compares two different codes.
"""

from __future__ import annotations

import numpy as np
import torch


class Quadratic:
    """Agent ``i`` minimizes ``1/2 sum h_i (x - c_i)^2``; its ``k``-th gradient adds fixed noise.

    As an oracle (``__call__``) it counts calls per agent, like a data loader; the references
    call :meth:`grad` with the call index themselves.
    """

    def __init__(self, agents: int, dim: int = 5, seed: int = 0, calls: int = 400) -> None:
        rng = np.random.default_rng(seed)
        self.h = rng.uniform(0.5, 2.0, (agents, dim))
        self.c = rng.normal(size=(agents, dim))
        self.noise = rng.normal(scale=0.3, size=(agents, calls, dim))
        self.x0 = rng.normal(size=dim)
        self.calls = [0] * agents
        self.samples = 0  # no data set: the engines' sample counters stay at 0

    def grad(self, agent: int, x: np.ndarray, call: int) -> np.ndarray:
        return self.h[agent] * (x - self.c[agent]) + self.noise[agent, call]

    def __call__(self, agent: int, params: torch.Tensor) -> tuple[torch.Tensor, float]:
        call = self.calls[agent]
        self.calls[agent] += 1
        x = params.numpy()
        loss = 0.5 * float(np.sum(self.h[agent] * (x - self.c[agent]) ** 2))
        return torch.from_numpy(self.grad(agent, x, call)), loss

    def initial(self) -> torch.Tensor:
        return torch.from_numpy(self.x0.copy())


class QuadraticPoint(torch.nn.Module):
    """Agent ``agent``'s weights on a :class:`Quadratic`, as a model that a torch optimizer
    trains: the gradient of :meth:`loss` ``(k)`` is the problem's ``k``-th gradient of the agent."""

    def __init__(self, problem: Quadratic, agent: int, x0: torch.Tensor | None = None) -> None:
        super().__init__()
        self.x = torch.nn.Parameter((problem.initial() if x0 is None else x0).clone())
        self.h, self.c, self.noise = (
            torch.from_numpy(a) for a in (problem.h[agent], problem.c[agent], problem.noise[agent])
        )

    def loss(self, k: int) -> torch.Tensor:
        return 0.5 * (self.h * (self.x - self.c) ** 2).sum() + (self.noise[k] * self.x).sum()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def consensus(problem: Quadratic, W: np.ndarray, lag, iterations: int, opts: dict) -> list[np.ndarray]:
    """dsgd / asgd / pcasgd / pcasgd-pv / predict / clip, lock-step, per ALGORITHMS.md.

    Agents of equal speed in lock-step: a snapshot ``tau`` iterations old is ``tau`` steps old in
    its publisher's steps and in the reader's (``a = b = tau``). ``overlap`` ("Revision 2"): reads
    are one step older (snapshot ``k - 1 - lag``; dsgd ``k - 1``), and a snapshot carries the
    gradient of the step before it (zeros with the first)."""
    mode = opts["mode"]
    lr, mu = opts["lr"], opts["mu"]
    lam, age_fresh, age_max = opts.get("lam", 1.0), opts["age_fresh"], opts["age_max"]
    theta = {"predict": 1.0, "clip": 0.0}.get(mode, opts.get("theta", 0.5))
    adaptive, decay, eps = opts.get("adaptive", False), opts.get("ms_decay", 0.95), opts.get("eps", 1e-7)
    n = len(W)
    back = 1 if opts.get("overlap") else 0
    X = [[problem.x0.copy() for _ in range(n)]]
    G: list[list[np.ndarray]] = []
    V = [np.zeros_like(problem.x0) for _ in range(n)]
    D: list[list[np.ndarray]] = []  # D[s][j]: j's last local step when it published snapshot s
    MS: dict[tuple[int, int], np.ndarray] = {}
    seen: dict[tuple[int, int], int] = {}
    read: dict[tuple[int, int], list[int]] = {}  # the trajectory predictor: distinct stamps read, in order
    for k in range(iterations):
        G.append([problem.grad(i, X[k][i], k) for i in range(n)])
        D.append([v.copy() for v in V])
        row = []
        for i in range(n):
            V[i] = mu * V[i] - lr * G[k][i]
            xi = X[k][i]
            plain = W[i, i] * xi
            predicted = W[i, i] * xi
            fresh = []
            for j in range(n):
                if j == i or W[i, j] == 0:
                    continue
                s = max(0, k - back - (0 if mode == "dsgd" else lag(i, j, k)))
                tau = k - s
                xs = X[s][j]
                stamps = read.setdefault((i, j), [])
                if not stamps or stamps[-1] != s:
                    stamps.append(s)
                gs = G[s - back][j] if s >= back else np.zeros_like(xs)
                if adaptive and seen.get((i, j)) != s:
                    seen[(i, j)] = s
                    MS[(i, j)] = decay * MS.get((i, j), 0.0) + (1 - decay) * gs * gs
                plain = plain + W[i, j] * xs
                if tau <= age_fresh:
                    predicted = predicted + W[i, j] * xs
                    fresh.append((W[i, j], xs))
                    continue
                lam_t = lam / np.sqrt(MS[(i, j)] + eps) if adaptive else lam
                predictor, age = opts["predictor"], min(tau, age_max)
                if predictor == "draft":
                    guess = xs - lr * lam_t * gs * gs * (xi - X[k - tau][i])
                elif predictor == "taylor":
                    guess = xs - lr * age * (gs + lam_t * gs * gs * (xi - xs))
                elif predictor == "trajectory":  # the mean step between the last two snapshots read
                    older, newer = (stamps[-2], stamps[-1]) if len(stamps) > 1 else (s, s)
                    step = (X[newer][j] - X[older][j]) / (newer - older) if newer != older else 0.0
                    guess = xs + age * step
                elif predictor == "momentum":  # the publisher's momentum steps, one by one (integer ages)
                    d, g_hat, guess = D[s][j], gs + lam_t * gs * gs * (xi - xs), xs.copy()
                    for m in range(1, int(age) + 1):
                        guess = guess + mu**m * d - lr * (1 - mu**m) / (1 - mu) * g_hat
                else:  # extrapolate
                    d = D[s][j]
                    guess = xs + age * d - lr * lam_t * age * age / 2 * gs * gs * d
                predicted = predicted + W[i, j] * guess
            if opts.get("clip_weights", "rescale") == "uniform":
                clipped = (xi + sum(x for _, x in fresh)) / (1 + len(fresh))
            else:
                total = W[i, i] + sum(w for w, _ in fresh)
                clipped = (W[i, i] * xi + sum(w * x for w, x in fresh)) / total
            if mode in ("dsgd", "asgd") or (mode == "pcasgd-pv" and k / opts["ipe"] < opts["warmup"]):
                mixed = plain
            elif mode == "pcasgd-pv":
                take_predict = _cos(predicted - plain, G[k][i]) > _cos(clipped - plain, G[k][i])
                mixed = predicted if take_predict else clipped
            else:
                mixed = theta * predicted + (1 - theta) * clipped
            row.append(mixed + V[i])
        X.append(row)
    return X[iterations]


def server(problem: Quadratic, workers: int, rounds: int, lag, opts: dict) -> np.ndarray:
    """ps-asgd / dcasgd-c / dcasgd-a / sasgd with workers of equal speed (rounds x workers)."""
    mode, lr, mu = opts["mode"], opts["lr"], opts["mu"]
    lam, decay, eps = opts.get("lam", 0.0), opts.get("ms_decay", 0.95), opts.get("eps", 1e-7)
    c = workers // opts.get("n", 1)
    w, v, version = problem.x0.copy(), np.zeros_like(problem.x0), 0
    history = {0: w}
    pulled = [(w, 0)] * workers
    done = [0] * workers
    pending: list[tuple[np.ndarray, int]] = []
    MS: dict[int, np.ndarray] = {}
    for _ in range(rounds):
        for m in range(workers):
            backup, backup_version = pulled[m]
            g = problem.grad(m, backup, done[m])
            tau = version - backup_version
            step = None
            if mode == "sasgd":
                pending.append((g, tau))
                if len(pending) == c:
                    step = sum(g_l / max(t_l, 1) for g_l, t_l in pending) / c
                    pending = []
            else:
                lam_t = lam
                if mode == "dcasgd-a":
                    MS[m] = decay * MS.get(m, 0.0) + (1 - decay) * g * g
                    lam_t = lam / np.sqrt(MS[m] + eps)
                step = g + (0.0 if mode == "ps-asgd" else lam_t * g * g * (w - backup))
            if step is not None:
                v = mu * v - lr * step
                w = w + v
                version += 1
                history[version] = w
            done[m] += 1
            ver = max(0, version - lag(m + 1, 0, done[m]))
            pulled[m] = (history[ver], ver)
    return w


def ssgd(problem: Quadratic, agents: int, iterations: int, lr: float, mu: float) -> np.ndarray:
    w, v = problem.x0.copy(), np.zeros_like(problem.x0)
    for k in range(iterations):
        v = mu * v - lr * np.mean([problem.grad(i, w, k) for i in range(agents)], axis=0)
        w = w + v
    return w


def odsgd(problem: Quadratic, agents: int, iterations: int, opts: dict) -> np.ndarray:
    """One-step-delay SGD: the reduction of iteration t is applied at t + latency."""
    lr, mu, local_lr, latency, warmup = opts["lr"], opts["mu"], opts["local_lr"], opts["latency"], opts["warmup"]
    dc_lambda, eps = opts.get("dc_lambda"), 1e-7  # dc_lambda set: delay-compensated local step (m = 0)
    W, v = problem.x0.copy(), np.zeros_like(problem.x0)
    base = W
    local = [W.copy() for _ in range(agents)]
    queue: list[tuple[int, np.ndarray]] = []
    for t in range(iterations):
        grads = [problem.grad(i, local[i], t) for i in range(agents)]
        if t < warmup:
            v = mu * v - lr * np.mean(grads, axis=0)
            W = W + v
            local = [W.copy() for _ in range(agents)]
            base = W
            continue
        queue.append((t + latency, np.mean(grads, axis=0)))
        while queue and queue[0][0] <= t:
            v = mu * v - lr * queue.pop(0)[1]
            W = W + v
        if dc_lambda is not None:
            grads = [g + dc_lambda / np.sqrt(g * g + eps) * g * g * (W - base) for g in grads]
        local = [W - local_lr * g for g in grads]
        base = W
    for _, mean in queue:
        v = mu * v - lr * mean
        W = W + v
    return W
