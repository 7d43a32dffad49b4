"""Guardrails: planted contradictions are rejected with their reason, faithful texts pass, and
every rules candidate for the sample catalog passes (or is only a near-duplicate)."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog
from core.settings import load_settings
from generator.facts import (
    COLOUR_PATTERN,
    MATERIAL_PATTERN,
    FactSheet,
    normalize,
    number_value,
    numbers_in,
    quantities_in,
    terms_in,
)
from generator.guardrails import GuardrailParams, Verdict, check, reason_kind, similarity
from generator.rules import STYLES, RulesGenerator

KNIFE = ProductIn(
    product_id="kit-x",
    title="Saltmarsh Chef's Knife, 8 inch Blade",
    category="kitchen",
    description=(
        "The Saltmarsh chef's knife is forged from stainless steel with a walnut handle. "
        "Its 9/16 inch spine is 2.5 mm thick, and the whole knife weighs 210 g. "
        "A BPA-free sheath in grey protects the 1,200 mm of edge you never see."
    ),
    attributes={
        "brand": "Saltmarsh",
        "material": "stainless steel",
        "handle": "walnut",
        "colour": "grey",
        "weight_g": 210,
        "blade_length": "8 inch",
        "spine": "9/16 inch",
    },
)
PARAMS = GuardrailParams(
    min_chars=20,
    max_chars=600,
    banned_terms=("guaranteed", "best in the world", "free", "risk-free"),
    known_brands=frozenset({"Saltmarsh", "Hearthline"}),
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A chef's knife forged from copper with a walnut handle.", "unsupported_material: copper"),
        ("A chef's knife with an oak handle and steel blade.", "unsupported_material: oak"),
        ("A carbon steel knife with a walnut handle.", "unsupported_material: carbon steel"),
        ("A chef's knife in red with a walnut handle.", "unsupported_colour: red"),
        ("The Hearthline chef's knife has a walnut handle.", "unsupported_brand: Hearthline"),
        ("Forged by Wusthof from stainless steel, it cuts cleanly.", "unsupported_name: Wusthof"),
        ("A 10 inch blade of stainless steel with a walnut handle.", "unsupported_number: 10"),
        ("Its 1-9/16 inch spine is forged from stainless steel.", "unsupported_number: 1-9/16"),
        ("A spine of 9/32 inch keeps the stainless steel blade stiff.", "unsupported_number: 9/32"),
        ("Weighs 2.4 kg with the walnut handle fitted.", "unsupported_number: 2.4"),
        ("It weighs 210 kg and has a walnut handle.", "unsupported_quantity: 210 kg"),
        ("Its spine is 2.5 cm thick and made of stainless steel.", "unsupported_quantity: 2.5 cm"),
        ("Guaranteed to stay sharp, with a walnut handle.", "banned_term: guaranteed"),
        ("The best  in the WORLD knife with a walnut handle.", "banned_term: best in the world"),
        ("Free sharpening with every stainless steel knife.", "banned_term: free"),
        ("Try it risk-free: stainless steel and walnut.", "banned_term: risk-free"),
        ("Sharp knife.", "too_short: 12 < 20 chars"),
        ("Sharp stainless steel knife. " * 25, "too_long: 724 > 600 chars"),
        ("Stainless steel knife\x07 with a walnut handle.", "control_characters: U+0007"),
        ("210 210 210 210 210 210 210 g g", "not_text: 2/23 letters"),
    ],
)
def test_planted_contradictions_are_rejected(text: str, reason: str) -> None:
    assert check(text, KNIFE, [], PARAMS) == Verdict(False, reason)


@pytest.mark.parametrize(
    "text",
    [
        "A Saltmarsh chef's knife in stainless steel with a walnut handle.",
        "Its 9/16 inch spine is 2.5 mm thick; it weighs 210 g.",
        'An 8-inch blade with a 9/16" spine and a gray sheath.',  # aliases and unit spellings
        "Weight: 210 grams\nBlade length: 8 inches\nHandle: Walnut",
        "Protects 1200 mm of edge in a BPA-free sheath; the steel stays keen.",
        "Saltmarsh's knife: steel, walnut, grey, and a free-standing block is not included.",
        "- Material: Stainless steel\n- Colour: Grey\n- Made for a Chef's daily prep",
    ],
)
def test_faithful_texts_pass(text: str) -> None:
    assert check(text, KNIFE, [], PARAMS) == Verdict(True, None)


KNIFE_FACTS = FactSheet.of(KNIFE)


@given(st.integers(0, 10**6), st.integers(0, 31), st.integers(1, 32))
def test_any_number_absent_from_the_data_is_rejected(whole: int, num: int, den: int) -> None:
    for token, value in (
        (str(whole), Fraction(whole)),
        (f"{num}/{den}", Fraction(num, den)),
        (f"{whole}-{num}/{den}", whole + Fraction(num, den)),
    ):
        assume(value not in KNIFE_FACTS.numbers)
        text = f"A stainless steel knife with {token} uses and a walnut handle."
        assert check(text, KNIFE_FACTS, [], PARAMS).reason == f"unsupported_number: {token}"


def test_near_duplicates_of_siblings_are_rejected_and_named() -> None:
    text = "A Saltmarsh chef's knife in stainless steel with a walnut handle."
    sibling = "A Saltmarsh chef's knife in stainless steel, with a walnut handle!"
    assert check(text, KNIFE, {"v_abc": sibling}, PARAMS) == Verdict(
        False, "near_duplicate: of v_abc (1.00)"
    )
    assert check(text, KNIFE, ["Walnut handle, steel.", sibling], PARAMS).reason == (
        "near_duplicate: of sibling #1 (1.00)"
    )
    different = "Its 9/16 inch spine is 2.5 mm thick; the knife weighs 210 g."
    assert check(text, KNIFE, {"v_abc": different}, PARAMS).ok
    strict = GuardrailParams(near_duplicate_threshold=0.3)
    half = "A Saltmarsh chef's knife in stainless steel for long prep sessions."
    assert 0.3 <= similarity(text, half) < 0.8
    assert check(text, KNIFE, [half], PARAMS).ok
    assert check(text, KNIFE, [half], strict).reason.startswith("near_duplicate: of sibling #0")


def test_params_validate_with_exact_messages() -> None:
    with pytest.raises(
        ValueError, match=r"^min_chars must be positive and below max_chars, got 50 and 10$"
    ):
        GuardrailParams(min_chars=50, max_chars=10)
    with pytest.raises(
        ValueError, match=r"^near_duplicate_threshold must be in \(0, 1\], got 1.5$"
    ):
        GuardrailParams(near_duplicate_threshold=1.5)


def test_params_from_settings() -> None:
    settings = load_settings(min_variant_chars=30, max_variant_chars=300, banned_terms="a,b c")
    params = GuardrailParams.from_settings(settings, known_brands=["X"])
    assert params == GuardrailParams(
        min_chars=30,
        max_chars=300,
        banned_terms=("a", "b c"),
        near_duplicate_threshold=0.8,
        known_brands=frozenset({"X"}),
        spelled_numbers=True,
        labelled_values=True,
    )


def test_every_rules_candidate_of_the_sample_catalog_is_grounded() -> None:
    """Alternates may repeat a sibling closely; nothing else may fail."""
    products = read_catalog(SAMPLE_CATALOG)
    settings = load_settings()
    brands = {str(p.attributes["brand"]) for p in products}
    params = GuardrailParams.from_settings(settings, known_brands=brands)
    generator = RulesGenerator(seed=0, max_chars=settings.max_variant_chars)
    accepted = 0
    for product in products:
        siblings = {"control": product.description}
        for candidate in generator.generate(product, STYLES, n=3 * len(STYLES)):
            verdict = check(candidate.text, product, siblings, params)
            if verdict.ok:
                siblings[f"{candidate.style}-{len(siblings)}"] = candidate.text
                accepted += 1
            else:
                assert verdict.reason.startswith("near_duplicate:"), (product.product_id, verdict)
    # The first round (one per style) always survives: the styles differ meaningfully.
    assert accepted >= len(products) * len(STYLES)


# -- generated copy: what models get wrong ------------------------------------------------------

STRICT = GuardrailParams(
    min_chars=20,
    max_chars=600,
    banned_terms=PARAMS.banned_terms,
    known_brands=PARAMS.known_brands,
    spelled_numbers=True,
    labelled_values=True,
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A twelve-piece set: stainless steel, walnut.", "unsupported_number: twelve"),
        ("Made for two cooks, stainless steel and walnut.", "unsupported_number: two"),
        ("A dozen uses for one stainless steel knife.", "unsupported_number: dozen"),
        ("A stainless steel knife with a walnut handle.\ufffd", "bad_characters: U+FFFD"),
        ("Нож из нержавеющей стали с ручкой из ореха.", "foreign_script: CYRILLIC"),
        ("A stainless steel knife 刀 with a walnut handle.", "foreign_script: CJK"),
        (
            "A steel knife &&^ ~~ with %$# a walnut ##@ handle ^^.",
            "garbled: 5/12 tokens, e.g. '&&^'",
        ),
        (
            "<|assistant|>\nA stainless steel knife, walnut handle.",
            "leftover_markup: '<|assistant|>'",
        ),
        ("A stainless steel knife.\nAttributes: walnut handle", "leftover_markup: 'Attributes:'"),
        ("Product: Saltmarsh Chef's Knife in stainless steel.", "leftover_markup: 'Product:'"),
        ("<p>A stainless steel knife with a walnut handle.</p>", "leftover_markup: '<p>'"),
        (
            "Write a product description: a steel knife, walnut.",
            "leftover_markup: 'Write a product description'",
        ),
        ("A knife knife knife knife of stainless steel.", "repeated_words: 'knife' 4x in a row"),
        (
            "Sharp and keen, sharp and keen, sharp and keen: a steel knife.",
            "repeated_words: 'sharp and keen' 3x in a row",
        ),
        (
            "Oven safe to 260°C. A steel knife. Oven safe to 260°C.",
            "repeated_sentence: 'oven safe to 260 c'",
        ),
        ("- Material: walnut\n- Handle: stainless steel", "mismatched_value: Material: walnut"),
        ("Weight: 8 inch\nHandle: walnut", "mismatched_value: Weight: 8 inch"),
        ("Blade length: 8 inch; colour: walnut.", "mismatched_value: colour: walnut"),
        (
            "Stainless steel, walnut.\nWeight: 2.5 mm thick",
            "mismatched_value: Weight: 2.5 mm thick",
        ),
        ("- Spine: 2.5 mm, walnut handle", "mismatched_value: Spine: 2.5 mm, walnut handle"),
    ],
)
def test_model_failure_modes_are_rejected(text: str, reason: str) -> None:
    assert check(text, KNIFE, [], STRICT) == Verdict(False, reason)


@pytest.mark.parametrize(
    "text",
    [
        "A knife, a knife and a sheath: stainless steel and walnut.",  # twice is fine
        'Its 9/16" spine (2.5 mm) keeps the blade stiff; 210 g in all.',
        "Crème-smooth cuts: stainless steel, walnut, and a grey BPA-free sheath.",
        "- Blade: 8 inch, stainless steel\n- Handle: walnut\n- Weight: 210 g",
        "One knife for every job: stainless steel, walnut, grey.",  # "one" states no count
        "Weight: 210 grams; colour: gray.\nSpine: 9/16 inch",  # unit spellings, aliases
        "The details: handle walnut, weight 210 g.",  # not an attribute's label
        "Specifications: stainless steel\n- Handle: a warm walnut, oiled",
        "A walnut handle. A steel blade. A walnut handle, twice is too much? No: once.",
    ],
)
def test_faithful_generated_texts_pass_the_strict_checks(text: str) -> None:
    assert check(text, KNIFE, [], STRICT) == Verdict(True, None)


def _absent(pool: list[str], supported: frozenset[str]) -> str:
    return next(term for term in pool if term not in supported)


def _as_written(value: Fraction) -> str:
    return str(value) if 10**6 % value.denominator else f"{float(value):g}"


def _replace_once(text: str, pattern: str, new: str) -> str:
    return re.sub(pattern, new, text, count=1, flags=re.IGNORECASE)


#: What each planted change must be rejected as.
EXPECTED = {
    "number+1": "unsupported_number",
    "mixed": "unsupported_number",
    "material": "unsupported_material",
    "colour": "unsupported_colour",
    "brand": "unsupported_brand",
    "unit": "unsupported_quantity",
}
UNIT_SWAPS = {"kg": "lb", "g": "oz", "mm": "cm", "cm": "mm", "l": "ml", "ml": "l", "qt": "gal"}


def plant_contradictions(product: ProductIn, brands: set[str]) -> list[tuple[str, str]]:
    """(kind, text) pairs: the product's own description with one fact changed each time."""
    facts = FactSheet.of(product)
    text = product.description
    planted: list[tuple[str, str]] = []
    for token in dict.fromkeys(numbers_in(text)):
        value = number_value(token)
        assert isinstance(value, Fraction)
        # Whole tokens only: not the 9/16 of a 1-9/16 (a range's 110-135 has two tokens).
        after_hyphen = r"(?<!\d-)" if "/" in token else ""
        whole = rf"(?<![\d.,/]){after_hyphen}{re.escape(token)}(?![\d/])(?!\.\d)(?!,\d{{3}})"
        mixed = f"1-{token}" if "/" in token else f"1{token}"  # 9/16 -> 1-9/16, 260 -> 1260
        for kind, changed in (("number+1", _as_written(value + 1)), ("mixed", mixed)):
            if number_value(changed) not in facts.numbers:
                planted.append((kind, _replace_once(text, whole, changed)))
                assert planted[-1][1] != text, (product.product_id, token)
    normalized = normalize(text)
    for kind, pattern, pool, supported in (
        ("material", MATERIAL_PATTERN, ["copper", "bamboo", "silk", "granite"], facts.materials),
        ("colour", COLOUR_PATTERN, ["crimson", "teal", "lavender"], facts.colours),
    ):
        for term in sorted(terms_in(normalized, pattern)):
            words = r"[\s-]+".join(re.escape(w) for w in term.split())
            changed = _replace_once(text, rf"\b{words}\b", _absent(pool, supported))
            if changed != text:
                planted.append((kind, changed))
    brand = str(product.attributes.get("brand", ""))
    if brand and brand in text:
        other = sorted(b for b in brands if b != brand and b.lower() not in facts.normalized)[0]
        planted.append(("brand", text.replace(brand, other, 1)))
    for value, unit in sorted(quantities_in(text), key=str):
        if unit in UNIT_SWAPS and (value, UNIT_SWAPS[unit]) not in facts.quantities:
            shown = _as_written(value) if isinstance(value, Fraction) else value
            pattern = rf"(?<![\d.]){re.escape(shown)}([\s-]?){unit}\b"
            changed = _replace_once(text, pattern, rf"{shown}\g<1>{UNIT_SWAPS[unit]}")
            if changed != text:
                planted.append(("unit", changed))
    return planted


