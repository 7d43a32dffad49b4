"""The training math of :mod:`generator.finetune`: a fresh LoRA adapter on a base model, SFT with
the loss on completion tokens only, a weighted DPO step against the adapter-disabled base, and
per-token NLL for the gate. Causal LMs and seq2seq models alike.

Imports torch, transformers and peft at import time: only `finetune.main` and `generator.tiny`
import this module. Shapes: a causal batch is ``input_ids``/``attention_mask``/``position_ids``
[B, T], left-padded so that every row's completion ends at the last column, and ``labels``
[B, C] over the last C columns (C: the longest completion), -100 where a row's completion has
not started. Only those C columns get logits (``logits_to_keep``): with a 150k-token vocabulary
the prompt's logits would be most of the memory and time. A seq2seq batch is the encoder's
``input_ids``/``attention_mask`` [B, T] and decoder ``labels`` [B, C], -100 on padding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812
from peft import LoraConfig, TaskType, get_peft_model

from generator.hf import load_pretrained
from generator.prompts import build_prompt, format_for_model

if TYPE_CHECKING:
    from generator.facts import ProductLike
    from generator.finetune_config import FinetuneConfig

IGNORE = -100


@dataclass(frozen=True, slots=True)
class Example:
    """Token ids of one prompt and one completion (the completion ends with EOS)."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]


