"""The learner: one in-memory VW policy, kept equal to "newest snapshot + replay of the rewards
after it", so that a crash anywhere loses no learning and learns nothing twice.

    learner = Learner(sessions, settings)
    learner.catch_up()                       # load the newest snapshot, replay seq > last_seq
    learner.close_and_learn(now)             # close due windows (one transaction), learn them
    learner.maybe_snapshot()                 # every snapshot_every_s / snapshot_every_n

Rewards are learned strictly in `seq` order and `last_seq` only moves forward by one per
reward, so the model never skips or repeats one. `close_and_learn` fences on the chain's tip:
a learner that another one overtook fails with `LeaseLost` instead of forking the model. Saves
fence on the model version: when an operator added a newer version (`copyloop model rollback`
or `import`), the save fails with `LeaseLost` and the learner continues from that version
instead of writing its own model over it (`ElectedLearner` also looks for one every round).
After a snapshot, at most once a minute, old versions are pruned (`model_versions.prune`).
An operator's restart (`restart`) is such a version too: an untrained model whose lineage learns
only the decisions it served (`ModelHeader.learns_from`), the others rewarded but not learned.

Shadow explorers (`COPYLOOP_SHADOW_EXPLORERS`) learn beside the live model: they share its
regression, so each decision's update is theirs too, and just before it the learner records what
each would have served (`Policy.learn(shadows=…)`, the live holdout mixed in) in
`shadow_scores`, for the report's `ope.shadow`. Written before the next snapshot and idempotent
on `decision_id`, so a replay rewrites nothing.

`ElectedLearner` drives a `Learner` in whichever process holds the `learner` lease (one per
consumer group), with its own cadence, backoff and clean shutdown. Both are Kafka-free: the
time windows are closed against comes in as a `clock` (the loop's ingestion watermark).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
from sqlalchemy import Table, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from bandit import Arm, FairTrial, LoggedDecision, ModelLoadError, Policy, ProductFeatures
from bandit.explore import Explorer, parse_explorer
from bandit.model_file import unpack
from bandit.vw_format import arm_lines
from consumer.errors import Backoff, ConsumerError, LeaseLost, ledger_errors
from consumer.join import (
    DEFAULT_CLOSE_LIMIT,
    ClosedDecision,
    chain_tip,
    close_expired_windows,
    closed_since,
)
from core.ledger import leases, model_versions, snapshots
from core.ledger.tables import Product, ShadowScore, Variant
from core.settings import Settings

log = logging.getLogger(__name__)
_SHADOW_SCORES = cast(Table, ShadowScore.__table__)


class Learner:
    """Closes windows and teaches the bandit; snapshots the model for the API and for restarts."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        close_limit: int = DEFAULT_CLOSE_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._close_limit = close_limit
        self._clock = clock  # paces snapshots (the simulator passes its own time)
        self._policy: Policy | None = None
        self.last_seq = 0
        self.learned = 0  # decisions taught to VW by this learner (replay included)
        self.skipped = 0  # closed decisions whose variants are unknown: rewarded, not learnable
        # closed decisions served before the model's restart (`restart`): rewarded, not learned
        self.ignored = 0
        self._unsaved = 0
        self._saved_at = self._clock()
        self._pruned_at = self._clock()
        self._continues = 0  # the ledger's newest version when this learner caught up
        self._arms: dict[str, Arm] = {}
        self._lines: dict[str, str] = {}  # each arm's VW line, rendered once (immutable)
        self._categories: dict[str, str] = {}
        self._shadows = shadow_explorers(settings.shadow_explorers)

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            raise RuntimeError("call catch_up() first")
        return self._policy

    @property
    def model_version(self) -> int:
        return 0 if self._policy is None else self._policy.version

    def catch_up(self, between_pages: Callable[[], None] | None = None) -> int:
        """Load the newest snapshot and replay every reward after it. Returns how many.

        Without a usable snapshot — none yet, one trained with other arguments than the
        settings', one whose file is gone, or one that no longer loads — a new model is trained
        on the newest `bandit_warm_start_max` closed decisions (a warm start from the logs: all
        of them on a young ledger, none on an empty one) and saved at once, so the API serves it
        and a restart does not train it again. `between_pages` runs after each page of the replay
        (the loop renews its lease there)."""
        settings = self._settings
        unreadable = 0  # the newest version, when its file is gone or unreadable
        with ledger_errors():
            try:
                snap = snapshots.load_latest(self._sessions)
            except OSError as exc:  # as good as none, but the fresh model replaces it
                unreadable = snapshots.latest_version(self._sessions) or 0
                log.warning("snapshot %d cannot be read (%s): warm start", unreadable, exc)
                snap = None
        policy: Policy | None = None
        start = 0
        if snap is not None and snap.vw_args == settings.vw_args:
            try:
                policy = Policy(
                    snap.vw_args,
                    seed=settings.seed,
                    model=snap.model,
                    version=snap.version,
                    importance_cap=settings.bandit_importance_cap,
                    fair_trial=FairTrial.of(settings),
                )
                start = snap.last_seq
            except ModelLoadError as exc:
                log.warning("snapshot %d cannot be loaded (%s): warm start", snap.version, exc)
        elif snap is not None:
            log.info(
                "snapshot %d was trained with %r, the settings say %r: warm start",
                snap.version,
                snap.vw_args,
                settings.vw_args,
            )
        fresh = policy is None
        self._continues = unreadable if snap is None else snap.version  # what a fresh one replaces
        if policy is None:
            policy = fresh_policy(settings)
            # a restart's cut holds for the model trained in its place
            policy.learns_from = _learns_from(snap)
            start = max(0, chain_tip(self._sessions) - settings.bandit_warm_start_max)
        if self._policy is not None:
            self._policy.close()
        self._policy = policy
        self.last_seq = start
        self._unsaved = 0
        self._saved_at = self._clock()
        replayed = 0
        while batch := closed_since(self._sessions, self.last_seq, self._close_limit):
            self.learn(batch)
            replayed += len(batch)
            if between_pages is not None:
                between_pages()
        if fresh:
            policy.version = self._save(policy, self.last_seq)
            self._unsaved = 0
            log.info(
                "new model version %d: learned %d closed decisions (seq %d..%d)",
                policy.version,
                replayed,
                start + 1,
                self.last_seq,
            )
        log.info(
            "model version %d caught up to seq %d (%d replayed)",
            policy.version,
            self.last_seq,
            replayed,
        )
        return replayed

    def close_and_learn(self, now: float) -> list[ClosedDecision]:
        """Close the windows due at `now` (one transaction, at most `close_limit`) and learn
        them. Raises `LeaseLost` when another learner moved the chain: drop this learner."""
        if self._policy is None:  # fail before writing rewards that nobody would learn
            raise RuntimeError("call catch_up() first")
        closed = close_expired_windows(
            self._sessions,
            self._settings,
            now,
            expected_last_seq=self.last_seq,
            limit=self._close_limit,
        )
        self.learn(closed)
        return closed

    def learn(self, closed: Sequence[ClosedDecision]) -> None:
        """Teach VW `closed`, which must continue the chain (`seq` = last_seq + 1, + 2, …)."""
        policy = self.policy
        self._load_features(closed)
        scores: list[dict[str, object]] = []
        ignored = self.ignored
        for c in closed:
            if c.seq != self.last_seq + 1:
                raise LeaseLost(f"reward seq {c.seq} does not follow {self.last_seq}")
            if c.model_version < policy.learns_from:  # the tastes of before the restart
                self.ignored += 1
            elif (logged := self._logged(c)) is None:
                self.skipped += 1
                log.warning(
                    "decision %s: a variant of %s is unknown, rewarded but not learned",
                    c.decision_id,
                    list(c.actions),
                )
            else:
                rendered = [self._lines[a] for a in c.actions]
                pmfs = policy.learn(
                    logged, c.reward, rendered_arms=rendered, shadows=self._shadow_explorers
                )
                if pmfs:
                    mixed = {
                        spec: with_holdout(pmf, self._settings.holdout)
                        for spec, pmf in zip(self._shadows, pmfs, strict=True)
                    }
                    scores.append(
                        {"decision_id": c.decision_id, "pmfs": orjson.dumps(mixed).decode()}
                    )
                self.learned += 1
            self.last_seq = c.seq
            self._unsaved += 1
        if scores:
            self._write_scores(scores)
        if self.ignored > ignored:
            log.info(
                "%d closed decisions were served before the restart at version %d: rewarded, "
                "not learned",
                self.ignored - ignored,
                policy.learns_from,
            )

    def maybe_snapshot(self, *, force: bool = False) -> int | None:
        """Save a snapshot when something was learned since the last one and `snapshot_every_s`
        passed or `snapshot_every_n` decisions piled up (or `force`). Returns its version."""
        if self._unsaved == 0:
            return None
        due = (
            force
            or self._unsaved >= self._settings.snapshot_every_n
            or self._clock() - self._saved_at >= self._settings.snapshot_every_s
        )
        if not due:
            return None
        policy = self.policy
        policy.version = self._save(policy, self.last_seq)
        self._unsaved = 0
        self._saved_at = self._clock()
        if self._saved_at - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = self._saved_at
            self.prune()
        return policy.version

    def replaced(self) -> bool:
        """Whether the ledger's newest version is not this learner's model (a rollback or an
        import added one): then the learner must continue from that version."""
        with ledger_errors():
            newest = snapshots.latest_version(self._sessions)
        return newest is not None and newest != self.model_version

    def prune(self) -> list[int]:
        """Delete the versions the retention settings do not keep (`model_versions.prune`)."""
        settings = self._settings
        retention = model_versions.Retention(
            settings.snapshot_keep_last, settings.snapshot_keep_days
        )
        with ledger_errors():
            return model_versions.prune(self._sessions, retention, _loads)

    def close(self) -> None:
        """Free the VW workspace (unsaved learning is in the ledger, replayed on restart)."""
        if self._policy is not None:
            self._policy.close()
            self._policy = None

    # -- internals ---------------------------------------------------------------------------
    @property
    def _shadow_explorers(self) -> list[Explorer]:
        return list(self._shadows.values())

    def _write_scores(self, scores: list[dict[str, object]]) -> None:
        """The shadows' distributions, one row per decision (a replay's rows already exist)."""
        with ledger_errors(), self._sessions.begin() as s:
            dialect = s.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            # Core executemany: a multi-row VALUES clause compiled per batch cost more than
            # the learning it records.
            s.execute(insert(_SHADOW_SCORES).on_conflict_do_nothing(), scores)

    def _save(self, policy: Policy, last_seq: int) -> int:
        # The version this model continues: its own, or (a fresh model) the one it replaces.
        expected = policy.version or self._continues
        try:
            with ledger_errors():
                return snapshots.save(
                    self._sessions,
                    policy.save(),
                    last_seq,
                    policy.vw_args,
                    self._settings.snapshot_dir,
                    expected_latest=expected,
                )
        except sa_exc.IntegrityError as exc:  # two savers raced for the same version
            raise LeaseLost(f"another learner saved a snapshot concurrently: {exc.orig}") from exc
        except snapshots.SnapshotReplaced as exc:
            raise LeaseLost(f"a newer model version was added: {exc}") from exc

    def _load_features(self, closed: Iterable[ClosedDecision]) -> None:
        """Fetch the variants and product categories `closed` needs that are not cached yet.
        Variants are immutable (new text, new id), so the cache never goes stale."""
        variant_ids = {a for c in closed for a in c.actions} - self._arms.keys()
        product_ids = {c.product_id for c in closed} - self._categories.keys()
        if not variant_ids and not product_ids:
            return
        with ledger_errors(), self._sessions() as s:
            for ids in _chunks(sorted(variant_ids)):
                for v in s.scalars(select(Variant).where(Variant.variant_id.in_(ids))):
                    arm = Arm.from_variant(
                        v.variant_id, v.text, v.style, v.source, v.generator_version
                    )
                    self._arms[v.variant_id] = arm
                    self._lines[v.variant_id] = arm_lines([arm])[0]
            for ids in _chunks(sorted(product_ids)):
                rows = s.execute(
                    select(Product.product_id, Product.category).where(Product.product_id.in_(ids))
                )
                self._categories.update({pid: category or "" for pid, category in rows})

    def _logged(self, c: ClosedDecision) -> LoggedDecision | None:
        arms = tuple(self._arms.get(a) for a in c.actions)
        if any(arm is None for arm in arms):
            return None
        return LoggedDecision(
            context=c.context,
            product=ProductFeatures(c.product_id, self._categories.get(c.product_id, "")),
            arms=arms,  # type: ignore[arg-type]  # no None left
            chosen=c.chosen,
            probability=c.probability,
        )


