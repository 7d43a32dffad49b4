"""The operator's controls on a running stack (two API worker processes, the consumer): a
rollback is served by every API process within 5 s and learned on from, not overwritten; so is
a restart, which learns only what it serves; the serving mode switches every process within
5 s. Driven as an operator does, through the CLI."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bandit.model_file import unpack
from copyloop.runner import Stack, settings_env
from core.broker import EmbeddedBroker, free_port
from core.ledger import make_engine, make_sessionmaker, snapshots
from core.ledger.tables import Decision, Reward
from core.settings import Settings
from tests.conftest import FAST_LOOP, api_keys, cli, wait_for_model

pytestmark = pytest.mark.timeout(600)


def _catalog(path: Path) -> list[str]:
    ids = []
    with path.open("w") as fh:
        for i in range(4):
            pid = f"lamp-{i}"
            ids.append(pid)
            fh.write(
                json.dumps(
                    {
                        "product_id": pid,
                        "title": f"Desk lamp {i}",
                        "category": "desk",
                        "description": f"A steel desk lamp with {i + 2} brightness settings and "
                        "a 2 m cord. It stands 40 cm tall and weighs 1 kg.",
                    }
                )
                + "\n"
            )
    return ids


def _traffic(client: httpx.Client, headers: dict[str, str], ids: list[str], n: int) -> list[dict]:
    out = []
    for i in range(n):
        r = client.post(
            "/v1/decisions",
            headers=headers["serve"],
            json={"product_id": ids[i % len(ids)], "context": {"device": "mobile"}},
        )
        assert r.status_code == 200, r.text
        d = r.json()
        out.append(d)
        if d["style"] == "concise" or i % 4 == 0:
            event = {"event_id": uuid.uuid4().hex, "decision_id": d["decision_id"], "type": "click"}
            assert (
                client.post("/v1/events", json=event, headers=headers["events"]).status_code == 202
            )
    return out


def _within(seconds: float, check, what: str) -> float:
    """Seconds until `check()` held for 40 consecutive decisions (both workers answer some)."""
    start = time.monotonic()
    while True:
        if all(check() for _ in range(40)):
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"{what} not followed within {seconds} s"
        time.sleep(0.1)


def test_rollback_and_mode_reach_every_api_process(
    database_url: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"ctl{uuid.uuid4().hex[:8]}",
        consumer_group=f"ctl{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        **FAST_LOOP,
        api_port=free_port(),
        api_workers=2,
        spool_dir=str(tmp_path / "spool"),
    )
    env = {**os.environ, **settings_env(settings)}
    ids = _catalog(tmp_path / "catalog.jsonl")
    cli(env, "catalog", "import", str(tmp_path / "catalog.jsonl"))
    keys = api_keys(env, "serve", "events")
    headers = {role: {"Authorization": f"Bearer {k}"} for role, k in keys.items()}
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with Stack(settings, roles=("serve", "consume")) as stack:
            base = f"http://{settings.api_host}:{settings.api_port}"
            with httpx.Client(base_url=base, timeout=10) as client:
                wait_for_model(client, stack)
                first = snapshots.latest_version(sessions)
                deadline = time.monotonic() + 90
                while (snapshots.latest_version(sessions) or 0) < first + 3:
                    assert time.monotonic() < deadline, "the learner saved no new versions"
                    stack.check()
                    _traffic(client, headers, ids, 20)  # windows keep closing: versions follow
                    time.sleep(0.2)

                out = cli(env, "model", "rollback", str(first))
                rolled = int(out.split()[-1])

                def served_then_learned(version: int, what: str) -> float:
                    """Seconds until every worker served `version`; then waits until the
                    learner saved a version after it."""
                    took = _within(
                        5.0,
                        lambda: _traffic(client, headers, ids, 1)[0]["model_version"] >= version,
                        what,
                    )
                    deadline = time.monotonic() + 90
                    while (snapshots.latest_version(sessions) or 0) <= version:
                        assert time.monotonic() < deadline, f"no learning after {what}"
                        stack.check()
                        _traffic(client, headers, ids, 20)
                        time.sleep(0.2)
                    return took

                took = served_then_learned(rolled, "the rollback")
                print(f"rollback to {first} (as {rolled}) served everywhere after {took:.2f} s")
                # the learner continued from the rolled-back model: the next version's count of
                # decisions learned is the rolled-back one's plus the rewards learned since
                back = snapshots.load_version(sessions, rolled)
                nxt = snapshots.load_version(sessions, rolled + 1)
                learned = [unpack(s.model)[0].learned for s in (back, nxt)]
                assert learned[1] - learned[0] == nxt.last_seq - back.last_seq > 0
                assert (
                    unpack(back.model)[1]
                    == unpack(snapshots.load_version(sessions, first).model)[1]
                )

                # a restart: served everywhere as quickly, learned on from only what it serves
                out = cli(env, "model", "restart", "--yes")
                fresh = int(out.split()[2])
                took = served_then_learned(fresh, "the restart")
                print(f"restart as version {fresh} served everywhere after {took:.2f} s")
                start = snapshots.load_version(sessions, fresh)
                after = snapshots.load_version(sessions, fresh + 1)
                header = unpack(after.model)[0]
                with sessions() as s:
                    served = s.scalars(
                        select(Decision.model_version)
                        .join(Reward, Reward.decision_id == Decision.decision_id)
                        .where(Reward.seq > start.last_seq, Reward.seq <= after.last_seq)
                    ).all()
                assert header.learns_from == fresh
                assert header.learned == sum(v >= fresh for v in served)
                assert unpack(start.model)[0].learned == 0

                assert cli(env, "mode", "apprentice").strip() == "apprentice"

                def apprentice() -> bool:
                    d = _traffic(client, headers, ids, 1)[0]
                    control = d["style"] == "original"
                    return d["probability"] >= 0.95 if control else d["probability"] <= 0.05

                took = _within(5.0, apprentice, "apprentice mode")
                print(f"apprentice mode followed everywhere after {took:.2f} s")
                stack.check()
    finally:
        engine.dispose()
