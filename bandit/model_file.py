"""The bandit's model file: VW's binary model behind a one-line JSON header.

    CLVW1\\n
    {"vw_args": "...", "features": 2, "learned": 5120, "exposure": {"v1": 310, ...}}\\n
    <VW bytes>

An exported file (`copyloop model export`) is the same file with `version` (the ledger's version
it was exported from) and `namespaces` (what each feature namespace holds) in the header;
`checked` is what an import runs before storing one.

The header carries what VW's own file does not: the arguments and feature definitions it was
trained with (a model refuses to load where they differ, `ModelMismatchError`), how many
decisions it has learned (the explorer's schedule reads it), how many times each variant was
the served one among them and how many of them offered it at all (the fair trial for new copy
reads both: `offered` tells copy that arrived late from copy served rarely), and the sum, sum of
squares and weight of that variant's (recent) residuals against the model (its own effect,
`Policy.offset`). Bytes without the magic line are a bare VW model from before the header
existed: they load with an empty header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import orjson

MAGIC = b"CLVW1\n"
#: Bumped whenever `bandit.features` / `bandit.vw_format` change what an arm's features are.
FEATURES_VERSION = 2
#: What each VW namespace holds under FEATURES_VERSION (`bandit.vw_format`).
NAMESPACES: MappingProxyType[str, str] = MappingProxyType(
    {
        "U": "the storefront's context (every key it sends)",
        "P": "the product (id and category)",
        "A": "the variant's style, source, generator version and length class",
        "T": "the variant's text shape (length, bullets, spec lines, numbers, tone words)",
        "V": "the variant's identity",
    }
)


class ModelFileError(ValueError):
    """A model file that cannot be used here (unreadable, or made for other arguments or
    feature definitions)."""


@dataclass(frozen=True)
class ModelHeader:
    """What a model file says about its model."""

    vw_args: str = ""
    features: int = FEATURES_VERSION
    learned: int = 0
    exposure: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    residual: MappingProxyType[str, tuple[float, float, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    offered: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0  # 0: not exported (the ledger row knows its version)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vw_args": self.vw_args,
            "features": self.features,
            "learned": self.learned,
            "exposure": dict(self.exposure),
            "residual": {k: [round(x, 9) for x in v] for k, v in self.residual.items()},
            "offered": dict(self.offered),
        }
        if self.version:
            out["version"] = self.version
            out["namespaces"] = dict(NAMESPACES)
        return out


def pack(header: ModelHeader, vw_model: bytes) -> bytes:
    """A model file's bytes.

    >>> data = pack(ModelHeader("--cb_adf", learned=3, exposure=MappingProxyType({"v": 2})), b"VW")
    >>> data.splitlines()[0], unpack(data)[0].exposure["v"], unpack(data)[1]
    (b'CLVW1', 2, b'VW')
    """
    line = json.dumps(header.to_json(), separators=(",", ":"), sort_keys=True).encode()
    return MAGIC + line + b"\n" + vw_model


def unpack(data: bytes) -> tuple[ModelHeader | None, bytes]:
    """The header (None for a bare VW model) and VW's bytes. Raises ValueError on a header that
    is not what `pack` writes."""
    if not data.startswith(MAGIC):
        return None, data
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("model file header is not terminated")
    try:
        raw = _loads(data[len(MAGIC) : end])
        header = ModelHeader(
            vw_args=str(raw["vw_args"]),
            features=int(raw["features"]),
            learned=int(raw["learned"]),
            exposure=MappingProxyType(_counts(raw["exposure"])),
            residual=MappingProxyType(
                {
                    str(k): (float(v[0]), float(v[1]), float(v[2]))
                    for k, v in raw.get("residual", {}).items()
                }
            ),
            offered=MappingProxyType(_counts(raw.get("offered", {}))),
            version=int(raw.get("version", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"model file header is unreadable: {exc}") from None
    return header, data[end + 1 :]


def _loads(line: bytes) -> Any:
    """The header's JSON, by orjson (a serving process reads every new snapshot's header, which
    holds counts per variant: 4.6 MB for 50,000 variants); by `json` what orjson refuses and
    `json` writes (NaN, infinities, integers past 64 bits)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def _counts(raw: Any) -> dict[str, int]:
    """A header's count per variant id, as `{str(k): int(v)}` makes it, without a copy when it
    holds only ints already (JSON object keys are strings)."""
    if type(raw) is dict and all(type(v) is int for v in raw.values()):
        return raw
    return {str(k): int(v) for k, v in raw.items()}


def with_version(data: bytes, version: int) -> bytes:
    """A stored model's bytes as an exported file: its header says `version` (and the
    namespaces). A bare VW model cannot be exported: nothing would say how it was trained."""
    header, vw_model = unpack(data)
    if header is None:
        raise ModelFileError(f"version {version} is a bare VW model without a header")
    return pack(replace(header, version=version), vw_model)


def checked(data: bytes, vw_args: str) -> ModelHeader:
    """The header of a model file to import, when it was trained with `vw_args` and this
    copyloop's feature definitions; `ModelFileError` saying what differs otherwise.

    >>> checked(pack(ModelHeader("--cb_adf -q UA"), b"VW"), "--cb_adf -q UA").vw_args
    '--cb_adf -q UA'
    """
    try:
        header, _ = unpack(data)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    if header is None:
        raise ModelFileError(
            "not a copyloop model file (no CLVW1 header): a bare VW model does not say which "
            "arguments and features it was trained with"
        )
    if header.features != FEATURES_VERSION:
        raise ModelFileError(
            f"the model was trained on feature definitions v{header.features}, this copyloop "
            f"uses v{FEATURES_VERSION}"
        )
    if header.vw_args.split() != vw_args.split():
        raise ModelFileError(
            f"the model was trained with VW arguments {header.vw_args!r}, this ledger's model "
            f"uses {vw_args!r} (set COPYLOOP_BANDIT_* to match, or import a model trained with "
            "them)"
        )
    return header
