"""Catalog import: file parsing with line-precise errors, and the all-or-nothing upsert that keeps
each product's single active control variant in step with its description."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import (
    SAMPLE_CATALOG,
    CatalogError,
    ProductIn,
    UpsertResult,
    read_catalog,
    upsert_products,
    variant_id,
)
from core.ledger import Product, Variant
from generator.guardrails import GuardrailParams, check


def product(pid: str = "p-1", **changes: object) -> ProductIn:
    values: dict[str, object] = {
        "product_id": pid,
        "title": "Stoneware Mug",
        "category": "kitchen",
        "description": "A sturdy stoneware mug that holds 350 ml of coffee.",
        "attributes": {"material": "stoneware", "capacity_ml": 350},
    }
    values.update(changes)
    return ProductIn.model_validate(values)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def variants_of(sessions: sessionmaker[Session], pid: str) -> list[Variant]:
    with sessions() as s:
        return list(s.scalars(select(Variant).where(Variant.product_id == pid)))


def active_controls(sessions: sessionmaker[Session], pid: str) -> list[Variant]:
    return [v for v in variants_of(sessions, pid) if v.source == "control" and v.status == "active"]


# ---- reading files -------------------------------------------------------------------------


def test_jsonl_rows_are_validated_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "catalog.jsonl",
        [product("a").model_dump(), "", {**product("b").model_dump(), "category": ""}],
    )
    products = read_catalog(path)
    assert [p.product_id for p in products] == ["a", "b"]
    assert products[0].attributes == {"material": "stoneware", "capacity_ml": 350}


def test_csv_extra_columns_and_attributes_json_become_attributes(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "product_id,title,description,colour,weight_g,attributes\n"
        'm1,Mug,"A mug.\nIt holds tea.",blue,320,"{""capacity_ml"": 350}"\n'
        "m2,Cup,A cup for espresso.,,,\n",
        encoding="utf-8",
    )
    first, second = read_catalog(path)
    assert first.description == "A mug.\nIt holds tea."
    assert first.attributes == {"capacity_ml": 350, "colour": "blue", "weight_g": "320"}
    assert second.category == "" and second.attributes == {}


@pytest.mark.parametrize(
    ("name", "content", "message", "line", "field"),
    [
        (
            "catalog.csv",
            "product_id,title,description\n"
            + "".join(f"p{i},Title {i},Some description.\n" for i in range(5))
            + "p9,  ,Some description.\n",
            "catalog.csv line 7: title: must not be empty",
            7,
            "title",
        ),
        (
            "catalog.csv",
            'product_id,title,description\np1,T,"two\nlines"\np2,T,\n',
            "catalog.csv line 4: description: must not be empty",
            4,
            "description",
        ),
        (
            "catalog.csv",
            "product_id,description\np1,D\n",
            "catalog.csv line 1: header: missing column 'title'",
            1,
            "title",
        ),
        (
            "catalog.csv",
            "product_id,title,description\np1,T,D,extra\n",
            "catalog.csv line 2: has 4 fields, the header has 3",
            2,
            None,
        ),
        (
            "catalog.csv",
            'product_id,title,description,colour,attributes\np1,T,D,red,"{""colour"": ""blue""}"\n',
            "catalog.csv line 2: colour: given both as a column and in attributes",
            2,
            "colour",
        ),
        (
            "catalog.jsonl",
            '{"product_id": "a", "title": "T", "description": "D"}\n{"product_id": "b", "title"}\n',
            "catalog.jsonl line 2: invalid JSON: Expecting ':' delimiter (column 28)",
            2,
            None,
        ),
        (
            "catalog.jsonl",
            '\n["not", "an", "object"]\n',
            "catalog.jsonl line 2: must be a JSON object, got list",
            2,
            None,
        ),
        (
            "catalog.jsonl",
            '{"product_id": "a", "title": "T"}\n',
            "catalog.jsonl line 1: description: is required",
            1,
            "description",
        ),
        (
            "catalog.jsonl",
            '{"product_id": "a", "title": "T", "descripton": "D"}\n',
            "catalog.jsonl line 1: descripton: unknown field (allowed: product_id, title, "
            "category, description, attributes; put other facts in attributes)",
            1,
            "descripton",
        ),
        (
            "catalog.jsonl",
            json.dumps({"product_id": "x" * 129, "title": "T", "description": "D"}),
            "catalog.jsonl line 1: product_id: must be 1 to 128 characters, got 129",
            1,
            "product_id",
        ),
        (
            "catalog.jsonl",
            json.dumps({"product_id": "a", "title": 5, "description": "D"}),
            "catalog.jsonl line 1: title: must be a string, got int",
            1,
            "title",
        ),
        (
            "catalog.jsonl",
            json.dumps(
                {"product_id": "a", "title": "T", "description": "D", "attributes": {"s": {}}}
            ),
            "catalog.jsonl line 1: attributes: s: must be a string, number, boolean or a list "
            "of those, got dict",
            1,
            "attributes",
        ),
        (
            "catalog.jsonl",
            '{"product_id": "a", "title": "T", "description": "D"}\n'
            '{"product_id": "b", "title": "T", "description": "D"}\n'
            '{"product_id": "a", "title": "T2", "description": "D2"}\n',
            "catalog.jsonl line 3: product_id: duplicate 'a' (first on line 1)",
            3,
            "product_id",
        ),
        (
            "catalog.txt",
            "",
            "catalog.txt: unsupported catalog format '.txt' (expected .jsonl or .csv)",
            None,
            None,
        ),
    ],
)
def test_bad_rows_name_line_and_field(
    tmp_path: Path, name: str, content: str, message: str, line: int | None, field: str | None
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        read_catalog(path)
    assert str(caught.value) == message
    assert (caught.value.line, caught.value.field) == (line, field)


def test_invalid_utf8_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b'{"product_id": "\xff"}\n')
    with pytest.raises(CatalogError, match=r"^catalog.jsonl: not valid UTF-8 \(byte 16\)$"):
        read_catalog(path)


# ---- upserting -------------------------------------------------------------------------------


def test_upsert_creates_products_with_one_control_each(sessions: sessionmaker[Session]) -> None:
    result = upsert_products(sessions, [product("a"), product("b")], now=100.0)
    assert result == UpsertResult(created=2, updated=0, unchanged=0)
    [control] = active_controls(sessions, "a")
    assert control.variant_id == variant_id("a", product("a").description, "original")
    assert (control.text, control.style, control.generator_version) == (
        product("a").description,
        "original",
        "",
    )
    assert control.created_at == 100.0 and control.retired_at is None
    assert upsert_products(sessions, [product("a"), product("b")]) == UpsertResult(0, 0, 2)


def test_description_change_retires_the_old_control(sessions: sessionmaker[Session]) -> None:
    upsert_products(sessions, [product("a")], now=100.0)
    changed = product("a", description="A heavier stoneware mug for 350 ml of tea.")
    assert upsert_products(sessions, [changed], now=200.0) == UpsertResult(0, 1, 0, ("a",))
    by_status = {v.status: v for v in variants_of(sessions, "a")}
    assert set(by_status) == {"active", "retired"}
    assert by_status["active"].text == changed.description
    assert by_status["retired"].text == product("a").description
    assert by_status["retired"].retired_at == 200.0
    with sessions() as s:
        row = s.get(Product, "a")
        assert row is not None
        assert (row.description, row.created_at, row.updated_at) == (
            changed.description,
            100.0,
            200.0,
        )

    # Going back to the first text revives its control row (same deterministic id).
    upsert_products(sessions, [product("a")], now=300.0)
    [control] = active_controls(sessions, "a")
    assert control.text == product("a").description and control.retired_at is None
    assert len(variants_of(sessions, "a")) == 2


def test_title_change_keeps_the_control(sessions: sessionmaker[Session]) -> None:
    upsert_products(sessions, [product("a")])
    [before] = active_controls(sessions, "a")
    assert upsert_products(sessions, [product("a", title="Big Mug")]) == UpsertResult(
        0, 1, 0, ("a",)
    )
    [after] = active_controls(sessions, "a")
    assert after.variant_id == before.variant_id


def test_a_failing_batch_changes_nothing(sessions: sessionmaker[Session]) -> None:
    upsert_products(sessions, [product("a"), product("b")], now=100.0)
    # "b" arrives broken past validation (as a bug upstream could send it): NOT NULL fails
    # after "a" was already changed in the same transaction.
    broken = ProductIn.model_construct(**{**product("b").model_dump(), "title": None})
    batch = [product("a", description="Changed text of the mug."), broken, product("c")]
    with pytest.raises(Exception, match="(?i)null"):
        upsert_products(sessions, batch, now=200.0)
    with sessions() as s:
        assert s.get(Product, "c") is None
        a = s.get(Product, "a")
        assert a is not None and a.description == product("a").description
    assert [v.text for v in active_controls(sessions, "a")] == [product("a").description]


def test_duplicate_ids_in_a_batch_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(CatalogError) as caught:
        upsert_products(sessions, [product("a"), product("b"), product("a")])
    assert str(caught.value) == "product_id 'a' appears twice (items 0 and 2)"
    with sessions() as s:
        assert s.scalars(select(Product)).first() is None


def test_bad_file_row_leaves_the_ledger_untouched(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    good = product("a").model_dump()
    path = write_jsonl(tmp_path / "catalog.jsonl", [good, {**good, "product_id": "b", "title": ""}])
    with pytest.raises(CatalogError, match="line 2: title"):
        upsert_products(sessions, read_catalog(path))
    with sessions() as s:
        assert s.scalars(select(Product)).first() is None


# ---- the sample catalog ----------------------------------------------------------------------


def test_sample_catalog_is_large_varied_and_imports(sessions: sessionmaker[Session]) -> None:
    products = read_catalog(SAMPLE_CATALOG)
    assert len(products) >= 120
    assert len({p.category for p in products}) >= 6
    assert all(200 <= len(p.description) <= 600 for p in products)
    assert all(p.attributes.get("brand") for p in products)
    assert upsert_products(sessions, products).created == len(products)
    with sessions() as s:
        controls = s.scalars(select(Variant).where(Variant.status == "active")).all()
    assert len(controls) == len(products)


def test_sample_descriptions_agree_with_their_attributes() -> None:
    """Every number, quantity, brand, material, colour and name a description states is in its
    title or attributes, so the data the guardrails ground candidates in is itself consistent."""
    products = read_catalog(SAMPLE_CATALOG)
    brands = {str(p.attributes["brand"]) for p in products}
    params = GuardrailParams(min_chars=1, max_chars=10_000, known_brands=frozenset(brands))
    for p in products:
        facts_only = p.model_copy(update={"description": "-"})
        assert check(p.description, facts_only, [], params).ok, p.product_id
