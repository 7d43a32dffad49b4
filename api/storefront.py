"""What the storefront-facing routes share: the decision-token signer, the decisions this
process served recently, and the rate limits.

A decision's `token` (`core.tokens`) is what a publishable key must show to post events about
it. An activation is accepted for a decision this API issued: one whose token it presents, or,
without a token, one this process served recently or the ledger holds (a decision served by
another process and not yet ingested answers 404 then: the snippet and the Python client always
send the token).
"""

from __future__ import annotations

from collections import OrderedDict

from api.ratelimit import RateLimiter
from core.settings import Settings
from core.tokens import TokenSigner


class Storefront:
    """The token signer, the recently served decision ids (bounded), and the rate limiters:
    `visitors` per storefront key and client address (per request), `events` per events key
    (per event)."""

    def __init__(self, signer: TokenSigner, settings: Settings, recent_max: int = 200_000) -> None:
        self.signer = signer
        self.visitors = RateLimiter(settings.storefront_rate_per_s, settings.storefront_burst)
        self.events = RateLimiter(settings.events_rate_per_s, settings.events_burst)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_max = recent_max

    def served(self, decision_id: str) -> None:
        """Remember a decision this process answered (the oldest are forgotten first)."""
        self._recent[decision_id] = None
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    def recently_served(self, decision_id: str) -> bool:
        return decision_id in self._recent


__all__ = ["Storefront"]
