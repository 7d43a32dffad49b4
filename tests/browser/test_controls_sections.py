"""The operator-control sections of `GET /reports` in headless Chromium: apprentice mode, shadow
explorers and feature importance show the JSON report's numbers. The ledger: synthetic
apprentice-mode decisions (`reports.synthetic.fill` with the control served 80% of the time and
a mode history saying so), closed and learned by the real learner with two shadow explorers.

Skipped, saying why, only when Chromium or its driver is not installed."""

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
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from consumer.learner import Learner
from core.broker import free_port
from core.keys import create_key
from core.ledger import ServingMode
from core.settings import Settings
from reports.synthetic import fill

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
)
SHADOWS = ["--epsilon 0.2", "--squarecb --gamma_scale 5"]


@pytest.fixture
def served(
    engine: Engine, sessions: sessionmaker[Session], kafka_settings: Settings
) -> Iterator[tuple[str, str]]:
    settings = kafka_settings.model_copy(update={"shadow_explorers": SHADOWS})
    truth = fill(engine, 3000, n_products=4, seed=3, span_s=3 * 3600.0, holdout=0.8)
    with engine.begin() as c:
        c.execute(
            insert(ServingMode), [{"mode": "apprentice", "explore": 0.2, "set_at": truth.start}]
        )
    learner = Learner(sessions, settings, close_limit=5000)
    learner.catch_up()
    while learner.close_and_learn(time.time()):
        pass
    learner.maybe_snapshot(force=True)
    learner.close()
    key = create_key(sessions, "analyst")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
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
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def test_control_sections_show_the_json_numbers(served: tuple[str, str], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    base, key = served
    auth = {"Authorization": f"Bearer {key}"}
    data = httpx.get(
        f"{base}/v1/reports/uplift",
        params={"feature_sample": 2000},  # what the HTML page reads by default
        headers=auth,
        timeout=120,
    ).raise_for_status()
    report = data.json()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": auth})
    browser.get(f"{base}/reports")
    assert browser.title == "copyloop uplift report"

    def value(css: str) -> float:
        element = browser.find_element(By.CSS_SELECTOR, css)
        assert element.is_displayed(), css
        return float(element.get_attribute("data-value"))

    # apprentice mode: what switching to live would earn
    app = report["apprentice"]
    assert app["available"] and app["decisions"] > 1000
    table = browser.find_element(By.CSS_SELECTOR, "#apprentice")
    assert table.get_attribute("data-decisions") == str(app["decisions"])
    for metric, m in app["metrics"].items():
        row = f'#apprentice tr[data-metric="{metric}"]'
        assert value(f"{row} td.live") == pytest.approx(m["live"]["dr"]["value"])
        assert value(f"{row} td.uplift") == pytest.approx(m["uplift"]["absolute"])

    # shadow explorers beside the live policy
    shadow = report["ope"]["shadow"]
    assert shadow["available"] and [e["explorer"] for e in shadow["explorers"]] == SHADOWS
    targets = [("live", shadow["live"])] + [(e["explorer"], e) for e in shadow["explorers"]]
    for name, target in targets:
        for est in ("ips", "snips", "dr"):
            cell = f'#shadow tr[data-explorer="{name}"][data-metric="ctr"] td.{est}'
            assert value(cell) == pytest.approx(target["estimates"]["ctr"][est]["value"])

    # feature importance: namespace totals, top features, each group left out
    features = report["features"]
    assert features["namespaces"] and features["groups"]
    for ns in features["namespaces"]:
        cell = f'#feature-namespaces tr[data-namespace="{ns["namespace"]}"] td[data-value]'
        assert value(cell) == pytest.approx(ns["importance"])
    shown = browser.find_elements(By.CSS_SELECTOR, "#features td[data-value]")
    assert [float(c.get_attribute("data-value")) for c in shown] == pytest.approx(
        [w["importance"] for w in features["features"][:25]]
    )
    assert value('#feature-groups tr[data-group="none"] td[data-value]') == pytest.approx(
        features["all_features"]["estimates"]["ctr"]["snips"]["value"]
    )
    for g in features["groups"]:
        if g["ope_without"] is not None:
            cell = f'#feature-groups tr[data-group="{g["group"]}"] td[data-value]'
            assert value(cell) == pytest.approx(
                g["ope_without"]["estimates"]["ctr"]["snips"]["value"]
            )
