"""What one fine-tuning round does: :class:`FinetuneConfig`, built from the settings
(`COPYLOOP_FINETUNE_OPTIONS`) and the CLI's ``--set KEY=VALUE`` overrides.

It stands below both `generator.finetune` (the round) and `generator.training` (the trainer),
which each read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

from core.settings import Settings


@dataclass(frozen=True)
class FinetuneConfig:
    """What one fine-tuning round does; every field has a default that runs on a CPU."""

    base_model: str | None = field(
        default=None, metadata={"help": "Local path of the base model (default: generator_model)."}
    )
    output_dir: str = field(
        default="./var/generator", metadata={"help": "Adapters go to <output_dir>/<version>."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Modules to adapt (default: peft's for the architecture)."}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (SFT)."})
    sft_steps: int = field(default=60, metadata={"help": "Optimizer steps of SFT."})
    dpo_steps: int = field(default=20, metadata={"help": "Optimizer steps of DPO (0: none)."})
    dpo_learning_rate: float = field(default=5e-4, metadata={"help": "AdamW rate (DPO)."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO temperature β."})
    batch_size: int = field(default=8, metadata={"help": "Examples (or pairs) per step."})
    max_length: int = field(default=512, metadata={"help": "Prompt + completion tokens, at most."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, LoRA init and batches."})
    min_winners: int = field(default=4, metadata={"help": "Fewer winners: skip the round."})
    min_exposure: int = field(default=100, metadata={"help": "Decisions a winner needs."})
    heldout_fraction: float = field(default=0.25, metadata={"help": "Share of products held out."})
    gate_samples: int = field(
        default=8, metadata={"help": "Gate samples per (held-out product, style) and version."}
    )
    gate_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens per gate sample (default: as generation)."}
    )
    guardrail_margin: float = field(
        default=0.05,
        metadata={"help": "Non-inferiority margin of the guardrail pass rate (95% one-sided)."},
    )
    diversity_tolerance: float = field(
        default=0.05, metadata={"help": "Allowed drop of distinct-2."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Collect and report; train nothing."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.guardrail_margin < 1.0:
            raise ValueError(f"guardrail_margin must be in [0, 1), got {self.guardrail_margin}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.min_winners < 2:
            raise ValueError(f"min_winners must be >= 2, got {self.min_winners}")
        for name in ("lora_r", "batch_size", "sft_steps", "max_length", "gate_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as typed :class:`FinetuneConfig` overrides (the CLI's ``--set``):
    numbers, booleans (true/false), comma-separated tuples, `none` for optional fields.
    Raises ValueError naming the pair that is not one.

    >>> parse_overrides(["sft_steps=40", "learning_rate=3e-3", "target_modules=c_attn,c_fc"])
    {'sft_steps': 40, 'learning_rate': 0.003, 'target_modules': ('c_attn', 'c_fc')}
    >>> parse_overrides(["epochs=3"])
    Traceback (most recent call last):
    ...
    ValueError: unknown finetune setting 'epochs' (known: base_model, output_dir, ...)
    """
    hints = get_type_hints(FinetuneConfig)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        if key not in hints or key == "dry_run":
            known = ", ".join(k for k in hints if k != "dry_run")
            raise ValueError(f"unknown finetune setting {key!r} (known: {known})")
        kinds = [t for t in get_args(hints[key]) or (hints[key],) if t is not type(None)]
        raw = raw.strip()
        if raw.lower() == "none" and type(None) in get_args(hints[key]):
            out[key] = None
            continue
        kind = kinds[0]
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                out[key] = raw.lower() == "true"
            elif get_origin(kind) is tuple:
                out[key] = tuple(part.strip() for part in raw.split(",") if part.strip())
            else:
                out[key] = kind(raw)
        except ValueError:
            name = getattr(kind, "__name__", str(kind))
            raise ValueError(f"finetune setting {key} takes a {name}, got {raw!r}") from None
    return out


def config_from_settings(settings: Settings, **overrides: Any) -> FinetuneConfig:
    """The scheduler's and the CLI's round: base model, output dir, seed and data thresholds
    from the settings, then `finetune_options` (`COPYLOOP_FINETUNE_OPTIONS`, the training knobs
    as `KEY=VALUE` pairs), then `overrides` (the CLI's ``--set``). Raises ValueError for an
    unknown or mistyped option."""
    values: dict[str, Any] = {
        "base_model": settings.generator_model,
        "output_dir": settings.finetune_output_dir,
        "min_winners": settings.finetune_min_winners,
        "min_exposure": settings.winner_min_exposure,
        "seed": settings.seed,
    }
    values.update(parse_overrides(settings.finetune_options))
    values.update(overrides)
    return FinetuneConfig(**values)


def config_json(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config as JSON values (recorded with the version it trained)."""
    out = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    out["target_modules"] = list(cfg.target_modules) if cfg.target_modules else None
    return out
