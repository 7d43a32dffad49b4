"""`copyloop demo`: the whole loop on embedded defaults, with a simulated storefront.

It starts the stack (broker, API, consumer) on free ports with a fresh demo ledger, imports the
sample catalog, generates variants, then plays shoppers: each page view asks the API for a
decision over HTTP and the shopper clicks, adds to cart and buys with probabilities that depend
on the copy's style and the shopper's context (mobile shoppers like short copy, desktop ones like
specs...). Events go to Kafka (most) and to `POST /v1/events` (some), with deliberate duplicates
and a little garbage. At the end it waits for the consumer, checks that the report's counts equal
what the shoppers sent, prints bandit vs control and writes the HTML report.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kafka import KafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from copyloop.runner import Stack
from core.broker import free_port
from core.catalog import SAMPLE_CATALOG
from core.settings import Settings

ARMS = ("bandit", "control", "fallback")

DEVICES = (("mobile", 0.55), ("desktop", 0.35), ("tablet", 0.10))
SEGMENTS = (("new", 0.5), ("returning", 0.35), ("loyal", 0.15))
LOCALES = (("en-US", 0.6), ("en-GB", 0.25), ("de-DE", 0.15))
REFERRERS = (("search", 0.45), ("social", 0.25), ("email", 0.1), ("direct", 0.2))

#: How much more (or less) a shopper clicks on each style, by device. `original` is the control.
AFFINITY: dict[str, dict[str, float]] = {
    "mobile": {
        "concise": 2.6,
        "bullets": 2.2,
        "benefit": 1.3,
        "original": 1.0,
        "technical": 0.5,
        "story": 0.6,
    },
    "desktop": {
        "technical": 2.4,
        "story": 1.5,
        "bullets": 1.3,
        "benefit": 1.1,
        "original": 1.0,
        "concise": 0.8,
    },
    "tablet": {
        "story": 2.3,
        "benefit": 1.8,
        "bullets": 1.1,
        "original": 1.0,
        "concise": 1.0,
        "technical": 0.8,
    },
}
SEGMENT_BOOST = {"new": {"benefit": 1.4}, "loyal": {"technical": 1.3}, "returning": {}}

#: Demo settings unless the environment sets them: short windows so learning shows in seconds.
DEMO_DEFAULTS: dict[str, object] = {
    "reward_window_s": 3.0,
    "close_grace_s": 1.0,
    "clock_skew_s": 2.0,
    "snapshot_every_s": 1.0,
    "model_reload_s": 0.5,
    "catalog_refresh_s": 2.0,
}


@dataclass
class Sent:
    """What the shoppers sent, per arm: the ledger must report exactly this."""

    impressions: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    purchases: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ARMS, 0.0))
    events: int = 0
    duplicates: int = 0
    via_http: int = 0
    garbage: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Shoppers:
    """The simulated storefront: contexts, and how shoppers react to each style."""

    def __init__(self, products: list[dict[str, Any]], seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.products = products
        self.base_ctr = {p["product_id"]: float(self._rng.uniform(0.03, 0.07)) for p in products}
        self.price = {p["product_id"]: _price(p, self._rng) for p in products}

    def _pick(self, rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
        names, weights = zip(*options, strict=True)
        return str(names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))])

    def page_view(self, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
        product = self.products[int(rng.integers(len(self.products)))]
        context = {
            "device": self._pick(rng, DEVICES),
            "segment": self._pick(rng, SEGMENTS),
            "locale": self._pick(rng, LOCALES),
            "referrer": self._pick(rng, REFERRERS),
            "hour": str(int(rng.integers(24))),
        }
        return product["product_id"], context

    def click_probability(self, product_id: str, style: str, context: dict[str, str]) -> float:
        affinity = AFFINITY[context["device"]].get(style, 1.0)
        affinity *= SEGMENT_BOOST[context["segment"]].get(style, 1.0)
        return min(0.95, self.base_ctr[product_id] * affinity)


def _price(product: dict[str, Any], rng: np.random.Generator) -> float:
    raw = product.get("attributes", {}).get("price")
    try:
        return round(float(str(raw).lstrip("$€£")), 2)
    except ValueError:
        return round(float(rng.uniform(9, 120)), 2)


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: free ports, a fresh ledger, short windows (unless set in env)."""
    update: dict[str, object] = {
        k: v for k, v in DEMO_DEFAULTS.items() if f"COPYLOOP_{k.upper()}" not in os.environ
    }
    if "COPYLOOP_API_PORT" not in os.environ:
        update["api_port"] = free_port()
    if settings.embedded_broker and "COPYLOOP_EMBEDDED_BROKER_PORT" not in os.environ:
        update["embedded_broker_port"] = free_port()
    if "COPYLOOP_DATABASE_URL" not in os.environ:
        db = Path("var/demo.db")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        update["database_url"] = f"sqlite:///./{db}"
        update["spool_dir"] = "./var/demo-spool"
    if "COPYLOOP_TOPIC_PREFIX" not in os.environ:
        update["topic_prefix"] = f"demo{uuid.uuid4().hex[:6]}"
    return settings.model_copy(update=update)


