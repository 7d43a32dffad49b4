"""The style gates of STYLE.md run with the suite: ruff on everything, mypy --strict on the
packages. A lint or type regression fails CI like any other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "copyloop_client",
    "core",
    "bandit",
    "reports",
    "generator",
    "consumer",
    "api",
    "copyloop",
]

pytestmark = pytest.mark.timeout(900)


def test_ruff_is_clean() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-4000:]


def test_mypy_strict_is_clean() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", *PACKAGES],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-4000:]
