"""What users would run instead of copyloop, as simulation `Server`s on the same cadence.

Each baseline learns from the same closed windows (an in-memory join with production's rule:
a decision closes `window_s + grace_s` after it was served, and its reward counts each event type
once, with copyloop's weights), publishes what it learned every `snapshot_every_s` and serves the
published state from the next reload, exactly when copyloop's learner snapshots and its API
reloads. So the comparison is of policies, not of plumbing.

- `uniform`: every variant equally often (what a plain A/B/n test does).
- `egreedy`: per product, the best mean reward so far, a uniformly random variant with ε = 0.1.
- `thompson`: per-product Beta Thompson sampling (GrowthBook's or Statsig's multi-armed bandit);
  a reward above 1 is made Bernoulli with success probability reward / max reward (Agrawal &
  Goyal's trick), so it stays exact in expectation.
- `thompson_ctx`: the same per (product, device, segment).
- `linucb`: LinUCB with disjoint-free shared weights (Li et al. 2010, "A contextual-bandit
  approach to personalized news article recommendation", Algorithm 1 with one shared model) on
  *the same features copyloop's VW sees*: the namespaces and interactions of the settings,
  parsed from `bandit.vw_format`'s lines and hashed to `dim` dimensions.
- `oracle`: the best variant under the world's truth (the ceiling).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bandit import Arm as BanditArm
from bandit import ProductFeatures
from bandit.vw_format import arm_lines, shared_line
from copyloop.sim.engine import Happened, PageView, Timing


class Policy(Protocol):
    """A baseline's choose / learn / publish."""

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]: ...

    def update(
        self,
        product_id: str,
        context: Mapping[str, str],
        actions: Sequence[str],
        chosen: int,
        reward: float,
    ) -> None: ...

    def publish(self) -> None: ...


@dataclass
class _Pending:
    view: PageView
    events: list[Happened]


class BaselineServer:
    """A `Policy` behind production's windows and cadence."""

    def __init__(
        self,
        name: str,
        policy: Policy,
        catalog: Mapping[str, Sequence[tuple[str, str, str]]],
        timing: Timing,
        weights: Mapping[str, float],
    ) -> None:
        self.name = name
        self.policy = policy
        self.timing = timing
        self.weights = dict(weights)
        self.actions: dict[str, tuple[str, ...]] = {
            pid: tuple(v for v, _, _ in rows) for pid, rows in catalog.items()
        }
        self._staged: dict[str, list[str]] = defaultdict(list)
        self._pending: dict[str, _Pending] = {}
        self._published_at = 0.0
        self._counter = 0

    def choose(self, product_id: str, context: Mapping[str, str], now: float) -> PageView:
        actions = self.actions[product_id]
        index, probability = self.policy.choose(product_id, context, actions)
        self._counter += 1
        return PageView(
            f"{self.name}-{self._counter}",
            product_id,
            context,
            actions[index],
            probability,
            actions,
            now,
        )

    def ingest(self, views: Sequence[PageView], events: Sequence[Happened], now: float) -> None:
        for v in views:
            self._pending[v.decision_id] = _Pending(v, [])
        for e in events:
            pending = self._pending.get(e.decision_id)
            if pending is not None:
                pending.events.append(e)

    def learn(self, now: float) -> None:
        cutoff = now - self.timing.window_s - self.timing.grace_s
        due = [d for d, p in self._pending.items() if p.view.ts < cutoff]
        for decision_id in due:
            p = self._pending.pop(decision_id)
            kinds = {e.type for e in p.events}
            reward = sum(self.weights[k] for k in kinds)
            v = p.view
            self.policy.update(
                v.product_id, v.context, v.actions, v.actions.index(v.variant_id), reward
            )
        if now - self._published_at >= self.timing.snapshot_every_s:
            self._ready = True
            self._published_at = now

    def reload(self, now: float) -> None:
        if getattr(self, "_ready", False):
            self.policy.publish()
            self._ready = False

    def refresh_catalog(self, now: float) -> None:
        for pid, added in self._staged.items():
            self.actions[pid] = (*self.actions[pid], *added)
        self._staged.clear()

    def add_variant(self, product_id: str, text: str, style: str, now: float) -> str:
        vid = f"new-{product_id}-{len(self._staged[product_id])}-{style}"
        self._staged[product_id].append(vid)
        if isinstance(self.policy, LinUCB):
            self.policy.know(vid, text, style, "manual")
        return vid

    def close(self) -> None:
        pass


