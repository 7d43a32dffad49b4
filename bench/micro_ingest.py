"""Where the consumer's time goes per message, in-process (no Kafka): decode, and the ledger write
of `consumer.join.ingest` today versus Core-level alternatives (nothing in consumer/ is changed).

Batches are what the loop hands `ingest`: `--batch` messages, half decisions, half events.

* `ingest()` today: ORM-entity `insert(Decision).on_conflict_do_nothing().returning(...)` with a
  list of row dicts (SQLAlchemy's ORM bulk path + insertmanyvalues + RETURNING);
* Core + RETURNING: the same statement on `Decision.__table__` (skips the ORM bulk layer);
* Core, no RETURNING: executemany and the driver's rowcount (how many rows were new).

    .venv/bin/python bench/micro_ingest.py [--database-url postgresql+psycopg://…/test]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from consume import _messages  # noqa: E402

from consumer.join import _decision_row, _event_row, ingest  # noqa: E402
from consumer.records import decode_decision, decode_event  # noqa: E402
from core.ledger import make_engine, make_sessionmaker  # noqa: E402
from core.ledger.tables import Decision, Event  # noqa: E402
from core.migrations import upgrade  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--database-url")
    args = p.parse_args()
    print(f"# consumer micro-benchmark; load {os.getloadavg()}")
    n = args.decisions
    raw_d, raw_e = _messages("ab12cd34", 0, n, 1, time.time())
    t0 = time.perf_counter()
    decs = [decode_decision(v, 0) for _, v in raw_d]
    t1 = time.perf_counter()
    evs = [decode_event(v, None) for _, v in raw_e]
    t2 = time.perf_counter()
    print(
        f"  decode_decision {((t1 - t0) / n * 1e6):7.1f} µs/msg; decode_event "
        f"{((t2 - t1) / n * 1e6):7.1f} µs/msg"
    )
    half = args.batch // 2

    def fresh() -> tuple:  # type: ignore[type-arg]
        if args.database_url:
            from consume import drop_postgres, fresh_postgres

            url, name = fresh_postgres(args.database_url)
            cleanup = lambda: drop_postgres(args.database_url, name)  # noqa: E731
        else:
            url = f"sqlite:///{tempfile.mkdtemp()}/l.db"
            cleanup = lambda: None  # noqa: E731
        upgrade(url)
        engine = make_engine(url)
        return engine, make_sessionmaker(engine), cleanup

    def run(name: str, write) -> None:  # type: ignore[no-untyped-def]
        engine, sessions, cleanup = fresh()
        try:
            t = time.perf_counter()
            new = 0
            for k in range(0, n, half):
                new += write(engine, sessions, decs[k : k + half], evs[k : k + half])
            took = time.perf_counter() - t
            print(
                f"  {name:<46} {2 * n / took:8.0f} msgs/s ({took / (2 * n) * 1e6:6.1f} µs/msg;"
                f" new rows {new})",
                flush=True,
            )
        finally:
            engine.dispose()
            cleanup()

    def today(engine, sessions, d, e) -> int:  # type: ignore[no-untyped-def]
        r = ingest(sessions, d, e)
        return r.decisions_new + r.events_new

    def core(returning: bool):  # type: ignore[no-untyped-def]
        def write(engine, sessions, d, e) -> int:  # type: ignore[no-untyped-def]
            ins = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
            now = time.time()
            drows = [_decision_row(x, now) for x in d]
            erows = [_event_row(x, now) for x in e]
            new = 0
            with engine.begin() as c:
                for table, key, rows in (
                    (Decision.__table__, "decision_id", drows),
                    (Event.__table__, "event_id", erows),
                ):
                    stmt = ins(table).on_conflict_do_nothing(index_elements=[key])
                    if returning:
                        stmt = stmt.returning(table.c[key])
                        new += len(c.execute(stmt, rows).all())
                    else:
                        new += c.execute(stmt, rows).rowcount
            return new

        return write

    run("ingest() today (ORM entity + RETURNING)", today)
    run("Core table + RETURNING", core(True))
    run("Core table, executemany, rowcount", core(False))


if __name__ == "__main__":
    main()
