"""Generation throughput of a real architecture at its real size: output tokens/s, candidates/s,
peak memory, and the share of the memory-bandwidth roofline reached per decode step.

Throughput does not depend on the weights, and nothing can be downloaded where this runs, so
the model is built from its config with random weights (`Qwen2Config` +
`AutoModelForCausalLM.from_config`; default: Qwen2.5-0.5B's dimensions), in bf16 on CUDA. Each
run measures a **baseline in the same process** (batch 1, dynamic KV cache, no compile: what a
naive `generate` loop does) and then the tuned configuration (large batch, static KV cache,
`torch.compile` of the decode step through transformers' auto-compile with CUDA graphs), and
prints the ratio. Every row generates exactly `new_tokens` tokens (no end-of-sequence stop).

Roofline: a decode step must read every weight once and the KV cache of every row so far, so
`bytes/step = weight bytes + batch × kv bytes/token × (prompt_len + t)`, averaged over the
steps; `share = (bytes/step ÷ peak bandwidth) ÷ measured step time`. The static cache attends
over its full allocated length (masked), so it moves more than these useful bytes: the share
is of the ideal. Decode step time is `(generate time − prefill time) / (new_tokens − 1)`, the
prefill timed on its own as one forward pass of the prompt batch.

Usage::

    python bench/generate.py --device cuda --batch 256 --new-tokens 128
    python bench/generate.py --device cuda --batch 512 --new-tokens 128 --sample
    python bench/generate.py --device cuda --batch 256 --compile off     # static cache, eager
    python bench/generate.py --device cpu                                 # small config, quick
    python bench/generate.py --device cuda --json bench/results/generate_h100.json

Only torch and transformers are needed (the repository is not imported).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Model dimensions by preset: (hidden, layers, heads, kv heads, intermediate, vocab, tie).
PRESETS: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "small": (256, 4, 4, 2, 1024, 32000, True),  # CPU: seconds, not minutes
}


@dataclass
class BenchConfig:
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto (cuda if present)."})
    preset: str = field(
        default="auto",
        metadata={
            "help": f"Model dimensions: {', '.join(PRESETS)}; auto = qwen2.5-0.5b on "
            "CUDA, small on CPU. --hidden etc. override single fields."
        },
    )
    hidden: int | None = field(default=None, metadata={"help": "hidden_size override."})
    layers: int | None = field(default=None, metadata={"help": "num_hidden_layers override."})
    heads: int | None = field(default=None, metadata={"help": "num_attention_heads override."})
    kv_heads: int | None = field(default=None, metadata={"help": "num_key_value_heads override."})
    intermediate: int | None = field(default=None, metadata={"help": "intermediate_size override."})
    vocab: int | None = field(default=None, metadata={"help": "vocab_size override."})
    batch: int | None = field(
        default=None, metadata={"help": "Rows per generate call (tuned run); 256 CUDA, 16 CPU."}
    )
    prompt_len: int | None = field(
        default=None, metadata={"help": "Prompt tokens per row; 128 CUDA, 64 CPU."}
    )
    new_tokens: int | None = field(
        default=None, metadata={"help": "Generated tokens per row; 128 CUDA, 32 CPU."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "bfloat16, float16, float32; auto = bfloat16 on CUDA, float32 on CPU."},
    )
    cache: str = field(
        default="auto",
        metadata={
            "help": "KV cache of the tuned run: static, "
            "dynamic; auto = static on CUDA, dynamic on CPU."
        },
    )
    compile: str = field(
        default="auto",
        metadata={
            "help": "auto: transformers compiles the "
            "decode step (static cache, CUDA graphs); off: eager."
        },
    )
    sample: bool = field(
        default=False,
        metadata={
            "help": "Sample (temperature 0.8, top-p 0.95) "
            "as the hf backend does, instead of greedy decoding."
        },
    )
    baseline_batch: int = field(default=1, metadata={"help": "Batch of the baseline run."})
    baseline_new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens of the baseline run (default: new_tokens)."}
    )
    no_baseline: bool = field(default=False, metadata={"help": "Skip the baseline run."})
    ablate: bool = field(
        default=False,
        metadata={
            "help": "Also run the tuned batch with a "
            "dynamic cache and no compile, to split the gain."
        },
    )
    warmup: int = field(default=2, metadata={"help": "Untimed runs first (compile, graphs)."})
    repeats: int = field(default=3, metadata={"help": "Timed runs; the median is reported."})
    peak_bandwidth_tbs: float = field(
        default=3.35,
        metadata={"help": "Memory bandwidth, TB/s (H100 SXM 3.35, H100 PCIe 2.0, H200 4.8)."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the weights and prompts."})
    json: str | None = field(default=None, metadata={"help": "Also write every result here."})


@dataclass(frozen=True)
class RunResult:
    """One configuration's measurements (times in seconds, medians over the repeats)."""

    name: str
    batch: int
    cache: str
    compile: str
    sample: bool
    prompt_len: int
    new_tokens: int
    seconds: float
    prefill_seconds: float
    output_tokens_per_s: float
    candidates_per_s: float
    decode_tokens_per_s: float
    step_ms: float
    bytes_per_step: float
    achieved_tbs: float
    roofline_share: float
    peak_memory_gib: float | None


