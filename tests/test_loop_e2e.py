"""The whole loop from the outside, as a storefront would drive it: its own catalog through the
CLI, decisions over HTTP, events through a real Kafka producer (some over HTTP, some duplicated,
some garbage), the report read back over HTTP. Counts must equal what was sent, exactly, and the
bandit must beat the control copy once it has learned."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from kafka import KafkaProducer

from copyloop.runner import Stack, settings_env
from core.broker import EmbeddedBroker, free_port
from core.settings import Settings
from tests.conftest import FAST_LOOP, api_keys, cli, wait_for_model

pytestmark = pytest.mark.timeout(600)

CATEGORIES = {
    "garden": ("Hose", "steel", "green"),
    "bath": ("Towel", "cotton", "white"),
    "desk": ("Lamp", "aluminium", "black"),
    "camp": ("Lantern", "plastic", "orange"),
}


def write_catalog(path: Path, n: int) -> list[str]:
    """A catalog nobody tuned the generator on: n products over 4 categories."""
    ids = []
    with path.open("w") as fh:
        for i in range(n):
            cat = list(CATEGORIES)[i % 4]
            noun, material, colour = CATEGORIES[cat]
            pid = f"ext-{i:03d}"
            ids.append(pid)
            length = 10 + i
            fh.write(
                json.dumps(
                    {
                        "product_id": pid,
                        "title": f"Acme {noun} {length}",
                        "category": cat,
                        "description": (
                            f"The Acme {noun} {length} is made of {material} in {colour}. "
                            f"It measures {length} cm and weighs {i + 2} kg. "
                            f"It suits everyday use at home and travels well. "
                            f"Each one is checked by hand before it ships."
                        ),
                        "attributes": {
                            "brand": "Acme",
                            "material": material,
                            "colour": colour,
                            "length_cm": length,
                            "weight_kg": i + 2,
                        },
                    }
                )
                + "\n"
            )
    return ids


#: The shoppers' taste: click probability by (device, style); the original copy is mediocre.
TASTE = {
    "mobile": {"concise": 0.45, "bullets": 0.35},
    "desktop": {"technical": 0.45, "story": 0.3},
}
BASE = 0.08


def wait_for_learning(
    client: httpx.Client, analyst: dict[str, str], stack: Stack, rewards: int
) -> None:
    """Until the API serves a model that has learned `rewards` closed decisions: how far the
    learner has got when the traffic reaches a point depends on the machine's speed (in one
    loaded CI run the last third was served mostly by early models)."""
    deadline = time.monotonic() + 90
    while True:
        stack.check()
        newest = client.get("/v1/models", headers=analyst).json()["versions"][0]
        served = client.get("/healthz").json()["model_version"]
        if newest["last_seq"] >= rewards and served >= newest["version"]:
            return
        assert time.monotonic() < deadline, f"the learner got to {newest['last_seq']} rewards"
        time.sleep(0.2)


def test_outside_client_counts_match_and_bandit_wins(
    database_url: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        consumer_group=f"e2e{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        **FAST_LOOP,
        api_port=free_port(),
        spool_dir=str(tmp_path / "spool"),
        holdout=0.2,
    )
    env = {**os.environ, **settings_env(settings)}
    catalog = tmp_path / "catalog.jsonl"
    ids = write_catalog(catalog, 16)
    assert "16 created" in cli(env, "catalog", "import", str(catalog))
    keys = api_keys(env, "serve", "events", "analyst")

    rng = np.random.default_rng(2024)
    sent: dict[str, Counter[str]] = {k: Counter() for k in ("imp", "click", "buy")}
    revenue: Counter[str] = Counter()
    late_bandit = Counter[str]()
    n_views = 3000
    with Stack(settings, roles=("serve", "consume")) as stack:
        base = f"http://{settings.api_host}:{settings.api_port}"
        serve = {"Authorization": f"Bearer {keys['serve']}"}
        events_h = {"Authorization": f"Bearer {keys['events']}"}
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_for_model(client, stack)
            analyst = {"Authorization": f"Bearer {keys['analyst']}"}
            for i in range(n_views):
                if i == n_views * 2 // 3:  # the last third is served by a model that learned
                    wait_for_learning(client, analyst, stack, n_views // 3)
                device = "mobile" if rng.random() < 0.5 else "desktop"
                pid = ids[int(rng.integers(len(ids)))]
                if i % 2:
                    r = client.get(
                        f"/v1/products/{pid}/variant",
                        params={"device": device, "hour": str(i % 24)},
                        headers=serve,
                    )
                else:
                    r = client.post(
                        "/v1/decisions",
                        headers=serve,
                        json={"product_id": pid, "context": {"device": device}},
                    )
                assert r.status_code == 200, r.text
                d = r.json()
                arm = d["policy"]
                sent["imp"][arm] += 1
                if i >= n_views * 2 // 3:
                    late_bandit[arm] += 1
                p_click = TASTE[device].get(d["style"], BASE)
                if rng.random() >= p_click:
                    continue
                evs = [{"type": "click"}]
                sent["click"][arm] += 1
                if i >= n_views * 2 // 3:
                    late_bandit[f"{arm}_click"] += 1
                if rng.random() < 0.3:
                    value = round(float(rng.uniform(5, 50)), 2)
                    evs.append({"type": "purchase", "value": value})
                    sent["buy"][arm] += 1
                    revenue[arm] += value
                for e in evs:
                    e |= {
                        "event_id": uuid.uuid4().hex,
                        "decision_id": d["decision_id"],
                        "ts": int(time.time() * 1000),
                    }
                    copies = 2 if rng.random() < 0.1 else 1
                    for _ in range(copies):
                        if rng.random() < 0.15:
                            assert (
                                client.post("/v1/events", json=e, headers=events_h).status_code
                                == 202
                            )
                        else:
                            producer.send(
                                settings.events_topic,
                                key=d["decision_id"].encode(),
                                value=json.dumps(e).encode(),
                            )
            for garbage in (b"{not json", b'{"event_id": "g1", "type": "click"}', b"42"):
                producer.send(settings.events_topic, key=b"x", value=garbage)
            producer.flush()
            producer.close()

            deadline = time.monotonic() + 90
            while True:
                stack.check()
                report = client.get("/v1/reports/uplift", headers=analyst).json()
                got = {
                    arm: (a["impressions"], a["clicks"], a["purchases"])
                    for arm, a in report["arms"].items()
                    if a["impressions"]
                }
                want = {
                    arm: (sent["imp"][arm], sent["click"][arm], sent["buy"][arm])
                    for arm in sent["imp"]
                }
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    assert got == want
    for arm in sent["imp"]:
        assert report["arms"][arm]["revenue"] == pytest.approx(revenue[arm], abs=1e-6)

    # Once learned (the last third), the bandit arm clicks clearly more than the control arm.
    n_b, n_c = late_bandit["bandit"], late_bandit["control"]
    ctr_b, ctr_c = late_bandit["bandit_click"] / n_b, late_bandit["control_click"] / n_c
    se = math.sqrt(ctr_b * (1 - ctr_b) / n_b + ctr_c * (1 - ctr_c) / n_c)
    assert ctr_b - ctr_c > 2 * se, (ctr_b, ctr_c, se)
    assert report["uplift"]["ctr"]["relative"] > 0
