"""The `hf` backend on real tiny models (a random GPT-2 and a random T5 built in the session):
batched sampling, left padding, seeding, prompts, and generation into a real ledger.

Random weights write gibberish, so the guardrails reject nearly everything these models say;
the ledger tests assert that rejects are stored with their reason and generator version, and the
accept path is covered by `check` itself (tests/generator/test_guardrails.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog, upsert_products
from core.ledger import Variant
from core.settings import Settings
from generator import GeneratorError, UnknownStyleError
from generator.prompts import PLAIN_CUE, build_prompt, format_for_model
from generator.versions import base_version_name, list_versions, register

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from generator.hf import GenerationRequest, HFGenerator  # noqa: E402
from generator.jobs import generate_variants, reject_counts  # noqa: E402

PRODUCTS = read_catalog(SAMPLE_CATALOG)
SettingsFactory = Callable[..., Settings]
MODELS = ["tiny_causal_lm", "tiny_seq2seq"]


def generator(path: Path, **kwargs: object) -> HFGenerator:
    options: dict[str, object] = {"version": "hf-test", "max_new_tokens": 12, "batch_size": 4}
    options.update(kwargs)
    return HFGenerator(path, **options)  # type: ignore[arg-type]


@pytest.fixture(params=MODELS)
def model_path(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_batched_generation_returns_n_candidates_per_prompt(model_path: Path) -> None:
    gen = generator(model_path, batch_size=2)  # 3 products × 1 style: two batches
    requests = [GenerationRequest(p, ("concise",), 3) for p in PRODUCTS[:3]]
    result = gen.generate_many(requests)
    assert [len(c) for c in result.candidates] == [3, 3, 3]
    for candidates in result.candidates:
        assert {(c.style, c.source, c.generator_version) for c in candidates} == {
            ("concise", "llm", "hf-test")
        }
        assert len({c.text for c in candidates}) == 3
        for c in candidates:
            assert c.text == c.text.strip() and "  " not in c.text
            assert "Write a product description" not in c.text  # the prompt is stripped
    stats = result.stats
    assert (stats.products, stats.prompts, stats.candidates) == (3, 3, 9)
    assert 0 < stats.output_tokens <= 9 * 12
    assert stats.seconds > 0 and stats.tokens_per_s > 0 and stats.products_per_s > 0


def test_styles_interleave_and_n_is_spread_over_them(tiny_causal_lm: Path) -> None:
    gen = generator(tiny_causal_lm)
    styles = ("story", "bullets", "technical")
    candidates = gen.generate(PRODUCTS[0], styles, 5)
    assert [c.style for c in candidates] == ["story", "bullets", "technical", "story", "bullets"]
    assert [c.style for c in gen.generate(PRODUCTS[0], styles, 2)] == ["story", "bullets"]
    assert gen.generate(PRODUCTS[0], styles, 0) == []


def test_causal_models_pad_on_the_left_so_batching_changes_nothing(model_path: Path) -> None:
    """Greedy continuations of a short prompt alone and beside a longer one are the same, which
    holds only when padding goes where the attention mask hides it and the continuation starts
    at one column for every row (left padding for causal models)."""
    gen = generator(model_path, temperature=0.0)
    expected_side = "right" if gen.is_encoder_decoder else "left"
    assert gen.tokenizer.padding_side == expected_side
    short = PRODUCTS[0].model_copy(update={"description": "A pot.", "attributes": {}})
    alone = gen.generate(short, ["concise"], 1)
    beside = gen.generate_many(
        [GenerationRequest(PRODUCTS[5], ("concise",), 1), GenerationRequest(short, ("concise",), 1)]
    )
    assert beside.candidates[1] == tuple(alone)
    lengths = [len(gen.tokenizer(t).input_ids) for t in ("A pot.", PRODUCTS[5].description)]
    assert lengths[0] < lengths[1]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model_path: Path) -> None:
    requests = [GenerationRequest(p, ("concise", "bullets"), 2) for p in PRODUCTS[:2]]
    state = torch.random.get_rng_state()
    first = generator(model_path, seed=7).generate_many(requests).candidates
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generator(model_path, seed=7).generate_many(requests).candidates == first
    assert generator(model_path, seed=8).generate_many(requests).candidates != first


def test_construction_and_requests_are_validated_with_exact_messages(
    tiny_causal_lm: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        generator(tiny_causal_lm, batch_size=0)
    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\], got 1.5$"):
        generator(tiny_causal_lm, top_p=1.5)
    with pytest.raises(ValueError, match=r"^dtype must name a torch dtype, got 'float7'$"):
        generator(tiny_causal_lm, dtype="float7")
    with pytest.raises(GeneratorError, match=r"^cannot load generator_model '.*missing' \("):
        generator(tmp_path / "missing")
    gen = generator(tiny_causal_lm)
    with pytest.raises(UnknownStyleError, match=r"^unknown style 'haiku' \(the hf backend knows"):
        gen.generate(PRODUCTS[0], ["concise", "haiku"], 2)
    with pytest.raises(ValueError, match=r"^n must be >= 0, got -1$"):
        gen.generate(PRODUCTS[0], ["concise"], -1)


def test_prompts_are_reproducible_and_use_the_chat_template_when_there_is_one(
    tiny_causal_lm: Path, tiny_seq2seq: Path
) -> None:
    from transformers import AutoTokenizer

    product = PRODUCTS[0]
    shuffled = product.model_copy(update={"attributes": dict(reversed(product.attributes.items()))})
    prompt = build_prompt(product, "technical")
    assert build_prompt(shuffled, "technical") == prompt
    assert product.title in prompt and "Style (technical):" in prompt
    assert all(f"{k.replace('_', ' ')}: " in prompt for k in product.attributes)
    assert build_prompt(product, "story") != prompt
    chat = AutoTokenizer.from_pretrained(tiny_causal_lm)
    assert format_for_model(chat, prompt) == f"<|user|>\n{prompt}\n<|assistant|>\n"
    plain = AutoTokenizer.from_pretrained(tiny_seq2seq)
    assert format_for_model(plain, prompt) == prompt + PLAIN_CUE


def save_lora_adapter(model_path: Path, out: Path, *, identity: bool) -> Path:
    """A LoRA adapter for the tiny GPT-2: the identity (B = 0, as peft initialises it) or random."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(
        r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=identity
    )
    with warnings.catch_warnings():  # peft 0.21 reads a deprecated transformers 5 alias
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        get_peft_model(model, config).save_pretrained(out)
    return out


