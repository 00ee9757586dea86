"""Collected runs: run tables (CSV), collecting sweep workdirs into one, the shipped reference data,
and synthetic tables drawn from a known law."""
