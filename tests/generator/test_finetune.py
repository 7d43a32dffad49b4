"""A fine-tuning round on a real ledger with a real tiny GPT-2: the adapter trains, the loss on
the winners falls, a version is recorded and shipped; trained on garbage, the gate refuses it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from sqlalchemy.orm import Session, sessionmaker

from copyloop.catalog import ProductIn, read_catalog
from copyloop.settings import Settings
from generator.finetune import FinetuneConfig, main, split_heldout
from generator.rules import STYLES, RulesGenerator
from generator.versions import list_versions, newest_shipped
from tests.conftest import SAMPLE_CATALOG
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
        "sft_steps": 30,
        "dpo_steps": 10,
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
    print(result.reason, result.metrics)
    assert result.data["winners"] == N_PRODUCTS and result.data["heldout_winners"] == 2
    m = result.metrics
    assert m["train_nll"] < m["train_nll_base"] - 0.5  # the loss on the winners fell
    assert result.sft_losses[-1] < result.sft_losses[0]
    assert result.dpo_losses and result.dpo_losses[-1] < result.dpo_losses[0]
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
    print(result.reason, result.metrics)
    assert result.status == "rejected"
    assert result.reason.startswith("rejected: heldout_nll")
    assert result.metrics["heldout_nll"] > result.metrics["heldout_nll_base"]
    assert result.metrics["train_nll"] < result.metrics["train_nll_base"]  # it did learn
    rows = {v.version: v for v in list_versions(sessions)}
    assert rows[result.version].status == "rejected"
    current = newest_shipped(sessions)
    assert current is not None and current.version.startswith("hf-base-")
