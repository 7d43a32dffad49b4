"""core.runtime: the services' collector settings, checked in a fresh interpreter (freezing
the collector of the test process would change it for every test after this one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import gc, json
from core.runtime import GC_THRESHOLDS, tune_gc
before = gc.get_freeze_count()
tune_gc()
cycle = []
cycle.append(cycle)  # garbage made after start-up is still collected
del cycle
print(json.dumps({
    "before": before,
    "frozen": gc.get_freeze_count(),
    "thresholds": list(gc.get_threshold()),
    "wanted": list(GC_THRESHOLDS),
    "collected": gc.collect(),
}))
"""


def test_tune_gc_freezes_start_up_state_and_still_collects_new_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout)
    # the modules imported so far, at least (CPython 3.12 starts with a few hundred frozen)
    assert seen["frozen"] > seen["before"] + 1000
    assert seen["thresholds"] == seen["wanted"]
    assert seen["collected"] >= 1
