"""Guardrails: the checks every candidate passes before it can be served, whatever wrote it.

Pure functions of the text, the product and its sibling texts. The first failing check gives
the verdict's reason, a short string led by a snake_case code:

=====================  ==========================================================
`control_characters`   a control character (newlines and tabs are allowed)
`bad_characters`       U+FFFD or another mark of broken decoding
`not_text`             mostly digits or symbols (under half letters)
`foreign_script`       letters in a writing system the product data does not use
`garbled`              under 85% of the whitespace-separated tokens look like words or numbers
`too_short`/`too_long` outside `[min_chars, max_chars]` after stripping
`leftover_markup`      prompt or chat markup echoed back (``<|user|>``, ``Attributes:``, HTML)
`repeated_words`       degeneration: a word 4× in a row, or a 2–4-word phrase 3× in a row
`repeated_sentence`    degeneration: a sentence or line (3 words or more) said twice
`banned_term`          a banned word or phrase, case-insensitive, whole words
`unsupported_number`   a number (digits, or a spelled-out count) the data does not state
`unsupported_quantity` a number with a unit the data does not pair with it
`unsupported_brand`    a known brand that is not this product's
`unsupported_material` / `unsupported_colour`  a vocabulary term absent from the data
`unsupported_name`     a capitalised word, not starting a sentence, absent from the data
`mismatched_value`     a ``Label: value`` line that gives an attribute another one's value
                       ("Capacity: red", "Weight: 58 HRC"): every fact is in the data, the
                       pairing is wrong
`near_duplicate`       token-shingle Jaccard similarity to a sibling ≥ the threshold
=====================  ==========================================================

The same checks hold for every backend; they are written for the `hf` backend's failure modes
(models hallucinate facts, echo their prompt, loop, and emit broken bytes), which the rules
backend cannot produce, so it passes them by construction. :func:`reason_kind` gives a reason's
code, which is what rejects are counted by.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING

from generator.facts import (
    COLOUR_PATTERN,
    MATERIAL_PATTERN,
    NUMBER_WORDS,
    FactSheet,
    ProductLike,
    contains_term,
    normalize,
    number_value,
    number_words_in,
    numbers_in,
    quantities_in,
    scripts_in,
    terms_in,
    vocabulary_pattern,
    words_in,
)

if TYPE_CHECKING:
    from core.settings import Settings

SHINGLE_SIZE = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :func:`check`: `reason` is None exactly when `ok`."""

    ok: bool
    reason: str | None = None


PASS = Verdict(True)


@dataclass(frozen=True, slots=True)
class _Brands:
    pattern: re.Pattern[str] | None
    spelling: dict[str, str]  # normalized form → as the catalog writes it


@dataclass(frozen=True)
class GuardrailParams:
    """The knobs of :func:`check`; `from_settings` reads them from copyloop's settings."""

    min_chars: int = 20
    max_chars: int = 600
    banned_terms: tuple[str, ...] = ()
    near_duplicate_threshold: float = 0.8
    known_brands: frozenset[str] = field(default_factory=frozenset)
    #: Hold spelled-out counts ("two" … "twelve", "dozen") to the data as well. On for
    #: generation (`from_settings`); off by default because hand-written catalog copy often says
    #: "two vents" without an attribute for it, and the data checks run on such copy too.
    spelled_numbers: bool = False
    #: Hold "Label: value" lines to the labelled attribute's own value. On for generation; off
    #: by default because hand-written copy labels loosely ("Material: 100% cotton").
    labelled_values: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_chars < self.max_chars:
            raise ValueError(
                f"min_chars must be positive and below max_chars, got {self.min_chars} "
                f"and {self.max_chars}"
            )
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(
                f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}"
            )

    @cached_property
    def brands(self) -> _Brands:
        """The known brands as one compiled pattern (built once per params, not per check)."""
        return _Brands(
            pattern=vocabulary_pattern(self.known_brands),
            spelling={normalize(b): b for b in sorted(self.known_brands)},
        )

    @classmethod
    def from_settings(cls, settings: Settings, known_brands: Iterable[str] = ()) -> GuardrailParams:
        return cls(
            min_chars=settings.min_variant_chars,
            max_chars=settings.max_variant_chars,
            banned_terms=tuple(settings.banned_terms),
            known_brands=frozenset(known_brands),
            spelled_numbers=True,
            labelled_values=True,
        )

    @classmethod
    def for_copywriters(
        cls, settings: Settings, known_brands: Iterable[str] = ()
    ) -> GuardrailParams:
        """A copywriter's text (`generator.manual`): held to the data like generated copy,
        except for spelled-out counts and loose `Label: value` lines."""
        return cls(
            min_chars=settings.min_variant_chars,
            max_chars=settings.max_variant_chars,
            banned_terms=tuple(settings.banned_terms),
            known_brands=frozenset(known_brands),
        )


