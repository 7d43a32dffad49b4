"""A fine-tuning round on a real ledger with a real tiny GPT-2: the adapter trains, the loss on
the winners falls, a version is recorded and shipped; trained on garbage, the gate refuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog
from core.ledger import Variant
from core.settings import Settings
from generator.finetune import (
    FinetuneConfig,
    FinetuneError,
    config_from_settings,
    due,
    main,
    parse_overrides,
    pass_rate_difference_low,
    split_heldout,
    verdict,
)
from generator.jobs import generate_variants
from generator.rules import STYLES, RulesGenerator
from generator.versions import base_version_name, list_versions, newest_shipped, rollback
from tests.generator.synthetic import Ledger

SettingsFactory = Callable[..., Settings]
N_PRODUCTS = 8
SEED = 0


def garbage(rng: np.random.Generator) -> str:
    """Random lowercase 'words': text no product description resembles."""
    return " ".join(
        "".join(rng.choice(list("qxzjvkwy"), size=int(rng.integers(3, 8)))) for _ in range(12)
    )


def build_ledger(
    sessions: sessionmaker[Session], *, garbage_for_training: bool = False
) -> list[ProductIn]:
    """N_PRODUCTS products, each with one clear winner (true reward 0.45 vs 0.10 for the
    control and two losers), 1,000 uniformly logged decisions each."""
    products = read_catalog(SAMPLE_CATALOG)[::16][:N_PRODUCTS]
    heldout = split_heldout([p.product_id for p in products], 0.25, SEED)
    ledger = Ledger(sessions, seed=11)
    rules = RulesGenerator(seed=0)
    rng = np.random.default_rng(5)
    for product in products:
        cands = rules.generate(product, STYLES[:3], 3)
        texts = [(c.style, c.text) for c in cands]
        if garbage_for_training and product.product_id not in heldout:
            texts[0] = (texts[0][0], garbage(rng))
        arms = ledger.product(product, texts)
        truth = dict.fromkeys(arms, 0.10) | {arms[1]: 0.45}
        ledger.serve(product.product_id, arms, 1000, [0.25] * 4, truth)
    return products


def config(tmp_path: Path, model: Path, **overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "base_model": str(model),
        "output_dir": str(tmp_path / "adapters"),
        "sft_steps": 20,
        "dpo_steps": 5,
        "max_length": 384,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "target_modules": ("c_attn", "c_proj", "c_fc"),
        "seed": SEED,
        "gate_max_new_tokens": 24,
    }
    values.update(overrides)
    return FinetuneConfig(**values)  # type: ignore[arg-type]


def test_a_round_trains_the_adapter_lowers_the_winner_loss_and_ships(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    tiny_causal_lm: Path,
    tmp_path: Path,
) -> None:
    build_ledger(sessions)
    settings = make_settings(generator_backend="hf", generator_model=str(tiny_causal_lm))
    result = main(config(tmp_path, tiny_causal_lm), sessions, settings)
    assert result.data["winners"] == N_PRODUCTS and result.data["heldout_winners"] == 2
    m = result.metrics
    assert m["train_nll"] < m["train_nll_base"] - 0.2  # the loss on the winners fell (≈0.36)
    assert result.sft_losses[-1] < result.sft_losses[0]
    assert len(result.dpo_losses) == 5 and all(0 < x < 5 for x in result.dpo_losses)
    # the adapter's B matrices start at zero: any non-zero one has been trained
    weights = load_file(str(Path(result.adapter_path) / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(float(t.abs().max()) > 0 for t in lora_b)
    assert result.status == "shipped", result.reason
    current = newest_shipped(sessions)
    assert current is not None and current.version == result.version
    assert current.adapter_path == result.adapter_path and current.parent.startswith("hf-base-")
    assert current.data["digest"] == result.data["digest"] and current.gate_reason == result.reason


def test_the_gate_refuses_an_adapter_trained_on_garbage(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    tiny_causal_lm: Path,
    tmp_path: Path,
) -> None:
    build_ledger(sessions, garbage_for_training=True)
    settings = make_settings(generator_backend="hf", generator_model=str(tiny_causal_lm))
    result = main(config(tmp_path, tiny_causal_lm), sessions, settings)
    assert result.status == "rejected"
    assert result.reason.startswith("rejected: heldout_nll")
    assert result.metrics["heldout_nll"] > result.metrics["heldout_nll_base"]
    assert result.metrics["train_nll"] < result.metrics["train_nll_base"]  # it did learn
    rows = {v.version: v for v in list_versions(sessions)}
    assert rows[result.version].status == "rejected"
    current = newest_shipped(sessions)
    assert current is not None and current.version.startswith("hf-base-")


def llm_versions(sessions: sessionmaker[Session], product_id: str) -> set[str]:
    with sessions() as s:
        return set(
            s.scalars(
                select(Variant.generator_version).where(
                    Variant.product_id == product_id, Variant.source == "llm"
                )
            )
        )


def test_rollback_end_to_end_variants_carry_the_current_version(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    tiny_causal_lm: Path,
    tmp_path: Path,
) -> None:
    products = build_ledger(sessions)
    model = str(tiny_causal_lm)
    settings = make_settings(
        generator_backend="hf", generator_model=model, max_variant_chars=90, finetune_min_winners=4
    )
    assert due(sessions, settings) is None  # 8 new winners, no round yet
    result = main(config(tmp_path, tiny_causal_lm), sessions, settings)
    assert result.status == "shipped", result.reason
    assert due(sessions, settings).startswith("next round in ")  # type: ignore[union-attr]
    later = time.time() + settings.finetune_every_s + 1
    assert due(sessions, settings, now=later) == "0 new winners, 4 needed"

    def generate_for(product: ProductIn) -> set[str]:
        generate_variants(sessions, settings, product_ids=[product.product_id], per_product=4)
        return llm_versions(sessions, product.product_id)

    assert generate_for(products[0]) == {result.version}
    base = rollback(sessions, base_model=model)
    assert base.version == base_version_name(model) and base.adapter_path is None
    assert generate_for(products[1]) == {base.version}
    assert rollback(sessions, to=result.version, base_model=model).version == result.version
    assert generate_for(products[2]) == {result.version}


def test_dry_run_collects_and_trains_nothing(
    database_url: str, sessions: sessionmaker[Session], tiny_causal_lm: Path, tmp_path: Path
) -> None:
    build_ledger(sessions)
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": database_url,
        "COPYLOOP_GENERATOR_MODEL": str(tiny_causal_lm),
        "COPYLOOP_FINETUNE_OUTPUT_DIR": str(tmp_path / "out"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "copyloop", "finetune", "--dry-run", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dry_run: 8 winners, nothing trained")
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["status"] == "dry_run" and summary["version"] is None
    assert summary["data"]["winners"] == 8 and summary["data"]["heldout_winners"] == 2
    assert summary["data"]["pairs"] == 8 * 3  # each winner beat the control and two losers
    assert list_versions(sessions) == [] and not (tmp_path / "out").exists()


def test_no_base_model_and_bad_config_are_refused(
    sessions: sessionmaker[Session], make_settings: SettingsFactory
) -> None:
    with pytest.raises(FinetuneError, match=r"^no base model: set COPYLOOP_GENERATOR_MODEL"):
        main(FinetuneConfig(), sessions, make_settings())
    with pytest.raises(ValueError, match=r"^heldout_fraction must be in \(0, 1\), got 1.0$"):
        FinetuneConfig(heldout_fraction=1.0)
    with pytest.raises(ValueError, match=r"^min_winners must be >= 2, got 1$"):
        FinetuneConfig(min_winners=1)


GOOD = {
    "heldout_nll": 5.0,
    "heldout_nll_base": 6.0,
    "guardrail_passed": 400,
    "guardrail_asked": 500,
    "guardrail_pass": 0.8,
    "shipped_guardrail_passed": 400,
    "shipped_guardrail_asked": 500,
    "shipped_guardrail_pass": 0.8,
    "distinct_2": 0.8,
    "shipped_distinct_2": 0.82,
}


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({}, None),  # equal rates on 500 samples each: the bound (-0.042) clears the margin
        ({"heldout_nll": 6.0}, "heldout_nll"),  # equal is not an improvement
        ({"heldout_nll": float("nan")}, "heldout_nll"),
        # equal rates on 50 samples each cannot rule out a drop of 0.05 (bound -0.13)
        ({"guardrail_passed": 40, "guardrail_asked": 50}, "guardrail_pass"),
        ({"guardrail_passed": 380, "guardrail_pass": 0.76}, "guardrail_pass"),
        ({"guardrail_passed": 0, "guardrail_asked": 0}, "guardrail_pass"),
        ({"distinct_2": 0.70}, "distinct_2"),
        ({"distinct_2": 0.2, "guardrail_passed": 200}, "guardrail_pass, distinct_2"),
    ],
)
def test_the_gate_verdict(change: dict[str, float], failed: str | None) -> None:
    metrics = GOOD | change
    ok, reason = verdict(metrics, FinetuneConfig(diversity_tolerance=0.05, guardrail_margin=0.05))
    assert ok is (failed is None)
    assert reason.startswith("shipped (" if failed is None else f"rejected: {failed} (")
    assert "difference >= " in reason and "at 95% (margin 0.05)" in reason
    assert metrics["guardrail_difference_low"] <= metrics["guardrail_pass"] - 0.8


def test_the_pass_rate_bound_covers_at_its_level() -> None:
    """Equal true pass rates: the one-sided 95% lower bound of the difference is above 0 in
    about 5% of seeded experiments (Newcombe's interval is close to nominal, a bit wide)."""
    rng = np.random.default_rng(3)
    n, p, runs = 120, 0.6, 2000
    new, old = rng.binomial(n, p, runs), rng.binomial(n, p, runs)
    above = np.mean(
        [pass_rate_difference_low(int(a), n, int(b), n) > 0 for a, b in zip(new, old, strict=True)]
    )
    assert 0.02 <= above <= 0.06, above


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--set", "epochs=3"], 2, "unknown finetune setting 'epochs' (known: base_model"),
        (["--set", "sft_steps=many"], 2, "finetune setting sft_steps takes a int, got 'many'"),
        (["--set", "sft_steps"], 2, "--set takes KEY=VALUE, got 'sft_steps'"),
        (["--set", "lora_r=0"], 2, "lora_r must be >= 1, got 0"),
        ([], 2, "no base model: set COPYLOOP_GENERATOR_MODEL"),
    ],
)
def test_cli_finetune_refuses_bad_settings_with_its_exit_code(
    database_url: str, args: list[str], code: int, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COPYLOOP_GENERATOR_MODEL"}
    env["COPYLOOP_DATABASE_URL"] = database_url
    out = subprocess.run(
        [sys.executable, "-m", "copyloop", "finetune", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in " ".join(out.stderr.split())


def test_parse_overrides_types_every_kind() -> None:
    assert parse_overrides(["gate_max_new_tokens=none", "lora_dropout=0.1"]) == {
        "gate_max_new_tokens": None,
        "lora_dropout": 0.1,
    }
    assert parse_overrides(["base-model=/m", "seed=3"]) == {"base_model": "/m", "seed": 3}
    with pytest.raises(ValueError, match=r"^unknown finetune setting 'dry_run'"):
        parse_overrides(["dry_run=true"])


def test_settings_carry_the_training_knobs_and_the_cli_wins(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        generator_model="/m", finetune_options="sft_steps=7 target_modules=c_attn,c_fc lora_r=4"
    )
    cfg = config_from_settings(settings, **parse_overrides(["lora_r=2"]))
    assert (cfg.sft_steps, cfg.target_modules, cfg.lora_r, cfg.base_model) == (
        7,
        ("c_attn", "c_fc"),
        2,
        "/m",
    )
    with pytest.raises(ValueError, match=r"^unknown finetune setting 'epochs'"):
        config_from_settings(make_settings(finetune_options="epochs=3"))
