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
reads both: `offered` tells copy that arrived late from copy served rarely), the sum, sum of
squares and weight of that variant's (recent) residuals against the model (its own effect,
`Policy.offset`), and, for a model restarted by an operator, the first version whose decisions
it learns (`learns_from`). Bytes without the magic line are a bare VW model from before the
header existed: they load with an empty header.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar, cast

import numpy as np
import orjson

MAGIC = b"CLVW2\n"
#: Files with their counts in the JSON line (read, and written where the binary layout cannot
#: hold an id).
MAGIC_JSON = b"CLVW1\n"
#: The count sections, in file order: their values' type and how many per variant.
_SECTIONS = (("exposure", "<i8", 1), ("offered", "<i8", 1), ("residual", "<f8", 3))
#: Variants per step when a file's counts are copied into a dict (`Counts.copy`).
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
    # read-only: a `MappingProxyType`, or a `Counts` view of the file they were read from
    exposure: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    residual: Mapping[str, tuple[float, float, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    offered: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0  # 0: not exported (the ledger row knows its version)
    # A restarted model (`copyloop model restart`) learns only the decisions that versions from
    # this one on served (0: every decision): what older versions served shows the old tastes.
    learns_from: int = 0

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
        if self.learns_from:
            out["learns_from"] = self.learns_from
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
    if isinstance(counts, Counts):  # a file's counts, written back as they were read
        return len(counts), counts.joined(), counts.raw()
    ids = "\n".join(counts).encode()
    n = len(counts)
    if n and ids.count(b"\n") != n - 1:
        raise ValueError("a variant id holds a newline")
    flat = counts.values() if width == 1 else itertools.chain.from_iterable(counts.values())
    values = np.fromiter(flat, dtype=dtype, count=n * width)
    return n, ids, values.tobytes()


V = TypeVar("V")


class _Ids:
    """Variant ids in a file's order, and each one's row: shared by the views of successive
    snapshots, whose ids only grow, at the end (the learner's maps are insertion-ordered), so
    that a new snapshot reads only its new ids. Rows never change once given; a view reads
    only its first `n`."""

    __slots__ = ("joined", "ids", "rows")

    def __init__(self) -> None:
        self.joined = b""  # the ids joined by newlines, as the file holds them
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}

    def holds(self, joined: bytes, n: int) -> bool:
        """True when the `n` ids `joined` joins are the first `n` of these."""
        if n > len(self.ids) or n == 0:
            return n == 0 and not joined
        mine = self.joined
        if len(joined) == len(mine):  # all of them (every reload): no need to count newlines
            return n == len(self.ids) and joined == mine
        at_boundary = mine[len(joined) : len(joined) + 1] == b"\n"
        return at_boundary and mine.startswith(joined) and joined.count(b"\n") == n - 1

    def continued_by(self, joined: bytes) -> bool:
        """True when `joined` joins these ids and then more."""
        if not self.ids:
            return True
        size = len(self.joined)
        return joined[size : size + 1] == b"\n" and joined.startswith(self.joined)

    def extend(self, joined: bytes, n: int) -> None:
        """Grow to the `n` ids `joined` joins, which `continued_by` accepted (ValueError where
        the count disagrees or an id repeats; then nothing changes)."""
        tail = joined[len(self.joined) + 1 :] if self.ids else joined
        more = tail.decode().split("\n") if n > len(self.ids) else []
        if len(self.ids) + len(more) != n:
            raise ValueError(f"{len(self.ids) + len(more)} ids for {n} counts")
        start = len(self.ids)
        rows = dict(zip(more, range(start, n), strict=True))
        if len(rows) != len(more) or not rows.keys().isdisjoint(self.rows.keys()):
            raise ValueError("a variant id repeats")
        self.ids += more
        if self.rows:
            self.rows.update(rows)
        else:
            self.rows = rows
        self.joined = joined


class Counts(Mapping[str, V]):
    """A count section of a model file, read in place: `{variant id: count}` (a triple for
    the residuals) looked up in the file's own array. Building a dict of 50,000 variants held
    a serving process's GIL for tens of ms at every snapshot; a view costs nothing to build,
    and a lookup (a few per action set and model version: `Policy` keeps the terms) ~1 µs.
    Read-only: `copy()` gives a dict."""

    __slots__ = ("_ids", "_n", "_values", "_width")

    def __init__(self, ids: _Ids, n: int, values: np.ndarray, width: int) -> None:
        self._ids, self._n, self._width = ids, n, width
        self._values = values.reshape(n, width) if width > 1 else values

    def _value(self, row: int) -> V:
        if self._width == 1:
            return cast(V, self._values.item(row))
        return cast(V, tuple(self._values[row].tolist()))

    def __getitem__(self, key: str) -> V:
        row = self._ids.rows[key]
        if row >= self._n:
            raise KeyError(key)
        return self._value(row)

    def get(self, key: str, default: Any = None) -> Any:
        row = self._ids.rows.get(key)
        return default if row is None or row >= self._n else self._value(row)

    def __contains__(self, key: object) -> bool:
        row = self._ids.rows.get(key) if isinstance(key, str) else None
        return row is not None and row < self._n

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids.ids[: self._n])

    def __len__(self) -> int:
        return self._n

    def copy(self) -> dict[str, V]:
        """A dict of the counts, built `_CHUNK` variants a call (each call holds the GIL)."""
        out: dict[str, V] = {}
        ids = self._ids.ids
        for start in range(0, self._n, _CHUNK):
            stop = min(start + _CHUNK, self._n)
            chunk = self._values[start:stop].tolist()
            values = cast(Iterable[V], chunk if self._width == 1 else map(tuple, chunk))
            out.update(zip(ids[start:stop], values, strict=True))
        return out

    def joined(self) -> bytes:
        """The ids joined by newlines, as the file held them."""
        if self._n == len(self._ids.ids):
            return self._ids.joined
        return "\n".join(self._ids.ids[: self._n]).encode()

    def raw(self) -> bytes:
        """The values' bytes, as the file held them."""
        return self._values.tobytes()

    def ids_store(self) -> _Ids:
        return self._ids