def run_demo(
    settings: Settings,
    impressions: int,
    seed: int,
    quiet: bool = False,
    shop_port: int | None = None,
) -> dict[str, Any]:
    """Play `impressions` simulated page views and summarise them; with `shop_port`, then keep
    the stack up and serve the demo shop (`copyloop.shop`) until Ctrl-C."""
    console = Console(stderr=quiet, quiet=False)
    settings = demo_settings(settings)
    started = time.time()
    console.print(
        f"[bold]copyloop demo[/]: {impressions} page views, ledger {settings.database_url}"
    )
    stack = Stack(settings, roles=("serve", "consume"), log_dir="var/demo-logs")
    with stack:
        settings = stack.settings
        keys = _prepare(settings, console)
        base = f"http://{settings.api_host}:{settings.api_port}"
        _wait_for_model(base, keys["serve"], stack)
        products = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines() if line]
        shoppers = Shoppers(products, seed)
        sent = Sent()
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20, acks="all")
        try:
            _shop(base, keys, settings, shoppers, sent, producer, impressions, seed, console, stack)
            producer.flush()
        finally:
            producer.close()
        report = _settle(base, keys["analyst"], settings, sent, console, stack)
        summary = _summarise(report, sent, settings, time.time() - started)
        _print_table(console, report, summary)
        if shop_port is not None:
            _serve_shop(settings, shop_port, console, stack)
    return summary


def _serve_shop(settings: Settings, port: int, console: Console, stack: Stack) -> None:
    """The demo shop against the live stack, until Ctrl-C or SIGTERM."""
    from copyloop.shop import open_shop

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_shop(settings, port) as shop:
            console.print(
                f"demo shop: {shop.url} (scroll, click, add to cart, buy); what copyloop "
                f"recorded: {shop.url}report. Ctrl-C stops."
            )
            while not stop.wait(1.0):
                stack.check()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _prepare(settings: Settings, console: Console) -> dict[str, str]:
    """Import the sample catalog, generate variants and create the demo's API keys."""
    from core.catalog import read_catalog, upsert_products
    from core.keys import create_key
    from core.ledger import make_engine, make_sessionmaker
    from generator.jobs import generate_variants

    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        upsert_products(sessions, read_catalog(SAMPLE_CATALOG))
        report = generate_variants(sessions, settings, backend="rules")
        console.print(f"catalog imported; variants: {report}")
        return {role: create_key(sessions, role, "demo") for role in ("serve", "events", "analyst")}
    finally:
        engine.dispose()


