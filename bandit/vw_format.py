"""VW's text format for `--cb_explore_adf` multi-line examples. Nothing else builds VW strings.

Namespaces: `U` the storefront context, `P` the product, `A` the arm's descriptive features,
`V` the arm's identity. Interactions are set on the command line (`-q UA -q UV -q PA`).
"""

from __future__ import annotations

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

    >>> shared_line({"device": "mobile", "hour": None}, ProductFeatures("p1", "lamps"))
    'shared |U device=mobile |P category=lamps'
    """
    shared = " ".join(token(k, v) for k, v in sorted(context.items()) if v is not None)
    return f"shared |U {shared} |P {token('category', product.category)}"


def arm_lines(arms: Sequence[Arm]) -> tuple[str, ...]:
    """The unlabelled line of each arm. They depend on the arms only, so a server renders them
    once per catalog refresh (`api.catalog_cache.CatalogEntry.arm_lines`) and each page view
    builds only its shared line.

    >>> arm_lines([Arm("v1", "concise", "rules", "xs", 0, 12, "g1")])
    ('|A style=concise source=rules len=xs bullets=0 numbers=9 gen=g1 |V v1',)
    """
    return tuple(
        f"|A {token('style', arm.style)} {token('source', arm.source)} "
        f"len={arm.length} bullets={min(arm.bullets, 9)} numbers={min(arm.numbers, 9)} "
        f"{token('gen', arm.generator_version)} |V {token('id', arm.variant_id)[3:]}"
        for arm in arms
    )


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
    |A style=concise source=rules len=xs bullets=0 numbers=1 gen= |V v1
    0:-1.0:0.5 |A style=story source=control len=m bullets=0 numbers=0 gen= |V v2
    """
    lines = [shared_line(context, product)]
    lines.extend(arm_lines(arms) if rendered_arms is None else rendered_arms)
    if label is not None:
        chosen = label[0] + 1
        lines[chosen] = f"0:{-label[1]!r}:{label[2]!r} {lines[chosen]}"
    return lines
