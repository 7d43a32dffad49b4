"""The serving policy, hot-reloaded from the newest model snapshot without blocking requests.

A reloader thread polls `latest_version` every `reload_s` seconds. When a newer snapshot exists it
loads it into a new `Policy` (the ~13 ms VW load happens on that thread) and swaps the holder's
reference in one assignment; requests read `holder.policy` once and keep using what they read.
A VW workspace is not thread-safe, but each one is only ever used by the event loop thread: the
reloader builds the new one and never touches it again, and the old one is freed when the last
request holding it drops its reference. A snapshot that cannot be loaded is logged and skipped
until a newer version appears. With no loadable snapshot `policy` is None and routes serve the
control variant with `policy = "fallback"`.

The same thread follows the serving mode (`core.ledger.modes`): in apprentice mode the policy's
holdout becomes all but the exploring share, so the control copy is served to most page views and
every logged probability stays the exact one of the mixture that was sampled. A rollback or an
import is a new newest version, so it is picked up like any other (within `reload_s`).
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from api.background import Periodic
from bandit import FairTrial, ModelLoadError, Policy
from core.ledger import modes
from core.ledger.snapshots import latest_version, load_latest

log = logging.getLogger(__name__)


def policy_seed(seed: int, version: int) -> int:
    """A distinct, reproducible RNG seed per (settings seed, model version): reseeding every
    reload with one seed would replay the same holdout draws after each reload.

    >>> policy_seed(0, 1) == policy_seed(0, 1) != policy_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed, version]).generate_state(1)[0])


class PolicyHolder:
    """Holds the current `Policy` (or None) and reloads newer snapshots in the background."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        holdout: float,
        seed: int,
        reload_s: float,
        fair_trial: FairTrial | None = None,
        own_effect_z: float = 3.0,
        mode: modes.Mode | None = None,
    ) -> None:
        self._sessions = sessions
        self.default_mode = mode or modes.Mode("live", 0.05)
        self.mode = self.default_mode
        self.own_effect_z = own_effect_z
        self.holdout = holdout
        self.fair_trial = fair_trial
        self.seed = seed
        self.reload_s = reload_s
        self.policy: Policy | None = None
        self._skipped: int | None = None  # newest version that failed to load
        self._reloader = Periodic(
            "copyloop-reloader",
            reload_s,
            self.reload_once,
            lambda: f"keeping version {self.version}",
        )
        self.reloads = 0

    @property
    def version(self) -> int:
        policy = self.policy
        return 0 if policy is None else policy.version

    @property
    def serving_holdout(self) -> float:
        """The share of page views served the control copy in the current mode."""
        return self.mode.holdout(self.holdout)

    def follow_mode(self) -> bool:
        """Adopt the ledger's serving mode; True when it changed."""
        mode = modes.current(self._sessions, self.default_mode)
        if (mode.name, mode.explore) == (self.mode.name, self.mode.explore):
            return False
        self.mode = mode
        policy = self.policy
        if policy is not None:
            policy.holdout = self.serving_holdout
        log.info("serving mode %s (control share %.3f)", mode.name, self.serving_holdout)
        return True

    def reload_once(self) -> bool:
        """Follow the mode, and load the newest snapshot if it is newer than the current one;
        True when the model was swapped."""
        self.follow_mode()
        newest = latest_version(self._sessions)
        if newest is None or newest <= self.version or newest == self._skipped:
            return False
        try:
            snapshot = load_latest(self._sessions)
        except OSError as exc:  # the snapshot's file is missing or unreadable
            log.error("model snapshot %d cannot be read, skipped: %s", newest, exc)
            self._skipped = newest
            return False
        if snapshot is None:
            return False
        try:
            policy = Policy(
                snapshot.vw_args,
                holdout=self.serving_holdout,
                seed=policy_seed(self.seed, snapshot.version),
                model=snapshot.model,
                version=snapshot.version,
                fair_trial=self.fair_trial,
                own_effect_z=self.own_effect_z,
                previous=self.policy,  # most of its counts are this one's: read as a change
            )
        except (ModelLoadError, ValueError) as exc:
            log.error("model snapshot %d cannot be loaded, skipped: %s", snapshot.version, exc)
            self._skipped = snapshot.version
            return False
        self.policy = policy  # the swap: one reference assignment
        self.reloads += 1
        log.info("serving model version %d", snapshot.version)
        return True

    def start(self) -> PolicyHolder:
        self._reloader.start()
        return self

    def close(self) -> None:
        self._reloader.close()