def _wait_for_model(base: str, key: str, stack: Stack, timeout_s: float = 60.0) -> None:
    """Wait until the API serves from a model (the consumer saves the first one at start)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.monotonic() < deadline:
            stack.check()
            try:
                health = client.get("/healthz").json()
                if health.get("model_version"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError("the API never loaded a model")


def _shop(
    base: str,
    keys: dict[str, str],
    settings: Settings,
    shoppers: Shoppers,
    sent: Sent,
    producer: KafkaProducer,
    impressions: int,
    seed: int,
    console: Console,
    stack: Stack,
) -> None:
    workers = 8
    columns = (TextColumn("shopping"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("shop", total=impressions)

        def worker(w: int) -> None:
            rng = np.random.default_rng([seed, w])
            share = impressions // workers + (1 if w < impressions % workers else 0)
            headers = {"Authorization": f"Bearer {keys['serve']}"}
            ev_headers = {"Authorization": f"Bearer {keys['events']}"}
            with httpx.Client(base_url=base, timeout=10) as client:
                for i in range(share):
                    _one_view(client, headers, ev_headers, settings, shoppers, sent, producer, rng)
                    progress.advance(task)
                    if i % 200 == 0:
                        stack.check()

        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(worker, w) for w in range(workers)]:
                future.result()
    # A little garbage, to show it lands in the DLQ without stopping anything.
    for raw in (b"not json", b'{"event_id": "x", "type": "click"}', b"[1, 2]"):
        producer.send(settings.events_topic, key=b"garbage", value=raw)
        sent.garbage += 1


def _one_view(
    client: httpx.Client,
    headers: dict[str, str],
    ev_headers: dict[str, str],
    settings: Settings,
    shoppers: Shoppers,
    sent: Sent,
    producer: KafkaProducer,
    rng: np.random.Generator,
) -> None:
    product_id, context = shoppers.page_view(rng)
    r = client.get(f"/v1/products/{product_id}/variant", params=context, headers=headers)
    r.raise_for_status()
    decision = r.json()
    arm = decision["policy"]
    events: list[dict[str, Any]] = []
    now_ms = int(time.time() * 1000)
    if rng.random() < shoppers.click_probability(product_id, decision["style"], context):
        events.append({"type": "click"})
        if rng.random() < 0.35:
            events.append({"type": "add_to_cart"})
            if rng.random() < 0.5:
                events.append({"type": "purchase", "value": shoppers.price[product_id]})
    with sent.lock:
        sent.impressions[arm] += 1
        if events:
            sent.clicks[arm] += 1
        if any(e["type"] == "purchase" for e in events):
            sent.purchases[arm] += 1
            sent.revenue[arm] += shoppers.price[product_id]
    for e in events:
        e.update(event_id=uuid.uuid4().hex, decision_id=decision["decision_id"], ts=now_ms)
        copies = 2 if rng.random() < 0.05 else 1  # at-least-once producers send some twice
        for _ in range(copies):
            if rng.random() < 0.1:
                client.post("/v1/events", json=e, headers=ev_headers).raise_for_status()
                with sent.lock:
                    sent.via_http += 1
            else:
                producer.send(
                    settings.events_topic,
                    key=decision["decision_id"].encode(),
                    value=json.dumps(e).encode(),
                )
        with sent.lock:
            sent.events += 1
            sent.duplicates += copies - 1


def _settle(
    base: str, key: str, settings: Settings, sent: Sent, console: Console, stack: Stack
) -> dict[str, Any]:
    """Wait until the ledger holds every decision and event, and every window has closed."""
    total = sum(sent.impressions.values())
    wait_until = time.monotonic() + settings.reward_window_s + settings.close_grace_s + 2.0
    deadline = time.monotonic() + 120.0
    headers = {"Authorization": f"Bearer {key}"}
    report: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=30) as client, console.status("consumer catching up"):
        while time.monotonic() < deadline:
            stack.check()
            report = client.get("/v1/reports/uplift", headers=headers).raise_for_status().json()
            arms = report["arms"]
            seen = sum(a["impressions"] for a in arms.values())
            clicks = sum(a["clicks"] for a in arms.values())
            if (
                seen == total
                and clicks == sum(sent.clicks.values())
                and (time.monotonic() >= wait_until)
            ):
                break
            time.sleep(0.5)
    return report


def _summarise(
    report: dict[str, Any], sent: Sent, settings: Settings, elapsed_s: float
) -> dict[str, Any]:
    arms = report.get("arms", {})
    matches = all(
        arms.get(arm, {}).get("impressions", 0) == sent.impressions[arm]
        and arms.get(arm, {}).get("clicks", 0) == sent.clicks[arm]
        and arms.get(arm, {}).get("purchases", 0) == sent.purchases[arm]
        and abs(arms.get(arm, {}).get("revenue", 0.0) - sent.revenue[arm]) < 1e-6
        for arm in ARMS
    )
    from reports.html import to_html

    out = Path("var/report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_html(report))
    return {
        "impressions": sum(sent.impressions.values()),
        "arms": arms,
        "uplift": report.get("uplift", {}),
        "srm": report.get("srm", {}),
        "sent": {
            "events": sent.events,
            "duplicates": sent.duplicates,
            "via_http": sent.via_http,
            "garbage": sent.garbage,
        },
        "ledger_matches_sent": matches,
        "report_html": str(out),
        "elapsed_s": round(elapsed_s, 1),
        "database_url": settings.database_url,
    }


def _print_table(console: Console, report: dict[str, Any], summary: dict[str, Any]) -> None:
    table = Table(title="bandit vs control (original copy)")
    for col in ("arm", "impressions", "CTR", "CVR", "revenue / impression"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    for arm in ("bandit", "control"):
        a = report["arms"][arm]
        table.add_row(
            arm,
            str(a["impressions"]),
            f"{a['ctr']:.2%}",
            f"{a['cvr']:.2%}",
            f"{a['revenue_per_impression']:.3f}",
        )
    console.print(table)
    for metric in ("ctr", "cvr"):
        u = report["uplift"][metric]
        if u["relative"] is None:
            console.print(f"uplift {metric}: n/a (no control {metric} yet)")
            continue
        if u["ci_low"] is None or u["p_value"] is None:  # too few events for an interval
            reason = u.get("note") or "no interval"
            console.print(f"uplift {metric}: {u['relative']:+.1%} ({reason})")
            continue
        console.print(
            f"uplift {metric}: {u['relative']:+.1%} "
            f"[95% CI {u['ci_low']:+.1%}, {u['ci_high']:+.1%}], p = {u['p_value']:.3g}"
        )
    ok = "[green]yes[/]" if summary["ledger_matches_sent"] else "[red]NO[/]"
    console.print(
        f"ledger counts equal what shoppers sent: {ok} "
        f"({summary['sent']['duplicates']} duplicate events, {summary['sent']['garbage']} garbage "
        f"messages to the DLQ); report: {summary['report_html']}; {summary['elapsed_s']} s"
    )
