"""Coverage of the report's intervals over simulated experiments with known truth
(`reports.simulate`, the same functions `tests/reports/test_coverage.py` asserts on), as one
table for BENCHMARKS.md: interval type, metric, coverage, target, number of experiments and the
binomial standard deviation of the coverage at that number. The baselines sit in the same
table, measured in the same run on the same draws: the normal per-variant intervals the score
intervals replaced, fixed intervals watched after every batch, IPS/SNIPS and the context-free
DR for the off-policy errors.

    .venv/bin/python bench/coverage.py                      # the suite's sizes
    .venv/bin/python bench/coverage.py --scale 2 --seed 7   # twice the experiments, other draws
    .venv/bin/python bench/coverage.py --json bench/results/coverage.json

Deterministic for a seed; takes ~10 s at scale 1 on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import loadavg

from reports import simulate
from reports.simulate import Coverage


def row(c: Coverage) -> dict[str, Any]:
    extra = {k: round(float(v), 4) for k, v in c.extra.items()}
    return {
        "interval": c.interval,
        "metric": c.metric,
        "coverage": round(c.coverage, 4),
        "target": c.target,
        "experiments": c.experiments,
        "sd": round(c.sd, 4),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every experiment count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    def n(x: int) -> int:
        return max(int(x * args.scale), 10)

    started = time.perf_counter()
    print(f"load before: {loadavg()}")
    rows: list[dict[str, Any]] = []
    for metric in simulate.METRICS:
        decisions = 40_000 if metric == "revenue_per_impression" else 20_000
        plain, cuped = simulate.fixed_and_cuped(metric, n(1200), decisions, seed=args.seed)
        rows += [row(plain), row(cuped)]
    for spread in (0.0, 1.0):
        _, cuped = simulate.fixed_and_cuped("ctr", n(400), 20_000, spread=spread, seed=args.seed)
        rows.append(row(cuped))
    for metric in simulate.METRICS:
        batch = 4000 if metric == "revenue_per_impression" else 1000
        rows += [row(c) for c in simulate.sequential(metric, n(400), 30, batch, seed=args.seed)]
    rows += [row(c) for c in simulate.variant_rates(n(300), 2000, 8, seed=args.seed)]
    ope = simulate.ope_errors(n(200), 3000, seed=args.seed)
    elapsed = time.perf_counter() - started

    print(f"{'interval':36} {'metric':24} {'coverage':>8} {'target':>6} {'n':>6} {'sd':>6}  extra")
    for r in rows:
        extra = {
            k: v
            for k, v in r.items()
            if k not in ("interval", "metric", "coverage", "target", "experiments", "sd")
        }
        print(
            f"{r['interval']:36} {r['metric']:24} {r['coverage']:8.4f} {r['target']:6.2f} "
            f"{r['experiments']:6d} {r['sd']:6.4f}  {extra}"
        )
    base = ope.rmse["snips"]
    print(f"\noff-policy error over {ope.experiments} logs (context sets the reward level):")
    print(f"{'estimator':18} {'rmse':>8} {'ratio to snips':>15} {'interval coverage':>18}")
    for name, rmse in ope.rmse.items():
        cov = ope.coverage[name].coverage
        print(f"{name:18} {rmse:8.5f} {rmse / base:15.3f} {cov:18.3f}")
    print(f"\n{elapsed:.1f} s; load after: {loadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "seed": args.seed,
            "scale": args.scale,
            "rows": rows,
            "ope_rmse": ope.rmse,
            "ope_coverage": {k: v.coverage for k, v in ope.coverage.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
