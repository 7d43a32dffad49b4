"""The command line from the outside: exit codes, messages on stderr, the key on the last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import SAMPLE_CATALOG
from core.ledger import ApiKey, Product, Variant
from reports.synthetic import fill


def run(
    database_url: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COPYLOOP_DATABASE_URL": database_url, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "copyloop", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_catalog_import_bad_row_exits_2_naming_line_and_changes_nothing(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    good = {
        "product_id": "a1",
        "title": "Lamp",
        "category": "home",
        "description": "A brass lamp with a linen shade. It stands 40 cm tall.",
    }
    bad = {"product_id": "a2", "title": "", "category": "home", "description": "Fine."}
    path = tmp_path / "cat.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = run(database_url, "catalog", "import", str(path))
    assert out.returncode == 2, out.stderr
    assert "line 2" in out.stderr and "title" in out.stderr
    with sessions() as s:
        assert s.scalars(select(Product)).all() == []


def test_catalog_import_then_generate(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    sample = SAMPLE_CATALOG
    lines = sample.read_text().splitlines()[:5]
    path = tmp_path / "five.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = run(database_url, "catalog", "import", str(path))
    assert out.returncode == 0, out.stderr
    assert "5 created" in out.stdout
    with sessions() as s:
        variants = s.scalars(select(Variant).where(Variant.status == "active")).all()
    by_product: dict[str, set[str]] = {}
    for v in variants:
        by_product.setdefault(v.product_id, set()).add(v.style)
    assert len(by_product) == 5
    assert all("original" in styles and len(styles) >= 3 for styles in by_product.values())


def test_missing_file_and_bad_usage_exit_2(database_url: str, tmp_path: Path) -> None:
    out = run(database_url, "catalog", "import", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and "no such file" in out.stderr
    out = run(database_url, "report", "--format", "xml")
    assert out.returncode == 2 and "--format" in out.stderr
    out = run(database_url, "report", "--since", "yesterday-ish")
    assert out.returncode == 2 and "--since" in out.stderr
    for command in ("report", "export"):
        out = run(database_url, command, "--since", "2026-12-07", "--until", "2026-12-06")
        assert out.returncode == 2 and "--until: must be after since" in out.stderr, out.stderr
    out = run(database_url, "report", "--until", "nan")
    assert out.returncode == 2 and "--until: must be finite" in out.stderr
    # the hf backend without COPYLOOP_GENERATOR_MODEL is a setting to fix, not a crash
    out = run(database_url, "generate", "--backend", "hf", env={"COPYLOOP_GENERATOR_MODEL": ""})
    assert out.returncode == 2 and "needs generator_model" in out.stderr, out.stderr


def test_keys_create_prints_key_last_and_stores_only_its_hash(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    out = run(database_url, "keys", "create", "--role", "analyst")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert len(key) >= 32
    with sessions() as s:
        rows = s.scalars(select(ApiKey)).all()
    assert [r.role for r in rows] == ["analyst"]
    assert key not in {r.key_hash for r in rows}


def test_report_formats(database_url: str, tmp_path: Path) -> None:
    out = run(database_url, "report", "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["arms"]) >= {"bandit", "control"}
    assert set(report["uplift"]["ctr"]) >= {"relative", "absolute", "ci_low", "ci_high", "p_value"}
    html = tmp_path / "r.html"
    out = run(database_url, "report", "--format", "html", "--out", str(html))
    assert out.returncode == 0, out.stderr
    assert "<svg" in html.read_text()
    out = run(database_url, "report", "--format", "csv")
    assert out.returncode == 0 and out.stdout.startswith("section,key,impressions")


def test_report_sequential_with_cuped(database_url: str, engine: Engine, tmp_path: Path) -> None:
    truth = fill(engine, 2000, n_products=4, seed=12, span_s=4 * 3600.0, product_spread=1.0)
    since = str(truth.start + 2 * 3600.0)
    out = run(database_url, "report", "--ci", "sequential", "--since", since, "--ope-sample", "0")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ci"] == "sequential" and report["intervals"]["kind"] == "sequential"
    assert report["cuped"]["pre_period"]["source"] == "before_since"
    assert set(report["uplift"]["ctr"]["cuped"]) >= {
        "relative",
        "ci_low",
        "ci_high",
        "variance_reduction",
    }
    html = tmp_path / "seq.html"
    out = run(database_url, "report", "--ci", "sequential", "--format", "html", "--out", str(html))
    assert out.returncode == 0, out.stderr
    assert 'data-ci="sequential"' in html.read_text()
    out = run(database_url, "report", "--ci", "weekly")
    assert out.returncode == 2 and "--ci" in out.stderr


def test_a_ledger_without_tables_is_named_with_the_command_that_makes_them(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (["generator", "versions"], ["report", "--out", str(tmp_path / "r.html")]):
        out = run(url, *args)
        assert out.returncode == 1, out.stderr
        assert "the ledger has no tables yet (no such table: " in out.stderr
        assert "run `copyloop db upgrade`" in " ".join(out.stderr.split())


def test_db_rollups_rebuild_and_report_full_scan(database_url: str, engine: Engine) -> None:
    from sqlalchemy import update

    from core.ledger.tables import Decision, ReportRollupState

    truth = fill(engine, 1500, n_products=3, seed=5, span_s=3 * 86400.0)
    with engine.begin() as c:  # a ledger that closed decisions before it had rollups
        c.execute(update(Decision).where(Decision.ts < truth.start + 86400.0).values(closed_at=1.0))
        c.execute(update(ReportRollupState).values(status="stale"))
    out = run(database_url, "db", "rollups")
    assert out.returncode == 0, out.stderr
    assert "rollups: stale" in out.stdout and "copyloop db rollups --rebuild" in out.stdout
    scanned = json.loads(run(database_url, "report", "--ope-sample", "0").stdout)
    assert scanned["rollups"]["used"] is False
    out = run(database_url, "db", "rollups", "--rebuild")
    assert out.returncode == 0, out.stderr
    held = int(out.stdout.split("rebuilt: ")[1].split()[0])
    assert 0 < held < 1500
    assert "rollups: valid (reward_window_s=1800, clock_skew_s=120), " in out.stdout
    assert "the report reads them" in out.stdout
    fast = json.loads(run(database_url, "report", "--ope-sample", "0").stdout)
    full = json.loads(run(database_url, "report", "--ope-sample", "0", "--full-scan").stdout)
    assert fast["rollups"]["used"] is True and full["rollups"]["used"] is False
    assert fast["arms"] == full["arms"] == scanned["arms"]


def test_catalog_import_reports_what_it_retired(database_url: str, tmp_path: Path) -> None:
    """A changed product's stale copy is retired by the import, which says so."""
    from generator.recheck import FACTS_CHANGED
    from tests.generator.test_recheck import ALUMINIUM, STEEL

    for n, product in enumerate((STEEL, ALUMINIUM)):
        path = tmp_path / f"catalog{n}.jsonl"
        path.write_text(product.model_dump_json() + "\n")
        out = run(database_url, "catalog", "import", str(path))
        assert out.returncode == 0, out.stderr
    assert "products: 0 created, 1 updated, 0 unchanged" in out.stdout
    retired = int(out.stdout.split("variants retired: ")[1].split()[0])
    assert retired >= 1
    assert out.stderr.count(f": {FACTS_CHANGED}: unsupported_") == retired
