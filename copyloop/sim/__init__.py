"""The learning simulator: shoppers with a known truth (`shoppers`), the loop that plays page
views in simulated time with production's delays and cadence (`engine`), copyloop's real serving
and learning code as a server (`server`), and the baselines it is measured against
(`baselines`). `bench/learning.py` runs the suite; tests use it to pin learning behaviour.
"""
