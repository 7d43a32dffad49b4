"""The `hf` backend: candidates sampled from a transformers causal or seq2seq model.

The model is loaded from a local directory (or a model id already in the local cache: nothing is
downloaded), as `AutoModelForSeq2SeqLM` when its config says `is_encoder_decoder`, else as
`AutoModelForCausalLM` with left padding so every row's continuation starts at the same column.
An optional peft adapter (a fine-tuned generator version) is applied and merged. bf16 on CUDA,
fp32 on CPU. With `static_cache` (the default on CUDA) decoding writes into a preallocated KV
cache and prompts are padded to a multiple of 64 tokens, so that a compiled decode step
(`compile`, transformers' auto-compile with CUDA graphs) sees few shapes.

One prompt per (product, style) (see :mod:`generator.prompts`), `k` samples per prompt through
`num_return_sequences`, prompts from many products batched together (sorted by length so
batches pad little). Sampling is seeded: each batch forks the global RNG and seeds it with
`seed + batch index`, so the process's RNG is left as it was and the same inputs, seed and
batch size give the same texts.

Usage::

    generator = HFGenerator("var/tiny-gpt2", version="hf-base-1a2b3c4d", seed=0)
    result = generator.generate_many([GenerationRequest(product, ("concise", "bullets"), 4)])
    result.candidates[0], result.stats.tokens_per_s
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generator import BackendUnavailableError, GeneratorError, SettingError
from generator.facts import ProductLike
from generator.prompts import build_prompt, format_for_model
from generator.rules import Candidate

if TYPE_CHECKING:
    from core.settings import Settings

SOURCE = "llm"

#: Prompts are padded to a multiple of this many tokens with a static cache (few shapes to
#: compile for; the padding is masked out).
STATIC_PAD = 64


def max_new_tokens(max_chars: int) -> int:
    """Tokens generated per candidate at most: about 4 characters a token for English BPEs,
    with room to overshoot (the length guardrail rejects what comes out too long).

    >>> max_new_tokens(600), max_new_tokens(30)
    (200, 16)
    """
    return max(16, min(512, max_chars // 3))


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Up to `n` candidates of `product`, spread over `styles` (earlier styles first)."""

    product: ProductLike
    styles: tuple[str, ...]
    n: int


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Throughput of one generation call. `output_tokens` counts generated tokens up to and
    including each sequence's end-of-sequence token (padding excluded); `seconds` is wall time
    of the model calls (tokenizing and decoding included, loading not)."""

    products: int
    prompts: int
    candidates: int
    output_tokens: int
    seconds: float

    @property
    def products_per_s(self) -> float:
        return self.products / self.seconds if self.seconds > 0 else 0.0

    @property
    def candidates_per_s(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: GenerationStats) -> GenerationStats:
        return GenerationStats(
            self.products + other.products,
            self.prompts + other.prompts,
            self.candidates + other.candidates,
            self.output_tokens + other.output_tokens,
            self.seconds + other.seconds,
        )


NO_STATS = GenerationStats(0, 0, 0, 0, 0.0)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """`candidates[i]` belongs to request `i`; distinct texts, at most its `n`."""

    candidates: tuple[tuple[Candidate, ...], ...]
    stats: GenerationStats


@dataclass(frozen=True, slots=True)
class _Prompt:
    request: int
    style: str
    text: str
    samples: int


class HFGenerator:
    """Samples candidates from a local transformers model (plus an optional peft adapter)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        version: str,
        adapter_path: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        max_new_tokens: int = 160,
        max_prompt_tokens: int = 768,
        num_return_sequences: int | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
        static_cache: bool | None = None,
        compile: bool = False,
        local_files_only: bool = True,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_return_sequences is not None and num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        try:
            import torch
            import transformers  # noqa: F401  (available? the API installs without it)
        except ImportError as exc:  # the API and consumer install without the generator extra
            raise BackendUnavailableError(
                "the hf backend needs torch and transformers: pip install 'copyloop[generator]'"
            ) from exc
        self.version = version
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Prompts per model call (each sampled k times): a GPU wants many rows at once.
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.num_return_sequences = num_return_sequences
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.static_cache = self.device.type == "cuda" if static_cache is None else static_cache
        self.compile = compile
        if dtype is None:
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype must name a torch dtype, got {dtype!r}")
        where = str(model_path)
        try:
            model, tokenizer, self.is_encoder_decoder = load_pretrained(
                where, dtype=torch_dtype, local_files_only=local_files_only
            )
        except (OSError, ValueError, KeyError) as exc:
            raise SettingError(
                f"cannot load generator_model {where!r} (COPYLOOP_GENERATOR_MODEL): {exc}"
            ) from exc
        if adapter_path is not None:
            model = _apply_adapter(model, str(adapter_path))
        tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"
        tokenizer.truncation_side = "left"  # keep the end of the prompt: the cue to continue
        self.context_tokens = context_length(model.config)
        self.max_prompt_tokens, self.max_new_tokens = fit_budget(
            self.context_tokens, max_prompt_tokens, max_new_tokens, self.is_encoder_decoder
        )
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        self.model_path = where
        self.adapter_path = None if adapter_path is None else str(adapter_path)

    @classmethod
    def from_settings(
        cls,
        model_path: str | Path,
        settings: Settings,
        *,
        version: str,
        adapter_path: str | Path | None = None,
        **overrides: Any,
    ) -> HFGenerator:
        """A generator configured by copyloop's `generator_*` settings (and `seed`, and
        `max_variant_chars` for the token budget); keyword overrides win."""
        options: dict[str, Any] = {
            "device": settings.generator_device,
            "dtype": settings.generator_dtype,
            "batch_size": settings.generator_batch_size,
            "max_new_tokens": max_new_tokens(settings.max_variant_chars),
            "temperature": settings.generator_temperature,
            "top_p": settings.generator_top_p,
            "static_cache": settings.generator_static_cache,
            "compile": settings.generator_compile,
            "seed": settings.seed,
        }
        options.update(overrides)
        return cls(model_path, version=version, adapter_path=adapter_path, **options)

    # -- the Backend protocol ------------------------------------------------------------------

    def generate(self, product: ProductLike, styles: Sequence[str], n: int) -> list[Candidate]:
        """Up to `n` distinct candidates of one product (see :meth:`generate_many`)."""
        return list(
            self.generate_many([GenerationRequest(product, tuple(styles), n)]).candidates[0]
        )

    # -- batched -------------------------------------------------------------------------------

    def prompts_for(self, index: int, request: GenerationRequest) -> list[_Prompt]:
        """The prompts of request `index`: one per style (only the first `n` styles when `n` is
        smaller), each sampled `ceil(n / prompts)` times unless `num_return_sequences` is set."""
        styles = list(dict.fromkeys(request.styles))[: max(request.n, 0)]
        if not styles:
            return []
        samples = self.num_return_sequences or math.ceil(request.n / len(styles))
        return [
            _Prompt(
                index,
                s,
                format_for_model(self.tokenizer, build_prompt(request.product, s)),
                samples,
            )
            for s in styles
        ]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> GenerationResult:
        """Candidates for every request, prompts from all of them batched together.

        Each request's candidates interleave its styles (sample 1 of every style, then sample
        2 …), so cutting the list at `n` keeps the styles balanced. Empty or duplicate texts
        are dropped, so a request can get fewer than `n`. Raises `UnknownStyleError` for a
        style without an instruction, before any model call.
        """
        for request in requests:
            if request.n < 0:
                raise ValueError(f"n must be >= 0, got {request.n}")
            for style in request.styles:
                build_prompt(request.product, style)  # raises UnknownStyleError
        prompts = [p for i, r in enumerate(requests) for p in self.prompts_for(i, r)]
        started = time.perf_counter()
        outputs: list[list[str]] = [[] for _ in prompts]
        tokens = 0
        order = sorted(range(len(prompts)), key=lambda j: (len(prompts[j].text), j))
        for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            # One model call per sample count (a single call in the usual case).
            for samples in sorted({prompts[j].samples for j in batch}):
                group = [j for j in batch if prompts[j].samples == samples]
                rows, n_tokens = self._sample(
                    [prompts[j].text for j in group], samples, batch_index
                )
                tokens += n_tokens
                for j, row in zip(group, rows, strict=True):
                    outputs[j] = row
        per_request: list[list[Candidate]] = [[] for _ in requests]
        seen: list[set[str]] = [set() for _ in requests]
        for rank in range(max((p.samples for p in prompts), default=0)):
            for prompt, texts in zip(prompts, outputs, strict=True):
                mine = per_request[prompt.request]
                if rank >= len(texts) or len(mine) >= requests[prompt.request].n:
                    continue
                text = texts[rank]
                if text and text not in seen[prompt.request]:
                    seen[prompt.request].add(text)
                    mine.append(Candidate(prompt.style, text, SOURCE, self.version))
        stats = GenerationStats(
            products=len({r.product.product_id for r in requests}),
            prompts=len(prompts),
            candidates=sum(len(c) for c in per_request),
            output_tokens=tokens,
            seconds=time.perf_counter() - started,
        )
        return GenerationResult(tuple(tuple(c) for c in per_request), stats)

    def _sample(
        self, texts: list[str], samples: int, batch_index: int
    ) -> tuple[list[list[str]], int]:
        """`samples` continuations of each text (prompt stripped, whitespace cleaned; one when
        `temperature` is 0, which decodes greedily) and the number of generated tokens (through
        each row's end-of-sequence token)."""
        import torch
        from transformers import GenerationConfig

        encoded = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_prompt_tokens,
            add_special_tokens=self.is_encoder_decoder,  # causal prompts carry their own markup
            pad_to_multiple_of=STATIC_PAD if self.static_cache else None,
        ).to(self.device)
        sampling = self.temperature > 0
        samples = samples if sampling else 1  # greedy decoding has one answer per prompt
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=samples,
            do_sample=sampling,
            temperature=self.temperature if sampling else None,
            top_p=self.top_p if sampling else None,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            decoder_start_token_id=getattr(
                self.model.generation_config, "decoder_start_token_id", None
            ),
            cache_implementation="static" if self.static_cache else None,
            disable_compile=not self.compile,
        )
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.seed + batch_index)
            output = self.model.generate(**encoded, generation_config=config)
        generated = (
            output if self.is_encoder_decoder else output[:, encoded["input_ids"].shape[1] :]
        )
        if self.is_encoder_decoder:
            generated = generated[:, 1:]  # the decoder start token is not generated
        n_tokens = _count_tokens(
            generated, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        )
        decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        cleaned = [clean_text(t) for t in decoded]
        return [cleaned[i * samples : (i + 1) * samples] for i in range(len(texts))], n_tokens


