"""Observation: what a running server reports about itself, read from what the layers below keep.

- :mod:`.metrics`: ``--metrics``, Prometheus text from the servers' own counters.

Built on :mod:`yieldio.servers`; only the commands (:mod:`yieldio.cli`) import from here.
"""
