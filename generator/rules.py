"""The `rules` backend: deterministic, CPU-only candidates built from the product's own words.

Every candidate is assembled from the product's sentences, clauses and attribute values plus
fixed connective templates that state no facts, so the guardrails' fact checks hold by
construction. Styles:

- `concise`: the one or two sentences that best cover the title and attributes (extractive).
- `bullets`: a lead sentence, then ``- `` lines of attributes and key phrases.
- `technical`: the title, then ``Name: value`` spec lines, then the most spec-dense sentence.
- `benefit`: attributes turned into benefits by verb templates, then a supporting sentence.
- `story`: a short narrative: an opener, original sentences reordered, a closing line.

Asking for more candidates than styles gives alternates (round 1, 2 …) that pick other
sentences, phrasings and orders. Randomness comes from a `random.Random` seeded per
(seed, product, style, round), so a product's candidates do not depend on which other
products or styles were generated with it, which keeps re-runs idempotent.

Usage::

    generator = RulesGenerator(seed=0)
    candidates = generator.generate(product, ["concise", "bullets"], n=4)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from generator import UnknownStyleError
from generator.facts import (
    ProductLike,
    format_value,
    numbers_in,
    quantities_in,
    unit_of_key,
    words_in,
)

STYLES: tuple[str, ...] = ("concise", "bullets", "technical", "benefit", "story")
VERSION = "rules-1"
MAX_ROUNDS = 3

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_CLAUSE = re.compile(r",\s+(?:and\s+|while\s+|so\s+)?|;\s+|\s+and\s+")
_STOP = frozenset(
    "a an and are as at be by for from in into is it its of on or so that the their this to "
    "with you your yes no".split()
)
_UNIT_DISPLAY = {
    "in": "inch",
    "w": "W",
    "kw": "kW",
    "v": "V",
    "mah": "mAh",
    "wh": "Wh",
    "hz": "Hz",
    "gb": "GB",
    "tb": "TB",
    "k": "K",
    "db": "dB",
}
_MASS = frozenset({"mg", "g", "kg", "oz", "lb"})
_BRAND_KEYS = frozenset({"brand", "manufacturer", "maker"})

#: Benefit templates: attribute key words → phrasings of one fact (`{v}` is its value).
_BENEFITS: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (
        frozenset({"material", "frame", "body", "shell", "upper", "head", "handle", "fill"}),
        ("Built from {v} to stand up to daily use.", "Made of {v}, so it is made to last."),
    ),
    (
        frozenset({"capacity", "volume"}),
        ("Holds {v}, so there is room for what you need.", "A {v} capacity covers the job."),
    ),
    (
        frozenset({"weight"}),
        ("Weighs {v}, easy to lift and carry.", "At {v}, it is easy to move around."),
    ),
    (
        frozenset({"colour", "color", "finish"}),
        ("Finished in {v} to suit your space.", "The {v} finish looks good anywhere."),
    ),
    (
        frozenset({"pieces", "pack", "count", "rings"}),
        ("Comes as a set of {v}, ready to use.", "You get {v} in the box."),
    ),
    (
        frozenset({"battery", "runtime", "life"}),
        ("Keeps going with {v} between charges.", "Power for longer: {v}."),
    ),
    (
        frozenset({"power", "output", "voltage", "torque", "brightness"}),
        ("Puts {v} to work so jobs go faster.", "With {v} on tap, it keeps up with you."),
    ),
    (
        frozenset({"length", "height", "diameter", "size", "width", "dimensions"}),
        ("Measures {v}, so it fits where you need it.", "Sized at {v} for an easy fit."),
    ),
    (
        frozenset({"waterproof", "water", "resistance"}),
        ("Rated {v}, so wet weather is no trouble.", "Handles the wet with a {v} rating."),
    ),
)
_BENEFIT_LEADS = (
    "Why choose the {name}? Here is what it does for you.",
    "The {name} makes everyday life a little easier.",
)
_OPENERS = (
    "Meet the {title}.",
    "Here is why the {title} earns its place.",
    "Every day goes a little better with the {title}.",
)
_CLOSERS = (
    "Once it is yours, you will wonder how you managed without it.",
    "It is the kind of thing you reach for again and again.",
    "Small details like these make it a pleasure to use.",
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One generated text and how it was made."""

    style: str
    text: str
    source: str = "rules"
    generator_version: str = VERSION


