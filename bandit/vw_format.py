"""VW's text format for `--cb_explore_adf` multi-line examples. Nothing else builds VW strings.

Namespaces: `U` the storefront context, `P` the product, `A` what the arm is (style, source,
generator version, length class), `T` what its text looks like (numeric `TextShape`), `V` the
arm's identity. Interactions are set on the command line (`-q UA -q UT …`, settings).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from bandit.features import Arm, ProductFeatures

_TRANS = str.maketrans({" ": "_", "\t": "_", "\n": "_", "\r": "_", ":": ";", "|": "/"})


def token(key: str, value: object) -> str:
    """One categorical feature `key=value`, made safe for VW's text format.

    >>> token("page ref", "a|b:c")
    'page_ref=a/b;c'
    """
    if isinstance(value, bool):
        value = int(value)
    return f"{key}={value}".translate(_TRANS)


def shared_line(context: Mapping[str, object], product: ProductFeatures) -> str:
    """The shared line of an ADF example: the storefront context and the product.

    The product's identity is left out on purpose: a product intercept lets one over-served
    variant drag down the prediction of every sibling that is not being served (nothing then
    corrects them), a trap `bench/learning.py`'s new-variant scenario fell into.

    >>> shared_line({"device": "mobile", "hour": None}, ProductFeatures("p1", "lamps"))
    'shared |U device=mobile |P category=lamps'
    """
    try:
        key = tuple(sorted(context.items()))
        hash(key)
    except TypeError:  # an unhashable value: render it without the cache
        return _shared_line(tuple(sorted(context.items())), product.category)
    return _cached_shared_line(key, product.category)


def _shared_line(items: tuple[tuple[str, object], ...], category: str) -> str:
    shared = " ".join(token(k, v) for k, v in items if v is not None)
    return f"shared |U {shared} |P {token('category', category)}"


#: Page views repeat their contexts (a few devices × segments × referrers …): the learner and
#: the API render each distinct one once (`bench/learn.py`).
_cached_shared_line = functools.lru_cache(maxsize=65_536)(_shared_line)


def arm_namespaces(arm: Arm) -> dict[str, dict[str, float]]:
    """An arm's features by namespace, `{feature: value}`: what `arm_lines` writes and what the
    DSJson export (`reports.export`) names, so both hash the same features.

    >>> ns = arm_namespaces(Arm.from_variant("v1", "Soft cotton, 2 sizes.", "concise", "rules"))
    >>> ns["A"], ns["T"], ns["V"]
    ({'style=concise': 1.0, 'source=rules': 1.0, 'len=xs': 1.0, 'gen=': 1.0}, {'len': -2.0, 'numbers': 0.33, 'sentences': 0.5, 'sensory': 0.5}, {'v1': 1.0})
    """
    a = {
        token("style", arm.style): 1.0,
        token("source", arm.source): 1.0,
        f"len={arm.length}": 1.0,
        token("gen", arm.generator_version): 1.0,
    }
    shape = {} if arm.shape is None else {k: round(v, 2) for k, v in arm.shape.numeric()}
    return {"A": a, "T": shape, "V": {token("id", arm.variant_id)[3:]: 1.0}}


def arm_lines(arms: Sequence[Arm]) -> tuple[str, ...]:
    """The unlabelled line of each arm. They depend on the arms only, so a server renders them
    once per catalog refresh (`api.catalog_cache.CatalogEntry.arm_lines`) and each page view
    builds only its shared line.

    >>> arm_lines([Arm.from_variant("v1", "Two speeds? Yes: 2.", "concise", "rules", "g1")])
    ('|A style=concise source=rules len=xs gen=g1 |T len:-2.0 numbers:0.33 sentences:1.0 question:1.0 |V v1',)
    """
    return tuple(_line(arm_namespaces(arm)) for arm in arms)


def _line(namespaces: Mapping[str, Mapping[str, float]]) -> str:
    """`|A f g |T x:0.5 |V id`: categorical features bare (weight 1), `T`'s with their values."""
    parts = []
    for ns, features in namespaces.items():
        rendered = " ".join(f if ns != "T" else f"{f}:{v!r}" for f, v in features.items())
        parts.append(f"|{ns} {rendered}" if rendered else f"|{ns}")
    return " ".join(parts)


def to_vw(
    context: Mapping[str, object],
    product: ProductFeatures,
    arms: Sequence[Arm],
    label: tuple[int, float, float] | None = None,
    *,
    rendered_arms: Sequence[str] | None = None,
) -> list[str]:
    """The lines of one ADF example: a shared line, then one line per arm.

    `label` is `(chosen index, reward, probability)`; VW minimises cost, so cost = -reward.
    `rendered_arms` is `arm_lines(arms)` when the caller has it already.

    >>> arms = [Arm("v1", "concise", "rules", "xs", 0, 1), Arm("v2", "story", "control", "m", 0, 0)]
    >>> for line in to_vw({"device": "mobile"}, ProductFeatures("p1", "lamps"), arms, (1, 1.0, 0.5)):
    ...     print(line)
    shared |U device=mobile |P category=lamps
    |A style=concise source=rules len=xs gen= |T |V v1
    0:-1.0:0.5 |A style=story source=control len=m gen= |T |V v2
    """
    lines = [shared_line(context, product)]
    lines.extend(arm_lines(arms) if rendered_arms is None else rendered_arms)
    if label is not None:
        chosen = label[0] + 1
        lines[chosen] = f"0:{-label[1]!r}:{label[2]!r} {lines[chosen]}"
    return lines
