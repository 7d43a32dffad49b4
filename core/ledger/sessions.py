"""Engines and sessions. SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL a pool."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine for `database_url`; creates the SQLite file's directory when needed.

    `read_only`: for readers that must never wait for the consumer's writes nor hold them off
    (the API's model, catalog and key caches, its publisher's ledger look-ups, the report). On
    SQLite its transactions begin without taking the write lock, so a WAL reader runs beside the
    writer (a writable engine's transaction takes that lock first: see below), and its
    connections refuse to change the database's tables ("not authorized"); temporary tables,
    which the report fills, stay writable. On PostgreSQL, where a read neither waits for a
    writer nor holds one off, it is a plain engine (a `READ ONLY` transaction would refuse the
    report's temporary table)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_deserializer=_json_loads,
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if read_only:
            event.listen(engine, "connect", _sqlite_main_read_only)
            event.listen(engine, "begin", _sqlite_begin_deferred)
            return engine
        # pysqlite's own transaction handling defers BEGIN. A deferred transaction that reads and
        # then writes fails at once with "database is locked" when another writer got in between
        # (busy_timeout cannot help there), so every transaction takes the write lock up front.
        # WAL keeps readers of other connections unblocked.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, json_deserializer=_json_loads, **kwargs)


def _json_loads(text: str | bytes) -> Any:
    """JSON columns decoded by orjson: the closer reads two per decision (context, actions), and
    the standard library's decoder cost it about 15 µs of them (`bench/learn.py`). Values orjson
    refuses but the standard library wrote (`NaN`, `Infinity`) fall back to it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


#: What changes a table or the schema (`sqlite3.set_authorizer`'s action codes); the temporary
#: tables' own codes (SQLITE_CREATE_TEMP_TABLE, …) are not among them.
_SQLITE_CHANGES = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_ALTER_TABLE,
    }
)


def _sqlite_main_read_only(dbapi_connection: Any, _record: Any) -> None:
    """Statements that would change the database file fail to prepare; the authorizer runs
    once per statement prepared, not per execution. SQLite's own schema table is let through:
    a table-valued function (`json_each`) asks to update it while it reads it."""

    def authorize(action: int, name: str | None, _b: str | None, db: str | None, _t: object) -> int:
        if action in _SQLITE_CHANGES and db == "main" and not (name or "").startswith("sqlite_"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    dbapi_connection.set_authorizer(authorize)


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads alone that sees one snapshot of the ledger, on any engine. On SQLite
    its transaction is a deferred read instead of the write lock a writable engine takes first,
    so the consumer's writes go on while it reads (it waits at most for the transaction in
    progress when it starts); on PostgreSQL it is REPEATABLE READ (READ COMMITTED would give
    each statement its own snapshot)."""
    with sessions() as s:
        connection = s.connection()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("COMMIT")
            connection.exec_driver_sql("BEGIN")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield s


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
