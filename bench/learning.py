"""How well does copyloop learn which copy sells? The simulator suite against every baseline.

For each scenario of `copyloop.sim.shoppers.SCENARIOS` and each seed, one world (shoppers with a
known truth, over sample-catalog products with their rules variants) is played once per server:
copyloop's real serving and learning code (`copyloop.sim.server`) and the baselines
(`copyloop.sim.baselines`: uniform, per-product ε-greedy, per-product Beta Thompson sampling,
per-(product, device, segment) Thompson sampling, LinUCB on copyloop's own features, the oracle),
all with the same page views, the same reward delays and the same snapshot/reload cadence.

Printed per scenario: each server's share of the oracle's expected reward over the second half of
the run (mean over seeds and a 95 % t-interval), the whole run's share, and the ratio to
per-product Thompson sampling (the baseline). In `new_variants`, the share each new variant took
of its product's decisions 401-500 after it arrived (2x better ones should take most, 0.5x ones
little). `--curve` adds each server's share per 1,000 decisions. `copyloop_restart` (not run
by default) is copyloop with an operator who runs `copyloop model restart` the moment the tastes
change (`drift`). Results go to `bench/results/learning.json`.

    .venv/bin/python bench/learning.py                                  # every scenario, 5 seeds
    .venv/bin/python bench/learning.py --scenarios context_text --servers copyloop,thompson
    .venv/bin/python bench/learning.py --set bandit_explorer="--epsilon 0.05"   # try a setting
    .venv/bin/python bench/learning.py --scenarios drift --servers copyloop,copyloop_restart --curve
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# One BLAS thread: the runs are deterministic and leave the other core to the rest.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyloop.sim.baselines import (  # noqa: E402
    BaselineServer,
    BetaThompson,
    EpsilonGreedy,
    LinUCB,
    Oracle,
    Uniform,
)
from copyloop.sim.engine import NewVariant, Simulation, Timing  # noqa: E402
from copyloop.sim.server import CopyloopServer, LedgerTemplate  # noqa: E402
from copyloop.sim.shoppers import SCENARIOS, Scenario, World  # noqa: E402
from core.catalog import ProductIn  # noqa: E402
from core.settings import Settings  # noqa: E402
from generator.guardrails import GuardrailParams, check  # noqa: E402
from generator.rules import STYLES, RulesGenerator  # noqa: E402

SERVERS = ("copyloop", "uniform", "egreedy", "thompson", "thompson_ctx", "linucb", "oracle")
#: Known but not run by default: copyloop with an operator who runs `copyloop model restart`
#: the moment the tastes change (`drift`; elsewhere the same as copyloop).
EXTRA_SERVERS = ("copyloop_restart",)
RESULTS = Path(__file__).resolve().parent / "results" / "learning.json"
#: Decisions per point of the learning curve (`--curve`).
CURVE_WINDOW = 1000


def new_variants(
    world: World,
    products: Sequence[ProductIn],
    catalog: Mapping[str, Sequence[tuple[str, str, str]]],
    count: int,
) -> list[NewVariant]:
    """New copy for the `count` busiest products, alternating 2x their best variant and 0.5x
    their worst (`shoppers.Arm.boost`): a rules
    text in another round (so it *looks* like its siblings: only its own results tell it apart)
    that passes the guardrails against them."""
    busiest = np.argsort(-world.traffic)[:count]
    params = GuardrailParams()
    out = []
    for rank, index in enumerate(busiest):
        product = products[int(index)]
        siblings = [text for _, text, _ in catalog[product.product_id]]
        text = style = None
        for seed in range(1, 30):
            for c in RulesGenerator(seed=seed).generate(product, STYLES, len(STYLES) * 2):
                if check(c.text, product, siblings, params).ok:
                    text, style = c.text, c.style
                    break
            if text is not None:
                break
        if text is None or style is None:
            continue
        out.append(NewVariant(int(index), text, style, 2.0 if rank % 2 == 0 else 0.5))
    return out


def make_server(
    name: str,
    template: LedgerTemplate,
    catalog: Mapping[str, Sequence[tuple[str, str, str]]],
    categories: Mapping[str, str],
    timing: Timing,
    settings: Settings,
    seed: int,
    overrides: Mapping[str, Any],
    best: Callable[[str, Mapping[str, str], Sequence[str]], int],
) -> Any:
    weights = settings.reward_weights
    max_reward = sum(weights.values())
    if name in ("copyloop", "copyloop_restart"):
        return CopyloopServer(template, timing, seed, **overrides)
    policy: Any
    if name == "uniform":
        policy = Uniform(seed)
    elif name == "egreedy":
        policy = EpsilonGreedy(seed)
    elif name == "thompson":
        policy = BetaThompson(seed, max_reward)
    elif name == "thompson_ctx":
        policy = BetaThompson(
            seed, max_reward, key=lambda p, c: (p, c.get("device"), c.get("segment"))
        )
    elif name == "linucb":
        policy = LinUCB(catalog, categories, settings.bandit_interactions)
    elif name == "oracle":
        policy = Oracle(best)
    else:
        raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVERS + EXTRA_SERVERS)}")
    return BaselineServer(name, policy, catalog, timing, weights)


def run_one(
    scenario: Scenario,
    server_name: str,
    seed: int,
    template: LedgerTemplate,
    timing: Timing,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    catalog = template.catalog()
    products = template.products
    categories = {p.product_id: p.category for p in products}
    world = World(scenario, [p.category for p in products], seed)
    settings = Settings(**{k: v for k, v in overrides.items()})  # type: ignore[arg-type]
    arrivals = (
        new_variants(world, products, catalog, scenario.new_variant_products)
        if scenario.new_variants_at is not None
        else []
    )
    holder: dict[str, Simulation] = {}
    index = {p.product_id: i for i, p in enumerate(products)}

    def best(pid: str, context: Mapping[str, str], actions: Sequence[str]) -> int:
        sim = holder["sim"]
        arms = [sim.arms[a] for a in actions]
        return int(np.argmax(sim.world.expected_reward(index[pid], context, arms, sim.weights)))

    server = make_server(
        server_name, template, catalog, categories, timing, settings, seed, overrides, best
    )
    sim = Simulation(
        world,
        server,
        catalog,
        [p.product_id for p in products],
        seed=seed,
        timing=timing,
        reward_weights=settings.reward_weights,
        new_variants=arrivals,
        on_drift=server.restart if server_name == "copyloop_restart" else None,
    )
    holder["sim"] = sim
    started = time.perf_counter()
    try:
        outcome = sim.run()
    finally:
        server.close()
    shares = outcome.new_variant_shares()
    boosts = {vid: sim.arms[vid].boost for vid in shares}
    return {
        "scenario": scenario.name,
        "server": server_name,
        "seed": seed,
        "second_half": outcome.share_of_oracle(0.5),
        "whole_run": outcome.share_of_oracle(0.0),
        "uniform_second_half": outcome.uniform_share(0.5),
        "curve": outcome.windows(CURVE_WINDOW),
        "new_variant_shares": [
            {"variant_id": vid, "boost": boosts[vid], "share_401_500": s}
            for vid, s in shares.items()
        ],
        "seconds": time.perf_counter() - started,
    }


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarise(runs: Sequence[dict[str, Any]], baseline: str = "thompson") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        rows = {}
        base = [
            r["second_half"] for r in runs if r["scenario"] == scenario and r["server"] == baseline
        ]
        base_mean = float(np.mean(base)) if base else float("nan")
        for server in dict.fromkeys(r["server"] for r in runs if r["scenario"] == scenario):
            mine = [r for r in runs if r["scenario"] == scenario and r["server"] == server]
            mean, low, high = interval([r["second_half"] for r in mine])
            whole = interval([r["whole_run"] for r in mine])
            new = [s for r in mine for s in r["new_variant_shares"]]
            rows[server] = {
                "second_half": mean,
                "ci_low": low,
                "ci_high": high,
                "whole_run": whole[0],
                "ratio_to_baseline": mean / base_mean if base else None,
                "seeds": len(mine),
                "new_2x_share": _mean([s["share_401_500"] for s in new if s["boost"] > 1]),
                "new_half_share": _mean([s["share_401_500"] for s in new if s["boost"] < 1]),
                "new_2x_at_least_half": _frac(
                    [s["share_401_500"] >= 0.5 for s in new if s["boost"] > 1]
                ),
                "new_half_below_10pct": _frac(
                    [s["share_401_500"] < 0.1 for s in new if s["boost"] < 1]
                ),
                "seconds_per_run": float(np.mean([r["seconds"] for r in mine])),
                "curve": [float(x) for x in np.mean([r["curve"] for r in mine], axis=0)],
            }
        out[scenario] = rows
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _frac(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def print_tables(summary: Mapping[str, Any], console: Console) -> None:
    for scenario, rows in summary.items():
        title = f"{scenario}: {SCENARIOS[scenario].description}"
        table = Table(title=title, title_justify="left")
        for col in (
            "server",
            "share of oracle, 2nd half [95% CI]",
            "whole run",
            "ratio to thompson",
        ):
            table.add_column(col, justify="left" if col == "server" else "right")
        has_new = any(r["new_2x_share"] is not None for r in rows.values())
        if has_new:
            table.add_column("2x new: share (>=50%)", justify="right")
            table.add_column("0.5x new: share (<10%)", justify="right")
        for server, r in rows.items():
            cells = [
                server,
                f"{r['second_half']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                f"{r['whole_run']:.3f}",
                "-" if r["ratio_to_baseline"] is None else f"{r['ratio_to_baseline']:.3f}",
            ]
            if has_new:
                cells.append(_pct(r["new_2x_share"], r["new_2x_at_least_half"]))
                cells.append(_pct(r["new_half_share"], r["new_half_below_10pct"]))
            table.add_row(*cells)
        console.print(table)


def print_curves(summary: Mapping[str, Any], console: Console) -> None:
    """Per scenario, each server's share of the oracle per `CURVE_WINDOW` decisions (mean over
    seeds): how fast it learns, and in `drift` whether it recovers once tastes change."""
    for scenario, rows in summary.items():
        width = max(len(r["curve"]) for r in rows.values())
        table = Table(
            title=f"{scenario}: share of oracle per {CURVE_WINDOW:,} decisions",
            title_justify="left",
        )
        table.add_column("server")
        for i in range(width):
            table.add_column(f"{i * CURVE_WINDOW // 1000}k–", justify="right")
        for server, r in rows.items():
            table.add_row(server, *(f"{x:.3f}" for x in r["curve"]))
        console.print(table)


def _pct(share: float | None, frac: float | None) -> str:
    if share is None or frac is None:
        return "-"
    return f"{share:.0%} ({frac:.0%} of them)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a copyloop setting for the copyloop server (repeatable)",
    )
    ap.add_argument(
        "--curve",
        action="store_true",
        help=f"also print each server's learning curve (share of oracle per {CURVE_WINDOW:,} "
        "decisions)",
    )
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    overrides = dict(pair.split("=", 1) for pair in args.set)
    scenarios = [SCENARIOS[s] for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    timing = Timing()
    console = Console()
    console.print(f"load average {os.getloadavg()[0]:.2f}; seeds {args.seeds}; timing {timing}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="copyloop-learning-") as tmp:
        templates: dict[int, LedgerTemplate] = {}
        total = len(scenarios) * len(servers) * args.seeds
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("runs", total=total)
            for scenario in scenarios:
                if scenario.products not in templates:
                    templates[scenario.products] = LedgerTemplate(scenario.products, Path(tmp))
                for seed in range(args.seeds):
                    for server in servers:
                        progress.update(task, description=f"{scenario.name} {server} seed {seed}")
                        runs.append(
                            run_one(
                                scenario,
                                server,
                                seed,
                                templates[scenario.products],
                                timing,
                                overrides,
                            )
                        )
                        progress.advance(task)
    summary = summarise(runs)
    print_tables(summary, console)
    if args.curve:
        print_curves(summary, console)
    payload = {
        "benchmark": "learning",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "timing": timing.__dict__,
        "overrides": overrides,
        "summary": summary,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
