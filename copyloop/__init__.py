"""copyloop: learn which product copy sells.

The entry points, on the top floor: the CLI (`cli`), `copyloop up` (`runner`), the scheduler and
the demo storefront. They compose the packages below (`core`, `bandit`, `reports`, `generator`,
`consumer`, `api`); nothing imports them.
"""

__version__ = "0.1.0"