def unpack(
    data: bytes, previous: ModelHeader | None = None
) -> tuple[ModelHeader | None, bytes]:
    """The header (None for a bare VW model) and VW's bytes. Raises ValueError on a header that
    is not what `pack` writes.

    A `MAGIC` file's counts are `Counts` views of `data`. With `previous` (the header of a file
    read before, typically the snapshot before this one), a section whose ids are the previous
    file's, or begin with them (the learner's maps only grow, at the end), shares its ids and
    rows and reads only the new ones (`bench/model_file.py`)."""
    magic = next((m for m in (MAGIC, MAGIC_JSON) if data.startswith(m)), None)
    if magic is None:
        return None, data
    end = data.find(b"\n", len(magic))
    if end < 0:
        raise ValueError("model file header is not terminated")
    try:
        raw = _loads(data[len(magic) : end])
        counts: Mapping[str, Mapping[str, Any]]
        if magic == MAGIC:
            counts, position = _binary_counts(data, end + 1, raw["counts"], previous)
        else:
            json_counts, position = _json_counts(raw), end + 1
            counts = {name: MappingProxyType(m) for name, m in json_counts.items()}
        header = ModelHeader(
            vw_args=str(raw["vw_args"]),
            features=int(raw["features"]),
            learned=int(raw["learned"]),
            exposure=counts["exposure"],
            residual=counts["residual"],
            offered=counts["offered"],
            version=int(raw.get("version", 0)),
            learns_from=int(raw.get("learns_from", 0)),
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
    data: bytes, position: int, sizes: Any, previous: ModelHeader | None
) -> tuple[dict[str, Counts[Any]], int]:
    """Views of the count sections of a `MAGIC` file, from `position` on, and where they end."""
    views: dict[str, Counts[Any]] = {}
    read: list[_Ids] = []  # this file's ids so far: sections often hold the same ids
    for name, dtype, width in _SECTIONS:
        n, ids_bytes = (int(x) for x in sizes[name])
        values_bytes = n * width * 8
        if n < 0 or ids_bytes < 0 or position + ids_bytes + values_bytes > len(data):
            raise ValueError(f"the {name} counts run past the end of the file")
        joined = data[position : position + ids_bytes]
        position += ids_bytes
        values = np.frombuffer(data, dtype, n * width, position)
        position += values_bytes
        ids = next((r for r in read if r.holds(joined, n)), None)
        if ids is None:
            before = getattr(previous, name, None)
            ids = _ids_for(joined, n, before.ids_store() if isinstance(before, Counts) else None)
            read.append(ids)
        views[name] = Counts(ids, n, values, width)
    return views, position


def _ids_for(joined: bytes, n: int, before: _Ids | None) -> _Ids:
    """The ids of a section whose `n` ids `joined` joins: `before`'s when it holds them (grown
    when they continue it), else read afresh."""
    if before is not None:
        if before.holds(joined, n):
            return before
        if n > len(before.ids) and before.continued_by(joined):
            before.extend(joined, n)
            return before
    ids = _Ids()
    ids.extend(joined, n)
    return ids


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
    # `learns_from` names versions of this ledger: meaningless where the file is imported
    return pack(replace(header, version=version, learns_from=0), vw_model)


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