class Uniform:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 31])

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]:
        return int(self._rng.integers(len(actions))), 1.0 / len(actions)

    def update(self, *args: Any) -> None:
        pass

    def publish(self) -> None:
        pass


class _Table:
    """Per-key, per-variant sums, with a served copy swapped in by `publish`."""

    def __init__(self) -> None:
        self.learned: dict[tuple[Any, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.served: dict[tuple[Any, str], tuple[float, float]] = {}

    def add(self, key: Any, variant: str, a: float, b: float) -> None:
        cell = self.learned[(key, variant)]
        cell[0] += a
        cell[1] += b

    def publish(self) -> None:
        self.served = {k: (v[0], v[1]) for k, v in self.learned.items()}

    def get(self, key: Any, variant: str) -> tuple[float, float]:
        return self.served.get((key, variant), (0.0, 0.0))


class EpsilonGreedy:
    def __init__(self, seed: int, epsilon: float = 0.1) -> None:
        self._rng = np.random.default_rng([seed, 37])
        self.epsilon = epsilon
        self._table = _Table()  # (sum of rewards, count)

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]:
        k = len(actions)
        means = []
        for a in actions:
            total, n = self._table.get(product_id, a)
            means.append(total / n if n else np.inf)  # untried first
        best = np.flatnonzero(np.asarray(means) == np.max(means))
        greedy = int(best[self._rng.integers(len(best))])
        if self._rng.random() < self.epsilon:
            index = int(self._rng.integers(k))
        else:
            index = greedy
        p = self.epsilon / k + ((1 - self.epsilon) / len(best) if index in best else 0.0)
        return index, p

    def update(
        self,
        product_id: str,
        context: Mapping[str, str],
        actions: Sequence[str],
        chosen: int,
        reward: float,
    ) -> None:
        self._table.add(product_id, actions[chosen], reward, 1.0)

    def publish(self) -> None:
        self._table.publish()


class BetaThompson:
    """Beta(1 + successes, 1 + failures) per (key, variant); `key(product, context)`."""

    def __init__(
        self,
        seed: int,
        max_reward: float,
        key: Callable[[str, Mapping[str, str]], Any] = lambda p, c: p,
    ) -> None:
        self._rng = np.random.default_rng([seed, 41])
        self.max_reward = max_reward
        self.key = key
        self._table = _Table()  # (successes, failures)

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]:
        key = self.key(product_id, context)
        draws = [
            self._rng.beta(1 + s, 1 + f) for s, f in (self._table.get(key, a) for a in actions)
        ]
        return int(np.argmax(draws)), float("nan")

    def update(
        self,
        product_id: str,
        context: Mapping[str, str],
        actions: Sequence[str],
        chosen: int,
        reward: float,
    ) -> None:
        success = float(self._rng.random() < reward / self.max_reward)
        self._table.add(self.key(product_id, context), actions[chosen], success, 1.0 - success)

    def publish(self) -> None:
        self._table.publish()


