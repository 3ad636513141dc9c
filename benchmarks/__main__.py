"""Run every benchmark and print one table: ``python -m benchmarks [--quick]
[--only actors,supervision,plugins,concurrency,ratelimit,http,connections,startup,
attacks] [--output DIR]``.

A missed target is printed, not an error: the exit code is 1 only when a benchmark
itself failed to run, so CI can run ``--quick`` to keep them working without timing
assertions.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ._harness import Row, describe_machine, now_utc, text_table, write_json, write_markdown
from ._suites import SUITES, Suite

RESULTS = Path(__file__).parent / "results"


def suite_names(text: str) -> list[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names or not names <= SUITES.keys():
        raise argparse.ArgumentTypeError(f"expected names from {', '.join(SUITES)}, got {text!r}")
    return [name for name in SUITES if name in names]  # always in the table's order


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument(
        "--only", type=suite_names, default=list(SUITES), metavar="NAME[,NAME]",
        help=f"run only these: {', '.join(SUITES)}",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=RESULTS, metavar="DIR",
        help=f"where latest.json and latest.md go (default {RESULTS})",
    )  # fmt: skip
    return parser.parse_args(argv)


def run_suite(suite: Suite, params: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """The suite's rows and its record; a failure becomes one row and ``error``."""
    gc.collect()  # the previous suite's garbage is not this one's to pay for
    began = time.perf_counter()
    try:
        figures = suite.run(params)
    except Exception as exc:  # reported in the table and the exit code, not swallowed
        traceback.print_exc()
        rows = [Row(suite.name, f"{suite.name}.error", suite.name, "", None,
                    note=f"error: {type(exc).__name__}: {exc}")]  # fmt: skip
        figures, error = {}, f"{type(exc).__name__}: {exc}"
    else:
        rows, error = suite.rows(figures), None
    record = {
        "params": params,
        "duration_s": time.perf_counter() - began,
        "figures": figures,
        "error": error,
    }
    return rows, record


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    # The restart storms measured here would log a warning per crash and restart: what
    # is measured is the runtime, not the terminal those 20,000 lines would go to.
    logging.disable(logging.WARNING)
    mode = "quick" if arguments.quick else "full"
    report: dict[str, Any] = {"mode": mode, "started_at": now_utc()}
    report["machine"] = describe_machine()  # first: its load average is what else ran
    began = time.perf_counter()
    rows: list[Row] = []
    report["suites"] = {}
    for name in arguments.only:
        suite = SUITES[name]
        print(f"running {name} ({mode})...", file=sys.stderr, flush=True)
        suite_rows, record = run_suite(suite, suite.quick if arguments.quick else suite.full)
        rows += suite_rows
        report["suites"][name] = record
    report["duration_s"] = time.perf_counter() - began
    print(text_table(rows))
    print(f"\n{mode} run, {report['duration_s']:.0f} s")
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_json(arguments.output / "latest.json", report, rows)
    write_markdown(arguments.output / "latest.md", report, rows)
    print(f"wrote {arguments.output / 'latest.json'} and latest.md")
    return 1 if any(record["error"] for record in report["suites"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