@dataclass(frozen=True, slots=True)
class _Fact:
    key: str
    label: str  # "Weight", "Water resistance"
    text: str  # "1.2 kg", or "" for a true boolean


class _Parsed:
    """The pieces of one product that every style draws on."""

    def __init__(self, product: ProductLike) -> None:
        self.title = product.title.strip()
        self.name = self.title.split(",")[0].strip()  # "Chef's Knife", without ", 8 inch"
        self.sentences = [s.strip() for s in _SENTENCE.split(product.description.strip()) if s]
        self.facts = [f for f in (_fact(k, v) for k, v in product.attributes.items()) if f]
        self.keywords = words_in(" ".join([self.title, *(f.text for f in self.facts)])) - _STOP

    def score(self, index: int) -> float:
        """How well sentence `index` covers the product: keyword overlap, numbers, position."""
        sentence = self.sentences[index]
        overlap = len(words_in(sentence) & self.keywords)
        numbers = sum(1 for _ in numbers_in(sentence))
        return overlap + 0.5 * numbers + (1.5 if index == 0 else 0.0) - len(sentence) / 400

    def ranked(self, rng: random.Random, jitter: float) -> list[int]:
        """Sentence indices, best first; `jitter` > 0 lets alternates pick differently."""
        keyed = [(self.score(i) + rng.uniform(0, jitter), -i) for i in range(len(self.sentences))]
        return [-neg for _, neg in sorted(keyed, reverse=True)]


def _fact(key: str, value: object) -> _Fact | None:
    if value is False or value == [] or value == "":
        return None  # a false flag states an absence; never turn it into a feature
    unit = unit_of_key(key)
    base = key.rsplit("_", 1)[0] if unit else key
    label = base.replace("_", " ").strip()
    label = label[:1].upper() + label[1:]
    if value is True:
        return _Fact(key, label, "")
    text = format_value(value)
    if unit and re.fullmatch(r"[\d.,/ -]+", text):
        text = f"{text} {_UNIT_DISPLAY.get(unit, unit)}"
    return _Fact(key, label, text)


def _fit(parts: Sequence[str], max_chars: int, sep: str) -> str | None:
    """Join `parts`, dropping trailing ones until the text fits; None if even one is too long."""
    for end in range(len(parts), 0, -1):
        text = sep.join(parts[:end]).strip()
        if len(text) <= max_chars:
            return text
    return None


def _sentence_case(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:]