def fresh_policy(settings: Settings) -> Policy:
    """An untrained model with the settings' arguments, as the learner starts one."""
    return Policy(
        settings.vw_args,
        seed=settings.seed,
        importance_cap=settings.bandit_importance_cap,
        fair_trial=FairTrial.of(settings),
    )


def restart(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Start learning afresh (`copyloop model restart`): add an untrained model as the newest
    version, which learns only the decisions that it and the versions after it serve. Returns
    its version.

    For when tastes changed (a season, a redesign, a new market): a model that learned the old
    tastes serves what they favoured and predicts copy it no longer serves below what it earns
    now, so it explores that copy about 1 % of the time each and recovers slowly if at all
    (`bench/learning.py --scenarios drift --curve`); trained on what it served since, a fresh
    model would learn the same bias. The restarted model starts as the very first one did: it
    spreads page views evenly and narrows as it learns (its explorer's schedule and every
    variant's counts start at zero). The learner continues from it within a round (`replaced`);
    decisions that older versions served are rewarded and reported as before, not learned."""

    def build(version: int) -> bytes:
        policy = fresh_policy(settings)
        try:
            policy.learns_from = version
            return policy.save()
        finally:
            policy.close()

    with ledger_errors():
        return model_versions.add_model(
            sessions,
            build,
            settings.vw_args,
            source=model_versions.RESTART_SOURCE,
            origin=None,
            snapshot_dir=settings.snapshot_dir,
        )


def _learns_from(snap: snapshots.Snapshot | None) -> int:
    """The restart cut (`ModelHeader.learns_from`) of a snapshot's model, 0 when it has none or
    cannot be read."""
    if snap is None:
        return 0
    try:
        header, _ = unpack(snap.model)
    except ValueError:
        return 0
    return 0 if header is None else header.learns_from


def shadow_explorers(specs: Sequence[str]) -> dict[str, Explorer]:
    """Each shadow explorer's arguments → the explorer (ValueError for one copyloop lacks).

    >>> shadow_explorers(["--epsilon 0.1"])
    {'--epsilon 0.1': EpsilonGreedy(epsilon=0.1)}
    """
    out: dict[str, Explorer] = {}
    for spec in specs:
        explorer = parse_explorer(spec)
        if explorer is None:
            raise ValueError(f"shadow explorer {spec!r} is not one of copyloop's explorers")
        out[spec] = explorer
    return out


def with_holdout(pmf: Sequence[float], holdout: float) -> list[float]:
    """The live mixture around an explorer's pmf: the control (action 0) gets the holdout.

    >>> with_holdout([0.5, 0.5], 0.1)
    [0.55, 0.45]
    """
    out = [(1.0 - holdout) * p for p in pmf]
    out[0] += holdout
    return out


#: Seconds between two prunings of old model versions (each loads the newest one to check it).
PRUNE_EVERY_S = 60.0


def _loads(snapshot: snapshots.Snapshot) -> bool:
    """Whether a snapshot loads into a policy (the last good one is never pruned)."""
    try:
        Policy(snapshot.vw_args, model=snapshot.model, version=snapshot.version).close()
    except (ModelLoadError, ValueError):
        return False
    return True


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class StepReport:
    """What one round of the elected learner did (`closed` windows this round)."""

    closed: int
    learned: int
    last_seq: int
    model_version: int


class ElectedLearner:
    """Drives a `Learner` while this process holds the `learner` lease, until `stop` is set.

    Every `interval_s` it renews the lease (`lease_ttl_s`), closes the windows due at `clock()`
    (the loop's ingestion watermark) and snapshots on cadence. Losing the lease, or being fenced
    (`LeaseLost`), drops the model; whoever holds the lease next catches up from the ledger.
    Retriable errors back off exponentially up to `max_backoff_s`. On stop it saves a final
    snapshot of whatever it learned since the last one and releases the lease.
    """

    LEASE = "learner"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
        lease_ttl_s: float = 10.0,
        interval_s: float = 0.25,
        close_limit: int = DEFAULT_CLOSE_LIMIT,
        max_backoff_s: float = 2.0,
        on_step: Callable[[StepReport], None] | None = None,
    ) -> None:
        if not interval_s < lease_ttl_s:
            raise ValueError(f"interval_s ({interval_s}) must be below lease_ttl_s ({lease_ttl_s})")
        self._sessions, self._settings, self._stop = sessions, settings, stop
        self._clock, self._ttl, self._interval = clock, lease_ttl_s, interval_s
        self._close_limit, self._max_backoff, self._on_step = close_limit, max_backoff_s, on_step
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._learner: Learner | None = None

    def run(self) -> None:
        backoff = Backoff(self._max_backoff)
        try:
            while not self._stop.is_set():
                try:
                    busy = self._step()
                    backoff.reset()
                    if not busy:
                        self._stop.wait(self._interval)
                except LeaseLost as exc:
                    delay = backoff.next()
                    log.warning("learner fenced: %s; catching up again in %.1fs", exc, delay)
                    self._drop()
                    self._stop.wait(delay)
                except ConsumerError as exc:
                    delay = backoff.next()
                    log.warning("learner: %s; retrying in %.1fs", exc, delay)
                    self._stop.wait(delay)
                except Exception:  # a bug or a VW failure: start over from the ledger
                    delay = backoff.next()
                    log.exception("learner failed; starting over in %.1fs", delay)
                    self._drop()
                    self._stop.wait(delay)
        finally:
            self._shutdown()

    def _step(self) -> bool:
        """One round; True when more windows may be due right away (a backlog)."""
        if not self._renew():
            if self._learner is not None:
                log.warning("lost the learner lease: dropping the model")
                self._drop()
            return False
        learner = self._learner
        if learner is not None and learner.replaced():
            log.info("a newer model version was added: continuing from it")
            self._drop()
            learner = None
        if learner is None:
            learner = Learner(self._sessions, self._settings, close_limit=self._close_limit)
            self._learner = learner
            learner.catch_up(between_pages=self._renew_or_raise)
        learned_before = learner.learned
        closed = learner.close_and_learn(self._clock())
        learner.maybe_snapshot()
        if self._on_step is not None:
            self._on_step(
                StepReport(
                    closed=len(closed),
                    learned=learner.learned - learned_before,
                    last_seq=learner.last_seq,
                    model_version=learner.model_version,
                )
            )
        return len(closed) >= self._close_limit

    def _renew(self) -> bool:
        with ledger_errors():
            return leases.acquire(self._sessions, self.LEASE, self.holder, self._ttl)

    def _renew_or_raise(self) -> None:
        if not self._renew():
            raise LeaseLost("the learner lease expired during catch-up")

    def _drop(self) -> None:
        if self._learner is not None:
            self._learner.close()
            self._learner = None

    def _shutdown(self) -> None:
        learner, self._learner = self._learner, None
        try:
            if learner is not None:
                if self._renew():
                    version = learner.maybe_snapshot(force=True)
                    if version is not None:
                        log.info("final snapshot: version %d at seq %d", version, learner.last_seq)
                learner.close()
            with ledger_errors():
                leases.release(self._sessions, self.LEASE, self.holder)
        except ConsumerError as exc:  # nothing is lost: the next learner replays the ledger
            log.warning("learner shutdown incomplete: %s", exc)


__all__ = ["ElectedLearner", "Learner", "StepReport"]
