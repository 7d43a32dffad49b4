"""Tiny transformers models built offline: for tests and demos of `hf`.

Nothing here downloads anything. A byte-level BPE tokenizer is trained on the texts given
(e.g. the sample catalog), wrapped as a `PreTrainedTokenizerFast` with pad/bos/eos tokens and a
minimal chat template, and saved beside a tiny GPT-2 (causal) or T5 (seq2seq) model whose
weights are drawn from a seeded generator. The same texts and seed give the same files.

A random model writes gibberish, which the guardrails reject. :func:`build_warm_tiny_lm` goes
one step further: it *distils the rules backend* into the tiny model (full-parameter training on
the rules backend's candidates for the given products, each behind the very prompt the `hf`
backend builds), so that sampling from it writes copy for those products that often passes the
guardrails and sometimes does not (it mixes up facts, loops, mislabels values: the failure
modes of real models, in small). It writes only what it memorised: a stand-in for a real model
in offline tests and demos, not a general copywriter.

Usage::

    from generator.tiny import build_tiny_causal_lm
    path = build_tiny_causal_lm("var/tiny-gpt2", [p.description for p in products])

or, from the shell, trained on the sample catalog::

    python -m generator.tiny var/tiny-gpt2                    # random (--seq2seq: a tiny T5)
    python -m generator.tiny var/tiny-gpt2 --warm --steps 300 --products 16
    COPYLOOP_GENERATOR_MODEL=var/tiny-gpt2 copyloop generate --backend hf
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from generator.facts import ProductLike

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

#: A minimal chat template (Jinja, as transformers renders it): one turn per message, and the
#: assistant header when asked for a generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _train_tokenizer(texts: Iterable[str], vocab_size: int, *, chat: bool) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if t.strip()]
    if not corpus:
        raise ValueError("texts must contain at least one non-blank text")
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _seeded_init(model: Any, seed: int) -> None:
    """Re-draw every parameter from a generator of its own, so no global RNG is touched."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() == 1 and ("norm" in name or "ln" in name or "layer_norm" in name):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(noise * 0.02)


