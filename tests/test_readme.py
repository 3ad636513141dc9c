"""The README's example runs and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import trio
import trio.testing

README = Path(__file__).parent.parent / "README.md"


def test_readme_example_prints_what_it_claims() -> None:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None, "the README has lost its example"
    source = code.group(1)
    claimed = re.search(r"# -> (.*)", source)
    assert claimed is not None
    namespace: dict[str, object] = {}
    # Run it on Trio's mock clock instead of its last line's trio.run(main).
    exec(compile(source.replace("trio.run(main)", ""), "README.md", "exec"), namespace)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        trio.run(namespace["main"], clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]
    assert output.getvalue().strip() == claimed.group(1).strip()
