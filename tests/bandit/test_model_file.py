"""`bandit.model_file`: a header reads back as it was written, in the binary layout and in the
JSON one (files written before it, ids it cannot hold), whichever JSON reader takes it."""

from __future__ import annotations

import json
import math
import struct
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit.model_file import MAGIC, MAGIC_JSON, Counts, ModelHeader, pack, unpack, with_version


def test_a_header_reads_back_as_written() -> None:
    header = ModelHeader(
        "--cb_adf -q UA",
        learned=12,
        exposure=MappingProxyType({"v_a": 3, "v_é": 2**40}),
        residual=MappingProxyType({"v_a": (0.5, -1.25, 3.0)}),
        offered=MappingProxyType({"v_a": 5}),
        version=7,
        learns_from=4,
    )
    data = pack(header, b"\x00VW bytes\n")
    assert data.startswith(MAGIC)
    read, vw = unpack(data)
    assert (read, vw) == (header, b"\x00VW bytes\n") and read is not None
    assert type(read.exposure["v_a"]) is int and type(read.residual["v_a"]) is tuple
    old = MAGIC_JSON + json.dumps(header.to_json()).encode() + b"\nVW"  # a file from before
    assert unpack(old) == (header, b"VW")


def test_a_restart_cut_is_read_where_written_and_left_out_of_an_export() -> None:
    plain = pack(ModelHeader("--cb_adf"), b"VW")
    assert b"learns_from" not in plain  # files without a cut read as before
    assert unpack(plain)[0] == ModelHeader("--cb_adf") and ModelHeader().learns_from == 0
    restarted = pack(ModelHeader("--cb_adf", learns_from=9), b"VW")
    header, _ = unpack(restarted)
    assert header is not None and header.learns_from == 9
    exported, _ = unpack(with_version(restarted, 12))  # versions of another ledger mean nothing
    assert exported is not None and (exported.version, exported.learns_from) == (12, 0)


def test_the_binary_counts_keep_what_json_would_round_and_empty_maps() -> None:
    header = ModelHeader(
        "--cb_adf",
        learned=2,
        exposure=MappingProxyType({"a": 1, "b": 0}),
        residual=MappingProxyType({"b": (math.pi, -0.0, 1e-300), "c": (math.nan, math.inf, 2.0)}),
    )
    read, vw = unpack(pack(header, b""))
    assert read is not None and vw == b""
    assert read.exposure == {"a": 1, "b": 0} and read.offered == {}
    assert read.residual["b"] == (math.pi, -0.0, 1e-300)
    nan, inf, two = read.residual["c"]
    assert math.isnan(nan) and inf == math.inf and two == 2.0


@pytest.mark.parametrize(
    "exposure", [{"line\nbreak": 1}, {"v": 2**64}], ids=["newline in an id", "count past 64 bits"]
)
def test_what_the_binary_layout_cannot_hold_is_written_as_json(exposure: dict[str, int]) -> None:
    header = ModelHeader("--cb_adf", exposure=MappingProxyType(exposure))
    data = pack(header, b"VW")
    assert data.startswith(MAGIC_JSON)
    assert unpack(data) == (header, b"VW")


def test_what_orjson_refuses_is_read_as_json_reads_it() -> None:
    # `json` writes NaN and integers past 64 bits; a boolean count becomes an int, as before.
    line = (
        b'{"vw_args":"--cb_adf","features":1,"learned":18446744073709551621,'
        b'"exposure":{"v":true},"residual":{"v":[NaN,1,2]},"offered":{}}'
    )
    header, vw = unpack(MAGIC_JSON + line + b"\nVW")
    assert header is not None and vw == b"VW"
    assert header.learned == 2**64 + 5
    assert header.exposure == {"v": 1} and type(header.exposure["v"]) is int
    assert math.isnan(header.residual["v"][0]) and header.residual["v"][1:] == (1.0, 2.0)


@pytest.mark.parametrize(
    "line", [b"{", b'{"vw_args":"x"}', b'{"vw_args":"x","features":1,"learned":1,"exposure":[1]}']
)
def test_an_unreadable_header_is_refused(line: bytes) -> None:
    for magic in (MAGIC, MAGIC_JSON):
        with pytest.raises(ValueError, match="model file header is unreadable"):
            unpack(magic + line + b"\nVW")


def test_counts_that_run_past_the_file_are_refused() -> None:
    data = pack(ModelHeader("--cb_adf", exposure=MappingProxyType({"v1": 1, "v2": 2})), b"")
    with pytest.raises(ValueError, match="run past the end"):
        unpack(data[:-4])


# -- the next snapshot read as a change of the one before ------------------------------------
def _bits(header: ModelHeader | None) -> tuple[list[tuple[str, object]], ...]:
    """The header's counts, in order, floats by their bit patterns (NaN and -0.0 exactly)."""
    assert header is not None

    def exact(v: object) -> object:
        return tuple(struct.pack("<d", x) for x in v) if isinstance(v, tuple) else v

    return tuple(
        [(k, exact(v)) for k, v in getattr(header, name).items()]
        for name in ("exposure", "offered", "residual")
    )


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_ids = st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=6)


