"""The ``cws`` console script's entry module, as venvs installed before the CLI moved to
:mod:`api.cli` name it (``cws = "api._cli:main"``); new installs name ``api.cli:main``.
Remove once every venv has re-run ``pip install -e .``."""

from .cli import main as main

__all__ = ["main"]