def check(
    text: str,
    product: ProductLike | FactSheet,
    siblings: Sequence[str] | Mapping[str, str],
    params: GuardrailParams,
) -> Verdict:
    """Check one candidate `text` of `product` against `siblings` (texts; a mapping names them
    by variant id, which the near-duplicate reason then quotes).

    >>> from core.catalog import ProductIn
    >>> pan = ProductIn(product_id="p1", title="Skillet", description="A 10 inch cast iron pan.",
    ...                 attributes={"brand": "Hearthline", "weight_kg": 2.4})
    >>> params = GuardrailParams(banned_terms=("guaranteed",))
    >>> check("Hearthline skillet of cast iron, 2.4 kg.", pan, [], params)
    Verdict(ok=True, reason=None)
    >>> check("A 12 inch cast iron skillet.", pan, [], params).reason
    'unsupported_number: 12'
    >>> check("A 10 inch copper skillet to cook with.", pan, [], params).reason
    'unsupported_material: copper'
    """
    facts = product if isinstance(product, FactSheet) else FactSheet.of(product)
    checks: tuple[Callable[[], Verdict], ...] = (
        lambda: _charset(text),
        lambda: _script(text, facts.scripts),
        lambda: _length(text, params),
        lambda: _markup(text),
        lambda: _garbled(text),
        lambda: _repetition(text),
        lambda: _banned(text, params.banned_terms),
        lambda: _facts(text, facts, params.brands, params.spelled_numbers),
        lambda: _labelled(text, facts) if params.labelled_values else PASS,
        lambda: _near_duplicate(text, siblings, params.near_duplicate_threshold),
    )
    for run in checks:  # cheapest first; stop at the first failure
        verdict = run()
        if not verdict.ok:
            return verdict
    return PASS


def check_facts(text: str, product: ProductLike | FactSheet, params: GuardrailParams) -> Verdict:
    """Only the checks that hold a text to the product's data (`unsupported_*`, and
    `mismatched_value` when `params.labelled_values`): what can change when the data does.

    >>> from core.catalog import ProductIn
    >>> lamp = ProductIn(product_id="l1", title="Lamp", description="An aluminium lamp.")
    >>> check_facts("A steel lamp for the desk.", lamp, GuardrailParams()).reason
    'unsupported_material: steel'
    """
    facts = product if isinstance(product, FactSheet) else FactSheet.of(product)
    verdict = _facts(text, facts, params.brands, params.spelled_numbers)
    if verdict.ok and params.labelled_values:
        verdict = _labelled(text, facts)
    return verdict


def _charset(text: str) -> Verdict:
    for char in text:
        if char not in "\n\t" and unicodedata.category(char).startswith("C"):
            return Verdict(False, f"control_characters: U+{ord(char):04X}")
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < 0.5:
        return Verdict(False, f"not_text: {letters}/{len(visible)} letters")
    return PASS


_BROKEN = frozenset("\ufffd\ufeff")


def _script(text: str, allowed: frozenset[str]) -> Verdict:
    for char in text:
        if char in _BROKEN:
            return Verdict(False, f"bad_characters: U+{ord(char):04X}")
    for script in sorted(scripts_in(text) - allowed):
        return Verdict(False, f"foreign_script: {script}")
    return PASS


