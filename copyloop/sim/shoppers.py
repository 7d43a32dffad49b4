"""Simulated shoppers with a known truth: how likely each kind of shopper is to click, add to cart
and buy after reading a given text.

The truth reads the *text itself* (its length, bullet lines, `Name: value` spec lines, numbers,
second-person address, questions, sensory words), parsed here with rules of its own: nothing is
borrowed from the bandit's features, so a policy cannot win by sharing this file's buckets. A
shopper's click log-odds are

    logit P(click | x, a) = base(product) + Σ_k β_k(x) · z_k(text_a) + ε(a)

where `x` is the page view's context (device, segment, referrer, category of the product) and
`ε(a)` is a variant's own effect, drawn once per variant (σ = `idiosyncrasy`): what no feature
explains. An add-to-cart follows a click and a purchase an add-to-cart, each with its own
log-odds on the text; a purchase is worth the product's price. Every number comes from one seeded
generator per world.

Scenarios (`SCENARIOS`) differ in what wins: context × text shape, category × tone, a long tail
of rarely seen products, a drift of taste half way, new variants arriving mid-run, and purchases
that prefer other copy than clicks.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: The text shape the truth reads, in this order (see `shape_of`).
SHAPE = ("length", "bullets", "specs", "numbers", "you", "question", "sensory", "sentences")

_BULLET = re.compile(r"^\s*[-*\u2022]\s+", re.MULTILINE)
_SPEC = re.compile(r"^[A-Z][\w ]{1,30}:\s+\S", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_YOU = re.compile(r"\b(?:you|your|yours)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_WORD = re.compile(r"[a-z']+")
#: Words a reader feels rather than measures (the truth's own list).
SENSORY = frozenset(
    "comfortable comfort soft smooth smoothly warm cozy gentle glow glows calm quiet crisp fresh "
    "rich lovely delight enjoy earns wonder beautiful bright cool relaxing easy effortless "
    "keen balanced light lightweight snug silky fragrant".split()
)


def shape_of(text: str) -> np.ndarray:
    """The truth's view of a text: `SHAPE` features, scaled to be of order one.

    >>> [round(float(v), 2) for v in shape_of("Soft and warm.\\n- 2 m cord\\nColour: red")]
    [-2.43, 1.0, 1.0, 0.5, 0.0, 0.0, 2.0, 0.5]
    """
    words = _WORD.findall(text.lower())
    return np.array(
        [
            math.log(max(len(text), 20) / 200.0) / math.log(2.0),  # doublings from 200 chars
            min(len(_BULLET.findall(text)), 6),
            min(len(_SPEC.findall(text)), 8),
            min(len(_NUMBER.findall(text)), 12) / 2.0,
            min(len(_YOU.findall(text)), 4),
            float("?" in text),
            min(sum(w in SENSORY for w in words), 6),
            min(len(_SENTENCE_END.findall(text)), 8) / 2.0,
        ]
    )


#: What a page view looks like: each context key's values and their shares.
CONTEXT: dict[str, tuple[tuple[str, float], ...]] = {
    "device": (("mobile", 0.55), ("desktop", 0.35), ("tablet", 0.10)),
    "segment": (("new", 0.5), ("returning", 0.35), ("loyal", 0.15)),
    "referrer": (("search", 0.45), ("social", 0.25), ("email", 0.10), ("direct", 0.20)),
    "locale": (("en-US", 0.6), ("en-GB", 0.25), ("de-DE", 0.15)),
}


def _w(**weights: float) -> np.ndarray:
    return np.array([weights.get(k, 0.0) for k in SHAPE])


#: Click tastes per context value (log-odds per unit of each `SHAPE` feature). Device matters
#: most; segment and referrer nudge.
CLICK_TASTE: dict[str, dict[str, np.ndarray]] = {
    "device": {
        "mobile": _w(length=-0.6, bullets=0.2, specs=-0.05),
        "desktop": _w(length=0.2, specs=0.2, numbers=0.1),
        "tablet": _w(sensory=0.3, question=0.4, you=0.15, specs=-0.1),
    },
    "segment": {
        "new": _w(you=0.1, question=0.1),
        "returning": _w(),
        "loyal": _w(specs=0.1, numbers=0.05),
    },
    "referrer": {
        "search": _w(specs=0.05),
        "social": _w(sensory=0.1, length=-0.1),
        "email": _w(),
        "direct": _w(),
    },
}

#: Click tastes per product category (the `category` scenario).
CATEGORY_TASTE: dict[str, np.ndarray] = {
    "electronics-accessories": _w(specs=0.22, numbers=0.12, sensory=-0.10),
    "tools": _w(specs=0.20, numbers=0.10, length=0.10),
    "kitchen": _w(sensory=0.25, you=0.10),
    "home-lighting": _w(sensory=0.22, question=0.20),
    "apparel": _w(length=-0.45, bullets=0.12),
    "beauty": _w(you=0.20, sensory=0.15, length=-0.20),
    "toys": _w(question=0.40, sentences=0.12, specs=-0.10),
    "outdoor": _w(bullets=0.18, numbers=0.06),
}

#: Add-to-cart tastes (after a click): detail converts on desktop, brevity on mobile.
CART_TASTE: dict[str, dict[str, np.ndarray]] = {
    "device": {
        "mobile": _w(specs=0.12, numbers=0.10, length=0.10),
        "desktop": _w(specs=0.18, numbers=0.12, length=0.20),
        "tablet": _w(sensory=0.10, specs=0.10),
    },
}


@dataclass(frozen=True)
class Scenario:
    """One simulated storefront: how many products and page views, how fast, what wins."""

    name: str
    description: str
    products: int = 45
    decisions: int = 6000
    rate: float = 150.0  # page views per second
    window_s: float = 3.0
    traffic: str = "uniform"  # uniform | zipf
    zipf_s: float = 1.1
    tastes: tuple[str, ...] = ("device", "segment", "referrer")
    category_scale: float = 0.0
    base_ctr: tuple[float, float] = (0.10, 0.30)  # products' click rates are uniform in this
    taste_scale: float = 0.65  # multiplies the context tastes (how much context matters)
    idiosyncrasy: float = 0.15  # σ of a variant's own log-odds effect
    drift_at: float | None = None  # share of the run after which device tastes rotate
    new_variants_at: float | None = None  # share of the run at which new variants arrive
    new_variant_products: int = 8
    purchases: bool = False
    context_keys: tuple[str, ...] = ("device", "segment", "referrer", "locale")
    extra: Mapping[str, float] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "context_text",
            "clicks depend on device, segment and referrer × the text's shape",
        ),
        Scenario(
            "category",
            "what wins depends on the product's category × tone and detail, plus device",
            tastes=("device",),
            category_scale=1.0,
        ),
        Scenario(
            "long_tail",
            "120 products, Zipf traffic: most products are seen a few times",
            products=120,
            decisions=8000,
            traffic="zipf",
        ),
        Scenario(
            "drift",
            "device tastes rotate half way (mobile takes desktop's, desktop tablet's …)",
            decisions=8000,
            drift_at=0.5,
        ),
        Scenario(
            "new_variants",
            "a third in, the busiest products get new copy: half 2x their best, half 0.5x "
            "their worst",
            traffic="zipf",
            decisions=8000,
            new_variants_at=1 / 3,
        ),
        Scenario(
            "purchases",
            "reward = click + add-to-cart + 3 x purchase; carts prefer detail, clicks brevity",
            purchases=True,
        ),
    )
}


@dataclass(frozen=True)
class Arm:
    """A variant as the world knows it: its id, text and the truth's view of the text."""

    variant_id: str
    text: str
    shape: np.ndarray
    effect: float  # ε: the variant's own log-odds effect
    #: New variants' truth: P(click) = boost × the best of the product's other variants when
    #: boost > 1 (better than all of them), × the worst of them when boost < 1 (worse than all).
    boost: float | None = None