def test_planted_contradictions_across_the_catalog_never_pass() -> None:
    """Each product's own description passes; every copy of it with one fact planted wrong (a
    number changed, a fraction made mixed, a material, colour, brand or unit swapped) is
    rejected, and for that change's reason: the table shows 0 contradictions passing."""
    products = read_catalog(SAMPLE_CATALOG)
    brands = {str(p.attributes["brand"]) for p in products}
    params = GuardrailParams(max_chars=2000, known_brands=frozenset(brands), spelled_numbers=True)
    planted_by_kind: Counter[str] = Counter()
    passing: list[tuple[str, str, str]] = []
    wrong_reason: list[tuple[str, str, str | None]] = []
    for product in products:
        assert check(product.description, product, [], params).ok, product.product_id
        for kind, text in plant_contradictions(product, brands):
            planted_by_kind[kind] += 1
            verdict = check(text, product, [], params)
            if verdict.ok:
                passing.append((product.product_id, kind, text))
            elif reason_kind(verdict.reason) != EXPECTED[kind]:
                wrong_reason.append((product.product_id, kind, verdict.reason))
    assert passing == []
    assert wrong_reason == []
    assert set(planted_by_kind) == set(EXPECTED)
    assert sum(planted_by_kind.values()) >= 500, planted_by_kind


