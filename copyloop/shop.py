"""A small storefront page that uses the snippet (`GET /v1/client.js`) against a running API:
what `copyloop up --shop-port P` and `copyloop demo --shop-port P` serve so that a person can
open it, see the served copy, scroll to activate it, click, and watch it land in the report.

Pages are plain HTML under a strict Content-Security-Policy (scripts from this origin and the
API's only; no inline script or style), so the page also shows that the snippet needs nothing
looser. Served by the standard library's threading HTTP server: it is a demo, not a shop.

    shop = Shop(api_base, storefront_key, products, port=8080, report=lambda: {...}).start()
    shop.url   # http://127.0.0.1:8080/
    shop.stop()

`/report` answers the report's arms (impressions, clicks, not activated…) as JSON, read on the
server with an analyst key that never reaches the page.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.keys import create_key
from core.ledger import make_engine, make_sessionmaker
from core.ledger.tables import Product, Variant
from core.settings import Settings
from reports.uplift import uplift_report

_STATIC = resources.files("copyloop").joinpath("shop_static")
_TYPES = {".css": "text/css", ".js": "application/javascript"}


@dataclass(frozen=True, slots=True)
class ShopProduct:
    product_id: str
    title: str
    original: str  # the control copy: what the page shows if copyloop is slow or down


def shop_products(sessions: sessionmaker[Session], limit: int = 6) -> list[ShopProduct]:
    """The first `limit` products (by id) with their original copy."""
    with sessions() as s:
        rows = s.execute(
            select(Product.product_id, Product.title, Variant.text)
            .join(Variant, Variant.product_id == Product.product_id)
            .where(Variant.source == "control", Variant.status == "active")
            .order_by(Product.product_id)
            .limit(limit)
        ).all()
    return [ShopProduct(*row) for row in rows]


def render_page(
    api_base: str,
    key: str,
    products: Sequence[ShopProduct],
    timeout_ms: int = 300,
    script_base: str | None = None,
) -> str:
    """The shop's one page: each product's copy marked for the snippet, far apart, so that all
    but the first start below the fold and are activated only when scrolled to. The snippet
    loads `async`, so a slow API never holds the page back. `script_base` serves the snippet
    from elsewhere than the API it calls (a CDN; the tests' slow API)."""
    api = html.escape(api_base.rstrip("/"))
    script = html.escape((script_base or api_base).rstrip("/"))
    items = "\n".join(
        f'<article class="product" id="product-{i}">'
        f"<h2>{html.escape(p.title)}</h2>"
        f'<p class="copy" data-copyloop-product="{html.escape(p.product_id)}">'
        f"{html.escape(p.original)}</p>"
        f'<button type="button" data-copyloop-add-to-cart="{html.escape(p.product_id)}">'
        "Add to cart</button></article>"
        + ('<div class="spacer"></div>' if i < len(products) - 1 else "")
        for i, p in enumerate(products)
    )
    csp = f"default-src 'self'; script-src 'self' {script}; connect-src {api}; style-src 'self'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>copyloop demo shop</title>
<link rel="stylesheet" href="/shop.css">
<script src="{script}/v1/client.js" data-copyloop-key="{html.escape(key)}"
 data-copyloop-api="{api}" data-copyloop-timeout="{timeout_ms}" async></script>
<script src="/shop.js" defer></script>
</head><body>
<h1>copyloop demo shop</h1>
<p class="note">Each description below is served by copyloop; it counts as an impression once
half of it has been on screen for a moment. <a href="/report">What copyloop recorded</a>.</p>
{items}
<footer><button type="button" id="checkout">Buy what is in the cart (20.00)</button>
<span id="bought"></span></footer>
</body></html>
"""


class Shop:
    """The demo shop on `host:port` (0: a free port), in a daemon thread."""

    def __init__(
        self,
        api_base: str,
        key: str,
        products: Sequence[ShopProduct],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_ms: int = 300,
        script_base: str | None = None,
        report: Callable[[], dict[str, Any]] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._on_stop = on_stop
        page = render_page(api_base, key, products, timeout_ms, script_base).encode()
        static = {f"/{f.name}": f.read_bytes() for f in _STATIC.iterdir() if f.is_file()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page)
                elif path in static:
                    kind = _TYPES.get(path[path.rfind(".") :], "application/octet-stream")
                    self._send(200, kind, static[path])
                elif path == "/report" and report is not None:
                    self._send(200, "application/json", json.dumps(report()).encode())
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the demo's console is for the demo

        self._host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="copyloop-shop", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}/"

    def start(self) -> Shop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        if self._on_stop is not None:
            self._on_stop()

    def __enter__(self) -> Shop:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def open_shop(settings: Settings, port: int, host: str | None = None) -> Shop:
    """The demo shop for the API that `settings` describe: a fresh storefront key for the page,
    an analyst key kept on the server for `/report`, the first products of the ledger."""
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    try:
        key = create_key(sessions, "storefront", "demo shop")
        products = shop_products(sessions)
    except BaseException:
        engine.dispose()
        raise

    def report() -> dict[str, Any]:
        full = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)
        return arms_summary(full)

    return Shop(
        f"http://{settings.api_host}:{settings.api_port}",
        key,
        products,
        host=host or settings.api_host,
        port=port,
        report=report,
        on_stop=engine.dispose,
    )


def arms_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What `/report` shows: per arm, the counts a person can check against what they did."""
    keys = ("impressions", "clicks", "purchases", "revenue", "not_activated", "awaiting_activation")
    return {arm: {k: a.get(k) for k in keys} for arm, a in report["arms"].items()}


__all__ = ["Shop", "ShopProduct", "arms_summary", "open_shop", "render_page", "shop_products"]
