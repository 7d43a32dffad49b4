"""Fixtures of the API tests: a catalog in the real ledger, API keys per role, a running app
(TestClient, lifespan included) on the real broker, and a way to read topics back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from core.broker import EmbeddedBroker, refuse_topic_creation
from core.catalog import ProductIn, upsert_products
from core.keys import ROLES, create_key
from core.ledger.tables import Variant
from core.settings import Settings

STYLES = ("concise", "bullets", "story")


@dataclass(frozen=True)
class SeededProduct:
    product_id: str
    control_id: str
    variant_ids: tuple[str, ...]  # control first


def seed_product(
    sessions: sessionmaker[Session], product_id: str = "lamp-1", extra: int = 2
) -> SeededProduct:
    """A product through the catalog module (which makes its control variant) plus `extra`
    active generated variants written with the ORM."""
    upsert_products(
        sessions,
        [
            ProductIn(
                product_id=product_id,
                title="Desk lamp",
                category="lighting",
                description="A steel desk lamp with 3 brightness settings and a 2 m cord.",
                attributes={"brand": "Lumo", "material": "steel"},
            )
        ],
    )
    with sessions.begin() as s:
        control = s.query(Variant).filter_by(product_id=product_id, source="control").one()
        extras = []
        for i in range(extra):
            v = Variant(
                variant_id=f"{product_id}-v{i}",
                product_id=product_id,
                text=f"Variant {i} of the steel desk lamp: 3 settings, 2 m cord.",
                style=STYLES[i % len(STYLES)],
                source="rules",
                status="active",
                generator_version="rules-1",
                created_at=time.time(),
            )
            s.add(v)
            extras.append(v.variant_id)
        return SeededProduct(product_id, control.variant_id, (control.variant_id, *extras))


@pytest.fixture
def product(sessions: sessionmaker[Session]) -> SeededProduct:
    return seed_product(sessions)


@pytest.fixture
def seed(sessions: sessionmaker[Session]) -> Callable[..., SeededProduct]:
    """`seed(product_id, extra=2)`: one more product in the test's ledger."""
    return lambda product_id, extra=2: seed_product(sessions, product_id, extra)


@pytest.fixture
def headers(sessions: sessionmaker[Session]) -> dict[str, dict[str, str]]:
    """`Authorization` headers of one fresh API key per role."""
    return {
        role: {"Authorization": f"Bearer {create_key(sessions, role, label=f'test {role}')}"}
        for role in ROLES
    }


@pytest.fixture
def api_settings(kafka_settings: Settings) -> Settings:
    """Settings on the test ledger and broker, with fast background loops."""
    return kafka_settings.model_copy(update={"model_reload_s": 0.05, "catalog_refresh_s": 0.2})


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as c:
        yield c


@pytest.fixture
def read_topic(broker: EmbeddedBroker) -> Callable[..., list[tuple[int, bytes | None, bytes]]]:
    return lambda topic, expected, **kw: read_messages(broker.bootstrap, topic, expected, **kw)


def read_messages(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0, settle_s: float = 0.5
) -> list[tuple[int, bytes | None, bytes]]:
    """Messages of `topic` as `(partition, key, value)`, in offset order within each partition:
    waits for `expected` of them, then `settle_s` more so that extra (duplicate) ones show."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        client_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    # The reader must not create the topic (with the broker's default partition count) before
    # the code under test creates it with its own.
    refuse_topic_creation(consumer)
    consumer.subscribe([topic])
    out: list[tuple[int, bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(out) >= expected:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for tp, records in consumer.poll(timeout_ms=100).items():
                out.extend((tp.partition, r.key, r.value) for r in records)
    finally:
        consumer.close()
    return out


@pytest.fixture
def wait_until() -> Callable[..., None]:
    return _wait_until


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.02)
