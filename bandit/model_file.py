"""The bandit's model file: VW's binary model behind a one-line JSON header.

    CLVW1\\n
    {"vw_args": "...", "features": 2, "learned": 5120, "exposure": {"v1": 310, ...}}\\n
    <VW bytes>

The header carries what VW's own file does not: the arguments and feature definitions it was
trained with (a model refuses to load where they differ, `ModelMismatchError`), how many
decisions it has learned (the explorer's schedule reads it), how many times each variant was
the served one among them (the fair trial for new copy reads it) and the sum, sum of squares
and weight of that variant's (recent) residuals against the model (its own effect,
`Policy.offset`). Bytes without the magic line are a bare VW model from before the header
existed: they load with an empty header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MAGIC = b"CLVW1\n"
#: Bumped whenever `bandit.features` / `bandit.vw_format` change what an arm's features are.
FEATURES_VERSION = 2


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

    def to_json(self) -> dict[str, Any]:
        return {
            "vw_args": self.vw_args,
            "features": self.features,
            "learned": self.learned,
            "exposure": dict(self.exposure),
            "residual": {k: [round(x, 9) for x in v] for k, v in self.residual.items()},
        }


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
        raw = json.loads(data[len(MAGIC) : end])
        header = ModelHeader(
            vw_args=str(raw["vw_args"]),
            features=int(raw["features"]),
            learned=int(raw["learned"]),
            exposure=MappingProxyType({str(k): int(v) for k, v in raw["exposure"].items()}),
            residual=MappingProxyType(
                {
                    str(k): (float(v[0]), float(v[1]), float(v[2]))
                    for k, v in raw.get("residual", {}).items()
                }
            ),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"model file header is unreadable: {exc}") from None
    return header, data[end + 1 :]
