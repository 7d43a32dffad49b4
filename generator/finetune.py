"""Fine-tune the `hf` generator on what sells: LoRA SFT on winners, a weighted DPO step, a gate.

One round:

1. **Data.** Winners (:mod:`generator.winners`: a variant's IPS lower bound above the control's
   upper bound) and winner-vs-loser pairs of the same product. Products are split, by a seeded
   hash, into training and held-out ones; held-out products train nothing.
2. **SFT.** A *fresh* LoRA adapter on the *base* model (never the last adapter: each round is
   reproducible from the ledger alone and errors do not compound), trained to write each
   training winner given its prompt (:func:`generator.prompts.build_prompt` in the winner's style,
   formatted for the model); the loss covers the completion tokens only.
3. **Preference step.** DPO on the training pairs, each pair's loss weighted by its reward gain ×
   confidence: ``-w · log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])``
   with the base model (adapter disabled) as the frozen reference.
4. **The gate.** Fresh samples of the new version and of the current shipped one, for the
   held-out products in every style (`gate_samples` per prompt, the same seed, as long as
   generation makes them). The adapter ships only if (a) the held-out winners' per-token NLL
   is below the base model's, (b) the guardrail pass rate is non-inferior to the shipped
   version's: the one-sided 95% lower bound of the difference (new − shipped; Newcombe's
   hybrid score interval from Wilson intervals) is above `-guardrail_margin`, so a handful of
   lucky samples cannot ship a worse generator, and (c) the samples' distinct-2 (unique
   bigrams / bigrams) is not below the shipped version's by more than `diversity_tolerance`.
   The version is recorded either way (base, adapter, data, metrics, verdict and reason); a
   refused one is `rejected` and never generates.

Usage::

    copyloop finetune [--dry-run]
    # or, from Python:
    result = main(FinetuneConfig(base_model="var/tiny-gpt2", sft_steps=40), sessions, settings)
    result.status, result.gate_reason, result.metrics["heldout_nll"]

Errors: :class:`FinetuneError` (a `generator.SettingError`) when there is no base model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import Product, Variant
from core.settings import Settings
from generator import SettingError
from generator.finetune_config import (
    FinetuneConfig,
    config_from_settings,
    config_json,
    parse_overrides,
)
from generator.versions import ensure_base, newest_shipped, register
from generator.winners import Pair, Winner, compare_variants, current_params, preference_pairs
from generator.winners import winners as pick_winners

Progress = Callable[[str, int, int], None]


class FinetuneError(SettingError):
    """A fine-tuning round that cannot start (no base model)."""


@dataclass(frozen=True)
class FinetuneResult:
    """`status`: shipped | rejected (a version was recorded), dry_run or skipped (none was)."""

    status: str
    reason: str
    version: str | None = None
    adapter_path: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    sft_losses: tuple[float, ...] = ()
    dpo_losses: tuple[float, ...] = ()


@dataclass(frozen=True)
class TrainingData:
    """Winners and pairs split by product into training and held-out sets."""

    train: tuple[Winner, ...]
    heldout: tuple[Winner, ...]
    pairs: tuple[Pair, ...]  # training products only
    products: dict[str, Product]
    siblings: dict[str, dict[str, str]]  # product → active variant texts by id
    brands: frozenset[str]  # every brand in the catalog, for the guardrails
    summary: dict[str, Any]


def split_heldout(product_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The held-out products: the `ceil(fraction · n)` ids ranked first by a seeded hash, at
    least one and never all (so both sides are non-empty when there are two or more).

    >>> sorted(split_heldout(["a", "b", "c", "d"], 0.25, seed=0)) in (["a"], ["b"], ["c"], ["d"])
    True
    """
    ids = sorted(set(product_ids))
    if len(ids) < 2:
        return set()
    k = min(max(1, math.ceil(fraction * len(ids))), len(ids) - 1)
    ranked = sorted(ids, key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
    return set(ranked[:k])


def collect(sessions: sessionmaker[Session], cfg: FinetuneConfig) -> TrainingData:
    """Winners, pairs and the products they need, split into training and held-out sets."""
    params = current_params(sessions, cfg.min_exposure)
    comparisons = compare_variants(sessions, params)
    winners = pick_winners(comparisons)
    pairs = preference_pairs(comparisons)
    heldout_ids = split_heldout([w.product_id for w in winners], cfg.heldout_fraction, cfg.seed)
    needed = sorted({w.product_id for w in winners})
    with sessions() as s:
        products = {
            p.product_id: p
            for p in s.scalars(select(Product).where(Product.product_id.in_(needed)))
        }
        siblings: dict[str, dict[str, str]] = {}
        for v in s.scalars(
            select(Variant).where(Variant.product_id.in_(needed), Variant.status == "active")
        ):
            siblings.setdefault(v.product_id, {})[v.variant_id] = v.text
        brand = Product.attributes["brand"].as_string()
        brands = frozenset(b for b in s.scalars(select(brand).distinct()) if b)
    train = tuple(w for w in winners if w.product_id not in heldout_ids)
    heldout = tuple(w for w in winners if w.product_id in heldout_ids)
    train_pairs = tuple(p for p in pairs if p.product_id not in heldout_ids)
    digest = hashlib.sha256(
        json.dumps(
            [[w.variant_id, w.text] for w in winners]
            + [[p.product_id, p.chosen_text, p.rejected_text, round(p.weight, 6)] for p in pairs],
        ).encode()
    ).hexdigest()
    summary = {
        "winners": len(winners),
        "pairs": len(pairs),
        "train_winners": len(train),
        "heldout_winners": len(heldout),
        "train_pairs": len(train_pairs),
        "products": len(needed),
        "heldout_products": sorted(heldout_ids),
        "winner_ids": sorted(w.variant_id for w in winners),
        "min_exposure": cfg.min_exposure,
        "decisions_since": params.since,  # the newest model restart's time (None: all)
        "digest": digest,
    }
    return TrainingData(train, heldout, train_pairs, products, siblings, brands, summary)


def main(
    cfg: FinetuneConfig,
    sessions: sessionmaker[Session],
    settings: Settings,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Run one round (see the module docstring); records a version unless dry-run or skipped."""
    base_model = cfg.base_model or settings.generator_model
    if not base_model:
        raise FinetuneError(
            "no base model: set COPYLOOP_GENERATOR_MODEL (or FinetuneConfig.base_model)"
        )
    data = collect(sessions, cfg)
    n_winners = data.summary["winners"]
    if cfg.dry_run:
        return FinetuneResult("dry_run", f"{n_winners} winners, nothing trained", data=data.summary)
    if progress is not None:
        progress("data", n_winners, n_winners)
    if n_winners < cfg.min_winners or not data.train or not data.heldout:
        reason = f"{n_winners} winners, {cfg.min_winners} needed (and >= 2 products)"
        return FinetuneResult("skipped", reason, data=data.summary)

    import torch

    from generator.training import Trainer

    shipped = newest_shipped(sessions, base_model=base_model) or ensure_base(sessions, base_model)
    version = f"hf-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{data.summary['digest'][:6]}"
    adapter_dir = Path(cfg.output_dir) / version
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        trainer = Trainer(base_model, cfg)
        metrics: dict[str, Any] = {}
        train_examples = [
            trainer.example(data.products[w.product_id], w.style, w.text) for w in data.train
        ]
        heldout_examples = [
            trainer.example(data.products[w.product_id], w.style, w.text) for w in data.heldout
        ]
        metrics["train_nll_base"] = trainer.nll(train_examples, adapter=False)
        metrics["heldout_nll_base"] = trainer.nll(heldout_examples, adapter=False)
        sft_losses = trainer.sft(train_examples, progress)
        metrics["train_nll_sft"] = trainer.nll(train_examples, adapter=True)
        dpo_losses = trainer.dpo(
            [
                (
                    trainer.example(data.products[p.product_id], p.prompt_style, p.chosen_text),
                    trainer.example(data.products[p.product_id], p.prompt_style, p.rejected_text),
                    p.weight,
                )
                for p in data.pairs
            ],
            progress,
        )
        metrics["train_nll"] = trainer.nll(train_examples, adapter=True)
        metrics["heldout_nll"] = trainer.nll(heldout_examples, adapter=True)
        trainer.save(adapter_dir)
    metrics["sft_loss_first"], metrics["sft_loss_last"] = sft_losses[0], sft_losses[-1]
    if dpo_losses:
        metrics["dpo_loss_first"], metrics["dpo_loss_last"] = dpo_losses[0], dpo_losses[-1]
    new_q = sample_quality(base_model, version, str(adapter_dir), data, settings, cfg)
    old_q = sample_quality(
        shipped.base_model, shipped.version, shipped.adapter_path, data, settings, cfg
    )
    metrics.update({f"{k}": v for k, v in new_q.items()})
    metrics.update({f"shipped_{k}": v for k, v in old_q.items()})
    ok, reason = verdict(metrics, cfg)
    metrics = {
        k: (v if isinstance(v, int | str) or math.isfinite(v) else None) for k, v in metrics.items()
    }
    row = register(
        sessions,
        version=version,
        base_model=base_model,
        adapter_path=str(adapter_dir),
        parent=shipped.version,
        status="shipped" if ok else "rejected",
        data={**data.summary, "config": config_json(cfg)},
        metrics=metrics,
        gate_reason=reason,
    )
    return FinetuneResult(
        row.status,
        reason,
        version,
        str(adapter_dir),
        data.summary,
        metrics,
        tuple(sft_losses),
        tuple(dpo_losses),
    )


def due(
    sessions: sessionmaker[Session], settings: Settings, now: float | None = None
) -> str | None:
    """Why the scheduler should not fine-tune now (None: it should): the backend is not `hf`,
    the last round (shipped or not) is younger than `finetune_every_s`, or fewer than
    `finetune_min_winners` winners are new (absent from every earlier round's data)."""
    from generator.versions import list_versions
    from generator.winners import select_winners

    if settings.generator_backend != "hf" or not settings.generator_model:
        return "generator_backend is not hf (or no generator_model)"
    now = time.time() if now is None else now
    rounds = [v for v in list_versions(sessions) if v.adapter_path]
    if rounds:
        wait = max(v.created_at for v in rounds) + settings.finetune_every_s - now
        if wait > 0:
            return f"next round in {wait:.0f} s"
    seen = {vid for v in rounds for vid in v.data.get("winner_ids", [])}
    found = select_winners(sessions, current_params(sessions, settings.winner_min_exposure))
    new = sum(1 for w in found if w.variant_id not in seen)
    if new < settings.finetune_min_winners:
        return f"{new} new winners, {settings.finetune_min_winners} needed"
    return None


def verdict(metrics: dict[str, Any], cfg: FinetuneConfig) -> tuple[bool, str]:
    """The gate: (ships, reason). NaN anywhere fails its check. `metrics` holds the held-out
    NLLs, each version's guardrail counts (`guardrail_passed` of `guardrail_asked`, and the
    `shipped_` ones) and distinct-2; the bound of the pass-rate difference is added to it."""
    nll, base = metrics["heldout_nll"], metrics["heldout_nll_base"]
    low = pass_rate_difference_low(
        metrics["guardrail_passed"],
        metrics["guardrail_asked"],
        metrics["shipped_guardrail_passed"],
        metrics["shipped_guardrail_asked"],
    )
    metrics["guardrail_difference_low"] = low
    rate, shipped_rate = metrics["guardrail_pass"], metrics["shipped_guardrail_pass"]
    dist, shipped_dist = metrics["distinct_2"], metrics["shipped_distinct_2"]
    checks = [
        ("heldout_nll", nll < base, f"held-out NLL {nll:.4f} vs base {base:.4f}"),
        (
            "guardrail_pass",
            low > -cfg.guardrail_margin,
            f"guardrail pass {rate:.3f} vs shipped {shipped_rate:.3f}, difference >= {low:+.3f} "
            f"at 95% (margin {cfg.guardrail_margin})",
        ),
        (
            "distinct_2",
            dist >= shipped_dist - cfg.diversity_tolerance,
            f"distinct-2 {dist:.3f} vs shipped {shipped_dist:.3f} "
            f"(tolerance {cfg.diversity_tolerance})",
        ),
    ]
    failed = [name for name, ok, _ in checks if not ok]
    head = "shipped" if not failed else "rejected: " + ", ".join(failed)
    return not failed, f"{head} ({'; '.join(text for _, _, text in checks)})"


def pass_rate_difference_low(
    passed: int, asked: int, passed_ref: int, asked_ref: int, confidence: float = 0.95
) -> float:
    """One-sided `confidence` lower bound of ``passed/asked − passed_ref/asked_ref``: Newcombe's
    hybrid score interval (method 10) from two Wilson intervals; -1 when either side is empty.

    >>> round(pass_rate_difference_low(40, 50, 40, 50), 3)
    -0.132
    >>> round(pass_rate_difference_low(400, 500, 400, 500), 3)
    -0.042
    >>> pass_rate_difference_low(1, 0, 0, 10)
    -1.0
    """
    from scipy.stats import binomtest

    if asked < 1 or asked_ref < 1:
        return -1.0
    two_sided = 1.0 - 2.0 * (1.0 - confidence)
    p, q = passed / asked, passed_ref / asked_ref
    low_p = binomtest(passed, asked).proportion_ci(two_sided, method="wilson").low
    high_q = binomtest(passed_ref, asked_ref).proportion_ci(two_sided, method="wilson").high
    return (p - q) - math.sqrt((p - low_p) ** 2 + (high_q - q) ** 2)


def sample_quality(
    model_path: str,
    version: str,
    adapter_path: str | None,
    data: TrainingData,
    settings: Settings,
    cfg: FinetuneConfig,
) -> dict[str, float]:
    """Sample `gate_samples` texts per (held-out product, style) from one version and measure
    them: `guardrail_passed` of `guardrail_asked` (empty or duplicate outputs fail),
    `guardrail_pass` (their ratio) and `distinct_2` (unique word bigrams / bigrams)."""
    from generator.facts import FactSheet
    from generator.guardrails import GuardrailParams, check
    from generator.hf import GenerationRequest, HFGenerator
    from generator.rules import STYLES

    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        generator = HFGenerator.from_settings(
            model_path,
            settings,
            version=version,
            adapter_path=adapter_path,
            seed=cfg.seed,
            **({"max_new_tokens": cfg.gate_max_new_tokens} if cfg.gate_max_new_tokens else {}),
        )
    heldout = sorted({w.product_id for w in data.heldout})
    requests = [
        GenerationRequest(data.products[pid], STYLES, cfg.gate_samples * len(STYLES))
        for pid in heldout
    ]
    result = generator.generate_many(requests)
    params = GuardrailParams.from_settings(settings, known_brands=data.brands)
    asked = sum(r.n for r in requests)
    passed, texts = 0, []
    for request, candidates in zip(requests, result.candidates, strict=True):
        siblings = data.siblings.get(request.product.product_id, {})
        facts = FactSheet.of(request.product)
        for c in candidates:
            texts.append(c.text)
            passed += check(c.text, facts, siblings, params).ok
    return {
        "guardrail_passed": passed,
        "guardrail_asked": asked,
        "guardrail_pass": passed / asked if asked else 0.0,
        "distinct_2": distinct_n(texts, 2),
        "samples": float(len(texts)),
    }


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all n-grams of `texts` (0 when there are none).

    >>> distinct_n(["a b c", "a b d"], 2)
    0.75
    """
    grams = [
        tuple(words[i : i + n])
        for words in (t.lower().split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


__all__ = [
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "TrainingData",
    "collect",
    "config_from_settings",
    "due",
    "distinct_n",
    "main",
    "parse_overrides",
    "pass_rate_difference_low",
    "sample_quality",
    "split_heldout",
    "verdict",
]
