"""A usage report as a text table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from ._times import format_instant
from ._usage import UsageReport

FORMATS = ("table", "json", "csv")
COLUMNS = ("id", "provider", "type", "hours", "cost")


def report_as_dict(report: UsageReport, kind: str) -> dict[str, Any]:
    """The JSON shape: ``{"type", "range_start", "range_end", "instances": [{"id",
    "provider", "type", "hours", "cost"}, ...], "total_hours", "total_cost"}``."""
    return {
        "type": kind,
        "range_start": format_instant(report.range_start),
        "range_end": format_instant(report.range_end),
        "instances": [
            {
                "id": usage.id,
                "provider": usage.provider,
                "type": usage.type,
                "hours": usage.hours,
                "cost": usage.cost,
            }
            for usage in report.instances
        ],
        "total_hours": report.total_hours,
        "total_cost": report.total_cost,
    }


def render(report: UsageReport, kind: str, output_format: str) -> str:
    """``report`` in ``output_format`` (one of :data:`FORMATS`).

    Raises:
        ValueError: an unknown format.
    """
    if output_format == "json":
        return json.dumps(report_as_dict(report, kind), indent=2)
    if output_format == "csv":
        return _csv(report)
    if output_format == "table":
        return _table(report, kind)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {output_format!r}")


def _rows(report: UsageReport) -> list[list[str]]:
    rows = [
        [usage.id, usage.provider, usage.type, f"{usage.hours:.2f}", f"{usage.cost:.4f}"]
        for usage in report.instances
    ]
    rows.append(["TOTAL", "", "", f"{report.total_hours:.2f}", f"{report.total_cost:.4f}"])
    return rows


def _csv(report: UsageReport) -> str:
    """A header, one row per instance and a final ``TOTAL`` row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_rows(report))
    return buffer.getvalue()


def _table(report: UsageReport, kind: str) -> str:
    header = [column.upper() for column in COLUMNS]
    rows = _rows(report)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(COLUMNS))]
    numeric = {3, 4}

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    title = (
        f"{kind} usage {format_instant(report.range_start)} .. {format_instant(report.range_end)}"
    )
    body = [line(row) for row in rows]
    if not report.instances:
        body.insert(0, "(no instance ran in this range)")
    return "\n".join([title, line(header), *body])
