"""Prompts for the `hf` backend: one per (product, style), reproducible to the character.

Fine-tuning (SFT on winners, preference pairs) trains on exactly the text generation conditions
on, so both sides build it here: :func:`build_prompt` writes the instruction from the product's
title, category, attributes (sorted by key, so a row's JSON order never changes it) and original
description, with an explicit style instruction; :func:`format_for_model` wraps it in the
tokenizer's chat template when it has one (a single user turn plus the assistant header), and
otherwise appends a plain ``Description:`` cue that causal and seq2seq models both continue.

Usage::

    prompt = build_prompt(product, "bullets")
    text = format_for_model(tokenizer, prompt)  # what the model sees; training appends the target
"""

from __future__ import annotations

from typing import Any

from generator import UnknownStyleError
from generator.facts import ProductLike, format_value

#: What each style asks of the model; the keys are the styles the `hf` backend knows (the same
#: five as the rules backend, so the bandit's style feature means the same whatever wrote it).
STYLE_INSTRUCTIONS: dict[str, str] = {
    "concise": "One or two short sentences that say what it is and why it is worth having.",
    "bullets": "A one-sentence lead, then three or four lines starting with '- ', one fact each.",
    "technical": "A precise, spec-led description: name the key specifications and values.",
    "benefit": "Lead with what the shopper gains; turn each feature into a benefit.",
    "story": "A short, warm scene of the product in use, in three or four sentences.",
}

#: Appended to the plain prompt (no chat template): the model continues after it.
PLAIN_CUE = "\n\nDescription:\n"


def build_prompt(product: ProductLike, style: str) -> str:
    """The instruction for one product and style (no model-specific markup).

    >>> from core.catalog import ProductIn
    >>> mug = ProductIn(product_id="m1", title="Stoneware Mug", category="kitchen",
    ...     description="A sturdy mug. It holds 350 ml.",
    ...     attributes={"material": "stoneware", "capacity_ml": 350})
    >>> print(build_prompt(mug, "concise"))
    Write a product description for an online shop.
    Style (concise): One or two short sentences that say what it is and why it is worth having.
    Use only facts given below: no other numbers, sizes, materials, colours or brands.
    <BLANKLINE>
    Product: Stoneware Mug
    Category: kitchen
    Attributes:
    - capacity ml: 350
    - material: stoneware
    Original description: A sturdy mug. It holds 350 ml.
    """
    instruction = STYLE_INSTRUCTIONS.get(style)
    if instruction is None:
        raise UnknownStyleError(
            f"unknown style {style!r} (the hf backend knows {', '.join(STYLE_INSTRUCTIONS)})"
        )
    lines = [
        "Write a product description for an online shop.",
        f"Style ({style}): {instruction}",
        "Use only facts given below: no other numbers, sizes, materials, colours or brands.",
        "",
        f"Product: {_one_line(product.title)}",
    ]
    if product.category:
        lines.append(f"Category: {_one_line(product.category)}")
    attributes = sorted(product.attributes.items())
    if attributes:
        lines.append("Attributes:")
        lines += [f"- {k.replace('_', ' ')}: {_one_line(format_value(v))}" for k, v in attributes]
    lines.append(f"Original description: {_one_line(product.description)}")
    return "\n".join(lines)


def format_for_model(tokenizer: Any, prompt: str) -> str:
    """`prompt` as the model sees it: the chat template's user turn plus the assistant header
    when the tokenizer has a template, else the plain prompt followed by :data:`PLAIN_CUE`."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    return prompt + PLAIN_CUE


def _one_line(text: str) -> str:
    return " ".join(text.split())