class RulesGenerator:
    """Writes candidates in the five styles; deterministic given `seed`."""

    version = VERSION

    def __init__(self, seed: int, *, max_chars: int = 600) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        self.seed = seed
        self.max_chars = max_chars

    def generate(self, product: ProductLike, styles: Sequence[str], n: int) -> list[Candidate]:
        """Up to `n` distinct candidates, cycling through `styles` in order, then alternates.

        >>> from core.catalog import ProductIn
        >>> mug = ProductIn(product_id="m1", title="Stoneware Mug",
        ...     description="A sturdy mug for slow mornings. It holds 350 ml of coffee.",
        ...     attributes={"material": "stoneware", "capacity_ml": 350})
        >>> print(RulesGenerator(seed=0).generate(mug, ["technical"], 1)[0].text)
        Stoneware Mug
        Material: stoneware
        Capacity: 350 ml
        It holds 350 ml of coffee.
        """
        unknown = [s for s in styles if s not in STYLES]
        if unknown:
            raise UnknownStyleError(
                f"unknown style {unknown[0]!r} (the rules backend knows {', '.join(STYLES)})"
            )
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        parsed = _Parsed(product)
        candidates: list[Candidate] = []
        seen: set[str] = set()
        for round_ in range(MAX_ROUNDS):
            for style in styles:
                if len(candidates) >= n:
                    return candidates
                rng = random.Random(f"{self.seed}\x00{product.product_id}\x00{style}\x00{round_}")
                text = getattr(self, f"_{style}")(parsed, rng, round_)
                if text and text not in seen:
                    seen.add(text)
                    candidates.append(Candidate(style=style, text=text))
        return candidates

    def _concise(self, p: _Parsed, rng: random.Random, round_: int) -> str | None:
        if not p.sentences:
            return None
        ranked = p.ranked(rng, jitter=0.0 if round_ == 0 else 1.5)
        keep = ranked[:1] if len(p.sentences) <= 3 or round_ % 2 else ranked[:2]
        text = _fit([p.sentences[i] for i in sorted(keep)], min(self.max_chars, 240), " ")
        return text or _fit([p.sentences[ranked[0]]], self.max_chars, " ")

    def _bullets(self, p: _Parsed, rng: random.Random, round_: int) -> str | None:
        if not p.sentences:
            return None
        ranked = p.ranked(rng, jitter=0.0 if round_ == 0 else 1.5)
        lead = p.sentences[ranked[0]]
        facts = [f for f in p.facts if f.key.lower() not in _BRAND_KEYS]
        if round_:
            rng.shuffle(facts)
        lines = [f"- {f.label}: {f.text}" if f.text else f"- {f.label}" for f in facts[:4]]
        clauses = [
            c.strip().rstrip(".")
            for i in ranked[1:]
            for c in _CLAUSE.split(p.sentences[i])
            if 20 <= len(c.strip()) <= 90
        ]
        clauses.sort(key=lambda c: -len(words_in(c) & p.keywords))
        lines += [f"- {_sentence_case(c)}" for c in clauses[: 1 + (len(lines) < 3)]]
        return _fit([lead, *lines], self.max_chars, "\n") if lines else None

    def _technical(self, p: _Parsed, rng: random.Random, round_: int) -> str | None:
        specs = [f for f in p.facts if f.text]
        if not specs:
            return None
        if round_ % 2:
            specs = sorted(specs, key=lambda f: (not any(numbers_in(f.text)), f.label))
        dense = max(
            range(len(p.sentences)),
            key=lambda i: (sum(1 for _ in numbers_in(p.sentences[i])), p.score(i) + rng.random()),
            default=None,
        )
        if round_ % 2:
            body = "; ".join(f"{f.label.lower()} {f.text}" for f in specs)
            parts = [f"{p.title}. Specifications: {body}."]
        else:
            parts = [p.title, *(f"{f.label}: {f.text}" for f in specs)]
        if dense is not None:
            parts.append(p.sentences[dense])
        return _fit(parts, self.max_chars, " " if round_ % 2 else "\n")

    def _benefit(self, p: _Parsed, rng: random.Random, round_: int) -> str | None:
        lines: list[str] = []
        for fact in p.facts:
            words = set(fact.key.lower().split("_"))
            if "weight" in words and not {u for _, u in quantities_in(fact.text)} & _MASS:
                continue  # "280 gsm" is a fabric's weight, not something to carry
            for keys, templates in _BENEFITS:
                if fact.text and words & keys:
                    lines.append(templates[(round_ + rng.randrange(2)) % 2].format(v=fact.text))
                    break
        if round_:
            rng.shuffle(lines)
        if not lines:
            return None
        lead = _BENEFIT_LEADS[(round_ + rng.randrange(2)) % 2].format(name=p.name)
        ranked = p.ranked(rng, jitter=0.0 if round_ == 0 else 1.5)
        support = [p.sentences[ranked[-1 if round_ % 2 else 0]]] if p.sentences else []
        return _fit([lead, *lines[:4], *support], self.max_chars, " ")

    def _story(self, p: _Parsed, rng: random.Random, round_: int) -> str | None:
        if len(p.sentences) < 2:
            return None
        opener = _OPENERS[(round_ + rng.randrange(len(_OPENERS))) % len(_OPENERS)]
        middle = list(reversed(p.sentences[1:]))[: max(1, (len(p.sentences) + 1) // 2)]
        specs = [f for f in p.facts if f.text and f.key.lower() not in _BRAND_KEYS]
        picked = rng.sample(specs, k=min(2, len(specs)))
        details = (
            ["The details: " + ", ".join(f"{f.label.lower()} {f.text}" for f in picked) + "."]
            if picked
            else []
        )
        closer = _CLOSERS[rng.randrange(len(_CLOSERS))]
        parts = [opener.format(title=p.name), *middle, *details, closer]
        return _fit(parts, self.max_chars, " ")