def _resolve(cfg: BenchConfig, cuda: bool) -> BenchConfig:
    preset = cfg.preset if cfg.preset != "auto" else ("qwen2.5-0.5b" if cuda else "small")
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r} (expected {', '.join(PRESETS)})")
    hidden, layers, heads, kv_heads, intermediate, vocab, _ = PRESETS[preset]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return BenchConfig(
        **{
            **asdict(cfg),
            "device": "cuda" if cuda else "cpu",
            "preset": preset,
            "hidden": pick(cfg.hidden, hidden),
            "layers": pick(cfg.layers, layers),
            "heads": pick(cfg.heads, heads),
            "kv_heads": pick(cfg.kv_heads, kv_heads),
            "intermediate": pick(cfg.intermediate, intermediate),
            "vocab": pick(cfg.vocab, vocab),
            "batch": pick(cfg.batch, 256 if cuda else 16),
            "prompt_len": pick(cfg.prompt_len, 128 if cuda else 64),
            "new_tokens": pick(cfg.new_tokens, 128 if cuda else 32),
            "dtype": cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32"),
            "cache": cfg.cache if cfg.cache != "auto" else ("static" if cuda else "dynamic"),
        }
    )


def build_model(cfg: BenchConfig) -> Any:
    """A Qwen2 causal LM with `cfg`'s dimensions and random weights, on `cfg.device`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    assert cfg.hidden and cfg.layers and cfg.heads and cfg.kv_heads and cfg.intermediate
    config = Qwen2Config(
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate,
        vocab_size=cfg.vocab,
        tie_word_embeddings=PRESETS[cfg.preset][6],
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        use_cache=True,
    )
    torch.manual_seed(cfg.seed)  # a benchmark process: the global RNG is ours
    dtype = getattr(torch, cfg.dtype)
    with torch.device(cfg.device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return model.to(dtype).eval()


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V one token adds to the cache, over all layers."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    element = next(model.parameters()).element_size()
    return int(c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * element)


def weight_bytes(model: Any) -> int:
    """Bytes of every parameter (tied ones once): what each decode step reads."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_config(
    model: Any,
    cfg: BenchConfig,
    *,
    name: str,
    batch: int,
    new_tokens: int,
    cache: str,
    compile_mode: str,
) -> RunResult:
    """Warm up, then time `repeats` generate calls of `batch` rows × `new_tokens` tokens."""
    import torch
    from transformers import GenerationConfig

    assert cfg.prompt_len is not None
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    # Token ids from the lower half of the vocabulary: any ids do, the model is random.
    input_ids = torch.randint(
        10,
        model.config.vocab_size // 2,
        (batch, cfg.prompt_len),
        generator=generator,
        device=cfg.device,
    )
    attention_mask = torch.ones_like(input_ids)
    gen_config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=cfg.sample,
        temperature=0.8 if cfg.sample else None,
        top_p=0.95 if cfg.sample else None,
        top_k=None,
        num_beams=1,
        eos_token_id=None,  # every row runs to new_tokens: the same work every repeat
        pad_token_id=0,
        cache_implementation="static" if cache == "static" else None,
        disable_compile=compile_mode == "off",
    )

    def generate() -> Any:
        with torch.inference_mode():
            return model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config
            )

    def prefill() -> None:
        with torch.inference_mode():
            try:
                model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=False,
                    logits_to_keep=1,
                )
            except TypeError:  # transformers < 4.50: all logits (a slight overestimate)
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    if cfg.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(cfg.warmup):
        out = generate()
        assert out.shape == (batch, cfg.prompt_len + new_tokens), out.shape
        prefill()
    times, prefills = [], []
    for _ in range(max(1, cfg.repeats)):
        _sync(cfg.device)
        start = time.perf_counter()
        generate()
        _sync(cfg.device)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        prefill()
        _sync(cfg.device)
        prefills.append(time.perf_counter() - start)
    seconds, prefill_s = statistics.median(times), statistics.median(prefills)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cfg.device == "cuda" else None

    steps = max(1, new_tokens - 1)
    step_s = max(seconds - prefill_s, 1e-9) / steps
    mean_len = cfg.prompt_len + (1 + new_tokens - 1) / 2  # cache length over the decode steps
    bytes_per_step = weight_bytes(model) + batch * kv_bytes_per_token(model) * mean_len
    achieved = bytes_per_step / step_s / 1e12
    return RunResult(
        name=name,
        batch=batch,
        cache=cache,
        compile=compile_mode if cfg.device == "cuda" and cache == "static" else "off",
        sample=cfg.sample,
        prompt_len=cfg.prompt_len,
        new_tokens=new_tokens,
        seconds=seconds,
        prefill_seconds=prefill_s,
        output_tokens_per_s=batch * new_tokens / seconds,
        candidates_per_s=batch / seconds,
        decode_tokens_per_s=batch / step_s,
        step_ms=step_s * 1e3,
        bytes_per_step=bytes_per_step,
        achieved_tbs=achieved,
        roofline_share=achieved / cfg.peak_bandwidth_tbs,
        peak_memory_gib=peak,
    )


