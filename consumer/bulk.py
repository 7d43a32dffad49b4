"""Batch writes and reads by each database's fast path: the join's inserts, the event counts.

On PostgreSQL a batch is one statement over arrays — ``INSERT … SELECT … FROM unnest(%b::text[],
%b::float8[], …)`` — so the server parses and plans once and the driver sends one message per
column instead of one per row (SQLAlchemy's executemany, even pipelined, cost the learner 1.3 s
of every 4.5 s it spent closing 30,000 windows: `bench/learn.py`). The arrays travel in binary
(`%b`): psycopg's text format runs a regular expression over every element to quote it, 2.3 µs
a row for four columns. JSON values are serialized with orjson and cast per row. On SQLite,
where a statement costs no round trip, an insert is multi-row statements of plain tuples
through the driver (SQLAlchemy's multi-row INSERT … RETURNING spent more on per-row parameter
processing and JSON encoding than SQLite did on the rows; a statement per row made the writer
wait for the GIL per row), after one look-up of the keys already there when existing keys are
to be skipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, Table
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

#: Keys per IN list on SQLite: far below its 32,766 bound parameters.
_SQLITE_CHUNK = 500
#: Rows per multi-row INSERT on SQLite (fewer when the build allows fewer bound parameters).
_SQLITE_ROWS_PER_INSERT = 500


def _pg_type(column: Any) -> tuple[str, str]:
    """(array element type, cast applied to each element) of a column."""
    kind = column.type
    if isinstance(kind, JSON):
        return "text", "::json"
    if isinstance(kind, BigInteger):
        return "int8", ""
    if isinstance(kind, Integer):
        return "int4", ""
    if isinstance(kind, Float):
        return "float8", ""
    if isinstance(kind, Boolean):
        return "bool", ""
    return "text", ""


def _is_postgresql(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def insert_rows(
    s: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    skip_existing: str | None = None,
) -> int:
    """Insert `rows` (dicts holding every column named in the first one); with `skip_existing`
    (the key column), rows whose key is there already change nothing (ON CONFLICT DO NOTHING).
    Returns how many rows were inserted."""
    if skip_existing is None:
        _insert(s, table, rows, None)
        return len(rows)
    return len(_insert(s, table, rows, skip_existing))


def insert_new(s: Session, table: Table, rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    """`insert_rows` with `skip_existing=key`, returning the keys actually inserted (what a
    replayed batch must not count again)."""
    return _insert(s, table, rows, key)


def _insert(
    s: Session, table: Table, rows: Sequence[Mapping[str, Any]], skip_existing: str | None
) -> list[Any]:
    if not rows:
        return []
    if not _is_postgresql(s):
        if skip_existing is None:
            _sqlite_insert(s, table, rows)
            return []
        rows = _sqlite_new_rows(s, table, rows, skip_existing)
        if rows:
            _sqlite_insert(s, table, rows)
        return [r[skip_existing] for r in rows]
    names = list(rows[0])
    params: dict[str, Any] = {}
    arrays, aliases, selects = [], [], []
    for i, name in enumerate(names):
        element, cast = _pg_type(table.c[name])
        values = [r[name] for r in rows]
        if cast == "::json":
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        elif i and values.count(values[0]) == len(values):
            # One value for the whole batch (the receipt time, a NULL, a flag): sent once, not
            # as an array (psycopg dumps arrays element by element in Python).
            params[f"c{i}"] = values[0]
            selects.append(f"%(c{i})b::{element}")
            continue
        params[f"c{i}"] = values
        arrays.append(f"%(c{i})b::{element}[]")
        aliases.append(f"c{i}")
        selects.append(f"u.c{i}{cast}")
    columns = ", ".join(f'"{n}"' for n in names)
    sql = (
        f'INSERT INTO "{table.name}" ({columns}) SELECT {", ".join(selects)} '
        f"FROM unnest({', '.join(arrays)}) AS u({', '.join(aliases)})"
    )
    if skip_existing is None:
        s.connection().exec_driver_sql(sql, params)
        return []
    sql += f' ON CONFLICT ("{skip_existing}") DO NOTHING RETURNING "{skip_existing}"'
    return list(s.connection().exec_driver_sql(sql, params).scalars().all())


def _sqlite_new_rows(
    s: Session, table: Table, rows: Sequence[Mapping[str, Any]], key: str
) -> list[Mapping[str, Any]]:
    """The rows whose `key` is neither in `table` nor in an earlier row (first write wins).
    SQLite's transactions take the write lock first (`core.ledger.sessions`), so no other
    writer adds a key between this look-up and the insert that follows it."""
    keys = list(dict.fromkeys(r[key] for r in rows))
    seen: set[Any] = set()
    conn = s.connection()
    for start in range(0, len(keys), _SQLITE_CHUNK):
        chunk = keys[start : start + _SQLITE_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        sql = f'SELECT "{key}" FROM "{table.name}" WHERE "{key}" IN ({marks})'
        seen.update(k for (k,) in conn.exec_driver_sql(sql, tuple(chunk)))
    new = []
    for r in rows:
        k = r[key]
        if k not in seen:
            seen.add(k)
            new.append(r)
    return new


def _sqlite_insert(s: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """A plain INSERT of `rows`, up to 500 rows per statement, the full statements as one
    `executemany` of flat tuples (prepared once): SQLAlchemy's per-row parameter processing
    (the larger cost: `bench/learn.py`) is skipped. JSON values are serialized with orjson, as
    on PostgreSQL."""
    names = list(rows[0])
    get = itemgetter(*names)
    tuples: list[Any] = [get(r) for r in rows] if len(names) > 1 else [(get(r),) for r in rows]
    json_columns = [i for i, n in enumerate(names) if isinstance(table.c[n].type, JSON)]
    if json_columns:  # column by column: zip does the transposing in C
        columns = list(zip(*tuples, strict=True))
        dumps = orjson.dumps
        for i in json_columns:
            columns[i] = tuple(None if v is None else dumps(v).decode() for v in columns[i])
        tuples = list(zip(*columns, strict=True))
    # Many rows per statement: CPython's sqlite3 lets go of the GIL around every step of a
    # statement and must take it back after, so a statement per row cost the consumer's writer
    # thread a wait for the GIL per row while the polling thread decoded the next batch (a
    # micro test of `ingest` beside a busy Python thread: 130 µs a message, 21 µs with this).
    conn = s.connection()
    insert = f'INSERT INTO "{table.name}" (' + ", ".join(f'"{n}"' for n in names) + ") VALUES "
    row = "(" + ", ".join("?" for _ in names) + ")"
    per = max(1, min(_SQLITE_ROWS_PER_INSERT, _sqlite_max_params(conn) // len(names)))
    full = len(tuples) - len(tuples) % per
    if full:
        flat = list(chain.from_iterable(tuples[:full]))
        width = per * len(names)
        chunks = [tuple(flat[i : i + width]) for i in range(0, len(flat), width)]
        conn.exec_driver_sql(insert + ", ".join([row] * per), chunks)  # one statement, cached
    if full < len(tuples):
        rest = tuples[full:]
        conn.exec_driver_sql(
            insert + ", ".join([row] * len(rest)), tuple(chain.from_iterable(rest))
        )


def _sqlite_max_params(conn: Connection) -> int:
    """The bound parameters one statement may hold in this SQLite build (32,766 since 3.32)."""
    raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


#: Per decision: clicks, add-to-carts, purchases, purchase revenue.
EventCounts = tuple[int, int, int, float]

#: Counts the events of `u(id, lo, hi)`'s decisions inside their spans; `u` comes before it.
_COUNTED = (
    "SELECT e.decision_id, "
    "count(*) FILTER (WHERE e.type = 'click'), "
    "count(*) FILTER (WHERE e.type = 'add_to_cart'), "
    "count(*) FILTER (WHERE e.type = 'purchase'), "
    "coalesce(sum(coalesce(e.value, 0.0)) FILTER (WHERE e.type = 'purchase'), 0.0) "
    "FROM {spans} JOIN events e ON e.decision_id = u.id AND e.ts >= u.lo AND e.ts <= u.hi "
    "GROUP BY e.decision_id"
)


def event_counts(s: Session, spans: Sequence[tuple[str, float, float]]) -> dict[str, EventCounts]:
    """The events of each `(decision_id, lo, hi)` with `lo <= ts <= hi`, counted per type,
    for the decisions that have any. The spans come from the caller, who read the decisions'
    `ts` already: joining `decisions` again made PostgreSQL plan an IN list of 500 keys against
    two tables, 44 % of the learner's time (`bench/learn.py`); over an array of spans it is one
    index probe per decision."""
    if not spans:
        return {}
    conn = s.connection()
    if _is_postgresql(s):
        ids, los, his = (list(c) for c in zip(*spans, strict=True))
        sql = _COUNTED.format(
            spans="unnest(%(ids)b::text[], %(lo)b::float8[], %(hi)b::float8[]) AS u(id, lo, hi)"
        )
        rows = conn.exec_driver_sql(sql, {"ids": ids, "lo": los, "hi": his}).all()
    else:
        rows = []
        for start in range(0, len(spans), _SQLITE_CHUNK):
            chunk = spans[start : start + _SQLITE_CHUNK]
            values = ", ".join("(?, ?, ?)" for _ in chunk)
            sql = f"WITH u(id, lo, hi) AS (VALUES {values}) " + _COUNTED.format(spans="u")
            rows += conn.exec_driver_sql(sql, tuple(v for span in chunk for v in span)).all()
    return {d: (int(c), int(a), int(p), float(r)) for d, c, a, p, r in rows}


__all__ = ["EventCounts", "event_counts", "insert_new", "insert_rows"]
