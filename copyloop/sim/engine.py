"""The simulation loop: page views in simulated time, served by a `Server`, answered by the
`World`'s shoppers, with rewards delayed exactly as production closes windows.

Time is simulated (page view `i` happens at `t0 + i / rate`), so a run is deterministic and
takes as long as its computation, not its traffic. Between page views the loop runs whatever is
due, in production's cadence (`Timing`): ingesting decisions and events (every 0.1 s, as a
consumer's poll), the learner's step (close the windows due at the watermark, learn, snapshot
every `snapshot_every_s`), the API's model reload (`model_reload_s`) and catalog refresh
(`catalog_refresh_s`). Every server — copyloop's real stack (`copyloop.sim.server`) and each
baseline (`copyloop.sim.baselines`) — sees the same page views, the same delays and the same
cadence; only how it chooses and learns differs.

Per decision the loop records the expected reward of the chosen variant, of the best one (the
oracle) and the mean over the action set (uniform serving), under the world's truth.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from copyloop.sim.shoppers import P_BUY_AFTER_CART, Arm, World

#: The simulated epoch of the first page view (2026-01-01): decisions carry realistic `ts`.
T0 = 1767225600.0


@dataclass(frozen=True)
class Timing:
    """Production's cadence, in seconds (the defaults are the demo's: a 3 s window)."""

    window_s: float = 3.0
    grace_s: float = 1.0
    skew_s: float = 2.0
    ingest_every_s: float = 0.1
    learn_every_s: float = 0.25
    snapshot_every_s: float = 1.0
    reload_s: float = 0.5
    catalog_refresh_s: float = 2.0


@dataclass(frozen=True, slots=True)
class PageView:
    """One served decision as the loop hands it to a server's learning side."""

    decision_id: str
    product_id: str
    context: Mapping[str, str]
    variant_id: str
    probability: float
    actions: tuple[str, ...]
    ts: float


@dataclass(frozen=True, slots=True)
class Happened:
    """A storefront event: what the shopper did, when."""

    event_id: str
    decision_id: str
    type: str
    ts: float
    value: float | None = None


class Server(Protocol):
    """What the loop drives: serving, and the learning behind it."""

    name: str

    def choose(self, product_id: str, context: Mapping[str, str], now: float) -> PageView: ...

    def ingest(self, views: Sequence[PageView], events: Sequence[Happened], now: float) -> None: ...

    def learn(self, now: float) -> None: ...

    def reload(self, now: float) -> None: ...

    def refresh_catalog(self, now: float) -> None: ...

    def add_variant(self, product_id: str, text: str, style: str, now: float) -> str: ...

    def close(self) -> None: ...


@dataclass
class Outcome:
    """Per decision: product index, whether it falls in the second half, chosen variant, and the
    expected rewards of the chosen arm, the best arm and the action set's mean."""

    product: list[int] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)
    uniform: list[float] = field(default_factory=list)
    arrivals: dict[str, tuple[str, int, float]] = field(default_factory=dict)

    def share_of_oracle(self, start: float = 0.5) -> float:
        """Σ expected reward of what was served / Σ the oracle's, over the run's last part."""
        lo = int(len(self.expected) * start)
        return float(np.sum(self.expected[lo:]) / np.sum(self.oracle[lo:]))

    def windows(self, width: int = 500) -> list[float]:
        """The share of the oracle in consecutive windows of `width` decisions (the learning
        curve: how fast a server learns, and whether it recovers after tastes drift).

        >>> Outcome(expected=[0.1, 0.2, 0.3], oracle=[0.2, 0.2, 0.3]).windows(2)
        [0.75..., 1.0]
        """
        e, o = np.asarray(self.expected), np.asarray(self.oracle)
        return [
            float(e[i : i + width].sum() / o[i : i + width].sum()) for i in range(0, len(e), width)
        ]

    def uniform_share(self, start: float = 0.5) -> float:
        lo = int(len(self.expected) * start)
        return float(np.sum(self.uniform[lo:]) / np.sum(self.oracle[lo:]))

    def new_variant_shares(self, after: int = 400, until: int = 500) -> dict[str, float]:
        """For each variant that arrived mid-run: its share of its product's decisions number
        `after`+1 … `until` since it arrived (None-free: products seen fewer times are left out)."""
        shares = {}
        for variant_id, (_, product, _) in self.arrivals.items():
            since = self._since_arrival(variant_id, product)
            window = since[after:until]
            if len(window) == until - after:
                shares[variant_id] = sum(v == variant_id for v in window) / len(window)
        return shares

    def _since_arrival(self, variant_id: str, product: int) -> list[str]:
        start = int(self.arrivals[variant_id][2])
        return [
            self.chosen[i] for i in range(start, len(self.chosen)) if self.product[i] == product
        ]


@dataclass(frozen=True)
class NewVariant:
    """A variant added mid-run; its truth: `boost` × the click rate of the product's best other
    variant when `boost` > 1, × its worst one's when `boost` < 1 (`shoppers.Arm.boost`)."""

    product: int
    text: str
    style: str
    boost: float