class LinUCB:
    """One shared ridge regression over hashed VW features, optimistic by `alpha` standard
    deviations: score(x) = θᵀx + α √(xᵀ A⁻¹ x), A = λI + Σ x xᵀ, θ = A⁻¹ Σ r x."""

    def __init__(
        self,
        catalog: Mapping[str, Sequence[tuple[str, str, str]]],
        categories: Mapping[str, str],
        interactions: str,
        *,
        alpha: float = 0.5,
        dim: int = 1024,
        ridge: float = 1.0,
    ) -> None:
        self.alpha = alpha
        self.dim = dim
        self.categories = dict(categories)
        self.pairs = [p for p in interactions.split() if len(p) == 2]
        self._arms: dict[str, list[tuple[str, str, float]]] = {}
        for rows in catalog.values():
            for vid, text, style in rows:
                self.know(vid, text, style, "control" if style == "original" else "rules")
        self._a_inv = np.eye(dim) / ridge
        self._b = np.zeros(dim)
        self._served = (self._a_inv.copy(), np.zeros(dim))  # (A⁻¹, θ)

    def know(self, variant_id: str, text: str, style: str, source: str) -> None:
        arm = BanditArm.from_variant(variant_id, text, style, source)
        self._arms[variant_id] = _tokens(arm_lines([arm])[0])

    def _features(
        self, product_id: str, context: Mapping[str, str], variant: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The hashed feature vector, sparse: (indices, values)."""
        line = shared_line(context, ProductFeatures(product_id, self.categories[product_id]))
        tokens = _tokens(line) + self._arms[variant]
        named = [(f"{ns}^{name}", value) for ns, name, value in tokens] + [("bias", 1.0)]
        by_ns: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for ns, name, value in tokens:
            by_ns[ns].append((name, value))
        for pair in self.pairs:
            a, b = pair[0], pair[1]
            named.extend((f"{pair}^{x}*{y}", u * v) for x, u in by_ns[a] for y, v in by_ns[b])
        counts: dict[int, float] = defaultdict(float)
        for name, value in named:
            counts[zlib.crc32(name.encode()) % self.dim] += value
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        val = np.fromiter(counts.values(), dtype=float, count=len(counts)) / np.sqrt(len(named))
        return idx, val

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]:
        a_inv, theta = self._served
        scores = []
        for a in actions:
            idx, val = self._features(product_id, context, a)
            width = float(np.sqrt(val @ a_inv[np.ix_(idx, idx)] @ val))
            scores.append(float(val @ theta[idx]) + self.alpha * width)
        return int(np.argmax(scores)), float("nan")

    def update(
        self,
        product_id: str,
        context: Mapping[str, str],
        actions: Sequence[str],
        chosen: int,
        reward: float,
    ) -> None:
        idx, val = self._features(product_id, context, actions[chosen])
        ax = self._a_inv[:, idx] @ val
        self._a_inv -= np.outer(ax, ax) / (1.0 + val @ ax[idx])
        self._b[idx] += reward * val

    def publish(self) -> None:
        self._served = (self._a_inv.copy(), self._a_inv @ self._b)


def _tokens(line: str) -> list[tuple[str, str, float]]:
    """(namespace, feature, value) of one VW text line (label and `shared` dropped; a feature
    without `:value` has value 1).

    >>> _tokens("shared |U device=mobile |T len:-1.5")
    [('U', 'device=mobile', 1.0), ('T', 'len', -1.5)]
    """
    out: list[tuple[str, str, float]] = []
    for part in line.split("|")[1:]:
        words = part.split()
        if not words:
            continue
        ns = words[0][0]
        for feature in words[1:]:
            name, sep, value = feature.rpartition(":")
            out.append((ns, name, float(value)) if sep else (ns, feature, 1.0))
    return out


class Oracle:
    """Serves the best variant under the truth; learns nothing."""

    def __init__(self, best: Callable[[str, Mapping[str, str], Sequence[str]], int]) -> None:
        self.best = best

    def choose(
        self, product_id: str, context: Mapping[str, str], actions: Sequence[str]
    ) -> tuple[int, float]:
        return self.best(product_id, context, actions), 1.0

    def update(self, *args: Any) -> None:
        pass

    def publish(self) -> None:
        pass


__all__ = [
    "BaselineServer",
    "BetaThompson",
    "EpsilonGreedy",
    "LinUCB",
    "Oracle",
    "Uniform",
]
