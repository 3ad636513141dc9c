"""research_analytics: instance usage hours and costs, as a cws-actors plugin.

``plugin`` declares the plugin's faces (the ``analytics report`` command, two API
endpoints, four lifecycle-event handlers) and handles them; below it, ``_events`` reads
event payloads, ``_store`` keeps them in SQLite, ``_usage`` turns them into hours and
costs and ``_render`` prints a report. Imports inside the package are relative, so
that a copy of it in a plugin folder runs as well as the installed distribution.
"""

from .plugin import ResearchAnalyticsPlugin as ResearchAnalyticsPlugin

__all__ = ["ResearchAnalyticsPlugin"]