class Simulation:
    """One scenario world, one server, one seed: `run()` plays every page view."""

    def __init__(
        self,
        world: World,
        server: Server,
        catalog: Mapping[str, Sequence[tuple[str, str, str]]],
        product_ids: Sequence[str],
        *,
        seed: int,
        timing: Timing,
        reward_weights: Mapping[str, float],
        new_variants: Sequence[NewVariant] = (),
        progress: Callable[[int], None] | None = None,
        on_drift: Callable[[float], None] | None = None,
    ) -> None:
        """`on_drift(now)` runs when the world's tastes change (an operator who knows)."""
        self.world = world
        self.server = server
        self.timing = timing
        self.weights = dict(reward_weights)
        self.product_ids = list(product_ids)
        self._rng = np.random.default_rng([seed, 3])
        self._ids = np.random.default_rng([seed, 5])
        #: variant_id → the world's arm (its text's truth), for every variant ever servable.
        self.arms: dict[str, Arm] = {
            vid: world.arm(vid, text) for rows in catalog.values() for vid, text, _ in rows
        }
        self.new_variants = list(new_variants)
        self._progress = progress
        self._on_drift = on_drift
        self.outcome = Outcome()

    def _uid(self) -> str:
        return uuid.UUID(bytes=self._ids.bytes(16), version=4).hex

    def run(self) -> Outcome:
        s = self.world.scenario
        t = self.timing
        dt = 1.0 / s.rate
        due = {
            "ingest": T0 + t.ingest_every_s,
            "learn": T0 + t.learn_every_s,
            "reload": T0 + t.reload_s,
            "catalog": T0 + t.catalog_refresh_s,
        }
        periods = {
            "ingest": t.ingest_every_s,
            "learn": t.learn_every_s,
            "reload": t.reload_s,
            "catalog": t.catalog_refresh_s,
        }
        drift_at = None if s.drift_at is None else int(s.drift_at * s.decisions)
        arrive_at = None if s.new_variants_at is None else int(s.new_variants_at * s.decisions)
        views: list[PageView] = []
        events: list[tuple[float, int, Happened]] = []  # a heap by time
        counter = 0
        for i in range(s.decisions):
            now = T0 + i * dt
            for name in ("ingest", "learn", "reload", "catalog"):
                while due[name] <= now:
                    at = due[name]
                    if name == "ingest":
                        ready = []
                        while events and events[0][0] <= at:
                            ready.append(heapq.heappop(events)[2])
                        ready_views = [v for v in views if v.ts <= at]
                        views = [v for v in views if v.ts > at]
                        self.server.ingest(ready_views, ready, at)
                    elif name == "learn":
                        self.server.learn(at)
                    elif name == "reload":
                        self.server.reload(at)
                    else:
                        self.server.refresh_catalog(at)
                    due[name] = at + periods[name]
            if drift_at is not None and i == drift_at:
                self.world.drift()
                if self._on_drift is not None:
                    self._on_drift(now)
            if arrive_at is not None and i == arrive_at:
                self._arrive(now, i)
            product, context = self.world.page_view(self._rng)
            pid = self.product_ids[product]
            view = self.server.choose(pid, context, now)
            arms = [self.arms[a] for a in view.actions]
            expected = self.world.expected_reward(product, context, arms, self.weights)
            chosen = view.actions.index(view.variant_id)
            o = self.outcome
            o.product.append(product)
            o.chosen.append(view.variant_id)
            o.expected.append(float(expected[chosen]))
            o.oracle.append(float(expected.max()))
            o.uniform.append(float(expected.mean()))
            views.append(view)
            for happened in self._shopper(product, context, arms, chosen, view, now):
                counter += 1
                heapq.heappush(events, (happened.ts, counter, happened))
            if self._progress is not None and (i + 1) % 500 == 0:
                self._progress(i + 1)
        # The last page views and events reach the ledger too (nothing more closes).
        end = T0 + s.decisions * dt
        self.server.ingest(views, [e[2] for e in sorted(events)], end)
        return self.outcome

    def _arrive(self, now: float, index: int) -> None:
        for nv in self.new_variants:
            pid = self.product_ids[nv.product]
            vid = self.server.add_variant(pid, nv.text, nv.style, now)
            self.arms[vid] = self.world.arm(vid, nv.text, boost=nv.boost)
            self.outcome.arrivals[vid] = (pid, nv.product, float(index))

    def _shopper(
        self,
        product: int,
        context: Mapping[str, str],
        arms: Sequence[Arm],
        chosen: int,
        view: PageView,
        now: float,
    ) -> list[Happened]:
        """What the shopper does after reading `arms[chosen]` (among the page's action set, which
        the truth of a new variant refers to): a click, then maybe a cart and a purchase, each
        a little later, all inside the window."""
        rng = self._rng
        arm = arms[chosen]
        p_click = float(self.world.p_click(product, context, arms)[chosen])
        if rng.random() >= p_click:
            return []
        limit = now + self.timing.window_s * 0.9
        ts = min(limit, now + float(rng.exponential(0.4)))
        out = [Happened(self._uid(), view.decision_id, "click", ts)]
        if not self.world.scenario.purchases:
            return out
        p_cart = float(self.world.p_cart(context, [arm])[0])
        if rng.random() < p_cart:
            ts = min(limit, ts + float(rng.exponential(0.3)))
            out.append(Happened(self._uid(), view.decision_id, "add_to_cart", ts))
            if rng.random() < P_BUY_AFTER_CART:
                ts = min(limit, ts + float(rng.exponential(0.3)))
                price = float(self.world.price[product])
                out.append(Happened(self._uid(), view.decision_id, "purchase", ts, price))
        return out


__all__ = [
    "T0",
    "Happened",
    "NewVariant",
    "Outcome",
    "PageView",
    "Server",
    "Simulation",
    "Timing",
]
