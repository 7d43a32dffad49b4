"""`core.ledger.make_engine(read_only=True)`: the readers' engine reads while another connection
holds the ledger's write lock (SQLite and PostgreSQL), fills temporary tables, and on SQLite
refuses to change the ledger. `core.ledger.reading`: a long read on the writable engine lets
writers commit meanwhile, and sees one snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from core.ledger import make_engine, make_sessionmaker, reading
from core.ledger.presence import held_ids
from core.ledger.tables import ServingMode
from core.migrations import upgrade
from tests.conftest import within


@pytest.fixture
def read_engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, read_only=True)
    yield eng
    eng.dispose()


def _modes(engine: Engine) -> int:
    with make_sessionmaker(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(ServingMode)) or 0)


def _insert_mode(connection: Connection, at: float) -> None:
    connection.execute(
        text("INSERT INTO serving_modes (mode, explore, set_at) VALUES ('live', 0.0, :at)"),
        {"at": at},
    )


def test_a_reader_reads_while_a_writer_holds_the_ledger(
    engine: Engine, read_engine: Engine
) -> None:
    with engine.begin() as c:
        _insert_mode(c, 1.0)
    with engine.begin() as c:  # the write lock, held while the reader reads
        _insert_mode(c, 2.0)
        assert within(5.0, lambda: _modes(read_engine)) == 1  # the committed state only
        # the publisher's question (a table-valued function on SQLite)
        reads = make_sessionmaker(read_engine)
        assert within(5.0, lambda: held_ids(reads, {"decisions": ["d1"]})) == {"decisions": set()}
    assert within(5.0, lambda: _modes(read_engine)) == 2


def test_a_sqlite_reader_refuses_to_change_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    writer, reader = make_engine(url), make_engine(url, read_only=True)
    try:
        for statement in (
            "INSERT INTO serving_modes (mode, explore, set_at) VALUES ('live', 0.0, 1.0)",
            "CREATE TABLE scratch (x integer)",
            "DROP TABLE serving_modes",
        ):
            with pytest.raises(DBAPIError, match="not authorized"), reader.begin() as c:
                c.exec_driver_sql(statement)
        assert _modes(writer) == 0
    finally:
        writer.dispose()
        reader.dispose()


def test_a_reader_fills_temporary_tables(read_engine: Engine) -> None:
    """The report materializes its outcomes in a temporary table, through the read engine."""
    with read_engine.begin() as c:
        c.exec_driver_sql("CREATE TEMPORARY TABLE scratch (x integer)")
        c.exec_driver_sql("INSERT INTO scratch VALUES (1), (2)")
        c.exec_driver_sql("CREATE INDEX ix_scratch ON scratch (x)")
        assert c.exec_driver_sql("SELECT sum(x) FROM scratch").scalar() == 3


def test_a_writer_commits_while_a_reading_session_reads(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with engine.begin() as c:
        _insert_mode(c, 1.0)

    def write() -> None:
        with engine.begin() as c:
            _insert_mode(c, 2.0)

    with reading(sessions) as s:
        count = select(func.count()).select_from(ServingMode)
        assert s.scalar(count) == 1
        within(5.0, write)  # a plain session would hold the write lock until it ends
        assert s.scalar(count) == 1  # its snapshot
    assert _modes(engine) == 2
