"""The storefront snippet in a real browser: the demo shop page (`copyloop.shop`, on its own
origin, under a strict CSP) loads `GET /v1/client.js` from the real API on a real port, with a
real consumer behind it on a real broker and ledger, and headless Chromium plays the shopper.

- the page renders a served variant (as text) in place of the original copy;
- copy scrolled into view is activated, copy never scrolled to is not, and the report's
  `not_activated` equals what the browser did once the windows close;
- a click on the copy posts an event (sendBeacon, with the token) that reaches the ledger;
- with the API down or too slow, the original copy stays and no script error is thrown;
- a forged token is refused.

Skipped, saying why, only when Chromium or its driver is not installed."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from consumer.loop import LoopTuning, run_consumer
from copyloop.shop import Shop, ShopProduct
from core.broker import ensure_topics, free_port
from core.catalog import ProductIn, upsert_products
from core.keys import create_key
from core.ledger import Decision, Event, Variant
from core.settings import Settings
from reports.uplift import uplift_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
    pytest.mark.timeout(240),
]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)
WINDOW_S = 8.0  # long enough for the browser to scroll and dwell, short enough to wait for


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def seed(sessions: sessionmaker[Session], n: int = 3) -> list[ShopProduct]:
    """`n` products, each with its control copy and two more variants."""
    upsert_products(
        sessions,
        [
            ProductIn(
                product_id=f"lamp-{i}",
                title=f"Desk lamp {i}",
                category="lighting",
                description=f"The original copy of lamp {i}: a steel desk lamp with a 2 m cord.",
                attributes={"brand": "Lumo"},
            )
            for i in range(n)
        ],
    )
    with sessions.begin() as s:
        for i in range(n):
            for k, style in enumerate(("concise", "bullets")):
                s.add(
                    Variant(
                        variant_id=f"lamp-{i}-v{k}",
                        product_id=f"lamp-{i}",
                        text=f"<b>Variant {k}</b> of lamp {i}: steel, 2 m cord.",
                        style=style,
                        source="rules",
                        status="active",
                        generator_version="rules-1",
                        created_at=time.time(),
                    )
                )
    with sessions() as s:
        rows = s.execute(
            select(Variant.product_id, Variant.text)
            .where(Variant.source == "control")
            .order_by(Variant.product_id)
        ).all()
    return [ShopProduct(pid, f"Desk lamp {pid[-1]}", text) for pid, text in rows]


class Api:
    """The real app under uvicorn on a free port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = settings.api_port
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Api:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the API to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    return kafka_settings.model_copy(
        update={
            "api_port": free_port(),
            "reward_window_s": WINDOW_S,
            "close_grace_s": 0.5,
            "clock_skew_s": 1.0,
            "snapshot_every_s": 0.5,
            "model_reload_s": 0.3,
            "catalog_refresh_s": 0.5,
        }
    )


@pytest.fixture
def loop(settings: Settings) -> Iterator[None]:
    """A consumer (joiner and learner) in a thread for the test."""
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    stop = threading.Event()
    tuning = LoopTuning(lease_ttl_s=3.0, close_interval_s=0.1)
    thread = threading.Thread(target=run_consumer, args=(settings, stop), kwargs={"tuning": tuning})
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.page_load_strategy = "eager"  # DOMContentLoaded: a hung API never blocks `get`
    with tempfile.TemporaryDirectory(prefix="copyloop-chromium-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def copies(browser: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.find_elements(By.CSS_SELECTOR, "[data-copyloop-product]"))


def script_errors(browser: Any) -> list[dict[str, Any]]:
    """Uncaught script errors in the page (network failures are logged apart, as `network`)."""
    return [e for e in browser.get_log("browser") if e.get("source") == "javascript"]


def decision(sessions: sessionmaker[Session], decision_id: str) -> Decision | None:
    with sessions() as s:
        return s.get(Decision, decision_id)


def test_served_copy_activation_click_and_report_counts(
    settings: Settings, sessions: sessionmaker[Session], loop: None, browser: Any
) -> None:
    products = seed(sessions)
    key = create_key(sessions, "storefront", "browser test")
    with (
        Api(settings),
        Shop(f"http://127.0.0.1:{settings.api_port}", key, products, timeout_ms=5000) as shop,
    ):
        browser.get(shop.url)
        els = copies(browser)
        ids = wait_for(
            lambda: (
                [e.get_attribute("data-copyloop-decision") for e in els]
                if all(e.get_attribute("data-copyloop-decision") for e in els)
                else None
            ),
            20,
            "every copy to get a decision",
        )
        served = {v: t for v, t in _variant_texts(sessions).items()}
        shown = [e.text for e in els]
        assert all(text in served.values() for text in shown), shown
        assert any("<b>" in t for t in shown) or all(
            t.startswith("The original") for t in shown
        )  # markup in copy shows as text, never as HTML
        assert not els[0].find_elements("css selector", "b")

        # The first copy is on screen: activated. The others are far below the fold.
        wait_for(lambda: (d := decision(sessions, ids[0])) and d.activated, 20, "activation 0")
        time.sleep(1.5)
        assert all((d := decision(sessions, i)) is not None and not d.activated for i in ids[1:])
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", els[1])
        wait_for(lambda: (d := decision(sessions, ids[1])) and d.activated, 20, "activation 1")

        els[1].click()
        wait_for(lambda: click_of(sessions, ids[1]), 20, "the click in the ledger")
        assert script_errors(browser) == []

        # Once every window closed: two impressions (seen), one not activated (never seen).
        wait_for(
            lambda: all((d := decision(sessions, i)) and d.closed_at for i in ids),
            WINDOW_S + 30,
            "the windows to close",
        )
        report = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)
        arms = report["arms"].values()
        assert sum(a["impressions"] for a in arms) == 2
        assert sum(a["not_activated"] for a in arms) == 1
        assert sum(a["clicks"] for a in arms) == 1
        assert not decision(sessions, ids[2]).activated


