"""Public names are a promise: they must not disappear, and __all__ stays sorted."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

PROMISED = {
    "supervision": {
        "open_supervisor", "Supervisor", "Strategy", "Restart", "ChildSpec", "Backoff",
        "Jitter", "Probe", "ProbeKind", "OnExhausted", "SupervisionError",
        "RestartIntensityExceeded", "ChildNotFound", "DuplicateChild", "ChildRunning", "ExitKind",
        "ExitReason", "ChildState", "SupervisorStatistics", "ChildStatistics",
        "supervisor_spec",
    },
    "cws_actors": {
        "Actor", "open_runtime", "Runtime", "ActorRef", "RateLimit", "MailboxConfig",
        "Overflow", "ActorError", "ActorNotFound", "ActorStopped", "ActorRestarting",
        "NotReady", "RateLimited", "MailboxFull", "AskTimeout", "DeadlineExceeded",
        "HandlerFailed", "Envelope", "Source", "on_event", "Event", "HealthProbe",
    },
    "api": {"create_app", "serve_daemon", "DaemonConfig", "load_config", "Daemon", "open_daemon"},
    "api.cli": {"main", "CLIError"},
}  # fmt: skip


@pytest.mark.parametrize(
    "package", ["supervision", "cws_actors", "cws_actors.faults", "providers", "api", "api.cli"]
)
def test_all_is_sorted_and_every_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is in __all__ but missing"


@pytest.mark.parametrize("package", sorted(PROMISED))
def test_promised_names_are_exported(package: str) -> None:
    module = importlib.import_module(package)
    assert PROMISED[package] <= set(module.__all__)


def test_public_names_do_not_leak_private_modules() -> None:
    import supervision

    for name in supervision.__all__:
        assert getattr(supervision, name).__module__.startswith("supervision")


@pytest.mark.parametrize("package", ["cws_actors", "cws_actors.faults"])
def test_public_names_report_their_public_module(package: str) -> None:
    """Reprs and tracebacks say ``cws_actors.Actor``, not ``cws_actors._core._actor``."""
    module = importlib.import_module(package)
    for name in module.__all__:
        owner = getattr(getattr(module, name), "__module__", None)
        if owner is not None and owner.startswith("cws_actors"):
            assert owner == package, f"{package}.{name} reports {owner}"


ROOT = pathlib.Path(__file__).parent.parent
SEALED = ("supervision", "cws_actors", "providers", "api", "benchmarks", "examples")


def _imports(source: pathlib.Path, *, top_level_only: bool = False) -> list[str]:
    """The absolute module names ``source`` imports (relative imports resolved)."""
    tree = ast.parse(source.read_text(), str(source))
    package = ".".join(source.relative_to(ROOT).parent.parts)
    nodes: list[ast.AST] = list(ast.walk(tree))
    if top_level_only:  # what runs at import time, TYPE_CHECKING blocks aside
        nodes = [
            node for node in tree.body
            if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        ]  # fmt: skip
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _sources(top: str) -> list[pathlib.Path]:
    return [p for p in (ROOT / top).rglob("*.py") if ".venv" not in p.parts]


def test_layers_point_down_only() -> None:
    """supervision imports no project layer above it; cws_actors neither api nor providers."""
    forbidden = {
        "supervision": ("cws_actors", "providers", "api"),
        "cws_actors": ("providers", "api"),
    }
    for package, above in forbidden.items():
        for source in _sources(package):
            for name in _imports(source):
                assert name.split(".")[0] not in above, f"{source} imports {name}"


def test_no_package_imports_another_packages_private_modules() -> None:
    """No module of the project imports another package's private modules
    (``cws_actors._*``, ``supervision._*``, ``providers._*``, ``api._*``): each package's
    ``__init__`` exports all that others use. Tests are exempt: they may import private
    modules to test them white-box."""
    for top in SEALED:
        for source in _sources(top):
            for name in _imports(source):
                parts = name.split(".")
                owner = parts[0]
                if owner == top or owner not in ("supervision", "cws_actors", "providers", "api"):
                    continue
                private = [part for part in parts[1:] if part.startswith("_")]
                assert not private, f"{source} imports {name}, a private module of {owner}"


def test_the_actor_core_does_not_import_faults_at_import_time() -> None:
    """The core reaches cws_actors.faults only through _core._hooks (and to make
    runtime.faults, at run time): no import cycle between them."""
    for source in _sources("cws_actors/_core"):
        for name in _imports(source, top_level_only=True):
            assert not name.startswith("cws_actors.faults"), f"{source} imports {name}"
