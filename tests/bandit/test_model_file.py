"""`bandit.model_file`: a header reads back as it was written, whichever JSON reader takes it."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from bandit.model_file import MAGIC, ModelHeader, pack, unpack


def test_a_header_reads_back_as_written() -> None:
    header = ModelHeader(
        "--cb_adf -q UA",
        learned=12,
        exposure=MappingProxyType({"v_a": 3, "v_é": 2**40}),
        residual=MappingProxyType({"v_a": (0.5, -1.25, 3.0)}),
        offered=MappingProxyType({"v_a": 5}),
        version=7,
    )
    read, vw = unpack(pack(header, b"\x00VW bytes\n"))
    assert (read, vw) == (header, b"\x00VW bytes\n")


def test_what_orjson_refuses_is_read_as_json_reads_it() -> None:
    # `json` writes NaN and integers past 64 bits; a boolean count becomes an int, as before.
    line = (
        b'{"vw_args":"--cb_adf","features":1,"learned":18446744073709551621,'
        b'"exposure":{"v":true},"residual":{"v":[NaN,1,2]},"offered":{}}'
    )
    header, vw = unpack(MAGIC + line + b"\nVW")
    assert header is not None and vw == b"VW"
    assert header.learned == 2**64 + 5
    assert header.exposure == {"v": 1} and type(header.exposure["v"]) is int
    assert math.isnan(header.residual["v"][0]) and header.residual["v"][1:] == (1.0, 2.0)


@pytest.mark.parametrize(
    "line", [b"{", b'{"vw_args":"x"}', b'{"vw_args":"x","features":1,"learned":1,"exposure":[1]}']
)
def test_an_unreadable_header_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="model file header is unreadable"):
        unpack(MAGIC + line + b"\nVW")