def click_of(sessions: sessionmaker[Session], decision_id: str) -> str | None:
    with sessions() as s:  # a session per look: on SQLite one holds the write lock
        return s.scalar(select(Event.type).where(Event.decision_id == decision_id))


def _variant_texts(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as s:
        return {v.variant_id: v.text for v in s.scalars(select(Variant))}


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers: an API too slow to wait for."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_api_down_or_slow_keeps_the_original_copy_without_errors(
    settings: Settings, sessions: sessionmaker[Session], browser: Any
) -> None:
    products = seed(sessions)
    silent, slow_port = _silent_port()
    live = f"http://127.0.0.1:{settings.api_port}"
    cases = {  # API the snippet calls → where the snippet itself comes from
        "everything down": (f"http://127.0.0.1:{free_port()}", None),
        "API stopped": (f"http://127.0.0.1:{free_port()}", live),
        "API too slow": (f"http://127.0.0.1:{slow_port}", live),
    }
    try:
        with Api(settings):
            for case, (api, script) in cases.items():
                # The default 300 ms timeout.
                with Shop(api, "cl_whatever", products, script_base=script) as shop:
                    browser.get(shop.url)
                    time.sleep(1.0)
                    els = copies(browser)
                    assert [e.text for e in els] == [p.original for p in products], case
                    assert all(e.get_attribute("data-copyloop-decision") is None for e in els)
                    if script is not None:  # the snippet ran, and gave up in time
                        assert browser.execute_script("return typeof window.copyloop") == "object"
                    # The page still works: the cart and checkout buttons throw nothing.
                    browser.find_element("css selector", "[data-copyloop-add-to-cart]").click()
                    browser.find_element("id", "checkout").click()
                    assert browser.find_element("id", "bought").text == "cart is empty"
                    assert script_errors(browser) == [], case
    finally:
        silent.close()


def test_a_forged_token_is_refused_from_the_page(
    settings: Settings, sessions: sessionmaker[Session], browser: Any
) -> None:
    products = seed(sessions, n=1)
    key = create_key(sessions, "storefront", "browser test")
    with (
        Api(settings),
        Shop(f"http://127.0.0.1:{settings.api_port}", key, products, timeout_ms=5000) as shop,
    ):
        browser.get(shop.url)
        [el] = copies(browser)
        decision_id = wait_for(lambda: el.get_attribute("data-copyloop-decision"), 20, "a decision")
        post = """
            const [url, body, done] = arguments;
            fetch(url, {method: "POST", body: JSON.stringify(body)})
              .then(r => r.json().then(j => done([r.status, j.error && j.error.code])))
              .catch(e => done([0, String(e)]));
        """
        url = f"http://127.0.0.1:{settings.api_port}/v1/events?key={key}"
        event = {"event_id": "forged-1", "decision_id": decision_id, "type": "purchase"}
        forged = browser.execute_async_script(
            post,
            url,
            {**event, "token": "A" * 22},
        )
        assert forged == [403, "invalid_token"]
        stored = copyloop_token(browser, decision_id)
        honest = browser.execute_async_script(post, url, {**event, "token": stored})
        assert honest == [202, None]


def copyloop_token(browser: Any, decision_id: str) -> str:
    """The token the snippet kept in sessionStorage for `decision_id`."""
    token: str = browser.execute_script(
        "return window.copyloop.decisions()[arguments[0]].token", decision_id
    )
    return token