def swap_labelled_values(text: str, product: ProductIn) -> list[str]:
    """Copies of a "Label: value" text with the values of two of its labelled lines swapped,
    for each pair of lines whose attributes share no word or number."""
    facts = FactSheet.of(product)
    lines = text.splitlines()
    labelled = []
    for index, line in enumerate(lines):
        label, sep, value = line.partition(": ")
        allowed = facts.labels.get(label.lower())
        if sep and allowed is not None:
            labelled.append((index, label, value, allowed))
    swapped = []
    for a, (i, label_i, value_i, allowed_i) in enumerate(labelled):
        for j, label_j, value_j, allowed_j in labelled[a + 1 :]:
            if allowed_i.words & allowed_j.words or allowed_i.numbers & allowed_j.numbers:
                continue
            copy = list(lines)
            copy[i], copy[j] = f"{label_i}: {value_j}", f"{label_j}: {value_i}"
            swapped.append("\n".join(copy))
    return swapped


def test_swapped_attribute_values_across_the_catalog_never_pass() -> None:
    """The rules backend's spec sheet of every product passes; every copy of it with two
    attributes' values swapped ("Capacity: red", "Weight: 58 HRC": each fact is in the data,
    the pairing is not) is rejected as a mismatched value."""
    products = read_catalog(SAMPLE_CATALOG)
    brands = {str(p.attributes["brand"]) for p in products}
    params = GuardrailParams.from_settings(load_settings(), known_brands=brands)
    rules = RulesGenerator(seed=0)
    planted = 0
    passing: list[tuple[str, str, str | None]] = []
    for product in products:
        [sheet] = rules.generate(product, ["technical"], 1)
        assert check(sheet.text, product, [], params).ok, product.product_id
        for text in swap_labelled_values(sheet.text, product):
            planted += 1
            verdict = check(text, product, [], params)
            if reason_kind(verdict.reason) != "mismatched_value":
                passing.append((product.product_id, text, verdict.reason))
    assert passing == []
    assert planted >= 1000, planted
