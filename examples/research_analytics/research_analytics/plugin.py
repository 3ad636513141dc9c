"""The research-analytics plugin: its declared faces and their handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cws_actors import (
    APIEndpointSpec,
    APIRequest,
    APIResult,
    Capabilities,
    CLICommandSpec,
    CLIFlagSpec,
    CommandResult,
    Concurrency,
    Event,
    EventHandlerSpec,
    Health,
    HealthStatus,
    Isolation,
    Plugin,
    PluginContext,
    PluginMetadata,
)

from ._events import usage_event_from
from ._render import FORMATS, render
from ._store import StoreError, UsageStore
from ._times import format_instant, parse_instant, parse_timerange
from ._usage import TOPICS, Prices, UsageReport, build_report

REPORT_DAYS = {"weekly": 7, "monthly": 30, "yearly": 365}
"""How many days each ``--type`` of report covers, ending at ``--until``."""
DEFAULT_TIMERANGE = "7d"
DATABASE = "analytics.db"

PERMISSIONS = ("analytics.read",)

_log = logging.getLogger("research_analytics")

_REPORT_FLAGS: tuple[CLIFlagSpec, ...] = (
    CLIFlagSpec("type", default="weekly", help="weekly, monthly or yearly"),
    CLIFlagSpec("format", default="table", help="table, json or csv"),
    CLIFlagSpec("until", help="end of the report, ISO 8601 (default: now)"),
)
_CLI_COMMANDS: tuple[CLICommandSpec, ...] = (
    CLICommandSpec(
        "report",
        handler="cli_report",
        parent="analytics",
        usage="cws analytics report [--type weekly] [--format table] [--until DATE]",
        short="Usage hours and costs per instance",
        flags=_REPORT_FLAGS,
        permissions=PERMISSIONS,  # it shows costs, as GET /api/v1/analytics/costs
    ),
)
_API_ENDPOINTS: tuple[APIEndpointSpec, ...] = (
    APIEndpointSpec("/api/v1/analytics/usage", handler="api_usage", protected=True),
    APIEndpointSpec(
        "/api/v1/analytics/costs",
        handler="api_costs",
        protected=True,
        permissions=PERMISSIONS,
    ),
)
_EVENT_HANDLERS: tuple[EventHandlerSpec, ...] = tuple(
    EventHandlerSpec(topic, handler="on_instance_event") for topic in TOPICS
)


class ResearchAnalyticsPlugin(Plugin):
    """Records instance lifecycle events and reports usage hours and costs.

    Config: ``prices`` (instance type -> price per hour) and ``default_price`` (for the
    types not listed; 0.0 unless set).
    """

    metadata = PluginMetadata(
        name="research-analytics",
        version="1.0.0",
        description="Instance usage hours and costs from instance lifecycle events",
        author="cws-actors developers",
        isolation=Isolation.IN_PROCESS,
        permissions=PERMISSIONS,
        # Its SQLite store answers one query at a time (a lock): four reports may wait
        # there rather than in the mailbox. Events stay one at a time, in order.
        concurrency=Concurrency(max=4),
    )
    capabilities = Capabilities(
        cli_commands=_CLI_COMMANDS,
        api_endpoints=_API_ENDPOINTS,
        event_handlers=_EVENT_HANDLERS,
    )

    def __init__(self) -> None:
        self._prices = Prices()
        self._database: Path | None = None
        self._store: UsageStore | None = None
        self._duplicates = 0
        self._rejected = 0

    # ------------------------------------------------------------------ lifecycle

    async def initialize(self, ctx: PluginContext, config: Mapping[str, Any]) -> None:
        """Read the prices (a bad price refuses the plugin, naming the key)."""
        self._prices = Prices.from_config(config)
        self._database = ctx.data_dir / DATABASE

    async def start(self, ctx: PluginContext) -> None:
        """Open the database, ``<data_dir>/analytics.db``."""
        self._store = await UsageStore.open(ctx.data_dir / DATABASE)

    async def stop(self, ctx: PluginContext) -> None:
        """Close the database."""
        store, self._store = self._store, None
        if store is not None:
            await store.aclose()

    async def health(self) -> Health:
        """Passing while the database answers a query."""
        try:
            await self._open_store().counts()
        except StoreError as exc:
            return Health(HealthStatus.CRITICAL, str(exc))
        return Health()

    async def status(self) -> dict[str, Any]:
        """Counts of what is recorded, and of what was ignored since the plugin started."""
        counts = await self._open_store().counts()
        return {
            "database": str(self._database),
            "events_recorded": counts.events,
            "instances_tracked": counts.instances,
            "duplicates_ignored": self._duplicates,
            "events_rejected": self._rejected,
        }

    # ------------------------------------------------------------------ events

    async def on_instance_event(self, event: Event) -> None:
        """Record a lifecycle event once, however often it is delivered.

        An event whose payload cannot be read is logged and counted, not raised: it
        would fail again on every redelivery and restart the plugin each time.
        """
        try:
            usage = usage_event_from(event.topic, event.payload, received_at=time.time())
        except (TypeError, ValueError) as exc:
            self._rejected += 1
            _log.warning("ignored %s event %s: %s", event.topic, event.id, exc)
            return
        # The bus's ids are unique within one daemon run only; with the publish time
        # (Trio's clock, randomly offset in every run) they identify one event across
        # runs, and a redelivery carries both unchanged.
        if not await self._open_store().record(event.id, event.published_at, usage):
            self._duplicates += 1

    # ------------------------------------------------------------------ CLI

    async def cli_report(self, args: dict[str, Any]) -> CommandResult:
        """``cws analytics report [--type weekly|monthly|yearly] [--format table|json|csv]
        [--until ISO-8601]``: usage per instance over the last 7, 30 or 365 days."""
        kind, output_format, until = args.get("type"), args.get("format"), args.get("until")
        if kind not in REPORT_DAYS:
            return _usage_error(f"--type must be one of {', '.join(REPORT_DAYS)}, got {kind!r}")
        if output_format not in FORMATS:
            return _usage_error(
                f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}"
            )
        try:
            end = None if until is None else parse_instant(until)
        except (TypeError, ValueError) as exc:
            return _usage_error(f"--until: {exc}")
        report = await self._report(seconds=REPORT_DAYS[kind] * 86400.0, until=end)
        return CommandResult(render(report, kind, output_format))

    # ------------------------------------------------------------------ API

    async def api_usage(self, request: APIRequest) -> APIResult:
        """``GET /api/v1/analytics/usage?timerange=7d[&until=ISO-8601]``: hours per instance."""
        return await self._api(request, with_cost=False)

    async def api_costs(self, request: APIRequest) -> APIResult:
        """``GET /api/v1/analytics/costs?timerange=7d[&until=ISO-8601]``: hours and costs."""
        return await self._api(request, with_cost=True)

    async def _api(self, request: APIRequest, *, with_cost: bool) -> APIResult:
        timerange = request.query.get("timerange", DEFAULT_TIMERANGE)
        until = request.query.get("until")
        try:
            seconds = parse_timerange(timerange)
            end = None if until is None else parse_instant(until)
        except (TypeError, ValueError) as exc:
            return APIResult(400, {"error": str(exc)})
        report = await self._report(seconds=seconds, until=end)
        instances = []
        for usage in report.instances:
            row: dict[str, Any] = {
                "id": usage.id,
                "provider": usage.provider,
                "type": usage.type,
                "hours": usage.hours,
            }
            if with_cost:
                row["cost"] = usage.cost
            instances.append(row)
        data: dict[str, Any] = {
            "timerange": timerange,
            "range_start": format_instant(report.range_start),
            "range_end": format_instant(report.range_end),
            "instances": instances,
            "total_hours": report.total_hours,
        }
        if with_cost:
            data["total_cost"] = report.total_cost
        return APIResult(200, data)

    # ------------------------------------------------------------------ helpers

    async def _report(self, *, seconds: float, until: float | None) -> UsageReport:
        now = time.time()
        end = now if until is None else until
        events = await self._open_store().events_until(end)
        return build_report(events, start=end - seconds, end=end, now=now, prices=self._prices)

    def _open_store(self) -> UsageStore:
        if self._store is None:
            raise StoreError("the analytics database is not open (the plugin is not started)")
        return self._store


def _usage_error(message: str) -> CommandResult:
    return CommandResult(f"analytics report: {message}", exit_code=2)