class Trainer:
    """Loads the base model once, wraps it in a fresh LoRA adapter and trains it."""

    def __init__(self, base_model: str, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        base, self.tokenizer, self.seq2seq = load_pretrained(base_model, dtype=dtype)
        lora = LoraConfig(
            task_type=TaskType.SEQ_2_SEQ_LM if self.seq2seq else TaskType.CAUSAL_LM,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules) if cfg.target_modules else None,
            # GPT-2 stores its projections as Conv1D (in × out): LoRA must transpose.
            fan_in_fan_out=base.config.model_type == "gpt2",
        )
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            self.model = get_peft_model(base, lora).to(self.device)

    # -- data ----------------------------------------------------------------------------------
    def example(self, product: ProductLike, style: str, text: str) -> Example:
        return encode(self.tokenizer, product, style, text, self.cfg.max_length, self.seq2seq)

    def batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Padded tensors on the device (see the module docstring for the layout)."""
        out = collate(examples, self.tokenizer.pad_token_id, self.seq2seq)
        return {k: v.to(self.device) for k, v in out.items()}

    # -- log-likelihoods -----------------------------------------------------------------------
    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each row's completion tokens [B], and their count [B]."""
        return completion_logps(self.model, batch, self.seq2seq)

    @torch.no_grad()
    def nll(self, examples: Sequence[Example], *, adapter: bool) -> float:
        """Per-token negative log-likelihood of the completions (eval mode; the base model
        alone when `adapter` is False)."""
        if not examples:
            return float("nan")
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(examples), self.cfg.batch_size):
            batch = self.batch(examples[start : start + self.cfg.batch_size])
            if adapter:
                lp, n = self.logps(batch)
            else:
                with self.model.disable_adapter():
                    lp, n = self.logps(batch)
            total, count = total - float(lp.sum()), count + int(n.sum())
        return total / max(count, 1)

    # -- training ------------------------------------------------------------------------------
    def sft(
        self, examples: Sequence[Example], progress: Callable[[str, int, int], None] | None
    ) -> list[float]:
        """`sft_steps` AdamW steps of token-mean completion NLL; returns each step's loss."""
        optimizer = torch.optim.AdamW(self._trainable(), lr=self.cfg.learning_rate)
        order = _Batches(len(examples), self.cfg.batch_size, self.cfg.seed)
        losses: list[float] = []
        self.model.train()
        for step in range(self.cfg.sft_steps):
            lp, n = self.logps(self.batch([examples[i] for i in order.next()]))
            loss = -lp.sum() / n.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress("sft", step + 1, self.cfg.sft_steps)
        return losses

    def dpo(
        self,
        pairs: Sequence[tuple[Example, Example, float]],
        progress: Callable[[str, int, int], None] | None,
    ) -> list[float]:
        """`dpo_steps` steps of pair-weighted DPO against the base model (adapter disabled);
        returns each step's loss (empty without pairs)."""
        pairs = [p for p in pairs if p[2] > 0]
        if not pairs or self.cfg.dpo_steps < 1:
            return []
        ref_chosen, ref_rejected = self._reference(pairs)
        optimizer = torch.optim.AdamW(self._trainable(), lr=self.cfg.dpo_learning_rate)
        order = _Batches(len(pairs), self.cfg.batch_size, self.cfg.seed + 1)
        weights = torch.tensor([w for _, _, w in pairs], device=self.device)
        losses: list[float] = []
        self.model.train()
        for step in range(self.cfg.dpo_steps):
            idx = order.next()
            chosen, _ = self.logps(self.batch([pairs[i][0] for i in idx]))
            rejected, _ = self.logps(self.batch([pairs[i][1] for i in idx]))
            sel = torch.tensor(idx, device=self.device)
            margin = (chosen - ref_chosen[sel]) - (rejected - ref_rejected[sel])
            w = weights[sel]
            loss = -(w * F.logsigmoid(self.cfg.dpo_beta * margin)).sum() / w.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress("dpo", step + 1, self.cfg.dpo_steps)
        return losses

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A copy of the adapter's weights (tests compare them before and after training)."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if "lora_" in k}

    def _trainable(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _reference(
        self, pairs: Sequence[tuple[Example, Example, float]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        chosen: list[torch.Tensor] = []
        rejected: list[torch.Tensor] = []
        with self.model.disable_adapter():
            for start in range(0, len(pairs), self.cfg.batch_size):
                part = pairs[start : start + self.cfg.batch_size]
                chosen.append(self.logps(self.batch([p[0] for p in part]))[0])
                rejected.append(self.logps(self.batch([p[1] for p in part]))[0])
        return torch.cat(chosen), torch.cat(rejected)


class _Batches:
    """Index batches over `n` items: seeded permutations, one epoch after another."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self._n, self._size = n, min(size, n)
        self._gen = torch.Generator().manual_seed(seed)
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self._size:
            self._queue += torch.randperm(self._n, generator=self._gen).tolist()
        out, self._queue = self._queue[: self._size], self._queue[self._size :]
        return out


def encode(
    tokenizer: Any, product: ProductLike, style: str, text: str, max_length: int, seq2seq: bool
) -> Example:
    """`text` as the completion of `product`'s prompt in `style` (exactly what generation
    conditions on), cut to `max_length` tokens: the completion to half of it for causal models
    (the prompt keeps its end), each side to all of it for seq2seq."""
    prompt = format_for_model(tokenizer, build_prompt(product, style))
    prompt_ids = tokenizer(prompt, add_special_tokens=seq2seq)["input_ids"]
    completion = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    if seq2seq:  # encoder and decoder have their own budgets
        return Example(tuple(prompt_ids[-max_length:]), tuple(completion[:max_length]))
    completion = completion[: max_length // 2]
    keep = max_length - len(completion)
    return Example(tuple(prompt_ids[-keep:]), tuple(completion))


def collate(examples: Sequence[Example], pad_id: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    """Tensors of a batch on the CPU (layout in the module docstring)."""
    width = max(len(e.completion) for e in examples)
    if seq2seq:
        ids, mask = _pad([e.prompt for e in examples], pad_id)
        labels, _ = _pad([e.completion for e in examples], IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ids, mask = _pad([e.prompt + e.completion for e in examples], pad_id, left=True)
    labels, _ = _pad([e.completion for e in examples], IGNORE, left=True)
    labels = labels[:, -width:]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def completion_logps(
    model: Any, batch: dict[str, torch.Tensor], seq2seq: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's completion tokens [B], and their count [B]."""
    labels = batch["labels"]
    if seq2seq:
        logits = model(**batch).logits
    else:
        # The logit at column t predicts column t + 1: the last C + 1 columns' logits, less the
        # last one, predict the C label columns.
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=labels.shape[1] + 1,
        ).logits[:, :-1]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def _pad(
    rows: Sequence[Sequence[int]], value: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(rows), longest] ids padded with `value` (on the left when `left`), and the mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask
