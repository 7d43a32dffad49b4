"""Fixtures of the consumer's tests: a small catalog written straight through the ORM, record
builders, and a way to compare two VW models by their weights."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from vowpalwabbit import pyvw

from bandit import Arm, LoggedDecision, Policy, ProductFeatures
from bandit.model_file import unpack
from consumer.records import DecisionRecord, EventRecord
from core.ledger import Decision, Product, Reward, Variant

STYLES = ("control", "concise", "bullets", "story")


@pytest.fixture
def seed_catalog(
    sessions: sessionmaker[Session],
) -> Callable[..., dict[str, list[str]]]:
    """Insert `products` products with `variants` variants each (the first one is the control
    copy); returns product_id -> variant ids in action order."""

    def seed(products: int = 3, variants: int = 3) -> dict[str, list[str]]:
        now = time.time()
        catalog: dict[str, list[str]] = {}
        with sessions.begin() as s:
            for p in range(products):
                pid = f"p{p}"
                s.add(
                    Product(
                        product_id=pid,
                        title=f"Product {p}",
                        category=("lamps", "garden", "bath")[p % 3],
                        description=f"The original description of product {p}.",
                        attributes={},
                        created_at=now,
                        updated_at=now,
                    )
                )
                ids = []
                for v in range(variants):
                    vid = f"{pid}-v{v}"
                    style = STYLES[v % len(STYLES)]
                    text = f"Variant {v} of product {p}. " + "- point\n" * v + "words " * (10 * v)
                    s.add(
                        Variant(
                            variant_id=vid,
                            product_id=pid,
                            text=text,
                            style=style,
                            source="control" if v == 0 else "rules",
                            status="active",
                            generator_version="" if v == 0 else "rules-1",
                            created_at=now,
                        )
                    )
                    ids.append(vid)
                catalog[pid] = ids
        return catalog

    return seed


def decision(
    decision_id: str,
    ts: float,
    product_id: str = "p0",
    actions: tuple[str, ...] = ("p0-v0", "p0-v1", "p0-v2"),
    chosen: int = 0,
    context: dict[str, object] | None = None,
) -> DecisionRecord:
    n = len(actions)
    return DecisionRecord(
        decision_id=decision_id,
        product_id=product_id,
        variant_id=actions[chosen],
        policy="bandit",
        probability=1.0 / n,
        model_version=1,
        context=context or {"device": "mobile"},
        actions=actions,
        pmf=tuple(1.0 / n for _ in actions),
        ts=ts,
    )


def event(
    event_id: str, decision_id: str, type_: str, ts: float, value: float | None = None
) -> EventRecord:
    return EventRecord(event_id=event_id, decision_id=decision_id, type=type_, ts=ts, value=value)


@pytest.fixture
def make_decision() -> Callable[..., DecisionRecord]:
    return decision


@pytest.fixture
def make_event() -> Callable[..., EventRecord]:
    return event


def readable_weights(model: bytes) -> str:
    """VW's readable dump of a model, less the example counter `t` (a model loaded from a
    snapshot counts one more example than one that never was saved, with identical weights),
    plus the model file's header (decisions learned, exposure per variant)."""
    header, vw_model = unpack(model)
    with tempfile.TemporaryDirectory() as tmp:
        path, text = Path(tmp) / "model.vw", Path(tmp) / "model.txt"
        path.write_bytes(vw_model)
        vw = pyvw.Workspace(f"-i {path} --readable_model {text} --quiet")
        vw.finish()
        lines = text.read_text().splitlines()
    counts = (
        [] if header is None else [f"learned {header.learned}", f"exposure {dict(header.exposure)}"]
    )
    return os.linesep.join([*counts, *(line for line in lines if not line.startswith("t "))])


@pytest.fixture
def model_weights() -> Callable[[bytes], str]:
    return readable_weights


def model_from_scratch(sessions: sessionmaker[Session], vw_args: str) -> bytes:
    """What a learner that never crashed would hold: a fresh policy taught every reward in `seq`
    order, built from the ORM rows alone (independently of `consumer.learner`)."""
    policy = Policy(vw_args)
    with sessions() as s:
        arms = {
            v.variant_id: Arm.from_variant(
                v.variant_id, v.text, v.style, v.source, v.generator_version
            )
            for v in s.scalars(select(Variant))
        }
        categories = dict(s.execute(select(Product.product_id, Product.category)).all())
        rows = s.execute(select(Reward.reward, Decision).join(Decision).order_by(Reward.seq)).all()
    for reward, d in rows:
        logged = LoggedDecision(
            context=d.context,
            product=ProductFeatures(d.product_id, categories[d.product_id]),
            arms=tuple(arms[a] for a in d.actions),
            chosen=d.actions.index(d.variant_id),
            probability=d.probability,
        )
        policy.learn(logged, reward)
    model = policy.save()
    policy.close()
    return model


@pytest.fixture
def from_scratch(sessions: sessionmaker[Session]) -> Callable[[str], bytes]:
    return lambda vw_args: model_from_scratch(sessions, vw_args)
