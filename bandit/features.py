"""Feature value objects: what VW sees of a variant (an `Arm`) and of its product.

An arm is described twice over, both built once per variant from its text (`Arm.from_variant`)
and rendered once per catalog refresh (`vw_format.arm_lines`):

- by *what it is*: style, source, generator version and a coarse length class (categorical,
  namespace `A`), and its identity (namespace `V`), which carries what no description explains;
- by *what it looks like* (`TextShape`, numeric, namespace `T`): length in doublings, bullet
  lines, `Name: value` spec lines, numbers, sentences, second-person address, questions and
  exclamations, and words that signal a tone (sensory, technical, benefit-led, narrative).

Crossed with the storefront's context and the product's category, the shape is what lets the
bandit share what it learns across products: "mobile shoppers click short, bulleted copy" holds
for a product it has never served. A new variant therefore starts where its look-alikes are
(`bench/learning.py` measured what each part is worth; BENCHMARKS.md).

The storefront's context is a plain `dict[str, object]`: every key it sends becomes a shared
feature, so nothing here names device or segment in particular.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
_SPEC = re.compile(r"^\s*[A-Za-z][A-Za-z0-9 /&()-]{0,40}:\s+\S", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,/]\d+)*")
_SENTENCE = re.compile(r"[.!?](?=\s|$)")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

#: Upper bounds (characters) of the length buckets; longer texts are `xl`.
LENGTH_BUCKETS: tuple[tuple[int, str], ...] = ((80, "xs"), (160, "s"), (320, "m"), (640, "l"))

#: Words that signal a tone, by tone: a copywriter's vocabulary, not any one shopper's.
TONE_WORDS: dict[str, frozenset[str]] = {
    "sensory": frozenset(
        "soft smooth silky velvety plush warm cozy cosy snug crisp fresh cool airy light "
        "gentle delicate rich creamy fragrant bright vibrant glow glows glowing calm quiet "
        "soothing relaxing comfortable comfort luxurious lush tender balanced keen".split()
    ),
    "technical": frozenset(
        "rated certified engineered specification specifications spec specs capacity output "
        "watt watts wattage voltage volt volts amp amps resistance tolerance compatible "
        "compliant tested precision grade alloy stainless aluminium aluminum carbon hrc ip "
        "lumens kelvin mah gb tb hz rpm psi dimensions weight material brand model".split()
    ),
    "benefit": frozenset(
        "easy easily effortless simple simply convenient helps help lets saves save durable "
        "lasts last reliable sturdy practical versatile ready fits ideal perfect".split()
    ),
    "story": frozenset(
        "love loves enjoy imagine discover wonder moment moments memories favourite favorite "
        "story earns place yours journey delight delightful once every day days".split()
    ),
}
_SECOND_PERSON = frozenset("you your yours you'll you're yourself".split())


def length_bucket(n_chars: int) -> str:
    """Coarse length class of a text.

    >>> length_bucket(50), length_bucket(200), length_bucket(5000)
    ('xs', 'm', 'xl')
    """
    for bound, name in LENGTH_BUCKETS:
        if n_chars <= bound:
            return name
    return "xl"


@dataclass(frozen=True, slots=True)
class TextShape:
    """What a text looks like, as numbers of order one (VW learns a slope per context on each).

    `length` is in doublings from 200 characters; counts are capped so one long list cannot
    dominate; tones count their words per `TONE_WORDS`.
    """

    length: float
    bullets: int
    specs: int
    numbers: int
    sentences: int
    you: int
    question: bool
    exclaim: bool
    tones: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, text: str) -> TextShape:
        """
        >>> TextShape.of("Soft, warm and easy to love.\\n- 2 m cord\\nWeight: 1.2 kg")
        TextShape(length=-1.89, bullets=1, specs=1, numbers=2, sentences=1, you=0, question=False, exclaim=False, tones=(('sensory', 2), ('technical', 1), ('benefit', 1), ('story', 1)))
        """
        words = _WORD.findall(text.lower())
        return cls(
            length=round(math.log2(max(len(text), 50) / 200.0), 2),
            bullets=min(len(_BULLET.findall(text)), 8),
            specs=min(len(_SPEC.findall(text)), 8),
            numbers=min(len(_NUMBER.findall(text)), 12),
            sentences=min(len(_SENTENCE.findall(text)), 10),
            you=min(sum(w in _SECOND_PERSON for w in words), 5),
            question="?" in text,
            exclaim="!" in text,
            tones=tuple(
                (tone, min(sum(w in vocabulary for w in words), 6))
                for tone, vocabulary in TONE_WORDS.items()
            ),
        )

    def numeric(self) -> tuple[tuple[str, float], ...]:
        """The shape as VW's numeric features (zeros left out: VW skips them anyway).

        >>> TextShape.of("Is it yours? Yes!").numeric()
        (('len', -2.0), ('sentences', 1.0), ('you', 1.0), ('question', 1.0), ('exclaim', 1.0), ('story', 0.5))
        """
        values = (
            ("len", self.length),
            ("bullets", self.bullets / 2.0),
            ("specs", self.specs / 2.0),
            ("numbers", self.numbers / 3.0),
            ("sentences", self.sentences / 2.0),
            ("you", float(self.you)),
            ("question", float(self.question)),
            ("exclaim", float(self.exclaim)),
            *((tone, n / 2.0) for tone, n in self.tones),
        )
        return tuple((name, value) for name, value in values if value)


@dataclass(frozen=True, slots=True)
class Arm:
    """Action features of one variant. Built once per variant, reused for every decision."""

    variant_id: str
    style: str
    source: str
    length: str
    bullets: int
    numbers: int
    generator_version: str = ""
    shape: TextShape | None = None

    @classmethod
    def from_variant(
        cls, variant_id: str, text: str, style: str, source: str, generator_version: str = ""
    ) -> Arm:
        """
        >>> arm = Arm.from_variant("v1", "- 2 speeds\\n- 3 m cord", "bullets", "rules")
        >>> arm.style, arm.length, arm.bullets, arm.numbers, arm.shape.bullets
        ('bullets', 'xs', 2, 2, 2)
        """
        shape = TextShape.of(text)
        return cls(
            variant_id=variant_id,
            style=style,
            source=source,
            length=length_bucket(len(text)),
            bullets=shape.bullets,
            numbers=len(_NUMBER.findall(text)),
            generator_version=generator_version,
            shape=shape,
        )


@dataclass(frozen=True, slots=True)
class ProductFeatures:
    """Shared features of the product on the page (crossed with the arms' descriptions)."""

    product_id: str
    category: str = ""
