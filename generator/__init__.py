"""The generator: candidate descriptions per product, each in a style, checked by guardrails.

Modules: `facts` (what a product's data supports), `rules` (the CPU backend), `hf` (transformers
causal or seq2seq models, batched, on the GPU when there is one), `prompts`, `guardrails` (checks
every candidate passes before it can be served), `jobs` (generate and store variants), `winners`
(variants that beat the control by their logged-propensity bounds), `training` and `finetune`
(LoRA SFT + weighted DPO behind an evaluation gate), `versions` (shipped versions, rollback),
`tiny` (tiny local models for tests and offline demos).

Errors::

    GeneratorError                  base of everything raised here
    ├── BackendUnavailableError     the requested backend cannot run here (a package missing)
    ├── SettingError                a setting it needs is unset or names no loadable model
    │                               (also a ValueError; `finetune.FinetuneError` is one)
    ├── UnknownStyleError           a style the backend does not know (also a ValueError)
    └── UnknownProductError         product ids that are not in the ledger (also a LookupError)
"""

from __future__ import annotations


class GeneratorError(Exception):
    """Base of the generator's errors."""


class BackendUnavailableError(GeneratorError):
    """The requested backend cannot run here."""


class SettingError(GeneratorError, ValueError):
    """A setting the generator needs is unset, or names no model it can load: the operator's
    input to fix (the CLI exits 2)."""


class UnknownStyleError(GeneratorError, ValueError):
    """A style the backend does not know."""


class UnknownProductError(GeneratorError, LookupError):
    """Product ids that are not in the ledger."""


__all__ = [
    "BackendUnavailableError",
    "GeneratorError",
    "SettingError",
    "UnknownProductError",
    "UnknownStyleError",
]
