"""A small Python client for servers that render product pages: ask copyloop which copy to show,
activate it, report what the shopper did, and never let copyloop break the page.

    from copyloop_client import Client

    copy = Client("http://copyloop:8000", key=SERVE_KEY, events_key=EVENTS_KEY)
    v = copy.variant("lamp-1", original=product.description, device="mobile", segment="new")
    html = f'<p {v.html_attributes()}>{escape(v.text)}</p>'   # the snippet can activate it
    copy.activate(v)                 # or let the page's snippet do it when the copy is seen
    copy.event(v, "add_to_cart")
    copy.event(v, "purchase", value=19.99)

Every call has a timeout (`timeout_s`, default 0.3 s). Calls that are safe to repeat are retried
(`retries`, default 1) after a connection error, a timeout, a 5xx or a 429 (its Retry-After
honoured up to `max_retry_wait_s`): fetching a variant (a GET), activating (idempotent), and
events (each carries an `event_id`, created once per `event` call, so a repeat counts once).
On failure, `variant` returns the original copy (`served` false, `error` saying why) and
`activate` / `event` return False: nothing raises into the page.

Keys: `key` (a `serve` key on a server, or a publishable `storefront` key) fetches and
activates; events go with `events_key` when given (an `events` key), else with `key` and the
decision's token (what a storefront key needs). It depends on httpx alone and imports nothing
else of copyloop, so it can be vendored into a shop's code base.
"""

from __future__ import annotations

import html
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

EventType = Literal["click", "add_to_cart", "purchase"]
_RETRIABLE = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Variant:
    """The copy to show for one page view. `served` is false when copyloop could not answer:
    then `text` is the original copy, the ids are None and `error` says why."""

    product_id: str
    text: str
    decision_id: str | None = None
    variant_id: str | None = None
    style: str | None = None
    policy: str | None = None
    probability: float | None = None
    model_version: int | None = None
    activated: bool = False
    token: str | None = None
    error: str | None = None

    @property
    def served(self) -> bool:
        return self.decision_id is not None

    def html_attributes(self) -> str:
        """The attributes that mark the copy's element for the snippet (`GET /v1/client.js`):
        it activates a deferred decision when the copy is seen, and sends clicks with the
        token. Escaped for an HTML attribute context."""
        attrs = {"data-copyloop-product": self.product_id}
        if self.decision_id is not None and self.token is not None:
            attrs["data-copyloop-decision"] = self.decision_id
            attrs["data-copyloop-token"] = self.token
        return " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an `activate` or `event` call came to: `ok`, the HTTP status (None: no answer),
    and the reason when not ok."""

    ok: bool
    status: int | None = None
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class Client:
    """copyloop's storefront API over one pooled `httpx.Client` (pass `http` to reuse yours:
    then its own base URL and timeout apply)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        events_key: str | None = None,
        timeout_s: float = 0.3,
        retries: int = 1,
        backoff_s: float = 0.05,
        max_retry_wait_s: float = 1.0,
        http: httpx.Client | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.key, self.events_key = key, events_key
        self.retries, self.backoff_s, self.max_retry_wait_s = retries, backoff_s, max_retry_wait_s
        self._owned = http is None
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)

    def variant(
        self,
        product_id: str,
        *,
        original: str = "",
        defer: bool = False,
        **context: str | int | float | bool,
    ) -> Variant:
        """The copy for one page view of `product_id`; `context` becomes the decision's context
        (`device="mobile"`…). `defer=True` starts it not activated: call `activate` (or let the
        snippet do it) once the copy is seen. On any failure: `original`, unserved."""
        params: dict[str, Any] = {k: _query_value(v) for k, v in context.items()}
        if defer:
            params["defer"] = "1"
        path = f"/v1/products/{_segment(product_id)}/variant"
        response, error = self._call("GET", path, self.key, params=params)
        if response is None or response.status_code != 200:
            return Variant(product_id, original, error=error or _why(response))
        try:
            d = response.json()
            return Variant(
                product_id=product_id,
                text=str(d["text"]),
                decision_id=str(d["decision_id"]),
                variant_id=d.get("variant_id"),
                style=d.get("style"),
                policy=d.get("policy"),
                probability=d.get("probability"),
                model_version=d.get("model_version"),
                activated=bool(d.get("activated", True)),
                token=d.get("token"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            return Variant(product_id, original, error=f"unreadable answer: {exc}")

    def activate(self, variant: Variant) -> Outcome:
        """Count a deferred decision as seen (idempotent; a no-op for an unserved variant)."""
        if variant.decision_id is None:
            return Outcome(False, None, "not served by copyloop")
        body = {"token": variant.token} if variant.token else {}
        path = f"/v1/decisions/{_segment(variant.decision_id)}/activate"
        response, error = self._call("POST", path, self.key, json=body)
        return _outcome(response, error, 202)

    def event(
        self,
        variant: Variant,
        type: EventType,
        *,
        value: float | None = None,
        event_id: str | None = None,
    ) -> Outcome:
        """Report a `click`, `add_to_cart` or `purchase` (with `value`) of a served variant.
        `event_id` defaults to a fresh one, kept across this call's retries."""
        if variant.decision_id is None:
            return Outcome(False, None, "not served by copyloop")
        body: dict[str, Any] = {
            "event_id": event_id or uuid.uuid4().hex,
            "decision_id": variant.decision_id,
            "type": type,
        }
        if value is not None:
            body["value"] = value
        if self.events_key is None and variant.token is not None:
            body["token"] = variant.token
        response, error = self._call("POST", "/v1/events", self.events_key or self.key, json=body)
        return _outcome(response, error, 202)

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, key: str, **kwargs: Any
    ) -> tuple[httpx.Response | None, str | None]:
        """The answer (None after the last failed try) and, without one, why. Every call here
        is safe to repeat, so each is tried `1 + retries` times."""
        headers = {"Authorization": f"Bearer {key}"}
        error: str | None = None
        response: httpx.Response | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._wait(response, attempt))
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                response, error = None, f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code not in _RETRIABLE:
                return response, None
            error = _why(response)
        return response, error

    def _wait(self, response: httpx.Response | None, attempt: int) -> float:
        wait: float = self.backoff_s * 2 ** (attempt - 1)
        if response is not None and response.status_code == 429:
            try:
                wait = max(wait, float(str(response.headers.get("Retry-After", "0"))))
            except ValueError:
                pass
        return min(wait, self.max_retry_wait_s)


def _outcome(response: httpx.Response | None, error: str | None, expected: int) -> Outcome:
    if response is not None and response.status_code == expected:
        return Outcome(True, expected)
    return Outcome(
        False, None if response is None else response.status_code, error or _why(response)
    )


def _why(response: httpx.Response | None) -> str:
    if response is None:
        return "no answer"
    try:
        err = response.json()["error"]
        return f"HTTP {response.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _segment(value: str) -> str:
    """`value` as one URL path segment."""
    return quote(value, safe="")


def _query_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


__all__ = ["Client", "EventType", "Outcome", "Variant"]
