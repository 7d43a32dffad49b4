"""The generator's part of the loop from the outside, on real components: a local (tiny,
distilled) model writes the candidates (`copyloop generate --backend hf`), the bandit serves them
to simulated shoppers over HTTP, their clicks come back through Kafka and become rewards, and
`copyloop finetune` trains a new generator version on the winners, gates it and records it; the
new version's candidates are then served by the bandit beside the older ones."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from copyloop.runner import Stack, settings_env
from core.broker import EmbeddedBroker, free_port
from core.ledger import Decision, Reward, Variant
from core.settings import Settings
from generator.versions import base_version_name, list_versions
from tests.conftest import FAST_LOOP, api_keys, cli, wait_for_model
from tests.generator.conftest import WarmModel

pytest.importorskip("transformers")
# It ran past 15 minutes on a 2-core machine with other work beside it (load 5-6): the model
# fixture distils and trains on the CPU.
pytestmark = pytest.mark.timeout(1800)

#: Click probability by style; everything else (the original copy included) gets BASE. The
#: shoppers love spec sheets, which only the rules backend writes at first.
TASTE = {"technical": 0.5, "concise": 0.15}
BASE = 0.05


class Shoppers:
    """Page views over HTTP and their clicks through Kafka, with a seeded taste for styles."""

    def __init__(self, client: httpx.Client, key: str, settings: Settings, seed: int) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}
        self.topic = settings.events_topic
        self.producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
        self.rng = np.random.default_rng(seed)

    def visit(self, product_ids: list[str], views: int) -> list[dict[str, object]]:
        """`views` decisions on random products; each is clicked with the taste's probability.
        Returns the decisions as served."""
        served = []
        for _ in range(views):
            pid = product_ids[int(self.rng.integers(len(product_ids)))]
            device = "mobile" if self.rng.random() < 0.5 else "desktop"
            r = self.client.get(
                f"/v1/products/{pid}/variant", params={"device": device}, headers=self.headers
            )
            assert r.status_code == 200, r.text
            decision = r.json()
            served.append(decision)
            if self.rng.random() < TASTE.get(str(decision["style"]), BASE):
                event = {
                    "event_id": uuid.uuid4().hex,
                    "decision_id": decision["decision_id"],
                    "type": "click",
                    "ts": int(time.time() * 1000),
                }
                self.producer.send(
                    self.topic,
                    key=str(decision["decision_id"]).encode(),
                    value=json.dumps(event).encode(),
                )
        self.producer.flush()
        return served

    def close(self) -> None:
        self.producer.close()


def wait_until_learned(sessions: sessionmaker[Session], n: int, stack: Stack) -> None:
    """Until `n` decisions are stored and every one of them has its reward."""
    deadline = time.monotonic() + 120
    while True:
        stack.check()
        with sessions() as s:
            decided = s.scalar(select(func.count()).select_from(Decision))
            rewarded = s.scalar(select(func.count()).select_from(Reward))
        if decided == rewarded == n:
            return
        assert time.monotonic() < deadline, (decided, rewarded, n)
        time.sleep(0.5)


def versions_of(sessions: sessionmaker[Session]) -> dict[str, str]:
    """variant_id → generator version, for the active `llm` variants."""
    with sessions() as s:
        rows = s.execute(
            select(Variant.variant_id, Variant.generator_version).where(
                Variant.source == "llm", Variant.status == "active"
            )
        )
        return {vid: version for vid, version in rows}


def test_generate_serve_finetune_and_serve_the_new_version(
    make_settings: Callable[..., Settings],
    sessions: sessionmaker[Session],
    broker: EmbeddedBroker,
    warm_tiny_lm: WarmModel,
    tmp_path: Path,
) -> None:
    model = str(warm_tiny_lm.path)
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap,
        **FAST_LOOP,
        api_port=free_port(),
        holdout=0.3,
        generator_backend="hf",
        generator_model=model,
        winner_min_exposure=30,
        finetune_min_winners=4,
        finetune_output_dir=str(tmp_path / "adapters"),
    )
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(p.model_dump_json() + "\n" for p in warm_tiny_lm.products))
    ids = [p.product_id for p in warm_tiny_lm.products]
    assert f"{len(ids)} created" in cli(env, "catalog", "import", str(catalog))  # + rules copy

    # 1. The base model writes more candidates; the guardrails keep the grounded ones.
    out = cli(env, "generate", "--backend", "hf", "--per-product", "6")
    assert "products/s" in out and "tokens/s" in out
    base = base_version_name(model)
    first = versions_of(sessions)
    assert set(first.values()) == {base} and len(first) >= len(ids) // 2, len(first)
    keys = api_keys(env, "serve", "analyst")

    with Stack(settings, roles=("serve", "consume")) as stack:
        base_url = f"http://{settings.api_host}:{settings.api_port}"
        with httpx.Client(base_url=base_url, timeout=10) as client:
            wait_for_model(client, stack)
            shoppers = Shoppers(client, keys["serve"], settings, seed=7)
            try:
                # 2. The bandit serves them and learns what the shoppers click.
                phase_1 = shoppers.visit(ids, 4000)
                wait_until_learned(sessions, len(phase_1), stack)

                # 3. A fine-tuning round on the winners: a new version, gated and recorded.
                result = json.loads(
                    cli(
                        env,
                        "finetune",
                        "--json",
                        "--set", "sft_steps=40",
                        "--set", "dpo_steps=10",
                        "--set", "learning_rate=3e-3",
                        "--set", "target_modules=c_attn,c_proj,c_fc",
                        # Which variants win depends on the timing of snapshots against
                        # page views, so the winners (and a tiny model's guardrail pass
                        # rate after training on them) differ from run to run: the round
                        # must ship on every draw here, so the pass-rate and diversity
                        # tolerances are wide. The gate's own statistics are pinned in
                        # test_finetune.py; held-out likelihood still has to improve.
                        "--set", "gate_samples=16",
                        "--set", "guardrail_margin=0.5",
                        "--set", "diversity_tolerance=0.5",
                        timeout=600,
                    ).splitlines()[-1]
                )  # fmt: skip
                assert result["data"]["winners"] >= 4, result["data"]
                assert result["status"] == "shipped", result["reason"]
                tuned = result["version"]
                metrics = result["metrics"]
                assert metrics["heldout_nll"] < metrics["heldout_nll_base"]
                assert metrics["train_nll"] < metrics["train_nll_base"]
                recorded = {v.version: v for v in list_versions(sessions)}
                assert recorded[tuned].status == "shipped" and recorded[tuned].parent == base
                assert recorded[tuned].gate_reason == result["reason"]

                # 4. The new version writes challengers: the newest shipped one generates.
                cli(env, "generate", "--backend", "hf", "--per-product", "8")
                second = versions_of(sessions)
                new = {vid for vid, version in second.items() if version == tuned}
                assert len(new) >= len(ids) // 2, len(new)
                assert {vid for vid, v in second.items() if v == base} == set(first)

                # 5. ... and the bandit serves them beside the older variants.
                time.sleep(3 * settings.catalog_refresh_s)
                phase_2 = shoppers.visit(ids, 2000)
                wait_until_learned(sessions, len(phase_1) + len(phase_2), stack)
            finally:
                shoppers.close()
            report = client.get(
                "/v1/reports/uplift", headers={"Authorization": f"Bearer {keys['analyst']}"}
            ).json()
    served = Counter(
        second.get(str(d["variant_id"]), "other") for d in phase_2 if d["policy"] == "bandit"
    )
    assert served[tuned] > 0 and served[base] > 0, served
    # A fair trial (checked below): on the products that got new-version copy, it takes a real
    # share of the bandit's traffic at once (before the fair trial: 4-5 of 2,000 page views).
    # Every bandit decision of a product with new variants could have served them.
    tuned_of: dict[str, set[str]] = {}
    with sessions() as s:
        for vid, pid in s.execute(
            select(Variant.variant_id, Variant.product_id).where(Variant.variant_id.in_(new))
        ):
            tuned_of.setdefault(pid, set()).add(vid)
        ids_2 = [str(d["decision_id"]) for d in phase_2 if d["policy"] == "bandit"]
        rows = s.execute(
            select(Decision.product_id, Decision.actions, Decision.pmf).where(
                Decision.decision_id.in_(ids_2)
            )
        ).all()
    checked = 0
    for pid, actions, pmf in rows:
        probability = dict(zip(actions, pmf, strict=True))
        for vid in tuned_of.get(pid, ()):
            assert probability.get(vid, 0.0) > 0.0, (pid, vid, probability)
            checked += 1
    assert checked > 100, checked
    on_products = [d for d in phase_2 if d["policy"] == "bandit" and d["product_id"] in tuned_of]
    share = sum(str(d["variant_id"]) in new for d in on_products) / len(on_products)
    print(f"new-version copy: {share:.3f} of {len(on_products)} bandit decisions")
    assert share >= 0.15, (share, len(on_products))
    shown = {g["generator_version"]: g["impressions"] for g in report["generator_versions"]}
    assert shown[tuned] > 0 and shown[base] > 0, shown
    listing = {v["version"]: v for v in json.loads(cli(env, "generator", "versions", "--json"))}
    assert listing[tuned]["current"] and listing[tuned]["status"] == "shipped"
    for version in (base, tuned):  # what each wrote, accepted and rejected with reasons
        written = listing[version]["candidates"]
        assert written["statuses"]["active"] > 0 and written["statuses"]["rejected"] > 0
        assert sum(written["rejects"].values()) == written["statuses"]["rejected"]
    assert "top reject reasons" in cli(env, "generator", "versions")
