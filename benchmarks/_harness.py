"""Rows and targets, the machine's description, and the table, JSON and markdown made
from them; and what the HTTP benchmarks share: a plugin's folder, a daemon's config, and
a daemon served by hypercorn beside bare quart-trio routes. Nothing here runs a
benchmark; ``_suites.py`` does."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    from api import DaemonConfig

PACKAGES = ("trio", "quart-trio", "hypercorn", "httpx", "pykka", "thespian")


@attrs.frozen
class Target:
    """A bound on ``ours / reference``: ``>=`` for rates, ``<=`` for latencies."""

    op: Literal[">=", "<="]
    ratio: float
    why: str

    def met(self, ratio: float) -> bool:
        return ratio >= self.ratio if self.op == ">=" else ratio <= self.ratio

    def __str__(self) -> str:
        return f"{self.op} {self.ratio:g}x"


@attrs.frozen
class Row:
    """One line of the table. ``ours`` is None when the measure was skipped or failed;
    ``note`` then says why. ``judged=False`` shows the target but does not check it,
    when the run could not measure what the target is about."""

    suite: str
    key: str
    metric: str
    unit: str
    ours: float | None
    reference: float | None = None
    reference_name: str = ""
    target: Target | None = None
    note: str = ""
    judged: bool = True

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    @property
    def target_met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None or not self.judged:
            return None
        return self.target.met(ratio)

    @property
    def status(self) -> str:
        met = self.target_met
        status = "" if met is None else ("met" if met else "MISSED")
        if self.target and self.ratio is not None and not self.judged:
            status = "not judged"
        return "; ".join(part for part in (status, self.note) if part) or "-"

    def as_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "key": self.key,
            "metric": self.metric,
            "unit": self.unit,
            "ours": self.ours,
            "reference": self.reference,
            "reference_name": self.reference_name or None,
            "ratio": self.ratio,
            "target": str(self.target) if self.target else None,
            "target_why": self.target.why if self.target else None,
            "target_met": self.target_met,
            "note": self.note or None,
        }


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        number = f"{value:,.0f}"
    elif abs(value) >= 10:
        number = f"{value:.1f}"
    else:
        number = f"{value:.2f}"
    return f"{number} {unit}"


HEADER = ("metric", "ours", "reference", "against", "ratio", "target", "status")


def table_cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    cells = [HEADER]
    for row in rows:
        ratio = row.ratio
        cells.append(
            (
                row.metric,
                format_value(row.ours, row.unit),
                format_value(row.reference, row.unit) if row.reference_name else "-",
                row.reference_name or "-",
                "-" if ratio is None else f"{ratio:.2f}x",
                str(row.target) if row.target else "-",
                row.status,
            )
        )
    return cells


def text_table(rows: Sequence[Row]) -> str:
    cells = table_cells(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    cells = table_cells(rows)
    escaped = [[cell.replace("|", "\\|") for cell in line] for line in cells]
    lines = ["| " + " | ".join(line) + " |" for line in escaped]
    lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _command(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def describe_machine() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python, package versions and the checkout, for the record."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    distribution = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.M)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = _command("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_command("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": cpu[1].strip() if cpu else (platform.processor() or platform.machine()),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(memory[1]) / 2**20, 1) if memory else None,
        "os": distribution[1] if distribution else platform.system(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "wrk": _command("wrk", "-v").split(" Copyright")[0] or None,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "commit": f"{commit}{' (with local changes)' if dirty else ''}" if commit else None,
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: Path, report: dict[str, Any], rows: Sequence[Row]) -> None:
    body = report | {"rows": [row.as_json() for row in rows]}
    path.write_text(json.dumps(body, indent=2) + "\n")


def machine_lines(machine: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{name} {version or 'not installed'}"
                         for name, version in machine["packages"].items())  # fmt: skip
    return [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores"
        f" ({machine['usable_cores']} usable), {machine['ram_gib']} GiB RAM",
        f"- OS: {machine['os']}, kernel {machine['kernel']}; {machine['python']}",
        f"- Packages: {packages}",
        f"- wrk: {machine['wrk'] or 'not installed (httpx in a child process instead)'}",
        f"- Load average at the start: {' '.join(map(str, machine['load_average']))}",
        f"- Commit: {machine['commit'] or 'unknown'}",
    ]


def write_markdown(path: Path, report: dict[str, Any], rows: Sequence[Row]) -> None:
    mode = report["mode"]
    command = "python -m benchmarks" + (" --quick" if mode == "quick" else "")
    durations = ", ".join(f"{name} {suite['duration_s']:.0f} s"
                          for name, suite in report["suites"].items())  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        f"`{command}`, {report['started_at']}, {report['duration_s']:.0f} s ({durations}).",
        "Each figure is beside a reference measured in the same run; the ratio is"
        " ours / reference, and the target bounds that ratio.",
    ]
    if mode == "quick":
        lines.append("A quick run: small sizes, noisy figures; it checks that they run.")
    lines += ["", "## Machine", "", *machine_lines(report["machine"]), "", "## Results", ""]
    lines += [markdown_table(rows), "", "## Targets", ""]
    targets = {row.key: row for row in rows if row.target}
    lines += [f"- {row.metric}: {row.target}: {row.target.why}"
              for row in targets.values() if row.target]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ HTTP benchmarks' daemon
# `api` and hypercorn are imported where used: `python -m benchmarks --only actors` does
# not pay for them.

HELLO_PLUGIN = """
from cws_actors import APIEndpointSpec, APIResult, Capabilities, Plugin

