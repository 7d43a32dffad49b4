"""Model snapshots at a catalog's size: how long the learner takes to write one, how long each
API worker takes to load it, and how long a serving thread waits meanwhile.

A `Policy` with the settings' VW arguments and counts for `--variants` variants (exposure,
offered, residual: what a model that has served them all carries) is written with
`Policy.save` and loaded with `Policy(model=…)`, as the learner and each API worker's reloader
do, in a process with an API worker's garbage-collector settings (`core.runtime.tune_gc`).
Meanwhile another thread ticks every millisecond, as the event loop's requests would; its
longest wait is how long a page view can stall behind a reload.

- **copyloop**: the model file as written now (`bandit.model_file`, `CLVW2`: counts in a binary
  block).
- **baseline**: the same header with its counts in the JSON line (`CLVW1`, how every model file
  was written before `CLVW2`, still read).

The next snapshot (`--decisions` learned since: each offered 5 variants of one product and
served one of them, and one product got 5 new variants) is then loaded as a worker's reloader
does, with the policy it replaces (`Policy(model=…, previous=…)`: the counts read as a change
of the previous file's), against a full read of the same file (baseline).

    .venv/bin/python bench/model_file.py --variants 1500,50000

Writes `bench/results/model_file.json` (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit import Policy  # noqa: E402
from bandit.model_file import MAGIC_JSON, ModelHeader, unpack  # noqa: E402
from core.runtime import tune_gc  # noqa: E402
from core.settings import load_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_file.json"


def policy_with(variants: int, seed: int = 1) -> Policy:
    rng = random.Random(seed)
    policy = Policy(load_settings().vw_args)
    ids = [f"v_{rng.getrandbits(64):016x}" for _ in range(variants)]
    policy.learned = 40 * variants
    policy.exposure = {v: rng.randint(1, 10_000) for v in ids}
    policy.offered = {v: policy.exposure[v] + rng.randint(0, 50_000) for v in ids}
    policy.residual = {
        v: (rng.uniform(-5, 5), rng.uniform(0, 50), float(rng.randint(1, 300))) for v in ids
    }
    return policy


def save_as_json(policy: Policy, header: ModelHeader) -> bytes:
    """`Policy.save` as it wrote model files before `CLVW2`: VW's model behind `header` (the
    policy's, read back from its own file once) with the counts in the JSON line."""
    line = json.dumps(header.to_json(), separators=(",", ":"), sort_keys=True).encode()
    return MAGIC_JSON + line + b"\n" + policy.vw_model()


def stalled(work: Callable[[], Any]) -> tuple[float, float]:
    """(seconds `work` took, the longest a 1 ms ticker thread waited meanwhile, in seconds)."""
    worst = 0.0
    done = threading.Event()

    def tick() -> None:
        nonlocal worst
        before = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - before - 0.001)
            before = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    start = time.perf_counter()
    work()
    took = time.perf_counter() - start
    time.sleep(0.02)
    done.set()
    ticker.join()
    return took, worst


def learned_more(policy: Policy, decisions: int, seed: int = 2) -> Policy:
    """`policy` after `decisions` more learned decisions (its counts only, on a copy): each
    offered the 5 variants of one product (consecutive ids) and served one; one product got 5
    new variants."""
    rng = random.Random(seed)
    ids = list(policy.exposure)
    nxt = Policy(policy.vw_args)
    nxt.learned = policy.learned + decisions
    nxt.exposure, nxt.offered = dict(policy.exposure), dict(policy.offered)
    nxt.residual = dict(policy.residual)
    for _ in range(decisions if len(ids) > 5 else 0):
        start = rng.randrange(0, len(ids) - 5)
        for v in ids[start : start + 5]:
            nxt.offered[v] += 1
        served = ids[start + rng.randrange(5)]
        nxt.exposure[served] += 1
        total, squares, weight = nxt.residual[served]
        r = rng.uniform(-1, 1)
        nxt.residual[served] = (0.99 * total + r, 0.99 * squares + r * r, 0.99 * weight + 1)
    new = f"v_{rng.getrandbits(64):016x}"
    for i in range(5):
        nxt.exposure[f"{new}{i}"], nxt.offered[f"{new}{i}"] = 1, 1
        nxt.residual[f"{new}{i}"] = (0.5, 0.25, 1.0)
    return nxt


def measure(variants: int, rounds: int, decisions: int) -> dict[str, Any]:
    policy = policy_with(variants)
    vw_args = policy.vw_args
    new = policy.save()
    header, _ = unpack(new)
    assert header is not None
    old = save_as_json(policy, header)
    assert Policy(vw_args, model=new).exposure == Policy(vw_args, model=old).exposure
    out: dict[str, list[float]] = {}
    for _ in range(rounds):  # alternating, so both see the same spells of the machine
        for name, write in (
            ("copyloop", policy.save),
            ("baseline", functools.partial(save_as_json, policy, header)),
        ):
            start = time.perf_counter()
            write()
            out.setdefault(f"{name}_write_ms", []).append((time.perf_counter() - start) * 1e3)
        for name, data in (("copyloop", new), ("baseline", old)):
            took, worst = stalled(functools.partial(Policy, vw_args, model=data))
            out.setdefault(f"{name}_load_ms", []).append(took * 1e3)
            out.setdefault(f"{name}_stall_ms", []).append(worst * 1e3)
    loaded = Policy(vw_args, model=new)
    following = learned_more(policy, decisions).save()
    assert Policy(vw_args, model=following, previous=loaded).residual == (
        Policy(vw_args, model=following).residual
    )
    for _ in range(rounds):
        for name, previous in (("copyloop", loaded), ("baseline", None)):
            load = functools.partial(Policy, vw_args, model=following, previous=previous)
            took, worst = stalled(load)
            out.setdefault(f"{name}_next_ms", []).append(took * 1e3)
            out.setdefault(f"{name}_next_stall_ms", []).append(worst * 1e3)
    res: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in out.items()}
    res.update(variants=variants, bytes=len(new), baseline_bytes=len(old))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="1500,50000", help="catalog sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--decisions", type=int, default=2000, help="learned between two snapshots (one second)"
    )
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    tune_gc()  # as in an API worker (`api.server`)
    print(f"# model file bench: load={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'variants':>9} {'figure':<34} {'copyloop':>9} {'baseline':>9} {'ratio':>6}")
    results = []
    for variants in (int(v) for v in args.variants.split(",")):
        r = measure(variants, args.rounds, args.decisions)
        results.append(r)
        for key, label in (
            ("write_ms", "learner writes a snapshot, ms"),
            ("load_ms", "a worker loads it, ms"),
            ("stall_ms", "longest 1 ms tick meanwhile, ms"),
            ("next_ms", "it loads the next one, ms"),
            ("next_stall_ms", "longest 1 ms tick meanwhile, ms"),
        ):
            mine, base = r[f"copyloop_{key}"], r[f"baseline_{key}"]
            print(f"{variants:>9} {label:<34} {mine:>9} {base:>9} {mine / base:>6.2f}")
        print(f"{variants:>9} {'file size, bytes':<34} {r['bytes']:>9} {r['baseline_bytes']:>9}")
    print(f"# done; load={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
