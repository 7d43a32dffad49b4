"""The facts a product's own data supports, shared by the generators and the guardrails.

A candidate may only mention numbers, quantities (number + unit), materials, colours and brands
that the product's title, description or attributes already state. This module turns a product
into a :class:`FactSheet` of those facts and finds the same kinds of mention in any text, with
one tokenizer for both sides so that they always agree.

Numbers are compared by value, whole tokens at a time: ``1-9/16`` is one number (25/16), never
``1`` and ``9/16``, so a text that says ``1-9/16`` where the data says ``9/16`` is caught.
Spelled-out counts (``two`` … ``twelve``, ``dozen``, tens) are numbers too, so a model cannot
slip "a twelve-piece set" past a data sheet that says 10 pieces. The writing systems (scripts)
of the data are kept so that a text in another script can be told apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol
from unicodedata import name as unicode_name


class ProductLike(Protocol):
    """What generators and guardrails read of a product (`ProductIn` and the ledger row fit)."""

    @property
    def product_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...


#: A number token: integers with thousands separators, decimals, fractions, mixed fractions.
NUMBER = r"(?<![\d.])\d+(?:,\d{3})*(?:\.\d+)?(?:-\d+/\d+|/\d+)?(?![\d/])"

#: Spellings of units, mapped to one canonical name. `in` alone is left out: "2 in the box".
UNITS: dict[str, str] = {
    **dict.fromkeys(["mm", "millimetre", "millimetres", "millimeter", "millimeters"], "mm"),
    **dict.fromkeys(["cm", "centimetre", "centimetres", "centimeter", "centimeters"], "cm"),
    **dict.fromkeys(["m", "metre", "metres", "meter", "meters"], "m"),
    **dict.fromkeys(["inch", "inches", '"', "″"], "in"),
    **dict.fromkeys(["ft", "foot", "feet"], "ft"),
    **dict.fromkeys(["mg", "milligram", "milligrams"], "mg"),
    **dict.fromkeys(["g", "gram", "grams"], "g"),
    **dict.fromkeys(["kg", "kilogram", "kilograms", "kilo", "kilos"], "kg"),
    **dict.fromkeys(["oz", "ounce", "ounces"], "oz"),
    **dict.fromkeys(["fl oz", "fluid ounce", "fluid ounces"], "fl oz"),
    **dict.fromkeys(["lb", "lbs", "pound", "pounds"], "lb"),
    **dict.fromkeys(["ml", "millilitre", "millilitres", "milliliter", "milliliters"], "ml"),
    **dict.fromkeys(["l", "litre", "litres", "liter", "liters"], "l"),
    **dict.fromkeys(["qt", "quart", "quarts"], "qt"),
    **dict.fromkeys(["gal", "gallon", "gallons"], "gal"),
    **dict.fromkeys(["cup", "cups"], "cup"),
    **dict.fromkeys(["w", "watt", "watts"], "w"),
    **dict.fromkeys(["kw", "kilowatt", "kilowatts"], "kw"),
    **dict.fromkeys(["v", "volt", "volts"], "v"),
    **dict.fromkeys(["mah"], "mah"),
    **dict.fromkeys(["wh"], "wh"),
    **dict.fromkeys(["hz"], "hz"),
    **dict.fromkeys(["gb"], "gb"),
    **dict.fromkeys(["tb"], "tb"),
    **dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], "h"),
    **dict.fromkeys(["min", "mins", "minute", "minutes"], "min"),
    **dict.fromkeys(["°c", "°f", "degrees"], "deg"),
    **dict.fromkeys(["k", "kelvin"], "k"),
    **dict.fromkeys(["lm", "lumen", "lumens"], "lm"),
    **dict.fromkeys(["db"], "db"),
    **dict.fromkeys(["rpm"], "rpm"),
    **dict.fromkeys(["gsm"], "gsm"),
    **dict.fromkeys(["%", "percent"], "%"),
}
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_UNIT = rf"(?:{_UNIT_ALT})(?![a-z])"
_GAP = r"[ \u00a0]?-?[ \u00a0]?"  # "5 kg", "5-kg", "5kg"; never across a line break
_QUANTITY = re.compile(rf"({NUMBER}){_GAP}({_UNIT})", re.IGNORECASE)
_CHAIN = re.compile(rf"{NUMBER}(?:[ \u00a0]*[x×][ \u00a0]*{NUMBER})+{_GAP}({_UNIT})", re.IGNORECASE)
_NUMBER_RE = re.compile(NUMBER)

#: Materials a text may name only when the data does; multi-word terms are matched as phrases.
MATERIALS = frozenset(
    """steel iron aluminium copper brass bronze titanium zinc chrome nickel tin bamboo oak walnut
    beech pine acacia teak maple birch wood cotton linen wool merino silk leather suede polyester
    nylon spandex elastane fleece denim canvas jute hemp velvet felt silicone glass ceramic
    porcelain stoneware earthenware terracotta enamel plastic abs polypropylene polycarbonate
    acrylic pvc vinyl rubber latex neoprene foam marble granite concrete cork resin cardboard
    fibreglass beeswax""".split()
) | {
    "stainless steel",
    "carbon steel",
    "cast iron",
    "organic cotton",
    "borosilicate glass",
    "memory foam",
    "carbon fibre",
    "shea butter",
}

#: Colours a text may name only when the data does.
COLOURS = frozenset(
    """black white grey charcoal silver gold bronze red crimson burgundy maroon pink coral
    orange amber yellow mustard green olive sage emerald teal turquoise blue navy cobalt
    indigo purple lavender violet plum brown tan beige taupe khaki ivory graphite""".split()
)

#: Spelling variants folded before matching vocabularies and names.
ALIASES = {
    "aluminum": "aluminium",
    "gray": "grey",
    "color": "colour",
    "colors": "colours",
    "fiber": "fibre",
    "fiberglass": "fibreglass",
    "wooden": "wood",
    "woolen": "wool",
    "woollen": "wool",
}
_WORD = re.compile(r"[^\W\d_][\w'&]*(?:-[\w'&]+)*")


def normalize(text: str) -> str:
    """Lower case, hyphens as spaces, aliases folded: the form vocabularies are matched in.

    >>> normalize("Gray Aluminum stainless-steel")
    'grey aluminium stainless steel'
    """
    words = re.split(r"(\W+)", text.lower().replace("-", " "))
    return "".join(ALIASES.get(word, word) for word in words)


def contains_term(normalized_text: str, term: str) -> bool:
    """Whether `term` occurs as whole words in an already normalized text."""
    pattern = rf"(?<![^\W_]){re.escape(normalize(term))}(?![^\W_])"
    return re.search(pattern, normalized_text) is not None


def vocabulary_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One regex finding any of `terms` (normalized, whole words, longest first), or None."""
    forms = sorted({normalize(t) for t in terms if t.strip()}, key=len, reverse=True)
    if not forms:
        return None
    alternation = "|".join(re.escape(f) for f in forms)
    return re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])")


