"""The model's own account of its features: VW's invert-hash output, read back.

VW stores weights by hash. Given `--invert_hash FILE`, a workspace records the readable name of
every feature (and of every interaction, `U^device=mobile*T^bullets`) of the examples it
processes, and writes `name:hash:weight` lines when it finishes. So the weights are named by
running examples through a copy of the model in test mode (`-t`: nothing is learned): the
features seen there are the ones named. A feature's importance is its weight's magnitude, in
cost units (−reward) per unit of the feature's value; an interaction's is its own weight's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vowpalwabbit import pyvw

from bandit.policy import Policy, _predict_multi


@dataclass(frozen=True, slots=True)
class FeatureWeight:
    """One named weight: `namespace` (`U`, or `U*T` for an interaction), `feature` (its name
    within, `device=mobile` or `device=mobile*bullets`) and `weight`."""

    namespace: str
    feature: str
    weight: float


def parse_line(line: str) -> FeatureWeight | None:
    """A `name:hash:weight` line of an invert-hash file, or None for a header line.

    >>> parse_line("U^device=mobile*T^bullets:90972:-0.06")
    FeatureWeight(namespace='U*T', feature='device=mobile*bullets', weight=-0.06)
    >>> parse_line("Constant:116060:-0.0068"), parse_line("Min label:-1"), parse_line(":1")
    (FeatureWeight(namespace='', feature='Constant', weight=-0.0068), None, None)
    """
    parts = line.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    name, _, weight = parts
    if name == "Constant":
        return FeatureWeight("", "Constant", float(weight))
    terms = [t.split("^", 1) for t in name.split("*")]
    if not all(len(t) == 2 for t in terms):
        return None
    return FeatureWeight(
        "*".join(t[0] for t in terms), "*".join(t[1] for t in terms), float(weight)
    )


def feature_weights(policy: Policy, examples: Iterable[Sequence[str]]) -> list[FeatureWeight]:
    """The weights of `policy`'s model named by the features of `examples` (each the lines of
    one ADF example, `vw_format.to_vw`); the model is not changed."""
    with tempfile.TemporaryDirectory(prefix="copyloop-ih-") as tmp:
        model, names = Path(tmp) / "model.vw", Path(tmp) / "names.txt"
        model.write_bytes(policy.vw_model())
        vw = pyvw.Workspace(f"{policy.workspace_args} -i {model} -t --invert_hash {names} --quiet")
        try:
            for lines in examples:  # through pylibvw, as the policy predicts (no pyvw wrappers)
                _predict_multi(vw, "\n".join(lines))
        finally:
            vw.finish()
        text = names.read_text() if os.path.exists(names) else ""
    out = [w for w in map(parse_line, text.splitlines()) if w is not None]
    return out
