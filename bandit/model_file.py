"""The bandit's model file: VW's binary model behind a one-line JSON header and the counts.

    CLVW2\\n
    {"vw_args": "...", "features": 2, "learned": 5120, "counts": {"exposure": [n, b], ...}}\\n
    <exposure: b bytes of variant ids joined by newlines (UTF-8), then n little-endian int64>
    <offered: the same>
    <residual: the ids, then n × 3 little-endian float64 (sum, sum of squares, weight)>
    <VW bytes>

The counts per variant are binary because every serving process reads each new snapshot (one
a second while the learner learns) and the learner writes it: as JSON, with 50,000 variants, a
snapshot took ~0.5 s to write and its one-call parse held a serving process's GIL for tens of
ms; binary, they are written in one pass and read `_CHUNK` variants per call
(`bench/model_file.py`). Files written before (`CLVW1\\n`, the counts in the JSON line) still
load, and a file whose ids cannot be joined by newlines (a newline in an id) is written that
way.

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

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

MAGIC = b"CLVW2\n"
#: Files with their counts in the JSON line (read, and written where the binary layout cannot
#: hold an id).
MAGIC_JSON = b"CLVW1\n"
#: The count sections, in file order: their values' type and how many per variant.
_SECTIONS = (("exposure", "<i8", 1), ("offered", "<i8", 1), ("residual", "<f8", 3))
#: Variants per step when a file's counts are read (`_set_rows`).
_CHUNK = 4096
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
    # The binary count sections the counts were read from (a `MAGIC` file), kept so that the
    # next snapshot is read as a change of this one (`unpack(…, previous=)`).
    sections: Mapping[str, Section] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The header as JSON, counts included (`MAGIC_JSON`'s line)."""
        out = self._meta()
        out.update(
            exposure=dict(self.exposure),
            residual={k: [round(x, 9) for x in v] for k, v in self.residual.items()},
            offered=dict(self.offered),
        )
        return out

    def _meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vw_args": self.vw_args,
            "features": self.features,
            "learned": self.learned,
        }
        if self.version:
            out["version"] = self.version
            out["namespaces"] = dict(NAMESPACES)
        return out


def pack(header: ModelHeader, vw_model: bytes) -> bytes:
    """A model file's bytes.

    >>> data = pack(ModelHeader("--cb_adf", learned=3, exposure=MappingProxyType({"v": 2})), b"VW")
    >>> data.splitlines()[0], unpack(data)[0].exposure["v"], unpack(data)[1]
    (b'CLVW2', 2, b'VW')
    """
    try:
        blocks = [
            _section(getattr(header, name), dtype, width) for name, dtype, width in _SECTIONS
        ]
    except (ValueError, OverflowError):  # an id with a newline, a count past 64 bits
        return MAGIC_JSON + _line(header.to_json()) + vw_model
    meta = header._meta()
    meta["counts"] = {
        name: [n, len(ids)] for (name, _, _), (n, ids, _) in zip(_SECTIONS, blocks, strict=True)
    }
    body = b"".join(part for _, ids, values in blocks for part in (ids, values))
    return MAGIC + _line(meta) + body + vw_model


def _line(header: dict[str, Any]) -> bytes:
    """A header's JSON line, newline included."""
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _section(counts: Mapping[str, Any], dtype: str, width: int) -> tuple[int, bytes, bytes]:
    """(how many, the ids joined by newlines, the values) of one count section; ValueError when
    an id holds a newline."""
    ids = "\n".join(counts).encode()
    n = len(counts)
    if n and ids.count(b"\n") != n - 1:
        raise ValueError("a variant id holds a newline")
    flat = counts.values() if width == 1 else itertools.chain.from_iterable(counts.values())
    values = np.fromiter(flat, dtype=dtype, count=n * width)
    return n, ids, values.tobytes()


@dataclass(frozen=True, slots=True)
class Section:
    """One count section as a file held it: its ids (bytes and list), its values' bit patterns
    (8-byte integers, so that NaN and -0.0 compare exactly) and the map read from them."""

    ids_bytes: bytes
    ids: list[str]
    bits: np.ndarray
    mapping: dict[str, Any]