def terms_in(normalized_text: str, pattern: re.Pattern[str] | None) -> set[str]:
    """The vocabulary terms a normalized text mentions (a longer term hides its parts: a text
    saying "carbon steel" mentions "carbon steel", not "steel").

    >>> sorted(terms_in(normalize("Carbon-steel blade, oak handle"), MATERIAL_PATTERN))
    ['carbon steel', 'oak']
    """
    return set() if pattern is None else {m.group(0) for m in pattern.finditer(normalized_text)}


#: Spelled-out numbers a text may state only when the data does (as digits or words). "one"
#: is left out: "one of the", "the one you reach for" state no count.
NUMBER_WORDS: dict[str, int] = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "hundred": 100,
}  # fmt: skip
_NUMBER_WORD = re.compile(rf"\b({'|'.join(NUMBER_WORDS)})\b", re.IGNORECASE)


def number_words_in(text: str) -> Iterator[str]:
    """Spelled-out numbers of `text`, lower case.

    >>> list(number_words_in("A Twelve-piece set for two, one of a kind"))
    ['twelve', 'two']
    """
    return (m.group(1).lower() for m in _NUMBER_WORD.finditer(text))


def scripts_in(text: str) -> set[str]:
    """The writing systems of `text`'s letters, by Unicode name (LATIN, CYRILLIC, CJK, …).

    >>> sorted(scripts_in("Crème brûlée, Пирог, 蛋糕"))
    ['CJK', 'CYRILLIC', 'LATIN']
    """
    return {unicode_name(c, "UNKNOWN").split(" ", 1)[0] for c in text if c.isalpha()}


def number_value(token: str) -> Fraction | str:
    """The value of a number token, so that `1,200` equals `1200` and `2.50` equals `2.5`.

    >>> number_value("1-9/16"), number_value("9/16"), number_value("1,200")
    (Fraction(25, 16), Fraction(9, 16), Fraction(1200, 1))
    """
    plain = token.replace(",", "")
    try:
        if "-" in plain:
            whole, fraction = plain.split("-", 1)
            return int(whole) + Fraction(fraction)
        return Fraction(plain)
    except (ValueError, ZeroDivisionError):
        return plain


def numbers_in(text: str) -> Iterator[str]:
    """Every number token of `text`.

    >>> list(numbers_in("A 1-9/16 in. bit, 9/16 socket, 30x20 cm, model XR-200, 1,200 W."))
    ['1-9/16', '9/16', '30', '20', '200', '1,200']
    """
    return (m.group(0) for m in _NUMBER_RE.finditer(text))


def quantities_in(text: str) -> set[tuple[Fraction | str, str]]:
    """`(value, canonical unit)` of every quantity in `text`; a dimension chain such as
    `30 x 20 x 10 cm` gives each of its numbers the unit.

    >>> sorted(quantities_in("Holds 1.5 litres; 30 x 20 cm; a 12-cup pot; 2 in the box"))
    [(Fraction(3, 2), 'l'), (Fraction(12, 1), 'cup'),
     (Fraction(20, 1), 'cm'), (Fraction(30, 1), 'cm')]
    """
    found = {
        (number_value(m.group(1)), UNITS[m.group(2).lower()]) for m in _QUANTITY.finditer(text)
    }
    for chain in _CHAIN.finditer(text):
        unit = UNITS[chain.group(1).lower()]
        found.update((number_value(n), unit) for n in numbers_in(chain.group(0)))
    return found


