"""The rules backend: deterministic per seed and product, one distinct shape per style,
alternates on demand, lengths bounded, and only the product's own facts."""

from __future__ import annotations

import re

import pytest

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog
from generator import GeneratorError, UnknownStyleError
from generator.guardrails import similarity
from generator.rules import STYLES, Candidate, RulesGenerator

KETTLE = ProductIn(
    product_id="kit-k",
    title="Brewcraft Electric Gooseneck Kettle, 1 l",
    category="kitchen",
    description=(
        "Pour-over coffee rewards a steady hand, and the Brewcraft gooseneck kettle gives you one. "
        "The 1 l stainless steel body heats quickly on a 1200 W base, with 5 temperature presets. "
        "A slim spout controls the flow drop by drop, and the matte black finish looks sharp."
    ),
    attributes={
        "brand": "Brewcraft",
        "material": "stainless steel",
        "power": "1200 W",
        "capacity": "1 l",
        "colour": "black",
        "temperature_presets": 5,
        "weight_kg": 0.9,
        "dishwasher_safe": False,
        "auto_shutoff": True,
    },
)


@pytest.fixture(scope="module")
def sample() -> list[ProductIn]:
    return read_catalog(SAMPLE_CATALOG)


def test_one_candidate_per_style_in_order() -> None:
    candidates = RulesGenerator(seed=0).generate(KETTLE, STYLES, n=len(STYLES))
    assert [c.style for c in candidates] == list(STYLES)
    assert all((c.source, c.generator_version) == ("rules", "rules-1") for c in candidates)
    assert len({c.text for c in candidates}) == len(STYLES)


def test_styles_have_their_shapes() -> None:
    by_style = {c.style: c.text for c in RulesGenerator(seed=0).generate(KETTLE, STYLES, 5)}
    concise = by_style["concise"]
    assert len(re.findall(r"[.!?](?:\s|$)", concise)) <= 2
    assert len(concise) < len(KETTLE.description) and concise in KETTLE.description
    bullet_lines = [line for line in by_style["bullets"].splitlines() if line.startswith("- ")]
    assert len(bullet_lines) >= 3
    assert "- Capacity: 1 l" in bullet_lines
    technical = by_style["technical"].splitlines()
    assert technical[0] == KETTLE.title
    assert {"Power: 1200 W", "Weight: 0.9 kg", "Temperature presets: 5"} <= set(technical)
    benefit = by_style["benefit"]
    assert "Built from stainless steel" in benefit or "Made of stainless steel" in benefit
    story = by_style["story"]
    assert story.startswith(("Meet the", "Here is why the", "Every day goes"))
    assert "The details:" in story
    for a in STYLES:
        for b in STYLES:
            if a < b:
                assert similarity(by_style[a], by_style[b]) < 0.8, (a, b)


def test_false_flags_are_never_stated_and_true_flags_are_bullets() -> None:
    kettle = KETTLE.model_copy(
        update={"attributes": {"auto_shutoff": True, "dishwasher_safe": False, "capacity": "1 l"}}
    )
    texts = [c.text for c in RulesGenerator(seed=3).generate(kettle, STYLES, n=15)]
    assert not any("ishwasher" in t for t in texts)
    assert any("- Auto shutoff" in t for t in texts)


def test_same_seed_same_output_and_other_seeds_vary(sample: list[ProductIn]) -> None:
    first = [RulesGenerator(seed=7).generate(p, STYLES, 10) for p in sample]
    again = [RulesGenerator(seed=7).generate(p, STYLES, 10) for p in sample]
    other = [RulesGenerator(seed=8).generate(p, STYLES, 10) for p in sample]
    assert first == again
    assert first != other


def test_a_products_candidates_do_not_depend_on_what_ran_before(sample: list[ProductIn]) -> None:
    generator = RulesGenerator(seed=1)
    alone = RulesGenerator(seed=1).generate(sample[5], ["story", "benefit"], 4)
    for product in sample[:5]:
        generator.generate(product, STYLES, 10)
    assert generator.generate(sample[5], ["story", "benefit"], 4) == alone
    # A style's text does not depend on the styles generated with it either.
    story_first = RulesGenerator(seed=1).generate(sample[5], ["story"], 1)
    assert story_first[0] == alone[0]


def test_alternates_are_distinct_and_bounded(sample: list[ProductIn]) -> None:
    for product in sample[:20]:
        candidates = RulesGenerator(seed=0).generate(product, STYLES, n=12)
        assert 5 < len(candidates) <= 12
        assert len({c.text for c in candidates}) == len(candidates)
    assert RulesGenerator(seed=0).generate(KETTLE, ["concise"], n=0) == []


def test_max_chars_is_respected(sample: list[ProductIn]) -> None:
    generator = RulesGenerator(seed=0, max_chars=160)
    for product in sample[:30]:
        for candidate in generator.generate(product, STYLES, n=10):
            assert len(candidate.text) <= 160


def test_a_bare_product_still_gets_something() -> None:
    bare = ProductIn(product_id="b", title="Plain Mug", description="A plain mug.")
    candidates = RulesGenerator(seed=0).generate(bare, STYLES, n=5)
    assert [c.style for c in candidates] == ["concise"]
    assert candidates[0] == Candidate("concise", "A plain mug.")


def test_unknown_style_and_bad_arguments_are_refused() -> None:
    with pytest.raises(UnknownStyleError) as caught:
        RulesGenerator(seed=0).generate(KETTLE, ["concise", "haiku"], 2)
    assert str(caught.value) == (
        "unknown style 'haiku' (the rules backend knows concise, bullets, technical, benefit, "
        "story)"
    )
    assert isinstance(caught.value, GeneratorError) and isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match=r"^n must be >= 0, got -1$"):
        RulesGenerator(seed=0).generate(KETTLE, STYLES, -1)
    with pytest.raises(ValueError, match=r"^max_chars must be positive, got 0$"):
        RulesGenerator(seed=0, max_chars=0)
