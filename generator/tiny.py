"""Tiny, randomly initialised transformers models built offline: for tests and demos of `hf`.

Nothing here downloads anything. A byte-level BPE tokenizer is trained on the texts given
(e.g. the sample catalog), wrapped as a `PreTrainedTokenizerFast` with pad/bos/eos tokens and a
minimal chat template, and saved beside a tiny GPT-2 (causal) or T5 (seq2seq) model whose
weights are drawn from a seeded generator. The same texts and seed give the same files.

Usage::

    from generator.tiny import build_tiny_causal_lm
    path = build_tiny_causal_lm("var/tiny-gpt2", [p.description for p in products])

or, from the shell, trained on the sample catalog (an offline demo of the `hf` path; a random
model writes gibberish, so the guardrails reject what it writes)::

    python -m generator.tiny var/tiny-gpt2            # --seq2seq for a tiny T5
    COPYLOOP_GENERATOR_MODEL=var/tiny-gpt2 copyloop generate --backend hf
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def main(argv: list[str] | None = None) -> Path:
    """Build a tiny model trained on the sample catalog's texts: `OUT_DIR [--seq2seq]`."""
    import argparse

    from copyloop.catalog import read_catalog

    parser = argparse.ArgumentParser(prog="python -m generator.tiny", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seq2seq", action="store_true", help="A tiny T5 instead of a GPT-2.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sample = Path(__file__).resolve().parents[1] / "copyloop" / "data" / "sample_catalog.jsonl"
    texts = catalog_texts(read_catalog(sample))
    build = build_tiny_seq2seq if args.seq2seq else build_tiny_causal_lm
    return build(args.out_dir, texts, seed=args.seed)


if __name__ == "__main__":
    main()