@st.composite
def _two_snapshots(draw: st.DrawFn) -> tuple[ModelHeader, ModelHeader]:
    """A header and a following one: counts changed, variants added at the end (the learner's
    way), and at times what the learner never does (a variant gone, ids reordered)."""
    ids = draw(st.lists(_ids, unique=True, max_size=12))
    exposure = {v: draw(st.integers(0, 2**62)) for v in ids}
    residual = {v: (draw(_floats), draw(_floats), draw(_floats)) for v in ids}
    first = ModelHeader(
        "--cb_adf", exposure=MappingProxyType(exposure), residual=MappingProxyType(residual)
    )
    exposure, residual = dict(exposure), dict(residual)
    for v in ids:
        if draw(st.booleans()):
            exposure[v] += 1
        if draw(st.booleans()):
            residual[v] = (draw(_floats), residual[v][1], draw(_floats))
    for v in draw(st.lists(_ids, unique=True, max_size=4)):
        exposure.setdefault(v, draw(st.integers(0, 9)))
        residual.setdefault(v, (draw(_floats), 0.0, -0.0))
    change = draw(st.sampled_from(["grow", "drop one", "reverse"]))
    if change == "drop one" and ids:
        exposure.pop(ids[0])
    elif change == "reverse":
        exposure = dict(reversed(exposure.items()))
    second = ModelHeader(
        "--cb_adf", exposure=MappingProxyType(exposure), residual=MappingProxyType(residual)
    )
    return first, second


@given(_two_snapshots())
@settings(max_examples=300, deadline=None)
def test_a_snapshot_read_as_a_change_equals_it_read_whole(
    pair: tuple[ModelHeader, ModelHeader],
) -> None:
    first, second = pair
    before, _ = unpack(pack(first, b"VW1"))
    data = pack(second, b"VW2")
    whole, vw_whole = unpack(data)
    changed, vw_changed = unpack(data, previous=before)
    assert vw_whole == vw_changed == b"VW2"
    assert _bits(changed) == _bits(whole) == _bits(second)
    assert changed is not None and whole is not None
    assert (changed.vw_args, changed.learned) == (whole.vw_args, whole.learned)


def test_the_next_snapshot_reads_only_its_new_ids() -> None:
    residual = {f"v{i}": (float(i), 0.5, 1.0) for i in range(10_000)}
    first = ModelHeader("--cb_adf", residual=MappingProxyType(residual))
    before, _ = unpack(pack(first, b""))
    residual["v3"] = (3.0, 0.5, 2.0)
    residual["v_new"] = (1.0, 1.0, 1.0)
    data = pack(ModelHeader("--cb_adf", residual=MappingProxyType(residual)), b"")
    after, _ = unpack(data)
    changed, _ = unpack(data, before)
    assert before is not None and after is not None and changed is not None
    assert changed.residual == after.residual == residual
    # the previous file's ids, grown by the new one, not read again
    assert isinstance(changed.residual, Counts) and isinstance(before.residual, Counts)
    assert isinstance(after.residual, Counts)
    assert changed.residual.ids_store() is before.residual.ids_store()
    assert after.residual.ids_store() is not before.residual.ids_store()
    assert changed.residual["v3"] == (3.0, 0.5, 2.0) and before.residual["v3"] == (3.0, 0.5, 1.0)
    assert "v_new" not in before.residual and len(before.residual) == 10_000
    assert list(before.residual)[-1] == "v9999" and before.residual.get("v_new") is None


def test_ids_that_do_not_match_their_count_are_refused_with_a_previous_read() -> None:
    before, _ = unpack(pack(ModelHeader("--cb_adf", exposure=MappingProxyType({"a": 1})), b""))
    data = pack(ModelHeader("--cb_adf", exposure=MappingProxyType({"a": 1, "b": 2})), b"")
    # the header says 2 exposure counts; make it say 1 with the 2 ids' bytes still there
    forged = data.replace(b'"exposure":[2,3]', b'"exposure":[1,3]', 1)
    assert forged != data
    for previous in (None, before):
        with pytest.raises(ValueError, match="model file header is unreadable"):
            unpack(forged, previous)


@pytest.mark.parametrize(
    ("ids", "size", "forged_size"),
    [
        ("ab", b'"exposure":[2,3]', b'"exposure":[3,3]'),  # a, b said to be 3 counts
        ("abc", b'"exposure":[3,5]', b'"exposure":[2,5]'),  # all the held ids, said to be 2
    ],
)
def test_a_count_that_disagrees_with_ids_held_before_is_refused(
    ids: str, size: bytes, forged_size: bytes
) -> None:
    # The previous file held a, b, c; this one's header miscounts its ids.
    held = MappingProxyType({"a": 1, "b": 2, "c": 3})
    before, _ = unpack(pack(ModelHeader("--cb_adf", exposure=held), b""))
    exposure = MappingProxyType({v: i for i, v in enumerate(ids)})
    data = pack(ModelHeader("--cb_adf", exposure=exposure), b"VW" * 8)
    forged = data.replace(size, forged_size, 1)
    assert forged != data
    for previous in (None, before):
        with pytest.raises(ValueError, match="model file header is unreadable"):
            unpack(forged, previous)