def build_tiny_causal_lm(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 1024,
) -> Path:
    """Train a tokenizer on `texts`, build a random tiny GPT-2, save both to `out_dir`.

    The tokenizer has a chat template, so the prompt path through `apply_chat_template` is the
    one exercised. Returns `out_dir` as a Path.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    tokenizer = _train_tokenizer(texts, vocab_size, chat=True)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(GPT2LMHeadModel(config), tokenizer, seed, out, bos_token_id=tokenizer.bos_token_id)


def build_tiny_seq2seq(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    seed: int = 0,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
) -> Path:
    """Train a tokenizer on `texts`, build a random tiny T5 (encoder-decoder), save both.

    The tokenizer has no chat template: seq2seq models take the plain prompt.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    out = Path(out_dir)
    tokenizer = _train_tokenizer(texts, vocab_size, chat=False)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_model * 2,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.decoder_start_token_id = tokenizer.pad_token_id
    return _save(
        T5ForConditionalGeneration(config),
        tokenizer,
        seed,
        out,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _save(model: Any, tokenizer: Any, seed: int, out: Path, **generation: int) -> Path:
    """Seed the weights, set the generation config's special tokens, save model and tokenizer."""
    _seeded_init(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def catalog_texts(products: Iterable[Any]) -> list[str]:
    """The texts a tiny tokenizer is trained on: each product's title, description and
    attribute values (so that prompts tokenize into few pieces)."""
    texts: list[str] = []
    for p in products:
        texts.append(p.title)
        texts.append(p.description)
        texts.extend(f"{k.replace('_', ' ')}: {v}" for k, v in p.attributes.items())
    return texts


def teacher_texts(
    products: Iterable[ProductLike],
    styles: Sequence[str] | None = None,
    seeds: int = 3,
    per_style: int = 3,
) -> list[tuple[ProductLike, str, str]]:
    """(product, style, text) for every distinct candidate the rules backend writes for
    `products` in `styles` (default: all), over `seeds` seeds and `per_style` rounds: the
    distillation set."""
    from generator.rules import STYLES, RulesGenerator

    styles = STYLES if styles is None else tuple(styles)
    seen: dict[tuple[str, str, str], tuple[ProductLike, str, str]] = {}
    products = list(products)
    for seed in range(seeds):
        rules = RulesGenerator(seed=seed)
        for product in products:
            for c in rules.generate(product, styles, per_style * len(styles)):
                seen.setdefault((product.product_id, c.style, c.text), (product, c.style, c.text))
    return list(seen.values())


def distil(
    model_dir: str | Path,
    teacher: Sequence[tuple[ProductLike, str, str]],
    *,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 6e-3,
    max_length: int = 512,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train every parameter of the model in `model_dir` to write each teacher text given its
    prompt (loss on the completion only, one-cycle learning rate), save it back, and return
    each step's loss. `progress(step, steps, loss)` after each step."""
    import torch

    from generator.hf import load_pretrained
    from generator.training import Example, collate, completion_logps, encode

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not teacher:
        raise ValueError("teacher must hold at least one (product, style, text)")
    where = str(model_dir)
    model, tokenizer, seq2seq = load_pretrained(where)
    examples: list[Example] = [
        encode(tokenizer, product, style, text, max_length, seq2seq)
        for product, style, text in teacher
    ]
    rng = random.Random(seed)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1
        )
        for step in range(steps):
            batch = collate(rng.sample(examples, min(batch_size, len(examples))),
                            tokenizer.pad_token_id, seq2seq)  # fmt: skip
            logp, count = completion_logps(model, batch, seq2seq)
            loss = -logp.sum() / count.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps, losses[-1])
    model.save_pretrained(where)
    return losses


def build_warm_tiny_lm(
    out_dir: str | Path,
    products: Sequence[ProductLike],
    *,
    styles: Sequence[str] | None = None,
    steps: int = 300,
    seed: int = 0,
    vocab_size: int = 4096,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, list[float]]:
    """A tiny GPT-2 that has learned to write the rules backend's copy for `products` in
    `styles` (default: all; the others it has never seen written: something to learn from
    winners later), see the module docstring. The tokenizer is trained on the catalog's texts,
    the prompts and the teacher texts, so that both take few tokens. Returns the directory and
    the losses."""
    from generator.prompts import build_prompt
    from generator.rules import STYLES

    teacher = teacher_texts(products, styles)
    texts = catalog_texts(products)
    texts += [build_prompt(p, s) for p in products[:1] for s in STYLES]
    texts += [text for _, _, text in teacher]
    out = build_tiny_causal_lm(out_dir, texts, vocab_size=vocab_size, seed=seed,
                               n_layer=n_layer, n_embd=n_embd, n_head=n_head)  # fmt: skip
    return out, distil(out, teacher, steps=steps, seed=seed, progress=progress)


def spread_pairs(products: Sequence[ProductLike], n: int) -> list[ProductLike]:
    """`n` products spread over `products` in neighbouring pairs (the sample catalog lists
    product families two by two: a 5.5 qt and a 3.5 qt Dutch oven), so that what a model
    learns from one family member can carry over to the other.

    >>> spread_pairs(list(range(128)), 6)
    [0, 1, 42, 43, 84, 85]
    """
    pairs = max(1, n // 2)
    step = max(2, len(products) // pairs // 2 * 2)
    return [p for start in range(0, len(products), step) for p in products[start : start + 2]][:n]


def main(argv: list[str] | None = None) -> Path:
    """Build a tiny model from the sample catalog's texts: `OUT_DIR [--seq2seq | --warm]`."""
    import argparse

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from core.catalog import SAMPLE_CATALOG, read_catalog

    parser = argparse.ArgumentParser(prog="python -m generator.tiny", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--seq2seq", action="store_true", help="A random tiny T5, not a GPT-2.")
    kind.add_argument(
        "--warm", action="store_true", help="Distil the rules backend into a tiny GPT-2."
    )
    parser.add_argument("--steps", type=int, default=300, help="Distillation steps (--warm).")
    parser.add_argument(
        "--products", type=int, default=16, help="Sample products to distil on, in pairs of a "
        "family spread over the catalog (--warm; more products need more steps)."
    )  # fmt: skip
    parser.add_argument(
        "--styles", default=None, help="Comma-separated styles to distil (--warm; default: all)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sample = SAMPLE_CATALOG
    products = read_catalog(sample)
    if not args.warm:
        build = build_tiny_seq2seq if args.seq2seq else build_tiny_causal_lm
        return build(args.out_dir, catalog_texts(products), seed=args.seed)
    chosen = spread_pairs(products, args.products)
    columns = (TextColumn("distil"), BarColumn(), TextColumn("{task.completed}/{task.total} "
               "loss {task.fields[loss]:.3f}"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns) as bar:
        task = bar.add_task("distil", total=args.steps, loss=float("nan"))
        out, losses = build_warm_tiny_lm(
            args.out_dir, chosen, steps=args.steps, seed=args.seed,
            styles=args.styles.split(",") if args.styles else None,
            progress=lambda done, _, loss: bar.update(task, completed=done, loss=loss),
        )  # fmt: skip
    print(f"{out}: {len(chosen)} products, loss {losses[0]:.3f} -> {losses[-1]:.3f}")  # noqa: T201
    return out


if __name__ == "__main__":
    main()