class World:
    """The truth of one scenario and seed: products' base rates, prices, variants' effects."""

    def __init__(
        self,
        scenario: Scenario,
        categories: Sequence[str],
        seed: int,
    ) -> None:
        self.scenario = scenario
        self.categories = list(categories)
        self._rng = np.random.default_rng([seed, 7])
        n = len(self.categories)
        self.base_logit = np.log(self._rng.uniform(*scenario.base_ctr, size=n) / 0.95)
        self.price = np.round(self._rng.lognormal(3.5, 0.8, size=n), 2)
        if scenario.traffic == "zipf":
            order = self._rng.permutation(n)
            weights = 1.0 / (np.arange(1, n + 1) ** scenario.zipf_s)
            self.traffic = np.empty(n)
            self.traffic[order] = weights / weights.sum()
        else:
            self.traffic = np.full(n, 1.0 / n)
        self.drifted = False

    def variant_effect(self, variant_id: str) -> float:
        """ε of a variant: N(0, σ²), fixed by the variant id and the world's seed."""
        digest = hashlib.sha256(variant_id.encode()).digest()
        draw = np.random.default_rng([int.from_bytes(digest[:8], "big"), 11]).standard_normal()
        return float(draw * self.scenario.idiosyncrasy)

    def arm(self, variant_id: str, text: str, boost: float | None = None) -> Arm:
        return Arm(variant_id, text, shape_of(text), self.variant_effect(variant_id), boost)

    # -- page views ------------------------------------------------------------------------
    def page_view(self, rng: np.random.Generator) -> tuple[int, dict[str, str]]:
        """A product index (by traffic share) and a context."""
        product = int(rng.choice(len(self.traffic), p=self.traffic))
        context = {}
        for key in self.scenario.context_keys:
            names, shares = zip(*CONTEXT[key], strict=True)
            context[key] = str(names[int(rng.choice(len(names), p=np.asarray(shares)))])
        return product, context

    # -- the truth -------------------------------------------------------------------------
    def _taste(
        self, tastes: Mapping[str, Mapping[str, np.ndarray]], context: Mapping[str, str]
    ) -> np.ndarray:
        total = np.zeros(len(SHAPE))
        for key, by_value in tastes.items():
            value = context.get(key)
            if value is None:
                continue
            if key == "device" and self.drifted:
                value = _ROTATE[value]
            if value in by_value:
                total = total + by_value[value]
        return total

    def p_click(self, product: int, context: Mapping[str, str], arms: Sequence[Arm]) -> np.ndarray:
        """P(click) of each arm for this page view."""
        tastes = {k: CLICK_TASTE[k] for k in self.scenario.tastes}
        beta = self.scenario.taste_scale * self._taste(tastes, context)
        if self.scenario.category_scale:
            beta = beta + self.scenario.category_scale * CATEGORY_TASTE.get(
                self.categories[product], np.zeros(len(SHAPE))
            )
        shapes = np.stack([a.shape for a in arms])
        effects = np.array([a.effect for a in arms])
        logits = self.base_logit[product] + shapes @ beta + effects
        p = 0.95 / (1.0 + np.exp(-logits))
        boosted = [(i, a.boost) for i, a in enumerate(arms) if a.boost is not None]
        if boosted:
            plain = [i for i in range(len(arms)) if arms[i].boost is None] or list(range(len(p)))
            best, worst = float(p[plain].max()), float(p[plain].min())
            for i, boost in boosted:
                p[i] = min(0.95, boost * (best if boost > 1 else worst))
        return np.asarray(p, dtype=float)

    def p_cart(self, context: Mapping[str, str], arms: Sequence[Arm]) -> np.ndarray:
        """P(add to cart | click) of each arm."""
        if not self.scenario.purchases:
            return np.full(len(arms), 0.3)
        beta = self._taste(CART_TASTE, context)
        shapes = np.stack([a.shape for a in arms])
        return np.asarray(1.0 / (1.0 + np.exp(-(-1.2 + shapes @ beta))), dtype=float)

    def expected_reward(
        self,
        product: int,
        context: Mapping[str, str],
        arms: Sequence[Arm],
        weights: Mapping[str, float],
    ) -> np.ndarray:
        """E[reward] of each arm under copyloop's reward weights (click, add-to-cart, purchase:
        each counted once per decision, as the ledger's rewards are)."""
        click = self.p_click(product, context, arms)
        if not self.scenario.purchases:
            return np.asarray(weights["click"] * click, dtype=float)
        cart = click * self.p_cart(context, arms)
        buy = cart * P_BUY_AFTER_CART
        total = weights["click"] * click + weights["add_to_cart"] * cart + weights["purchase"] * buy
        return np.asarray(total, dtype=float)

    def drift(self) -> None:
        self.drifted = True


#: After the drift, each device shows the tastes of the next one.
_ROTATE = {"mobile": "desktop", "desktop": "tablet", "tablet": "mobile"}
#: P(purchase | add to cart).
P_BUY_AFTER_CART = 0.45


__all__ = ["SCENARIOS", "SHAPE", "Arm", "Scenario", "World", "shape_of"]