class Hello(Plugin):
    capabilities = Capabilities(
        api_endpoints=[APIEndpointSpec("{path}", handler="hello", protected=False)]
    )

    async def hello(self, request):
        return APIResult(200, {{"hello": "world"}})
"""
"""A plugin (class ``Hello``) whose one unprotected endpoint, ``path``, answers 200
``{"hello": "world"}``: ``HELLO_PLUGIN.format(path=...)``."""

MANIFEST = """
[plugin]
name = "{name}"
version = "1.0.0"
api_version = "1.0"
entry = "{name}_plugin:{entry_class}"
"""


def write_plugin(
    folder: Path, name: str, source: str, entry_class: str, settings: str = ""
) -> None:
    """The plugin ``name`` in ``folder/name``: its module ``NAME_plugin.py`` holds
    ``source`` and its plugin.toml names ``entry_class`` there. ``settings`` is TOML that
    follows the ``[plugin]`` table's keys (more of its keys, then other tables)."""
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True)
    manifest = MANIFEST.format(name=name, entry_class=entry_class) + textwrap.dedent(settings)
    (plugin_dir / "plugin.toml").write_text(textwrap.dedent(manifest))
    (plugin_dir / f"{name}_plugin.py").write_text(textwrap.dedent(source))


def daemon_config(home: Path) -> DaemonConfig:
    """A daemon's config for a benchmark: ``home`` (its plugins in ``home/plugins``), port
    0, no entry-point plugins, reads open."""
    from api import load_config

    return load_config(None, env={}, home=home, port=0, entry_points=False,
                       system_dir=home / "system", open_reads=True)  # fmt: skip


@asynccontextmanager
async def served_daemon(
    home: Path, bare_routes: Mapping[str, Callable[[], Awaitable[Any]]]
) -> AsyncIterator[str]:
    """A daemon with ``home``'s plugins loaded, its app served by hypercorn on 127.0.0.1
    with the bare quart-trio GET ``bare_routes`` (path: view) beside its own routes, the
    references its figures are measured against; yields its base URL."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from api import create_app, open_daemon

    async with open_daemon(daemon_config(home)) as daemon:
        app = create_app(daemon)
        for path, view in bare_routes.items():
            app.get(path)(view)
        await daemon.load_plugins()
        hyper = Config()
        hyper.bind = ["127.0.0.1:0"]
        hyper.accesslog = None
        hyper.errorlog = None  # no "Running on ..." line in the middle of a report
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, hyper)
            daemon.url = binds[0]
            yield binds[0]
            nursery.cancel_scope.cancel()
