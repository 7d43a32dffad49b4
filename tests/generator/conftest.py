"""Generator fixtures: tiny transformers models built offline from the sample catalog's texts
(once per test session), for the `hf` backend's tests and the fine-tuning tests."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog
from generator.tiny import spread_pairs


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models run faster on one intra-op thread: the CI machine's two cores are shared
    with other processes, and two torch threads fighting over them ran ~10x slower."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


def _texts() -> list[str]:
    from generator.tiny import catalog_texts

    return catalog_texts(read_catalog(SAMPLE_CATALOG))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT-2 with a BPE tokenizer trained on the catalog (has a chat template)."""
    pytest.importorskip("transformers")
    from generator.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), _texts(), seed=0)


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny T5 with a BPE tokenizer trained on the catalog (no chat template)."""
    pytest.importorskip("transformers")
    from generator.tiny import build_tiny_seq2seq

    return build_tiny_seq2seq(tmp_path_factory.mktemp("tiny-seq2seq"), _texts(), seed=0)


#: The products the warm tiny model is distilled on: 8 families of two (a 5.5 qt and a 3.5 qt
#: Dutch oven …) spread over the sample catalog.
WARM_PRODUCTS = spread_pairs(read_catalog(SAMPLE_CATALOG), 16)
WARM_STEPS = 300
#: It is taught every style but `technical`: spec sheets are what it can learn from winners.
WARM_STYLES = ("concise", "bullets", "benefit", "story")


@dataclass(frozen=True)
class WarmModel:
    path: Path
    losses: list[float]
    products: list[ProductIn]


@pytest.fixture(scope="session")
def warm_tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> WarmModel:
    """A tiny GPT-2 distilled from the rules backend on WARM_PRODUCTS in WARM_STYLES (≈1.5 min
    on two CPU threads, the one place the tests use both cores): it writes copy for those
    products that often passes the guardrails, except spec sheets, which it never saw."""
    pytest.importorskip("transformers")
    import torch

    from generator.tiny import build_warm_tiny_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path, losses = build_warm_tiny_lm(
            tmp_path_factory.mktemp("warm-causal"),
            WARM_PRODUCTS,
            styles=WARM_STYLES,
            steps=WARM_STEPS,
            seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    return WarmModel(path, losses, WARM_PRODUCTS)
