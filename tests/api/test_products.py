"""Catalog admin over HTTP: upsert (one or a batch, all or nothing), read with variant stats."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import Decision, Event


def _product(pid: str, **kw: object) -> dict[str, object]:
    return {"product_id": pid, "title": "Kettle", "description": "A 1.7 l steel kettle.", **kw}


def test_upsert_counts_and_new_products_are_served_at_once(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    admin = headers["admin"]
    r = client.post("/v1/products", json=_product("k1"), headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"created": 1, "updated": 0, "unchanged": 0}
    batch = {"products": [_product("k1", title="Kettle 2"), _product("k2"), _product("k3")]}
    assert client.post("/v1/products", json=batch, headers=admin).json() == {
        "created": 2,
        "updated": 1,
        "unchanged": 0,
    }
    # The serving cache re-read them: no wait for the next refresh.
    r = client.post("/v1/decisions", json={"product_id": "k2"}, headers=headers["serve"])
    assert r.status_code == 200
    assert r.json()["text"] == "A 1.7 l steel kettle."


def test_bad_items_reject_the_batch_naming_index_and_field(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    batch = {"products": [_product("ok"), _product("bad", title=""), {"product_id": "x"}]}
    r = client.post("/v1/products", json=batch, headers=headers["admin"])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert [(d["index"], d["field"]) for d in error["details"]] == [(1, "title"), (2, "title")]
    assert error["details"][0]["reason"] == "must not be empty"
    r = client.get("/v1/products/ok", headers=headers["analyst"])
    assert r.status_code == 404  # nothing was stored
    assert r.json()["error"]["code"] == "product_not_found"
    dup = {"products": [_product("d"), _product("d")]}
    r = client.post("/v1/products", json=dup, headers=headers["admin"])
    assert r.status_code == 422
    assert "appears twice" in r.json()["error"]["message"]


def test_product_with_variants_and_stats(
    client: TestClient,
    sessions: sessionmaker[Session],
    product: Any,
    headers: dict[str, dict[str, str]],
) -> None:
    control, v0, _ = product.variant_ids
    now = time.time()
    rows: list[tuple[str, str, list[tuple[str, float | None]]]] = [
        ("d1", control, [("click", None), ("click", None), ("purchase", 10.0)]),
        ("d2", control, []),
        ("d3", v0, [("add_to_cart", None), ("purchase", 5.0), ("purchase", 2.5)]),
    ]
    with sessions.begin() as s:
        for decision_id, variant_id, events in rows:
            s.add(
                Decision(
                    decision_id=decision_id,
                    product_id=product.product_id,
                    variant_id=variant_id,
                    policy="bandit",
                    probability=0.5,
                    model_version=1,
                    context={},
                    actions=list(product.variant_ids),
                    pmf=[0.5, 0.25, 0.25],
                    ts=now,
                    received_at=now,
                )
            )
            for i, (kind, value) in enumerate(events):
                s.add(
                    Event(
                        event_id=f"{decision_id}-{i}",
                        decision_id=decision_id,
                        type=kind,
                        ts=now,
                        value=value,
                        received_at=now,
                    )
                )
    r = client.get(f"/v1/products/{product.product_id}", headers=headers["analyst"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["title"] == "Desk lamp" and body["attributes"]["brand"] == "Lumo"
    variants = {v["variant_id"]: v for v in body["variants"]}
    assert set(variants) == set(product.variant_ids)
    assert variants[control]["source"] == "control" and variants[control]["status"] == "active"
    assert variants[v0]["generator_version"] == "rules-1"
    assert variants[control]["stats"] == {
        "impressions": 2,
        "clicks": 1,
        "add_to_carts": 0,
        "purchases": 1,
        "revenue": 10.0,
        "ctr": 0.5,
        "cvr": 0.5,
    }
    assert variants[v0]["stats"]["purchases"] == 1
    assert variants[v0]["stats"]["add_to_carts"] == 1
    assert variants[v0]["stats"]["revenue"] == 7.5
    assert variants[product.variant_ids[2]]["stats"]["impressions"] == 0
