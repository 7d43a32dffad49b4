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
    "cuped-chart",
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


def _interval(u: dict[str, Any]) -> str:
    if u["ci_low"] is None:
        return "n/a"
    return f"[{_pct(u['ci_low'], 1, True)}, {_pct(u['ci_high'], 1, True)}]"


def _check_analyst_section(browser: Any, data: dict[str, Any]) -> None:
    """The CUPED table and chart show the JSON's numbers; the interval kind is named."""
    from selenium.webdriver.common.by import By

    def text(css: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, css).text).strip()

    section = browser.find_element(By.CSS_SELECTOR, "#analyst")
    assert section.get_attribute("data-ci") == data["ci"]
    assert section.is_displayed()
    assert text("#interval-kind strong") == data["ci"]
    assert text("#cuped-scope").startswith("CUPED covariate: the product's rate")
    marks = []
    for metric, u in data["uplift"].items():
        c = u["cuped"]
        row = f'#cuped tr[data-metric="{metric}"]'
        assert text(f"{row} td.relative") == _pct(u["relative"], 1, True)
        assert text(f"{row} td.interval") == _interval(u)
        assert text(f"{row} td.cuped-relative") == _pct(c["relative"], 1, True)
        assert text(f"{row} td.cuped-interval") == _interval(c)
        assert text(f"{row} td.variance-reduction") == _pct(c["variance_reduction"], 1)
        assert text(f"{row} td.cuped-p_value") == (
            "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}"
        )
        marks += [u["relative"], c["relative"]]
    drawn = browser.find_elements(By.CSS_SELECTOR, "#cuped-chart circle.mark")
    assert [float(m.get_attribute("data-value")) for m in drawn] == pytest.approx(
        [m for m in marks if m is not None]
    )
    intervals = browser.find_elements(By.CSS_SELECTOR, "#cuped-chart line.interval")
    assert intervals and all(line.size["width"] > 0 for line in intervals)


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

    _check_analyst_section(browser, data)
    assert text("#analyst h2").endswith("fixed-horizon intervals")

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


def test_sequential_report_page_shows_always_valid_intervals(
    served: tuple[str, str], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    base, key = served
    auth = {"Authorization": f"Bearer {key}"}
    data = (
        httpx.get(
            f"{base}/v1/reports/uplift", params={"ci": "sequential"}, headers=auth, timeout=60
        )
        .raise_for_status()
        .json()
    )
    assert data["ci"] == "sequential"
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": auth})
    browser.get(f"{base}/reports?ci=sequential")

    def text(css: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, css).text).strip()

    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#uplift th")]
    assert "95% always-valid interval (relative)" in header
    assert "always-valid p-value" in header
    for metric, u in data["uplift"].items():
        row = f'#uplift tr[data-metric="{metric}"]'
        assert text(f"{row} td.interval") == _interval(u)
        assert text(f"{row} td.p_value") == (
            "n/a" if u["p_value"] is None else f"{u['p_value']:.3g}"
        )
    _check_analyst_section(browser, data)
    assert text("#analyst h2").endswith("always-valid intervals")
    assert "tightest near 10,000 randomized decisions" in text("#interval-kind")
    bucket = data["timeseries"]["bucket"]
    assert text("#timeseries-heading") == f"Over time (one point per {bucket})"
    thin = [v for v in data["variants"] if v["low_ess"]]
    warnings = browser.find_elements(By.CSS_SELECTOR, "#low-ess-warning")
    assert len(warnings) == (1 if thin else 0)
    if thin:
        assert warnings[0].is_displayed()
        assert warnings[0].text.startswith(f"{len(thin)} of {len(data['variants'])} variant rows")
    flagged = browser.find_elements(By.CSS_SELECTOR, "#variants tr.low-ess")
    assert {r.get_attribute("data-variant") for r in flagged} == {v["variant_id"] for v in thin}
