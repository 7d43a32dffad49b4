"""Feature value objects: what VW sees of a variant (an `Arm`) and of its product.

The storefront's context is a plain `dict[str, object]`: every key it sends becomes a shared
feature, so nothing here names device or segment in particular.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,/]\d+)*")

#: Upper bounds (characters) of the length buckets; longer texts are `xl`.
LENGTH_BUCKETS: tuple[tuple[int, str], ...] = ((80, "xs"), (160, "s"), (320, "m"), (640, "l"))


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
class Arm:
    """Action features of one variant. Built once per variant, reused for every decision."""

    variant_id: str
    style: str
    source: str
    length: str
    bullets: int
    numbers: int
    generator_version: str = ""

    @classmethod
    def from_variant(
        cls, variant_id: str, text: str, style: str, source: str, generator_version: str = ""
    ) -> Arm:
        """
        >>> Arm.from_variant("v1", "- 2 speeds\\n- 3 m cord", "bullets", "rules")
        Arm(variant_id='v1', style='bullets', source='rules', length='xs', bullets=2, numbers=2, generator_version='')
        """
        return cls(
            variant_id=variant_id,
            style=style,
            source=source,
            length=length_bucket(len(text)),
            bullets=len(_BULLET.findall(text)),
            numbers=len(_NUMBER.findall(text)),
            generator_version=generator_version,
        )


@dataclass(frozen=True, slots=True)
class ProductFeatures:
    """Shared features of the product on the page (crossed with the arms' style)."""

    product_id: str
    category: str = ""
