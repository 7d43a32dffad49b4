"""The fault suite: copyloop as real processes under seeded kills, outages, corrupt snapshots,
poison and duplicates, with its ledger compared exactly to what the producers were told.
Run it with `python -m tests.faults --help`; `test_faults.py` runs a short version in CI."""
