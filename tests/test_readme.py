"""The README's example runs and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

README = Path(__file__).parent.parent / "README.md"


BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("source", BLOCKS, ids=lambda s: s.splitlines()[1][:40])
def test_readme_example_prints_what_it_claims(source: str) -> None:
    claimed = [line.strip() for line in re.findall(r"# -> (.*)", source)]
    assert claimed, "an example must say what it prints"
    namespace: dict[str, object] = {}
    # Run it on Trio's mock clock instead of its last line's trio.run(main).
    exec(compile(source.replace("trio.run(main)", ""), "README.md", "exec"), namespace)
    output = io.StringIO()
    # An example that starts a process says so, and runs on the real clock (bounded).
    real_clock = "real clock" in source
    with contextlib.redirect_stdout(output):
        if real_clock:
            trio.run(_bounded, namespace["main"])
        else:
            trio.run(namespace["main"], clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]
    printed = [" ".join(line.split()) for line in output.getvalue().splitlines()]
    assert printed == [" ".join(c.split()) for c in claimed]


async def _bounded(main: Any) -> None:
    with trio.fail_after(60):
        await main()
