"""The product catalog: read a `.jsonl` or `.csv` file, validate it, upsert it into the ledger.

Every product keeps exactly one active **control** variant, whose text is its description: the
original copy that the bandit's uplift is measured against. When a description changes the old
control is retired and a new one made active, in the same transaction as the product row.

Variant ids are deterministic (:func:`variant_id`), so that writing the same text twice is a
no-op wherever it happens (catalog import, the generator, replays).

Errors: :class:`CatalogError` (a `ValueError`) names the file, the 1-based physical line and
the field of the first bad row, e.g. ``catalog.csv line 7: title: must not be empty``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import Product, Variant

#: The sample catalog shipped with the package (128 products in 8 categories).
SAMPLE_CATALOG = Path(__file__).resolve().parent / "data" / "sample_catalog.jsonl"

#: The style and source of a product's original description.
CONTROL_STYLE = "original"
CONTROL_SOURCE = "control"

MAX_PRODUCT_ID_CHARS = 128
MAX_CATEGORY_CHARS = 128

AttributeScalar = str | int | float | bool
#: JSON-schema patterns (ECMA syntax) for OpenAPI: no NUL; no NUL and not blank once stripped.
_NO_NUL = "^[^\\u0000]*$"
_NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
AttributeValue = AttributeScalar | list[AttributeScalar]

_CSV_FIXED = ("product_id", "title", "category", "description")
_CHUNK = 500  # rows per IN (...) list or multi-row INSERT; well under SQLite's variable limit


def variant_id(product_id: str, text: str, style: str) -> str:
    """The deterministic id of a variant: the same product, text and style give the same id.

    >>> variant_id("kit-0001", "A sturdy pan.", "original")
    'v_...'
    >>> variant_id("kit-0001", "A sturdy pan.", "original") == variant_id(
    ...     "kit-0001", "A sturdy pan.", "concise")
    False
    """
    digest = hashlib.sha256(f"{product_id}\x00{text}\x00{style}".encode()).hexdigest()
    return f"v_{digest[:16]}"


class CatalogError(ValueError):
    """A catalog file or batch that cannot be imported. `line` is 1-based and physical (a CSV
    header is line 1); `field` names the offending field. Either may be None."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.line = line
        self.field = field


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _check_scalar(key: str, value: object) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise _fail("nul", f"{key}: must not contain NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail("attribute_value", f"{key}: must be a finite number, got {value}")
    if not isinstance(value, str | int | float | bool):
        raise _fail(
            "attribute_value",
            f"{key}: must be a string, number, boolean or a list of those, "
            f"got {type(value).__name__}",
        )


class ProductIn(BaseModel):
    """One product as a storefront sends it (catalog file row, or `POST /v1/products`).

    Unknown keys are refused, so that a misspelt field (`descripton`) is reported instead of
    silently dropped; free-form facts belong in `attributes`.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    # `json_schema_extra` states in OpenAPI what the validators below accept.
    product_id: str = Field(
        description="The storefront's own id, 1 to 128 characters.",
        json_schema_extra={"maxLength": MAX_PRODUCT_ID_CHARS, "pattern": _NOT_BLANK},
    )
    title: str = Field(json_schema_extra={"pattern": _NOT_BLANK})
    category: str = Field(
        "", json_schema_extra={"maxLength": MAX_CATEGORY_CHARS, "pattern": _NO_NUL}
    )
    description: str = Field(
        description="The original copy; it becomes the control variant.",
        json_schema_extra={"pattern": _NOT_BLANK},
    )
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict,
        description="Facts about the product (brand, material, colour, sizes with units…).",
        json_schema_extra={"propertyNames": {"pattern": _NOT_BLANK}},
    )

    @field_validator("product_id")
    @classmethod
    def _product_id_length(cls, value: str) -> str:
        if not value:
            raise _fail("empty", "must not be empty")
        if not 1 <= len(value) <= MAX_PRODUCT_ID_CHARS:
            raise _fail(
                "product_id_length",
                f"must be 1 to {MAX_PRODUCT_ID_CHARS} characters, got {len(value)}",
            )
        return value

    @field_validator("product_id", "title", "category", "description")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # PostgreSQL's text columns cannot hold NUL (a 500 there, silently kept by SQLite).
        if "\x00" in value:
            raise _fail("nul", "must not contain NUL characters")
        return value

    @field_validator("title", "description")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise _fail("empty", "must not be empty")
        return value

    @field_validator("category")
    @classmethod
    def _category_length(cls, value: str) -> str:
        if len(value) > MAX_CATEGORY_CHARS:
            raise _fail(
                "category_length",
                f"must be at most {MAX_CATEGORY_CHARS} characters, got {len(value)}",
            )
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_values(cls, value: object) -> object:
        # Checked by hand so that the message names the key, instead of pydantic's union report.
        if not isinstance(value, dict):
            raise _fail("attributes_type", f"must be an object, got {type(value).__name__}")
        for key, item in value.items():
            if not isinstance(key, str) or not key.strip():
                raise _fail("attribute_key", "keys must be non-empty strings")
            if "\x00" in key:
                raise _fail("nul", "keys must not contain NUL characters")
            for scalar in item if isinstance(item, list) else [item]:
                _check_scalar(key, scalar)
        return value


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """How many products an upsert created, changed, and left as they were; `updated_ids`
    names the changed ones (their copy is held to the new data: `generator.recheck`)."""

    created: int
    updated: int
    unchanged: int
    updated_ids: tuple[str, ...] = ()


def describe_validation_error(error: ValidationError) -> tuple[str, str]:
    """`(field, message)` of the first error, worded for people (`title`, `must not be empty`)."""
    errors = error.errors(include_url=False)
    # A misspelt key also makes its field "missing": name the misspelling, it is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    field = ".".join(str(part) for part in first["loc"]) or "row"
    kind = first["type"]
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        allowed = ", ".join(ProductIn.model_fields)
        message = f"unknown field (allowed: {allowed}; put other facts in attributes)"
    elif kind == "string_type":
        message = f"must be a string, got {type(first['input']).__name__}"
    else:
        text = first["msg"]
        message = text[:1].lower() + text[1:]
    return field, message


def validate_product(data: object, *, where: str, line: int | None = None) -> ProductIn:
    """Validate one row; a failure raises :class:`CatalogError` prefixed with `where`."""
    try:
        return ProductIn.model_validate(data)
    except ValidationError as error:
        field, message = describe_validation_error(error)
        raise CatalogError(f"{where}: {field}: {message}", line=line, field=field) from None


def read_catalog(path: Path) -> list[ProductIn]:
    """Read and validate a whole catalog file; the first bad row raises :class:`CatalogError`.

    `.jsonl`: one JSON object per line (blank lines are skipped). `.csv`: a header row with
    `product_id`, `title`, `description` and optionally `category`; every other column is an
    attribute (empty cells are left out), and an `attributes` column may hold a JSON object.
    A product_id given twice in the file is an error naming both lines.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    else:
        raise CatalogError(
            f"{path.name}: unsupported catalog format {suffix or '(no suffix)'!r} "
            "(expected .jsonl or .csv)"
        )
    products: list[ProductIn] = []
    first_line: dict[str, int] = {}
    for line, data in rows:
        product = validate_product(data, where=f"{path.name} line {line}", line=line)
        seen = first_line.setdefault(product.product_id, line)
        if seen != line:
            raise CatalogError(
                f"{path.name} line {line}: product_id: duplicate {product.product_id!r} "
                f"(first on line {seen})",
                line=line,
                field="product_id",
            )
        products.append(product)
    return products


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CatalogError(f"{path.name}: not valid UTF-8 (byte {error.start})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which JSON strings
    # may hold raw, and would shift every later line number.
    for line, raw in enumerate(_read_text(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise CatalogError(
                f"{path.name} line {line}: invalid JSON: {error.msg} (column {error.colno})",
                line=line,
            ) from None
        if not isinstance(data, dict):
            raise CatalogError(
                f"{path.name} line {line}: must be a JSON object, got {type(data).__name__}",
                line=line,
            )
        yield line, data


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = [name.strip() for name in next(reader, [])]
    where = f"{path.name} line 1: header"
    for required in ("product_id", "title", "description"):
        if required not in header:
            raise CatalogError(f"{where}: missing column {required!r}", line=1, field=required)
    if len(set(header)) != len(header) or "" in header:
        bad = next(n for n in header if not n or header.count(n) > 1)
        problem = "an empty column name" if not bad else f"column {bad!r} twice"
        raise CatalogError(f"{where}: {problem}", line=1, field=bad or None)
    previous_end = reader.line_num
    for cells in reader:
        # A quoted cell may span lines: report the line where the record starts.
        line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise CatalogError(
                f"{path.name} line {line}: has {len(cells)} fields, the header has {len(header)}",
                line=line,
            )
        yield line, _csv_record(dict(zip(header, cells, strict=True)), path.name, line)


def _csv_record(cells: dict[str, str], name: str, line: int) -> dict[str, object]:
    record: dict[str, object] = {k: cells[k] for k in _CSV_FIXED if k in cells}
    attributes: dict[str, object] = {}
    if cells.get("attributes", "").strip():
        try:
            attributes = json.loads(cells["attributes"])
        except json.JSONDecodeError as error:
            raise CatalogError(
                f"{name} line {line}: attributes: invalid JSON: {error.msg}",
                line=line,
                field="attributes",
            ) from None
        if not isinstance(attributes, dict):
            raise CatalogError(
                f"{name} line {line}: attributes: must be a JSON object, "
                f"got {type(attributes).__name__}",
                line=line,
                field="attributes",
            )
    for key, value in cells.items():
        if key in _CSV_FIXED or key == "attributes" or not value.strip():
            continue
        if key in attributes:
            raise CatalogError(
                f"{name} line {line}: {key}: given both as a column and in attributes",
                line=line,
                field=key,
            )
        attributes[key] = value.strip()
    record["attributes"] = attributes
    return record


def dialect_insert(session: Session, entity: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of the session's dialect, which offers `on_conflict_do_nothing/_update`."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    raise NotImplementedError(f"the ledger supports SQLite and PostgreSQL, not {name}")


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert_products(
    sessions: sessionmaker[Session], products: Sequence[ProductIn], now: float | None = None
) -> UpsertResult:
    """Create or update `products` in one transaction (all or nothing) and keep each one's
    control variant in step with its description.

    Safe against a concurrent upsert of the same ids: new rows are inserted with ON CONFLICT DO
    NOTHING, existing ones are locked (`FOR UPDATE` on PostgreSQL; SQLite transactions here
    take the write lock up front).
    """
    now = time.time() if now is None else now
    first_index: dict[str, int] = {}
    for index, product in enumerate(products):
        seen = first_index.setdefault(product.product_id, index)
        if seen != index:
            raise CatalogError(
                f"product_id {product.product_id!r} appears twice (items {seen} and {index})",
                field="product_id",
            )
    created: set[str] = set()
    updated: set[str] = set()
    # One id order everywhere, so that concurrent upserts take row locks in the same order.
    products = sorted(products, key=lambda p: p.product_id)
    with sessions.begin() as session:
        for chunk in _chunks(products):
            rows = [{**p.model_dump(), "created_at": now, "updated_at": now} for p in chunk]
            inserted = (
                dialect_insert(session, Product)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["product_id"])
            )
            created.update(session.scalars(inserted.returning(Product.product_id)))
        existing = [p for p in products if p.product_id not in created]
        for chunk in _chunks(existing):
            rows_by_id = {
                row.product_id: row
                for row in session.scalars(
                    select(Product)
                    .where(Product.product_id.in_([p.product_id for p in chunk]))
                    .order_by(Product.product_id)
                    .with_for_update()
                )
            }
            for product in chunk:
                row = rows_by_id[product.product_id]
                if _apply(row, product, now):
                    updated.add(product.product_id)
        session.flush()
        repaired = _sync_controls(session, products, now)
        updated.update(repaired - created)
    return UpsertResult(
        created=len(created),
        updated=len(updated),
        unchanged=len(products) - len(created) - len(updated),
        updated_ids=tuple(sorted(updated)),
    )


def _apply(row: Product, product: ProductIn, now: float) -> bool:
    """Copy `product` onto `row`; True when anything changed."""
    changed = False
    for field in ("title", "category", "description", "attributes"):
        value = getattr(product, field)
        if getattr(row, field) != value:
            setattr(row, field, value)
            changed = True
    if changed:
        row.updated_at = now
    return changed


def _sync_controls(session: Session, products: Sequence[ProductIn], now: float) -> set[str]:
    """Make each product's only active control variant the one of its description; returns the
    ids of the products whose control changed."""
    wanted = {
        p.product_id: variant_id(p.product_id, p.description, CONTROL_STYLE) for p in products
    }
    active: dict[str, set[str]] = {pid: set() for pid in wanted}
    for chunk in _chunks(list(wanted)):
        for pid, vid in session.execute(
            select(Variant.product_id, Variant.variant_id).where(
                Variant.product_id.in_(chunk),
                Variant.source == CONTROL_SOURCE,
                Variant.status == "active",
            )
        ):
            active[pid].add(vid)
    to_retire = [vid for pid, vids in active.items() for vid in vids - {wanted[pid]}]
    descriptions = {p.product_id: p.description for p in products}
    to_activate = [pid for pid, vids in active.items() if wanted[pid] not in vids]
    for chunk in _chunks(to_retire):
        session.execute(
            update(Variant)
            .where(Variant.variant_id.in_(chunk))
            .values(status="retired", retired_at=now)
        )
    for chunk in _chunks(to_activate):
        rows = [
            {
                "variant_id": wanted[pid],
                "product_id": pid,
                "text": descriptions[pid],
                "style": CONTROL_STYLE,
                "source": CONTROL_SOURCE,
                "status": "active",
                "reject_reason": None,
                "generator_version": "",
                "created_at": now,
                "retired_at": None,
            }
            for pid in chunk
        ]
        stmt = dialect_insert(session, Variant).values(rows)
        # A description that comes back revives its old (retired) control row: same id.
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["variant_id"], set_={"status": "active", "retired_at": None}
            )
        )
    return {pid for pid, vids in active.items() if vids != {wanted[pid]}}
