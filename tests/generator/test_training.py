"""The training helpers on real tiny models: batching changes no log-likelihood (left padding,
positions, logits kept for the completion only), and distilling the rules backend teaches a
tiny GPT-2 to write copy that passes the guardrails, which a random one never does."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalog import SAMPLE_CATALOG, read_catalog
from core.settings import load_settings
from generator.guardrails import GuardrailParams, check
from generator.rules import STYLES
from tests.generator.conftest import WarmModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from generator.hf import GenerationRequest, HFGenerator  # noqa: E402
from generator.tiny import distil, teacher_texts  # noqa: E402
from generator.training import collate, completion_logps, encode  # noqa: E402

PRODUCTS = read_catalog(SAMPLE_CATALOG)


@pytest.mark.parametrize("model_name", ["tiny_causal_lm", "tiny_seq2seq"])
def test_log_likelihoods_do_not_depend_on_the_batch(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(model_name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path) if "seq2seq" in model_name \
        else transformers.AutoModelForCausalLM.from_pretrained(path)  # fmt: skip
    model.eval()
    seq2seq = "seq2seq" in model_name
    texts = [
        ("concise", "A pan."),
        ("story", PRODUCTS[1].description),
        ("bullets", "- Oak\n- 2 kg"),
    ]
    examples = [
        encode(tokenizer, product, style, text, 512, seq2seq)
        for product, (style, text) in zip(PRODUCTS, texts, strict=False)
    ]
    assert len({len(e.prompt) for e in examples}) == 3  # padding is exercised on both sides
    with torch.no_grad():
        together, counts = completion_logps(
            model, collate(examples, tokenizer.pad_token_id, seq2seq), seq2seq
        )
        alone = [completion_logps(model, collate([e], tokenizer.pad_token_id, seq2seq), seq2seq)
                 for e in examples]  # fmt: skip
    assert counts.tolist() == [len(e.completion) for e in examples]
    assert torch.allclose(together, torch.cat([lp for lp, _ in alone]), atol=1e-4)


def test_distil_validates_its_arguments(tiny_causal_lm: Path) -> None:
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        distil(tiny_causal_lm, teacher_texts(PRODUCTS[:1]), steps=0)
    with pytest.raises(ValueError, match=r"^teacher must hold at least one"):
        distil(tiny_causal_lm, [], steps=1)


def pass_rate(path: Path, products: list, samples: int = 2) -> tuple[float, int]:  # type: ignore[type-arg]
    """The share of sampled candidates (2 per product and style) that pass the guardrails."""
    settings = load_settings()
    brands = {str(p.attributes["brand"]) for p in PRODUCTS}
    params = GuardrailParams.from_settings(settings, known_brands=brands)
    generator = HFGenerator.from_settings(path, settings, version="t", batch_size=16)
    result = generator.generate_many(
        [GenerationRequest(p, STYLES, samples * len(STYLES)) for p in products]
    )
    asked = samples * len(STYLES) * len(products)
    passed = sum(
        check(c.text, p, [p.description], params).ok
        for p, cands in zip(products, result.candidates, strict=True)
        for c in cands
    )
    return passed / asked, asked


def test_distilled_tiny_model_writes_copy_that_passes_the_guardrails(
    warm_tiny_lm: WarmModel, tiny_causal_lm: Path
) -> None:
    losses = warm_tiny_lm.losses
    assert losses[0] > 6.0 and max(losses[-10:]) < 0.6, (losses[0], losses[-10:])
    warm, asked = pass_rate(warm_tiny_lm.path, warm_tiny_lm.products)
    cold, _ = pass_rate(tiny_causal_lm, warm_tiny_lm.products[:4], samples=1)
    assert asked == 160
    assert warm >= 0.25, warm  # it still loops, mislabels and mixes up facts, as models do
    assert cold == 0.0
