"""The project's benchmarks, each beside a reference measured in the same run.

``python -m benchmarks`` runs them all and prints one table (``--quick`` for a short run,
``--only actors,http`` for some, ``--output DIR`` for where ``latest.json`` and
``latest.md`` go). Layers, from the bottom:

- ``bench_*.py``: one benchmark each, with its own command line (``--json``).
- ``_harness.py``: rows, targets, the machine's description, the table and the files.
- ``_suites.py``: what each suite runs (quick and full sizes), its rows and the targets.
- ``__main__.py``: the command line.
"""