def words_in(text: str) -> set[str]:
    """Lower-case words (hyphenated compounds and their parts), aliases folded."""
    words: set[str] = set()
    for token in _WORD.findall(text.lower()):
        token = token.removesuffix("'s")
        words.add(ALIASES.get(token, token))
        words.update(ALIASES.get(part, part) for part in token.split("-") if part)
    return words


def unit_of_key(key: str) -> str | None:
    """The unit an abbreviated key suffix names (`weight_kg` → `kg`), if any. Whole words are
    not suffixes (`teeth_per_inch` counts teeth, it is not in inches).

    >>> unit_of_key("weight_kg"), unit_of_key("length_in"), unit_of_key("teeth_per_inch")
    ('kg', 'in', None)
    """
    if "_" not in key:
        return None
    suffix = key.lower().rsplit("_", 1)[1]
    if suffix == "in":
        return "in"
    return suffix if UNITS.get(suffix) == suffix else None


def format_value(value: Any) -> str:
    """An attribute value as text: `2.0` → `2`, lists joined, booleans as yes/no.

    >>> format_value(2.0), format_value(1.25), format_value(["red", 3]), format_value(True)
    ('2', '1.25', 'red, 3', 'yes')
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class FactSheet:
    """Everything a product's data supports, in comparable form."""

    normalized: str  # every source string joined, `normalize`d
    words: frozenset[str]
    numbers: frozenset[Fraction | str]
    quantities: frozenset[tuple[Fraction | str, str]]
    materials: frozenset[str]  # every vocabulary term the data contains, parts included
    colours: frozenset[str]
    scripts: frozenset[str] = frozenset({"LATIN"})  # writing systems of the data's letters
    #: What a "Label: value" line may say after each attribute's label (see `attribute_labels`).
    labels: Mapping[str, LabelledValue] = field(default_factory=dict)

    @classmethod
    def of(cls, product: ProductLike) -> FactSheet:
        parts = [product.title, product.category, product.description]
        quantities: set[tuple[Fraction | str, str]] = set()
        for key, value in product.attributes.items():
            text = format_value(value)
            parts.append(f"{key.replace('_', ' ')}: {text}")
            unit = unit_of_key(key)
            if unit is not None:
                quantities.update((number_value(n), unit) for n in numbers_in(text))
        text = "\n".join(parts)
        normalized = normalize(text)
        numbers: set[Fraction | str] = {number_value(n) for n in numbers_in(text)}
        numbers.update(Fraction(NUMBER_WORDS[w]) for w in number_words_in(text))
        return cls(
            normalized=normalized,
            words=frozenset(words_in(text)),
            numbers=frozenset(numbers),
            quantities=frozenset(quantities | quantities_in(text)),
            materials=frozenset(t for t in MATERIALS if contains_term(normalized, t)),
            colours=frozenset(t for t in COLOURS if contains_term(normalized, t)),
            scripts=frozenset(scripts_in(text) | {"LATIN"}),
            labels=attribute_labels(product.attributes),
        )


@dataclass(frozen=True, slots=True)
class LabelledValue:
    """The words and numbers an attribute's value is written with (unit spellings included)."""

    words: frozenset[str]
    numbers: frozenset[Fraction | str]


def attribute_labels(attributes: Mapping[str, Any]) -> dict[str, LabelledValue]:
    """Each attribute's label as text writes it (lower case, underscores as spaces; a unit
    suffix also dropped: `weight_g` is labelled `weight g` and `weight`), mapped to the words
    and numbers of its value plus every spelling of its unit.

    >>> labels = attribute_labels({"weight_g": 165, "material": "stainless steel"})
    >>> sorted(labels), sorted(labels["weight"].words)[:3], labels["weight"].numbers
    (['material', 'weight', 'weight g'], ['g', 'gram', 'grams'], frozenset({Fraction(165, 1)}))
    """
    labels: dict[str, LabelledValue] = {}
    for key, value in attributes.items():
        text = format_value(value)
        unit = unit_of_key(key)
        names = {" ".join(key.lower().replace("_", " ").split())}
        if unit is not None:
            names.add(" ".join(key.lower().rsplit("_", 1)[0].replace("_", " ").split()))
        words = words_in(text) | ({unit} if unit else set())
        for word in list(words):
            if word in UNITS:
                words |= {spelling for spelling, u in UNITS.items() if u == UNITS[word]}
        numbers = frozenset(number_value(n) for n in numbers_in(text))
        for name in names:
            seen = labels.get(name)
            labelled = LabelledValue(frozenset(words), numbers)
            if seen is not None:  # `weight_g` and `weight_kg` both say `weight`: either may
                labelled = LabelledValue(seen.words | words, seen.numbers | numbers)
            labels[name] = labelled
    return labels


MATERIAL_PATTERN = vocabulary_pattern(MATERIALS)
COLOUR_PATTERN = vocabulary_pattern(COLOURS)
