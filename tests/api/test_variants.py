"""A copywriter's variants over HTTP: added through the guardrails and served from the next page
view, retired by hand, the control protected; bad input names its field and stores nothing."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bandit import Policy
from core.ledger import snapshots
from core.ledger.tables import Variant
from core.settings import Settings

GOOD = "The Lumo desk lamp: steel, 3 brightness settings and a 2 m cord for any desk."


def _served(client: TestClient, headers: dict[str, dict[str, str]], pid: str, n: int) -> set[str]:
    return {
        client.get(f"/v1/products/{pid}/variant", headers=headers["serve"]).json()["variant_id"]
        for _ in range(n)
    }


def test_a_manual_variant_passes_the_guardrails_and_is_served_at_once(
    client: TestClient,
    product: Any,
    headers: dict[str, dict[str, str]],
    sessions: sessionmaker[Session],
    api_settings: Settings,
    wait_until: Any,
) -> None:
    policy = Policy(api_settings.vw_args)  # an untrained model, as the learner saves first
    snapshots.save(sessions, policy.save(), last_seq=0, vw_args=api_settings.vw_args)
    pid = product.product_id
    serve = headers["serve"]
    wait_until(
        lambda: (
            client.get(f"/v1/products/{pid}/variant", headers=serve).json()["policy"] == "bandit"
        ),
        what="the model to load",
    )
    body = {"variants": [{"text": GOOD, "style": "desk"}, {"text": "A 12 inch copper lamp."}]}
    r = client.post(
        f"/v1/products/{product.product_id}/variants", json=body, headers=headers["admin"]
    )
    assert r.status_code == 201, r.text
    good, bad = r.json()["variants"]
    assert good["status"] == "active" and good["reasons"] == []
    assert bad["status"] == "rejected" and bad["reasons"][0].startswith("unsupported_")
    with sessions() as s:
        row = s.get(Variant, good["variant_id"])
        assert row is not None
        assert (row.source, row.style, row.generator_version) == ("manual", "desk", "manual")
    # No restart and no refresh wait: the very next decisions may serve it (the fair trial
    # gives a variant that was never served at least a tenth of the traffic).
    assert good["variant_id"] in _served(client, headers, product.product_id, 200)
    again = client.post(
        f"/v1/products/{product.product_id}/variants",
        json={"text": GOOD, "style": "desk"},
        headers=headers["admin"],
    )
    assert again.json()["variants"] == [good]  # the same text twice is the same variant


def test_retire_stops_serving_and_keeps_history_but_not_for_the_control(
    client: TestClient,
    product: Any,
    headers: dict[str, dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    pid, victim = product.product_id, product.variant_ids[1]
    r = client.delete(f"/v1/products/{pid}/variants/{victim}", headers=headers["admin"])
    assert r.status_code == 200, r.text
    assert r.json() == {"variant_id": victim, "status": "retired", "changed": True}
    assert victim not in _served(client, headers, pid, 100)
    with sessions() as s:
        row = s.scalar(select(Variant).where(Variant.variant_id == victim))
        assert row is not None and (row.status, row.reject_reason) == ("retired", "manual")
    r = client.delete(f"/v1/products/{pid}/variants/{victim}", headers=headers["admin"])
    assert r.json()["changed"] is False
    r = client.delete(f"/v1/products/{pid}/variants/{product.control_id}", headers=headers["admin"])
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "control_variant"
    r = client.delete(f"/v1/products/{pid}/variants/nope", headers=headers["admin"])
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "variant_not_found"


def test_bad_input_names_the_field_and_stores_nothing(
    client: TestClient,
    product: Any,
    headers: dict[str, dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    pid = product.product_id
    body = {"variants": [{"text": GOOD}, {"text": "", "style": "x"}, {"style": "bad style!"}]}
    r = client.post(f"/v1/products/{pid}/variants", json=body, headers=headers["admin"])
    assert r.status_code == 422
    fields = {(d["index"], d["field"]) for d in r.json()["error"]["details"]}
    assert {(1, "text"), (2, "text"), (2, "style")} <= fields
    with sessions() as s:
        assert s.scalar(select(Variant).where(Variant.source == "manual")) is None
    r = client.post("/v1/products/nope/variants", json={"text": GOOD}, headers=headers["admin"])
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "product_not_found"
    for role in ("serve", "analyst", "events"):
        r = client.post(f"/v1/products/{pid}/variants", json={"text": GOOD}, headers=headers[role])
        assert r.status_code == 403


def test_product_ids_with_slashes_spaces_and_accents_work_on_every_product_route(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    """Storefront SKUs hold `/` (`AB-12/XL`): clients send it as `%2F`, which the server sees
    decoded; each route that takes a product id in its path still finds the product."""
    from urllib.parse import quote

    pid = "AB-12/XL été 2"
    body = {"product_id": pid, "title": "Sun hat", "description": "A wide-brim straw sun hat."}
    assert client.post("/v1/products", json=body, headers=headers["admin"]).status_code == 200
    path = f"/v1/products/{quote(pid, safe='')}"
    served = client.get(f"{path}/variant?device=mobile", headers=headers["serve"])
    assert served.status_code == 200, served.text
    assert served.json()["product_id"] == pid
    added = client.post(
        f"{path}/variants",
        json={"text": "A wide-brim straw hat that keeps the sun off your face and neck."},
        headers=headers["admin"],
    )
    assert added.status_code == 201, added.text
    [new] = added.json()["variants"]
    read = client.get(path, headers=headers["analyst"])
    assert read.status_code == 200 and read.json()["product_id"] == pid
    assert new["variant_id"] in {v["variant_id"] for v in read.json()["variants"]}
    retired = client.delete(f"{path}/variants/{new['variant_id']}", headers=headers["admin"])
    assert retired.status_code == 200 and retired.json()["status"] == "retired"


_STEEL = {
    "product_id": "lamp-1",
    "title": "Lumo Desk Lamp",
    "category": "home-lighting",
    "description": "A steel desk lamp with 3 brightness settings and a 2 m cord.",
    "attributes": {"brand": "Lumo", "material": "steel", "cord_length_m": 2},
}
_ALUMINIUM = {
    **_STEEL,
    "description": "An aluminium desk lamp with 5 brightness settings and a 1.5 m cord.",
    "attributes": {"brand": "Lumo", "material": "aluminium", "cord_length_m": 1.5},
}


def test_the_api_upsert_withdraws_stale_copy_before_it_is_served(
    client: TestClient, headers: dict[str, dict[str, str]], sessions: sessionmaker[Session]
) -> None:
    admin = headers["admin"]
    assert client.post("/v1/products", json=_STEEL, headers=admin).status_code == 200
    stale = "The Lumo desk lamp: steel, with a cord long enough for any desk."
    r = client.post("/v1/products/lamp-1/variants", json={"text": stale}, headers=admin)
    [added] = r.json()["variants"]
    assert added["status"] == "active"
    r = client.post("/v1/products", json=_ALUMINIUM, headers=admin)
    assert r.json() == {"created": 0, "updated": 1, "unchanged": 0}
    product = client.get("/v1/products/lamp-1", headers=headers["analyst"]).json()
    [row] = [v for v in product["variants"] if v["variant_id"] == added["variant_id"]]
    assert row["status"] == "retired", row
    served = {
        client.get("/v1/products/lamp-1/variant", headers=headers["serve"]).json()["variant_id"]
        for _ in range(30)
    }
    assert added["variant_id"] not in served
