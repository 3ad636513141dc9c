"""Running plugins: the plugin actor and its drivers (in-process, subprocess), the
runner a subprocess plugin runs in (``python -m cws_actors._isolation._runner``), the
framed protocol between them, the fork server, ``describe`` and the plugin's log.

Deliberately empty: the runner and the fork server import this package, and should
import as little as possible.
"""
