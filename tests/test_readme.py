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


WALKTHROUGH = re.search(
    r"## The daemon, step by step\n.*?```sh\n(.*?)```", README.read_text(), re.S
)


def test_the_walkthrough_config_gives_the_analytics_plugin_its_prices(tmp_path: Path) -> None:
    """The walkthrough was run against a real daemon on a free port with a temporary
    CWS_HOME; this keeps the parts that drift in step: its cws.toml loads and prices
    t3.micro, and the plugins it lists are this distribution's entry points."""
    import tomllib

    from api import load_config

    assert WALKTHROUGH is not None
    block = WALKTHROUGH[1]
    toml = re.search(r"cat > cws.toml <<'EOF'\n(.*?)EOF\n", block, re.S)
    assert toml is not None
    (tmp_path / "cws.toml").write_text(toml[1])
    config = load_config(tmp_path / "cws.toml", env={}, home=tmp_path / "home")
    assert config.overrides["research-analytics"]["config"]["prices"] == {"t3.micro": 0.0104}
    listed = re.search(r"cws plugin list\n# PLUGIN.*?\n((?:# \w.*\n)+)", block)
    assert listed is not None
    names = [line.split()[1] for line in listed[1].splitlines()]
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    assert names == sorted(pyproject["project"]["entry-points"]["cws_actors.plugins"])
    # 10 hours of t3.micro at 0.0104 an hour.
    assert "# i-1    aws       t3.micro  10.00  0.1040" in block
