"""copyloop: learn which product copy sells.

Shared by every part: settings, the ledger (tables, sessions, migrations), Kafka message schemas,
the embedded broker, reports, and the CLI that wires the parts (`generator`, `bandit`,
`consumer`, `api`) together.
"""

__version__ = "0.1.0"
