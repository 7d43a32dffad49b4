"""The base every other package stands on: settings, the ledger (tables, sessions, snapshots,
leases), migrations, the Kafka message schemas, the catalog, API keys and the embedded broker.

It imports no other package of the project (tests/test_floors.py holds it to that).
"""