#: Config attributes that hold a model's context length, by architecture family.
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)
#: The fewest prompt tokens worth generating from (a product's title and a few facts).
MIN_PROMPT_TOKENS = 64


def context_length(config: Any) -> int | None:
    """The positions a model can attend over, read from its config (None: no stated limit,
    as with T5's relative positions when its config says nothing).

    >>> from types import SimpleNamespace
    >>> context_length(SimpleNamespace(n_positions=512)), context_length(SimpleNamespace())
    (512, None)
    """
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_budget(
    context: int | None, prompt_tokens: int, new_tokens: int, encoder_decoder: bool
) -> tuple[int, int]:
    """(prompt tokens, new tokens) that fit the model: a causal model attends over prompt and
    continuation together, so both share its context (new tokens first, up to half of it); an
    encoder-decoder reads the prompt with its encoder and writes with its decoder, each within
    the context on its own.

    >>> fit_budget(512, 768, 160, False), fit_budget(1024, 768, 160, False)
    ((352, 160), (768, 160))
    >>> fit_budget(128, 768, 160, False), fit_budget(512, 768, 600, True)
    ((64, 64), (512, 512))
    >>> fit_budget(None, 768, 160, False)
    (768, 160)
    """
    if context is None:
        return prompt_tokens, new_tokens
    if encoder_decoder:
        return min(prompt_tokens, context), min(new_tokens, context)
    new = max(1, min(new_tokens, context // 2, context - MIN_PROMPT_TOKENS))
    return max(1, min(prompt_tokens, context - new)), new


def load_pretrained(
    where: str, *, dtype: Any = None, local_files_only: bool = True
) -> tuple[Any, Any, bool]:
    """(model, tokenizer, is_encoder_decoder) of a local model directory (or a cached id): an
    `AutoModelForSeq2SeqLM` when its config says `is_encoder_decoder`, else an
    `AutoModelForCausalLM`, in `dtype` when given. A tokenizer without a pad token pads with
    its end-of-sequence token. Generation, fine-tuning and distillation all load through here."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(where, local_files_only=local_files_only)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, local_files_only=local_files_only)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    options = {} if dtype is None else {"dtype": dtype}
    model = auto.from_pretrained(where, local_files_only=local_files_only, **options)
    return model, tokenizer, seq2seq


def _apply_adapter(model: Any, adapter_path: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise BackendUnavailableError(
            "a generator version with an adapter needs peft: pip install 'copyloop[generator]'"
        ) from exc
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            return PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"cannot load adapter {adapter_path!r}: {exc}") from exc


def _count_tokens(generated: Any, eos_id: int | None, pad_id: int | None) -> int:
    """Generated tokens per row up to and including the first end-of-sequence token."""
    import torch

    rows, width = generated.shape
    if width == 0:
        return 0
    stop = (
        generated == eos_id if eos_id is not None else torch.zeros_like(generated, dtype=torch.bool)
    )
    if pad_id is not None and pad_id != eos_id:
        stop |= generated == pad_id
    first = torch.where(stop.any(dim=1), stop.int().argmax(dim=1), torch.full((rows,), width))
    # An eos ends the row and counts; a pad (seq2seq padding after eos) does not.
    ended_by_eos = (
        generated.gather(1, first.clamp(max=width - 1).unsqueeze(1)).squeeze(1) == eos_id
    ) & (first < width)
    return int((first + ended_by_eos.int()).sum())


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Trim each line, squeeze runs of spaces and of blank lines, drop NUL characters (which a
    random or broken model can emit and PostgreSQL cannot store; other control characters stay,
    for the guardrails to see and reject).

    >>> clean_text("  A  mug.\\n\\n\\n\\n- Holds  350 ml \\n\\x00")
    'A mug.\\n\\n- Holds 350 ml'
    """
    text = text.replace("\x00", "")
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