def unpack(
    data: bytes, previous: ModelHeader | None = None
) -> tuple[ModelHeader | None, bytes]:
    """The header (None for a bare VW model) and VW's bytes. Raises ValueError on a header that
    is not what `pack` writes.

    With `previous` (the header of a file read before, typically the snapshot before this one),
    a count section whose ids start with the previous file's, in the same order (the learner's
    maps only grow, at the end), is read as a change: the previous map is copied and only the
    variants whose values differ, or that are new, are set. The result equals a full read; a
    serving process reads each new snapshot that way in a fraction of the time at 50,000
    variants (`bench/model_file.py`)."""
    magic = next((m for m in (MAGIC, MAGIC_JSON) if data.startswith(m)), None)
    if magic is None:
        return None, data
    end = data.find(b"\n", len(magic))
    if end < 0:
        raise ValueError("model file header is not terminated")
    try:
        raw = _loads(data[len(magic) : end])
        sections: dict[str, Section] | None = None
        if magic == MAGIC:
            before = previous.sections if previous is not None else None
            sections, position = _binary_counts(data, end + 1, raw["counts"], before)
            counts = {name: section.mapping for name, section in sections.items()}
        else:
            counts, position = _json_counts(raw), end + 1
        header = ModelHeader(
            vw_args=str(raw["vw_args"]),
            features=int(raw["features"]),
            learned=int(raw["learned"]),
            exposure=MappingProxyType(counts["exposure"]),
            residual=MappingProxyType(counts["residual"]),
            offered=MappingProxyType(counts["offered"]),
            version=int(raw.get("version", 0)),
            sections=sections,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"model file header is unreadable: {exc}") from None
    return header, data[position:]


def _json_counts(raw: Any) -> dict[str, dict[str, Any]]:
    """The counts of a `MAGIC_JSON` header's line."""
    return {
        "exposure": _counts(raw["exposure"]),
        "residual": {
            str(k): (float(v[0]), float(v[1]), float(v[2]))
            for k, v in raw.get("residual", {}).items()
        },
        "offered": _counts(raw.get("offered", {})),
    }


def _binary_counts(
    data: bytes, position: int, sizes: Any, previous: Mapping[str, Section] | None
) -> tuple[dict[str, Section], int]:
    """The count sections of a `MAGIC` file, from `position` on, and where they end."""
    sections: dict[str, Section] = {}
    for name, dtype, width in _SECTIONS:
        n, ids_bytes = (int(x) for x in sizes[name])
        values_bytes = n * width * 8
        if n < 0 or ids_bytes < 0 or position + ids_bytes + values_bytes > len(data):
            raise ValueError(f"the {name} counts run past the end of the file")
        raw_ids = data[position : position + ids_bytes]
        position += ids_bytes
        values = np.frombuffer(data, dtype, n * width, position)
        position += values_bytes
        before = previous.get(name) if previous is not None else None
        sections[name] = _section_read(name, raw_ids, n, values, width, before)
    return sections, position


def _section_read(
    name: str, raw_ids: bytes, n: int, values: np.ndarray, width: int, before: Section | None
) -> Section:
    """One section's map: as a change of `before` where its ids extend `before`'s, else read
    whole."""
    bits = values.view("<i8")
    m = len(before.ids) if before is not None else 0
    if before is not None and _extends(raw_ids, n, before):
        tail = raw_ids[len(before.ids_bytes) + 1 :] if m else raw_ids
        ids = before.ids + tail.decode().split("\n") if n > m else before.ids
        rows = np.arange(m, n)
        if m:
            differ = bits[: m * width] != before.bits
            changed = np.flatnonzero(differ if width == 1 else differ.reshape(m, width).any(1))
            rows = np.concatenate([changed, rows])
        mapping = before.mapping.copy()
    else:
        ids = raw_ids.decode().split("\n") if n else []
        rows, mapping = np.arange(n), {}
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} {name} counts")
    _set_rows(mapping, ids, values, width, rows)
    return Section(raw_ids, ids, bits, mapping)


def _extends(ids_bytes: bytes, n: int, before: Section) -> bool:
    """True when the `n` ids `ids_bytes` joins are `before`'s, then (when `n` is larger) more."""
    m, old = len(before.ids), before.ids_bytes
    if n == m:
        return ids_bytes == old
    if n < m:
        return False
    return not m or (ids_bytes.startswith(old) and ids_bytes[len(old) : len(old) + 1] == b"\n")


def _set_rows(
    mapping: dict[str, Any], ids: list[str], values: np.ndarray, width: int, rows: np.ndarray
) -> None:
    """`mapping[ids[r]] = value of row r` (a triple where `width` is 3) for each row in `rows`,
    `_CHUNK` rows at a time: each step is one call that holds the GIL, and a serving process's
    requests wait for the longest one."""
    table = values.reshape(-1, width) if width > 1 else values
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        if len(chunk) and chunk[-1] - chunk[0] == len(chunk) - 1:  # a run: slices, no gather
            first, stop = int(chunk[0]), int(chunk[-1]) + 1
            keys, picked = ids[first:stop], table[first:stop]
        else:
            keys, picked = [ids[r] for r in chunk.tolist()], table[chunk]
        flat = picked.ravel().tolist()
        mapping.update(zip(keys, flat if width == 1 else _triples(flat), strict=True))


def _triples(values: list[float]) -> Iterator[tuple[float, float, float]]:
    return zip(values[0::3], values[1::3], values[2::3], strict=True)


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
            "not a copyloop model file (no CLVW header): a bare VW model does not say which "
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