#: A token that reads as a word, a number, a quantity or a list marker, with the punctuation
#: that may surround it: "(BPA-free),", "9/16\"", "260°C.", "1,200", "-", "Chef's", "USB-C".
_WORDLIKE = re.compile(
    r"""[("'“‘\[]*"""
    r"(?:[^\W\d_]+(?:['’&.-][^\W\d_]+)*"  # words, compounds, contractions, "e.g"
    r"|[$€£]?\d+(?:[.,/]\d+)*(?:-\d+/\d+)?(?:[-x×]\d+(?:[.,/]\d+)*)*"  # numbers, 30x20
    r"(?:\s?[°%″\"]|°[CF])?(?:-?[^\W\d_]+)*"  # units: 5kg, 260°C, 12-cup, 9/16"
    r"|[^\W\d_]+(?:-?\d+)+[^\W\d_]*"  # model names: XR-200, MK2
    r"|[-*•–—:&+/])"
    r"""[)"'”’\]]*[.,;:!?…]*[)"'”’\]]*"""
)


def _garbled(text: str) -> Verdict:
    tokens = text.split()
    odd = [t for t in tokens if not _WORDLIKE.fullmatch(t)]
    if tokens and len(odd) > 0.15 * len(tokens):
        return Verdict(False, f"garbled: {len(odd)}/{len(tokens)} tokens, e.g. {odd[0]!r}")
    return PASS


def _length(text: str, params: GuardrailParams) -> Verdict:
    n = len(text.strip())
    if n < params.min_chars:
        return Verdict(False, f"too_short: {n} < {params.min_chars} chars")
    if n > params.max_chars:
        return Verdict(False, f"too_long: {n} > {params.max_chars} chars")
    return PASS


#: What a model echoes from its prompt or chat template; none of it belongs in shop copy.
_MARKUP = re.compile(
    r"<\|[^|]*\|>|</?s>|<pad>|<unk>|\[/?INST\]|<</?SYS>>|</?[a-z][a-z0-9]*(?:\s[^<>]*)?>|```|\{\{|\}\}"
    r"|^\s*(?:Product|Category|Attributes|Original description|Description|Style \(\w+\)"
    r"|(?:user|assistant|system))\s*:"
    r"|Write a product description|Use only facts given",
    re.IGNORECASE | re.MULTILINE,
)


def _markup(text: str) -> Verdict:
    found = _MARKUP.search(text)
    if found:
        return Verdict(False, f"leftover_markup: {found.group(0).strip()!r}")
    return PASS


def _repetition(text: str) -> Verdict:
    words = re.findall(r"\w+(?:['’-]\w+)*", text.lower())
    for size, times in ((1, 4), (2, 3), (3, 3), (4, 3)):
        span = size * times
        for start in range(len(words) - span + 1):
            phrase = words[start : start + size]
            if all(
                words[start + k * size : start + (k + 1) * size] == phrase for k in range(times)
            ):
                return Verdict(False, f"repeated_words: {' '.join(phrase)!r} {times}x in a row")
    seen: set[tuple[str, ...]] = set()
    for line in text.lower().splitlines():
        for sentence in _SENTENCE_END.split(_BULLET.sub("", line)):
            said = tuple(re.findall(r"\w+", sentence))
            if len(said) >= 3 and said in seen:
                return Verdict(False, f"repeated_sentence: {' '.join(said)!r}")
            seen.add(said)
    return PASS


def _banned(text: str, terms: Iterable[str]) -> Verdict:
    for term in terms:
        words = [re.escape(w) for w in term.split()]
        # Hyphens bind words: "free" is banned, "BPA-free" is a different word.
        pattern = r"(?<![\w-])" + r"\s+".join(words) + r"(?![\w-])"
        if words and re.search(pattern, text, re.IGNORECASE):
            return Verdict(False, f"banned_term: {term}")
    return PASS


def _facts(text: str, facts: FactSheet, brands: _Brands, spelled_numbers: bool) -> Verdict:
    for token in numbers_in(text):
        if number_value(token) not in facts.numbers:
            return Verdict(False, f"unsupported_number: {token}")
    for word in number_words_in(text) if spelled_numbers else ():
        if NUMBER_WORDS[word] not in facts.numbers:
            return Verdict(False, f"unsupported_number: {word}")
    for value, unit in sorted(quantities_in(text) - facts.quantities, key=str):
        return Verdict(False, f"unsupported_quantity: {_show(value)} {unit}")
    normalized = normalize(text)
    for brand in sorted(terms_in(normalized, brands.pattern)):
        if not contains_term(facts.normalized, brand):
            return Verdict(False, f"unsupported_brand: {brands.spelling[brand]}")
    for kind, pattern, supported in (
        ("material", MATERIAL_PATTERN, facts.materials),
        ("colour", COLOUR_PATTERN, facts.colours),
    ):
        for term in sorted(terms_in(normalized, pattern) - supported):
            return Verdict(False, f"unsupported_{kind}: {term}")
    for name in _inner_capitalized(text):
        if not _supported_word(name, facts.words):
            return Verdict(False, f"unsupported_name: {name}")
    return PASS


