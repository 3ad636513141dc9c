"""The live health dashboard: one self-contained HTML page (no CDN, no build step).

The page polls ``/api/v1/actors``, ``/api/v1/plugins`` and ``/api/v1/dead-letters`` and
follows ``/api/v1/events/stream`` (read with ``fetch``, so that it carries a token). The
page itself loads without a token; unless ``[daemon] open_reads``, it asks for one and
keeps it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

from importlib.resources import files


def dashboard_page() -> str:
    """The dashboard's HTML, read from the package data (``api/dashboard.html``).

    Returns:
        The whole page as text, CSS and JavaScript inline.
    """
    return files("api").joinpath("dashboard.html").read_text(encoding="utf-8")
