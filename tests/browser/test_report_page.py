"""`GET /reports` in a real browser: the real app on a real port over a ledger of synthetic
decisions, rendered by headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium). The page must render, its charts must be present and drawn, and its numbers must
equal the JSON report's (`GET /v1/reports/uplift`).

Skipped, saying why, only when Chromium or its driver is not installed (scripts/test.sh
installs both when apt-get is available)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from bandit import Policy
from core.broker import free_port
from core.keys import create_key
from core.ledger import snapshots
from core.settings import Settings
from reports.synthetic import fill

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
CHARTS = (
    "lift-chart",
    "cumulative-lift-chart",
    "control-share-chart",
    "allocation-chart",
    "ope-chart",
)


@pytest.fixture
def served(
    engine: Engine, sessions: sessionmaker[Session], kafka_settings: Settings
) -> Iterator[tuple[str, str]]:
    """The real app on a free port over 4,000 synthetic decisions (and a model snapshot, so
    the greedy policy is scored too); yields (base URL, analyst key)."""
    fill(engine, 4000, n_products=5, seed=11, span_s=30 * 3600.0)
    policy = Policy(kafka_settings.vw_args)
    snapshots.save(sessions, policy.save(), 0, kafka_settings.vw_args)
    policy.close()
    key = create_key(sessions, "analyst")
    port = free_port()
    config = uvicorn.Config(
        create_app(kafka_settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="copyloop-chromium-") as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def _pct(x: float | None, places: int = 2, sign: bool = False) -> str:
    return "n/a" if x is None else f"{100 * x:{'+' if sign else ''}.{places}f}%"


def test_report_page_renders_charts_with_the_json_numbers(
    served: tuple[str, str], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    base, key = served
    auth = {"Authorization": f"Bearer {key}"}
    report = httpx.get(f"{base}/v1/reports/uplift", headers=auth, timeout=60).raise_for_status()
    data = report.json()

    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": auth})
    browser.get(f"{base}/reports")
    assert browser.title == "copyloop uplift report"

    def text(css: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, css).text).strip()

    for arm in ("bandit", "control", "fallback"):
        a = data["arms"][arm]
        row = f'#arms tr[data-arm="{arm}"]'
        assert text(f"{row} td.impressions") == str(a["impressions"])
        assert text(f"{row} td.clicks") == str(a["clicks"])
        assert text(f"{row} td.purchases") == str(a["purchases"])
        assert text(f"{row} td.revenue") == f"{a['revenue']:.2f}"
        assert text(f"{row} td.ctr") == _pct(a["ctr"])
        assert text(f"{row} td.cvr") == _pct(a["cvr"])
    assert data["arms"]["bandit"]["impressions"] + data["arms"]["control"]["impressions"] == 4000
    for metric, u in data["uplift"].items():
        row = f'#uplift tr[data-metric="{metric}"]'
        assert text(f"{row} td.relative") == _pct(u["relative"], 1, True)
        assert text(f"{row} td.p_value") == (
            "n/a" if u["p_value"] is None else f"{u['p_value']:.3g}"
        )
    assert text("#srm .observed") == f"{data['srm']['observed_control_share']:.4f}"

    # Charts: present, drawn with a real size, and carrying the JSON's numbers.
    for chart in CHARTS:
        svg = browser.find_element(By.CSS_SELECTOR, f"#{chart} svg")
        assert svg.size["width"] > 100 and svg.size["height"] > 50, chart
    for metric in ("ctr", "cvr", "revenue_per_impression"):
        for arm in ("bandit", "control"):
            bar = browser.find_element(
                By.CSS_SELECTOR, f'figure.arm-chart[data-metric="{metric}"] rect[data-arm="{arm}"]'
            )
            assert float(bar.get_attribute("data-value")) == pytest.approx(
                data["arms"][arm][metric]
            )
            assert bar.size["width"] >= 1
    marks = browser.find_elements(By.CSS_SELECTOR, "#lift-chart circle.mark")
    relative = [u["relative"] for u in data["uplift"].values() if u["relative"] is not None]
    assert [float(m.get_attribute("data-value")) for m in marks] == pytest.approx(relative)
    points = data["timeseries"]["points"]
    line = browser.find_elements(By.CSS_SELECTOR, "#cumulative-lift-chart circle.mark")
    want = [p["cumulative_lift"]["ctr"]["relative"] for p in points]
    assert [float(m.get_attribute("data-value")) for m in line] == pytest.approx(
        [w for w in want if w is not None]
    )
    shares = browser.find_elements(By.CSS_SELECTOR, "#allocation-chart rect.share")
    assert shares and sum(float(s.get_attribute("data-value")) for s in shares) == pytest.approx(
        sum(1 for p in points if p["bandit_by_style"])
    )
    ope_marks = {
        m.get_attribute("data-label"): float(m.get_attribute("data-value"))
        for m in browser.find_elements(By.CSS_SELECTOR, "#ope-chart circle.mark")
    }
    policies = data["ope"]["policies"]
    assert set(ope_marks) == {"live", "control", "uniform", "greedy"}
    for name, value in ope_marks.items():
        assert value == pytest.approx(policies[name]["estimates"]["ctr"]["snips"]["value"])
    for name in ope_marks:
        cell = text(f'#ope tr[data-policy="{name}"][data-metric="ctr"] td.snips')
        assert cell.startswith(f"{policies[name]['estimates']['ctr']['snips']['value']:.4f}")

    # Breakdowns: every product, variant and context value with the JSON's counts.
    for p in data["products"]:
        assert text(f'#products tr[data-product="{p["product_id"]}"] td.impressions') == str(
            p["impressions"]
        )
    for v in data["variants"]:
        row = f'#variants tr[data-variant="{v["variant_id"]}"]'
        assert text(f"{row} td.impressions") == str(v["impressions"])
        assert text(f"{row} td.clicks") == str(v["clicks"])
    for key, values in data["contexts"].items():
        for v in values:
            cell = f'table.context[data-key="{key}"] tr[data-value="{v["value"]}"] td.impressions'
            assert text(cell) == str(v["impressions"])
