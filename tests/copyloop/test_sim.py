"""The learning simulator drives copyloop's real serving and learning code: what it serves lands
in the ledger and is learned exactly once, and new copy gets a fair trial (a variant 2x better
than its product's best takes over within 500 of the product's decisions, one worse than every
sibling is dropped by then).

Runs are deterministic (seeded worlds, seeded policy, one thread), so these assertions hold on
every run of the same code; they are the issue's done-criteria on the first seeds, not picked.
"""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select

from copyloop.sim.engine import NewVariant, Simulation, Timing
from copyloop.sim.server import CopyloopServer, LedgerTemplate
from copyloop.sim.shoppers import SCENARIOS, World
from core.ledger import Decision, ModelSnapshot, Reward
from generator.guardrails import GuardrailParams, check
from generator.rules import STYLES, RulesGenerator

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> LedgerTemplate:
    return LedgerTemplate(45, tmp_path_factory.mktemp("sim"))


def simulate(template: LedgerTemplate, scenario_name: str, seed: int, **changes: object):  # type: ignore[no-untyped-def]
    scenario = dataclasses.replace(SCENARIOS[scenario_name], **changes)
    catalog = template.catalog()
    world = World(scenario, [p.category for p in template.products], seed)
    arrivals = []
    if scenario.new_variants_at is not None:
        arrivals = new_copy(world, template, catalog, scenario.new_variant_products)
    server = CopyloopServer(template, Timing(), seed)
    sim = Simulation(
        world,
        server,
        catalog,
        [p.product_id for p in template.products],
        seed=seed,
        timing=Timing(),
        reward_weights=server.settings.reward_weights,
        new_variants=arrivals,
    )
    try:
        outcome = sim.run()
        with server.sessions() as s:
            decisions = s.scalar(select(func.count()).select_from(Decision))
            rewards = s.execute(
                select(func.count(), func.min(Reward.seq), func.max(Reward.seq))
            ).one()
        learned = server.learner.policy.learned
    finally:
        server.close()
    return sim, outcome, decisions, rewards, learned


def new_copy(world, template, catalog, count):  # type: ignore[no-untyped-def]
    """As bench/learning.py: a rules text that passes the guardrails for each of the busiest
    products, alternately 2x their best and 0.5x their worst."""
    import numpy as np

    out = []
    for rank, index in enumerate(np.argsort(-world.traffic)[:count]):
        product = template.products[int(index)]
        siblings = [t for _, t, _ in catalog[product.product_id]]
        for seed in range(1, 30):
            found = [
                c
                for c in RulesGenerator(seed=seed).generate(product, STYLES, 10)
                if check(c.text, product, siblings, GuardrailParams()).ok
            ]
            if found:
                boost = 2.0 if rank % 2 == 0 else 0.5
                out.append(NewVariant(int(index), found[0].text, found[0].style, boost))
                break
    return out


def test_every_served_decision_is_in_the_ledger_and_learned_once(template: LedgerTemplate) -> None:
    sim, outcome, decisions, rewards, learned = simulate(
        template, "context_text", seed=0, decisions=1500
    )
    assert decisions == 1500 == len(outcome.expected)
    count, first, last = rewards
    assert (first, last) == (1, count)  # one unbroken chain of rewards
    assert count >= 1500 - 150 * 6  # all but the last few seconds' windows are closed
    assert learned == count  # each closed decision taught to the model once
    assert 0.0 < outcome.share_of_oracle(0.0) <= 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_new_copy_gets_a_fair_trial(template: LedgerTemplate, seed: int) -> None:
    sim, outcome, *_ = simulate(template, "new_variants", seed=seed)
    shares = outcome.new_variant_shares(400, 500)
    better = {v: s for v, s in shares.items() if (sim.arms[v].boost or 0) > 1}
    worse = {v: s for v, s in shares.items() if (sim.arms[v].boost or 1) < 1}
    assert better and worse, shares
    assert all(s >= 0.5 for s in better.values()), better
    assert all(s < 0.1 for s in worse.values()), worse


def test_a_restart_at_the_drift_learns_each_later_decision_once_or_leaves_it(
    template: LedgerTemplate,
) -> None:
    """An operator's `copyloop model restart` when tastes change (bench/learning.py's
    `copyloop_restart`): every closed decision is learned by exactly one lineage or left out,
    and only those the restarted versions served are learned after it."""
    scenario = dataclasses.replace(SCENARIOS["drift"], decisions=2000)
    world = World(scenario, [p.category for p in template.products], 0)
    server = CopyloopServer(template, Timing(), 0)
    sim = Simulation(
        world,
        server,
        template.catalog(),
        [p.product_id for p in template.products],
        seed=0,
        timing=Timing(),
        reward_weights=server.settings.reward_weights,
        on_drift=server.restart,
    )
    try:
        sim.run()
        fresh, learned, ignored = (
            server.learner.policy.learns_from,
            server.learner.policy.learned,
            server.learner.ignored,
        )
        with server.sessions() as s:
            cut = s.scalar(select(ModelSnapshot.last_seq).where(ModelSnapshot.version == fresh))
            tip = s.scalar(select(func.max(Reward.seq)))
            served = s.scalars(
                select(Decision.model_version)
                .join(Reward, Reward.decision_id == Decision.decision_id)
                .where(Reward.seq > cut)
            ).all()
    finally:
        server.close()
    assert fresh > 1 and 0 < cut < tip  # restarted half way, windows closed on both sides
    assert len(served) == tip - cut == learned + ignored
    assert learned == sum(v >= fresh for v in served) > 0
    assert ignored == sum(v < fresh for v in served) > 0  # served before the API reloaded
