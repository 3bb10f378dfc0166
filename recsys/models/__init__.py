"""Ranking models: SparseCTR, GRAB and the baselines, all on one embedding module and head."""