#: "Label: value" opening a line (after a list marker) or a ";"-separated part of one: a label
#: of one to four words.
_LABELLED = re.compile(
    r"^\s*(?:[-*\u2022]\s+)?([^\W\d_][^\W\d_'-]*(?:[ \t]+[^\W\d_][^\W\d_'-]*){0,3})"
    r"[ \t]*:[ \t]*(.+)$"
)
_VALUE_END = re.compile(r"(?<=[.!?])\s|\.$")


def _labelled(text: str, facts: FactSheet) -> Verdict:
    """A value after an attribute's label must be written with that attribute's own words or
    numbers, and state no number the attribute does not."""
    for line in text.splitlines():
        for part in line.split(";"):
            match = _LABELLED.match(part)
            if match is None:
                continue
            allowed = facts.labels.get(" ".join(match.group(1).lower().split()))
            if allowed is None:
                continue  # not an attribute's label ("The details:", "Specifications:")
            value = _VALUE_END.split(match.group(2), maxsplit=1)[0].strip()
            words = words_in(value)
            numbers = {number_value(n) for n in numbers_in(value)}
            if not words and not numbers:
                continue
            shared = words & allowed.words or numbers & allowed.numbers
            if not shared or not numbers <= allowed.numbers:
                return Verdict(False, f"mismatched_value: {match.group(1).strip()}: {value}")
    return PASS


def reason_kind(reason: str | None) -> str:
    """The code a reason starts with, which rejects are counted by.

    >>> reason_kind("unsupported_number: 1-9/16"), reason_kind(None)
    ('unsupported_number', '')
    """
    return "" if reason is None else reason.split(":", 1)[0].strip()


def _show(value: Fraction | str) -> str:
    """A compared value as people write it: `3/2` → `1.5`, `25/16` stays a fraction."""
    if isinstance(value, str) or value.denominator == 1:
        return str(value)
    if 10**6 % value.denominator == 0:
        return f"{float(value):g}"
    return str(value)


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[^\W\d_][\w'&]*(?:-[\w'&]+)*")


def _inner_capitalized(text: str) -> Iterable[str]:
    """Capitalised words that do not open a line, a bullet or a sentence: likely names."""
    for line in text.splitlines():
        for sentence in _SENTENCE_END.split(_BULLET.sub("", line)):
            for token in _TOKEN.findall(sentence)[1:]:
                if token[0].isupper():
                    yield token


def _supported_word(token: str, words: frozenset[str]) -> bool:
    return bool(words_in(token) & words) and all(
        part in words for part in words_in(token) if "-" not in part
    )


def shingles(text: str, size: int = SHINGLE_SIZE) -> set[tuple[str, ...]]:
    """Word `size`-grams of a text (its words alone when it is shorter)."""
    tokens = re.findall(r"\w+", text.lower())
    if len(tokens) < size:
        return {(t,) for t in tokens}
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of two texts' shingles, in [0, 1].

    >>> similarity("a sturdy pan for every day", "A sturdy pan for every day!")
    1.0
    """
    sa, sb = shingles(a), shingles(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _near_duplicate(
    text: str, siblings: Sequence[str] | Mapping[str, str], threshold: float
) -> Verdict:
    named = siblings.items() if isinstance(siblings, Mapping) else enumerate(siblings)
    mine = shingles(text)
    for name, other in named:
        theirs = shingles(other)
        union = mine | theirs
        score = len(mine & theirs) / len(union) if union else 1.0
        if score >= threshold:
            label = name if isinstance(name, str) else f"sibling #{name}"
            return Verdict(False, f"near_duplicate: of {label} ({score:.2f})")
    return PASS
