"""Benchmarks of mxgateway-python (issue 7): ``python -m bench all`` or one by name.

Each benchmark starts what it needs in subprocesses on 127.0.0.1, runs a bounded workload and
prints one JSON document; ``docs/benchmarks.md`` records the figures.
"""