def _table(results: list[RunResult], baseline: RunResult | None) -> str:
    head = (
        f"{'run':<10} {'batch':>5} {'cache':>7} {'compile':>7} {'out tok/s':>11} "
        f"{'cand/s':>9} {'decode tok/s':>12} {'step ms':>8} {'prefill s':>9} "
        f"{'TB/s':>6} {'roofline':>8} {'peak GiB':>8} {'× base':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = r.output_tokens_per_s / baseline.output_tokens_per_s if baseline else float("nan")
        peak = f"{r.peak_memory_gib:.2f}" if r.peak_memory_gib is not None else "-"
        lines.append(
            f"{r.name:<10} {r.batch:>5} {r.cache:>7} {r.compile:>7} "
            f"{r.output_tokens_per_s:>11,.0f} {r.candidates_per_s:>9,.1f} "
            f"{r.decode_tokens_per_s:>12,.0f} {r.step_ms:>8.2f} {r.prefill_seconds:>9.3f} "
            f"{r.achieved_tbs:>6.2f} {r.roofline_share:>7.1%} {peak:>8} {ratio:>6.1f}x"
        )
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict[str, Any]:
    import torch
    import transformers

    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    cfg = _resolve(cfg, cuda)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    assert cfg.batch and cfg.new_tokens and cfg.prompt_len
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device: {device_name} ({cfg.device}); torch {torch.__version__}, transformers "
        f"{transformers.__version__}; threads {torch.get_num_threads()}"
    )
    print(
        f"model: {cfg.preset} dims (hidden {cfg.hidden}, layers {cfg.layers}, heads {cfg.heads}, "
        f"kv heads {cfg.kv_heads}, intermediate {cfg.intermediate}, vocab {cfg.vocab}), "
        f"random weights, {cfg.dtype}: {params / 1e6:.1f}M params, "
        f"{weight_bytes(model) / 1e9:.3f} GB; KV {kv_bytes_per_token(model):,} B/token"
    )
    print(
        f"prompt {cfg.prompt_len} tokens, {cfg.new_tokens} new tokens per row, "
        f"{'sampling' if cfg.sample else 'greedy'}; peak bandwidth {cfg.peak_bandwidth_tbs} TB/s; "
        f"median of {cfg.repeats} after {cfg.warmup} warm-up runs",
        flush=True,
    )
    results: list[RunResult] = []
    baseline = None
    if not cfg.no_baseline:
        baseline = run_config(
            model,
            cfg,
            name="baseline",
            batch=cfg.baseline_batch,
            new_tokens=cfg.baseline_new_tokens or cfg.new_tokens,
            cache="dynamic",
            compile_mode="off",
        )
        results.append(baseline)
        print(_table(results[-1:], baseline).splitlines()[-1], flush=True)
    if cfg.ablate:
        results.append(
            run_config(
                model,
                cfg,
                name="batched",
                batch=cfg.batch,
                new_tokens=cfg.new_tokens,
                cache="dynamic",
                compile_mode="off",
            )
        )
        print(_table(results[-1:], baseline).splitlines()[-1], flush=True)
    tuned = run_config(
        model,
        cfg,
        name="tuned",
        batch=cfg.batch,
        new_tokens=cfg.new_tokens,
        cache=cfg.cache,
        compile_mode=cfg.compile,
    )
    results.append(tuned)
    print()
    print(_table(results, baseline))
    if baseline is not None:
        print(
            f"\ntuned / baseline: {tuned.output_tokens_per_s / baseline.output_tokens_per_s:.1f}x "
            f"output tokens/s ({tuned.output_tokens_per_s:,.0f} vs "
            f"{baseline.output_tokens_per_s:,.0f})"
        )
    if cuda and cfg.preset == "qwen2.5-0.5b":
        verdict = "met" if tuned.output_tokens_per_s >= 50_000 else "NOT met"
        print(f"target ≥ 50,000 output tokens/s on one H100 with a ~0.5B model: {verdict}")
    report = {
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": asdict(cfg),
        "params": params,
        "weight_bytes": weight_bytes(model),
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "results": [asdict(r) for r in results],
    }
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(BenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
            continue
        kind = {"int | None": int, "int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    return BenchConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
