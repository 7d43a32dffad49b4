"""Bandit model versions from the outside (`copyloop model …`) and from the learner's side: a
rollback or an import is served as the newest version and learned on from, never overwritten
by the learner's in-memory model; retention keeps what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bandit.model_file import ModelHeader, pack, unpack
from consumer import LeaseLost
from consumer.learner import Learner
from core.ledger import ModelSnapshot, model_versions, snapshots

T0 = 1_767_000_000.0


@pytest.fixture
def settings(make_settings):
    return make_settings(
        reward_window_s=1.0, close_grace_s=0.5, clock_skew_s=1.0, snapshot_every_n=10_000
    )


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": settings.database_url,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return subprocess.run(
        [sys.executable, "-m", "copyloop", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def produce(sessions, catalog, make_decision, make_event, n, start=0, version=1):
    """`n` decisions (the second variant clicked more often) served by model version
    `version`, ingested; windows due at T0+100."""
    from consumer.join import ingest

    products = sorted(catalog)
    decisions, events = [], []
    for i in range(start, start + n):
        pid = products[i % len(products)]
        actions = tuple(catalog[pid])
        chosen = i % len(actions)
        d = make_decision(f"d{i:05d}", T0 + i * 0.001, pid, actions, chosen)
        decisions.append(d._replace(model_version=version))
        if chosen == 1 or i % 5 == 0:
            events.append(make_event(f"e{i}", f"d{i:05d}", "click", T0 + i * 0.001 + 0.1))
    ingest(sessions, decisions, events)


def learn_versions(sessions, settings, catalog, make_decision, make_event, rounds=2):
    """A learner that saved version 1 (untrained) and `rounds` more, 60 decisions apart."""
    learner = Learner(sessions, settings)
    learner.catch_up()
    for r in range(rounds):
        produce(sessions, catalog, make_decision, make_event, 60, start=60 * r)
        while learner.close_and_learn(T0 + 100):
            pass
        learner.maybe_snapshot(force=True)
    return learner


def test_rollback_is_the_newest_version_and_the_learner_continues_from_it(
    sessions, settings, seed_catalog, make_decision, make_event, model_weights
):
    catalog = seed_catalog(products=2, variants=3)
    learner = learn_versions(sessions, settings, catalog, make_decision, make_event)
    assert learner.model_version == 3

    out = cli(settings, "model", "rollback", "2")

    assert out.returncode == 0, out.stderr
    assert "version 2 is served again as version 4" in out.stdout
    v2, v4 = snapshots.load_version(sessions, 2), snapshots.load_latest(sessions)
    assert v4.version == 4 and v4.model == v2.model
    assert v4.last_seq == 120  # learned on from the reward tip: not the rewards v3 learned
    # the old learner may not write its model over the rollback…
    assert learner.replaced()
    produce(sessions, catalog, make_decision, make_event, 30, start=120)
    learner.close_and_learn(T0 + 100)
    with pytest.raises(LeaseLost, match="newer model version"):
        learner.maybe_snapshot(force=True)
    learner.close()
    # …a new one continues from version 4, with the rewards closed since
    second = Learner(sessions, settings)
    assert second.catch_up() == 30
    assert (second.model_version, second.last_seq) == (4, 150)
    assert second.maybe_snapshot(force=True) == 5
    second.close()
    versions = {v.version: v for v in model_versions.list_versions(sessions)}
    assert (versions[4].source, versions[4].origin) == ("rollback", 2)
    assert versions[5].source == "learned" and versions[5].current


def test_restart_serves_a_fresh_model_that_learns_only_what_it_serves(
    sessions, settings, make_settings, seed_catalog, make_decision, make_event
):
    catalog = seed_catalog(products=2, variants=3)
    learner = learn_versions(sessions, settings, catalog, make_decision, make_event)
    assert learner.model_version == 3

    refused = cli(settings, "model", "restart")  # it discards what was learned: asks for --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert snapshots.latest_version(sessions) == 3
    out = cli(settings, "model", "restart", "--yes")

    assert out.returncode == 0, out.stderr
    assert "model version 4 is a fresh model" in out.stdout
    v4 = snapshots.load_latest(sessions)
    header, _ = unpack(v4.model)
    assert (v4.version, v4.last_seq) == (4, 120)  # learns on from the reward tip
    assert (header.learned, header.learns_from, dict(header.exposure)) == (0, 4, {})
    assert learner.replaced()  # the old learner may not write over it
    learner.close()
    # decisions the old versions served until the API reloaded, then ones version 4 served
    produce(sessions, catalog, make_decision, make_event, 30, 120, version=3)
    produce(sessions, catalog, make_decision, make_event, 30, 150, version=4)

    second = Learner(sessions, settings)
    assert second.catch_up() == 0 and second.model_version == 4
    assert len(second.close_and_learn(T0 + 100)) == 60
    assert (second.last_seq, second.ignored, second.policy.learned) == (180, 30, 30)
    assert second.maybe_snapshot(force=True) == 5
    second.close()
    v5, _ = unpack(snapshots.load_latest(sessions).model)
    assert (v5.learned, v5.learns_from, sum(v5.exposure.values())) == (30, 4, 30)
    # the cut holds for the lineage: after a restart of the process, and for late decisions
    produce(sessions, catalog, make_decision, make_event, 10, 180, version=3)
    produce(sessions, catalog, make_decision, make_event, 10, 190, version=5)
    third = Learner(sessions, settings)
    assert third.catch_up() == 0 and len(third.close_and_learn(T0 + 100)) == 20
    assert (third.ignored, third.policy.learned) == (10, 40)
    third.close()
    # and for a model trained in its place when the VW arguments change (a warm start)
    other = make_settings(
        database_url=settings.database_url, bandit_interactions="UT", snapshot_every_n=10_000
    )
    warm = Learner(sessions, other)
    assert warm.catch_up() == 200  # every closed decision read, only version 4's and on learned
    assert (warm.ignored, warm.policy.learned, warm.policy.learns_from) == (160, 40, 4)
    warm.close()
    versions = {v.version: v for v in model_versions.list_versions(sessions)}
    assert (versions[4].source, versions[4].origin) == ("restart", None)


def test_rollback_or_export_of_an_unknown_version_exits_2(sessions, settings):
    learner = Learner(sessions, settings)
    learner.catch_up()
    learner.close()
    out = cli(settings, "model", "rollback", "9")
    assert out.returncode == 2
    assert "no model version 9" in out.stderr
    out = cli(settings, "model", "export", "--version", "9", str(settings.spool_dir) + "/m")
    assert out.returncode == 2
    assert "no model version 9 in the ledger" in out.stderr


def test_list_json_names_every_version_newest_first(
    sessions, settings, seed_catalog, make_decision, make_event
):
    catalog = seed_catalog(products=2, variants=3)
    learn_versions(sessions, settings, catalog, make_decision, make_event).close()

    out = cli(settings, "model", "list", "--json")

    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout)["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    newest, middle = versions[0], versions[1]
    assert newest["current"] and newest["served_until"] is None
    assert middle["served_until"] == newest["served_from"] == newest["created_at"]
    assert newest["last_seq"] == 120 and newest["last_learned_decision"] is not None
    assert versions[2]["last_learned_decision"] is None  # version 1 learned nothing
    assert all(v["size"] > 0 and v["storage"] == "database" for v in versions)
    table = cli(settings, "model", "list")
    assert table.returncode == 0 and "learned" in table.stdout


def test_export_then_import_becomes_the_newest_version(
    sessions, settings, seed_catalog, make_decision, make_event, tmp_path
):
    catalog = seed_catalog(products=2, variants=3)
    learn_versions(sessions, settings, catalog, make_decision, make_event).close()
    path = tmp_path / "m.clvw"

    out = cli(settings, "model", "export", "--version", "2", str(path))

    assert out.returncode == 0, out.stderr
    header, vw_model = unpack(path.read_bytes())
    assert (header.version, header.vw_args, header.features) == (2, settings.vw_args, 2)
    assert json.loads(path.read_bytes().splitlines()[1])["namespaces"]["U"]
    assert vw_model == unpack(snapshots.load_version(sessions, 2).model)[1]

    out = cli(settings, "model", "import", str(path))

    assert out.returncode == 0, out.stderr
    assert "as model version 4" in out.stdout
    v4 = model_versions.list_versions(sessions)[0]
    assert (v4.version, v4.source, v4.origin, v4.last_seq) == (4, "import", 2, 120)
    learner = Learner(sessions, settings)
    learner.catch_up()
    assert learner.model_version == 4
    learner.close()


def test_import_refuses_other_arguments_bare_models_and_garbage(sessions, settings, tmp_path):
    other = tmp_path / "other.clvw"
    other.write_bytes(pack(ModelHeader("--cb_adf --epsilon 0.2", version=3), b"VW"))
    bare = tmp_path / "bare.vw"
    bare.write_bytes(b"\x00\x01 not a header")
    broken = tmp_path / "broken.clvw"
    broken.write_bytes(pack(ModelHeader(settings.vw_args, version=3), b"not VW"))

    outs = {p.name: cli(settings, "model", "import", str(p)) for p in (other, bare, broken)}

    assert all(o.returncode == 2 for o in outs.values()), {k: o.stderr for k, o in outs.items()}
    assert "trained with VW arguments '--cb_adf --epsilon 0.2'" in outs["other.clvw"].stderr
    assert "no CLVW header" in outs["bare.vw"].stderr
    assert "does not load" in outs["broken.clvw"].stderr
    assert model_versions.list_versions(sessions) == []
    missing = cli(settings, "model", "import", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_prune_keeps_the_newest_the_recently_served_and_the_last_good(sessions, tmp_path):
    model = b"model"
    for _ in range(8):
        snapshots.save(sessions, model, 0, "--cb_adf", str(tmp_path))
    day = model_versions.DAY_S
    now = T0 + 100 * day
    created = {1: -30, 2: -20, 3: -10, 4: -5, 5: -2.5, 6: -0.5, 7: -0.2, 8: -0.1}
    with sessions.begin() as s:
        for version, days in created.items():
            s.execute(
                update(ModelSnapshot)
                .where(ModelSnapshot.version == version)
                .values(created_at=now + days * day)
            )
    # versions 7 and 8 do not load: 6 is the last good one
    bad = {7, 8}
    retention = model_versions.Retention(keep_last=2, keep_days=1.0)

    pruned = model_versions.prune(
        sessions, retention, lambda snap: snap.version not in bad, now=now
    )

    # 8, 7: the newest two; 6 served until 7 came (0.2 days ago); 5 until 0.5 days ago; 4 until
    # 2.5 days ago: gone, like 1-3
    assert pruned == [1, 2, 3, 4]
    with sessions() as s:
        assert s.scalars(select(ModelSnapshot.version)).all() == [5, 6, 7, 8]
    assert sorted(p.name for p in tmp_path.glob("*.vw")) == [
        f"model-{v:08d}.vw" for v in (5, 6, 7, 8)
    ]
    # the last good one is kept however old: only 6 loads, and keep_days is 0
    assert model_versions.prune(
        sessions, model_versions.Retention(1, 0.0), lambda snap: snap.version == 5, now=now
    ) == [6, 7]


def test_prune_keeps_the_newest_restart_however_old(sessions, tmp_path):
    # the restart's time bounds the decisions that winners compare (`restarted_at`)
    for source in ("learned", "restart", "learned", "restart", "learned", "learned"):
        snapshots.save(sessions, b"model", 0, "--cb_adf", str(tmp_path), source=source)
    now = T0 + 100 * model_versions.DAY_S
    with sessions.begin() as s:
        s.execute(update(ModelSnapshot).values(created_at=now - 50 * model_versions.DAY_S))
        restarted = model_versions.restarted_at(s)

    pruned = model_versions.prune(
        sessions, model_versions.Retention(1, 0.0), lambda snap: True, now=now
    )

    assert restarted is not None
    assert pruned == [1, 2, 3, 5]  # 6: the newest (and the last good one); 4: the newest restart
    with sessions() as s:
        assert model_versions.restarted_at(s) == restarted


def test_retention_settings_are_validated():
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        model_versions.Retention(0, 1.0)
