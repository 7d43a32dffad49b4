"""The `hf` backend end to end: prompts, tokenizing, batched sampling, decoding, de-duplication and
the guardrails, on a local model (what `copyloop generate --backend hf` runs per chunk).

`bench/generate.py` measures `model.generate` alone at a real model's size; this measures what
the backend adds around it and how its own knobs pay: in **one process**, the baseline (one
prompt per model call, dynamic KV cache) and then the batched configurations (`--batch` prompts
per call, dynamic and static cache; `--compile` adds transformers' auto-compile on CUDA), each
on the same products, styles, samples and seed. Printed per run: products/s, candidates/s,
output tokens/s and the ratio to the baseline; then the guardrails' cost per candidate and the
pass rate of what was written.

Usage::

    python -m generator.tiny var/warm --warm --styles concise,bullets,benefit,story
    python bench/generate_backend.py --model var/warm --products 16 --samples 2 --threads 1
    python bench/generate_backend.py --model /models/qwen2.5-0.5b-instruct --batch 64 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from core.catalog import SAMPLE_CATALOG, read_catalog
    from core.settings import load_settings
    from generator.facts import FactSheet
    from generator.guardrails import GuardrailParams, check
    from generator.hf import GenerationRequest, HFGenerator
    from generator.rules import STYLES
    from generator.tiny import spread_pairs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Local model directory.")
    parser.add_argument("--products", type=int, default=16, help="Sample products (in pairs).")
    parser.add_argument("--samples", type=int, default=2, help="Samples per product and style.")
    parser.add_argument("--batch", type=int, default=16, help="Prompts per call when batched.")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present).")
    parser.add_argument("--compile", action="store_true", help="Also a compiled static run.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here too.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sample = SAMPLE_CATALOG
    catalog = read_catalog(sample)
    products = spread_pairs(catalog, args.products)
    requests = [GenerationRequest(p, STYLES, args.samples * len(STYLES)) for p in products]
    settings = load_settings()
    params = GuardrailParams.from_settings(
        settings, known_brands={str(p.attributes["brand"]) for p in catalog}
    )

    runs: list[tuple[str, dict[str, Any]]] = [
        ("baseline", {"batch_size": 1, "static_cache": False}),
        ("batched", {"batch_size": args.batch, "static_cache": False}),
        ("static", {"batch_size": args.batch, "static_cache": True}),
    ]
    if args.compile:
        runs.append(("compiled", {"batch_size": args.batch, "static_cache": True, "compile": True}))
    results: list[dict[str, Any]] = []
    written: Any = None
    for name, options in runs:
        generator = HFGenerator(
            args.model,
            version="bench",
            device=args.device,
            max_new_tokens=args.max_new_tokens,
            **options,
        )
        if name == "compiled":  # the first calls compile: not timed
            generator.generate_many(requests[:1])
        out = generator.generate_many(requests)
        s = out.stats
        results.append(
            {
                "run": name,
                **options,
                "products_per_s": s.products_per_s,
                "candidates_per_s": s.candidates_per_s,
                "tokens_per_s": s.tokens_per_s,
                "candidates": s.candidates,
                "output_tokens": s.output_tokens,
                "seconds": s.seconds,
            }
        )
        written = written or out
        del generator
    base = results[0]["tokens_per_s"]
    print(
        f"{'run':<9} {'batch':>5} {'cache':>7} {'products/s':>11} {'cand/s':>8} {'tok/s':>9} "
        f"{'x base':>7}"
    )
    for r in results:
        cache = "static" if r["static_cache"] else "dynamic"
        print(
            f"{r['run']:<9} {r['batch_size']:>5} {cache:>7} {r['products_per_s']:>11.2f} "
            f"{r['candidates_per_s']:>8.1f} {r['tokens_per_s']:>9.0f} "
            f"{r['tokens_per_s'] / base if base else 0:>7.2f}"
        )

    timings: list[float] = []
    passed = total = 0
    for product, candidates in zip(products, written.candidates, strict=True):
        facts = FactSheet.of(product)  # once per product, as generate_variants does
        for c in candidates:
            started = time.perf_counter()
            verdict = check(c.text, facts, [product.description], params)
            timings.append(time.perf_counter() - started)
            passed += verdict.ok
            total += 1
    guardrails = {
        "candidates": total,
        "passed": passed,
        "pass_rate": passed / total if total else 0.0,
        "check_us_median": statistics.median(timings) * 1e6 if timings else 0.0,
    }
    print(
        f"guardrails: {passed}/{total} passed ({guardrails['pass_rate']:.0%}), "
        f"{guardrails['check_us_median']:.0f} µs per candidate (median)"
    )
    summary = {
        "model": args.model,
        "device": str(
            torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "products": len(products),
        "samples": args.samples,
        "runs": results,
        "guardrails": guardrails,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