def test_an_adapter_is_applied(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """A LoRA adapter with non-zero weights changes what the model writes."""
    save_lora_adapter(tiny_causal_lm, tmp_path / "adapter", identity=False)
    requests = [GenerationRequest(PRODUCTS[0], ("concise",), 2)]  # greedy: one each
    base = generator(tiny_causal_lm, temperature=0.0).generate_many(requests).candidates
    tuned = generator(tiny_causal_lm, temperature=0.0, adapter_path=tmp_path / "adapter")
    assert len(base[0]) == 1 and tuned.generate_many(requests).candidates != base
    with pytest.raises(GeneratorError, match=r"^cannot load adapter '.*nope'"):
        generator(tiny_causal_lm, adapter_path=tmp_path / "nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_on_cuda(tiny_causal_lm: Path) -> None:
    gen = generator(tiny_causal_lm, device="cuda")
    assert gen.model.dtype == torch.bfloat16 and gen.device.type == "cuda"
    result = gen.generate_many([GenerationRequest(p, ("concise",), 2) for p in PRODUCTS[:4]])
    assert [len(c) for c in result.candidates] == [2, 2, 2, 2]


# -- into the ledger --------------------------------------------------------------------------


@pytest.fixture
def two_products(sessions: sessionmaker[Session]) -> list[ProductIn]:
    products = PRODUCTS[:2]
    upsert_products(sessions, products)
    return products


def stored(sessions: sessionmaker[Session], source: str = "llm") -> list[Variant]:
    with sessions() as s:
        return list(s.scalars(select(Variant).where(Variant.source == source)))


def test_generate_variants_with_hf_stores_rejects_with_reason_and_version(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    two_products: list[ProductIn],
    tiny_causal_lm: Path,
) -> None:
    settings = make_settings(
        generator_backend="hf", generator_model=str(tiny_causal_lm), max_variant_chars=90
    )
    seen: list[tuple[int, int]] = []
    report = generate_variants(
        sessions, settings, per_product=1, progress=lambda d, t: seen.append((d, t))
    )
    version = base_version_name(str(tiny_causal_lm))
    assert report.generator_version == version and seen == [(1, 2), (2, 2)]
    assert report.stats is not None and report.stats.products == 2
    assert report.stats.output_tokens > 0 and report.stats.tokens_per_s > 0
    rows = stored(sessions)
    assert len(rows) == report.created + report.rejected > 0
    assert {r.generator_version for r in rows} == {version}
    rejects = [r for r in rows if r.status == "rejected"]
    assert len(rejects) == report.rejected > 0  # random weights write gibberish
    assert all(r.reject_reason and ":" in r.reject_reason for r in rejects)
    counts = reject_counts(sessions)
    assert sum(counts[version].values()) == report.rejected
    assert set(counts[version]) == {r.reject_reason.split(":")[0] for r in rejects}
    # The base model was recorded as the shipped version, once.
    [base] = [v for v in list_versions(sessions) if v.version == version]
    assert (base.status, base.base_model, base.adapter_path) == (
        "shipped",
        str(tiny_causal_lm),
        None,
    )
    generate_variants(sessions, settings, per_product=1)
    assert [v.version for v in list_versions(sessions)] == [version]


def test_generate_variants_uses_the_newest_shipped_version(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    two_products: list[ProductIn],
    tiny_causal_lm: Path,
    tmp_path: Path,
) -> None:
    save_lora_adapter(tiny_causal_lm, tmp_path / "adapter", identity=True)
    model_path = str(tiny_causal_lm)
    register(sessions, version="hf-tuned", base_model=model_path, status="shipped",
             adapter_path=str(tmp_path / "adapter"), now=200.0)  # fmt: skip
    register(sessions, version="hf-refused", base_model=model_path, status="rejected", now=300.0)
    register(sessions, version="hf-other", base_model="elsewhere", status="shipped", now=400.0)
    settings = make_settings(
        generator_backend="hf", generator_model=model_path, max_variant_chars=90
    )
    report = generate_variants(sessions, settings, per_product=1)
    assert report.generator_version == "hf-tuned"
    assert {r.generator_version for r in stored(sessions)} == {"hf-tuned"}
    assert "hf-base" not in " ".join(v.version for v in list_versions(sessions))


def test_an_unloadable_model_names_the_setting_and_records_nothing(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    two_products: list[ProductIn],
    tmp_path: Path,
) -> None:
    settings = make_settings(generator_backend="hf", generator_model=str(tmp_path / "nothing"))
    with pytest.raises(GeneratorError, match=r"COPYLOOP_GENERATOR_MODEL"):
        generate_variants(sessions, settings)
    assert list_versions(sessions) == [] and stored(sessions) == []


def test_cli_generate_with_hf_reports_throughput(
    database_url: str, two_products: list[ProductIn], tiny_causal_lm: Path
) -> None:
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": database_url,
        "COPYLOOP_GENERATOR_MODEL": str(tiny_causal_lm),
        "COPYLOOP_MAX_VARIANT_CHARS": "90",  # 30 new tokens a candidate: quick on a CPU
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "copyloop", "generate", "--backend", "hf", "--per-product", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "variants: GenerateReport(products=2" in out.stdout
    assert "products/s" in out.stdout and "tokens/s" in out.stdout


def test_a_static_cache_writes_what_the_dynamic_one_does(model_path: Path) -> None:
    """Greedy decoding into a preallocated cache, prompts padded to a multiple of 64 tokens (the
    CUDA default, compiled there), gives the same texts as the dynamic cache on the CPU."""
    requests = [GenerationRequest(p, ("concise", "bullets"), 2) for p in PRODUCTS[:3]]
    dynamic = generator(model_path, temperature=0.0, static_cache=False)
    static = generator(model_path, temperature=0.0, static_cache=True)
    assert static.static_cache and not dynamic.static_cache
    assert static.generate_many(requests).candidates == dynamic.generate_many(requests).candidates


def test_from_settings_reads_the_generator_settings(
    tiny_causal_lm: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(
        generator_temperature=0.0,
        generator_top_p=0.5,
        generator_batch_size=3,
        generator_dtype="float64",
        generator_static_cache=True,
        max_variant_chars=90,
        seed=9,
    )
    gen = HFGenerator.from_settings(tiny_causal_lm, settings, version="v", top_p=0.7)
    assert (gen.temperature, gen.top_p, gen.batch_size, gen.max_new_tokens, gen.seed) == (
        0.0,
        0.7,
        3,
        30,
        9,
    )
    assert gen.model.dtype == torch.float64 and gen.static_cache and not gen.compile
    assert gen.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def short_context_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny GPT-2s that attend over 128 and 512 positions: shorter than a long prompt plus its
    copy under the default budget (768 + 160 tokens)."""
    from generator.tiny import build_tiny_causal_lm

    texts = [p.description for p in PRODUCTS]
    root = tmp_path_factory.mktemp("short")
    return {
        n: build_tiny_causal_lm(root / str(n), texts, n_positions=n, seed=0) for n in (128, 512)
    }


@pytest.mark.parametrize("positions", [128, 512])
def test_prompt_and_copy_fit_the_models_own_context(
    positions: int, short_context_lms: dict[int, Path]
) -> None:
    """The budget comes from the model's config: no IndexError on a 128- or 512-position model
    whatever the prompt's length (the prompt keeps its end, the cue to continue)."""
    path = short_context_lms[positions]
    gen = HFGenerator(path, version="v", batch_size=4, max_new_tokens=200, temperature=0.0)
    assert gen.context_tokens == positions
    assert gen.max_prompt_tokens + gen.max_new_tokens <= positions
    long = PRODUCTS[0].model_copy(update={"description": PRODUCTS[0].description * 20})
    result = gen.generate_many([GenerationRequest(p, ("story",), 1) for p in (long, PRODUCTS[1])])
    assert len(result.candidates) == 2


def test_an_encoder_decoder_reads_and_writes_within_its_context(tiny_seq2seq: Path) -> None:
    gen = HFGenerator(tiny_seq2seq, version="v", max_new_tokens=2000, max_prompt_tokens=4096)
    assert gen.is_encoder_decoder
    limit = gen.context_tokens
    assert limit is None or (gen.max_prompt_tokens <= limit and gen.max_new_tokens <= limit)
    long = PRODUCTS[2].model_copy(update={"description": PRODUCTS[2].description * 20})
    gen.max_new_tokens = 8  # quick: only that it runs is asked here
    assert len(gen.generate_many([GenerationRequest(long, ("concise",), 1)]).candidates) == 1


def test_one_product_the_model_fails_on_is_reported_and_the_rest_go_on(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    short_context_lms: dict[int, Path],
) -> None:
    """A generator whose prompt budget overruns its model (as a hand-set budget could) raises
    IndexError on the one product with a long description; the batch is retried product by
    product, the others get their variants and the failure is reported with its reason."""
    long = PRODUCTS[0].model_copy(update={"description": PRODUCTS[0].description * 20})
    upsert_products(sessions, [long, *PRODUCTS[1:3]])
    gen = HFGenerator(short_context_lms[512], version="hf-short", batch_size=8, max_new_tokens=16)
    gen.max_prompt_tokens = 4096  # overrun the 512 positions on purpose (with long prompts only)
    report = generate_variants(sessions, make_settings(), backend=gen, per_product=1)
    assert [pid for pid, _ in report.failed] == [long.product_id]
    assert report.failed[0][1].startswith("IndexError")
    assert report.products == 3
    with sessions() as s:
        written = {v.product_id for v in s.scalars(select(Variant).where(Variant.source == "llm"))}
    assert long.product_id not in written
