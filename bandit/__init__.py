"""The contextual bandit: Vowpal Wabbit `--cb_explore_adf` behind two verbs.

`Policy.choose(context, product, arms) -> Choice` and `Policy.learn(logged, reward)`, over frozen
value objects from `features`. `vw_format.to_vw` is the one place that writes VW's text format.
This package knows VW and features, never HTTP, Kafka or SQL.

Errors: `BanditError` (base) ← `ModelLoadError` (a snapshot could not be read) ←
`ModelMismatchError` (it was written with other arguments or feature definitions).
"""

from bandit.explore import FairTrial
from bandit.features import Arm, ProductFeatures
from bandit.policy import (
    BanditError,
    Choice,
    LoggedDecision,
    ModelLoadError,
    ModelMismatchError,
    Policy,
)

__all__ = [
    "Arm",
    "BanditError",
    "Choice",
    "FairTrial",
    "LoggedDecision",
    "ModelLoadError",
    "ModelMismatchError",
    "Policy",
    "ProductFeatures",
]
