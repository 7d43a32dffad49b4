"""Generator fixtures: tiny transformers models built offline from the sample catalog's texts
(once per test session), for the `hf` backend's tests and part B's fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from copyloop.catalog import read_catalog
from tests.conftest import SAMPLE_CATALOG


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
