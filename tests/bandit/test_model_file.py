"""`bandit.model_file`: a header reads back as it was written, in the binary layout and in the
JSON one (files written before it, ids it cannot hold), whichever JSON reader takes it."""

from __future__ import annotations

import json
import math
from types import MappingProxyType

import pytest

from bandit.model_file import MAGIC, MAGIC_JSON, ModelHeader, pack, unpack


def test_a_header_reads_back_as_written() -> None:
    header = ModelHeader(
        "--cb_adf -q UA",
        learned=12,
        exposure=MappingProxyType({"v_a": 3, "v_é": 2**40}),
        residual=MappingProxyType({"v_a": (0.5, -1.25, 3.0)}),
        offered=MappingProxyType({"v_a": 5}),
        version=7,
    )
    data = pack(header, b"\x00VW bytes\n")
    assert data.startswith(MAGIC)
    read, vw = unpack(data)
    assert (read, vw) == (header, b"\x00VW bytes\n") and read is not None
    assert type(read.exposure["v_a"]) is int and type(read.residual["v_a"]) is tuple
    old = MAGIC_JSON + json.dumps(header.to_json()).encode() + b"\nVW"  # a file from before
    assert unpack(old) == (header, b"VW")


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
