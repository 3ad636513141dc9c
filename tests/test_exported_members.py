"""Public names are a promise: they must not disappear, and __all__ stays sorted."""

from __future__ import annotations

import importlib

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
    "api": {"create_app", "serve_daemon", "DaemonConfig", "load_config"},
    "api.cli": {"main", "CLIError"},
}  # fmt: skip


@pytest.mark.parametrize("package", ["supervision", "cws_actors", "providers", "api", "api.cli"])
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


def test_layers_point_down_only() -> None:
    """supervision imports no project layer above it; cws_actors neither api nor providers."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parent.parent
    forbidden = {
        "supervision": ("cws_actors", "providers", "api"),
        "cws_actors": ("providers", "api"),
    }
    for package, above in forbidden.items():
        for source in (root / package).glob("*.py"):
            text = source.read_text()
            for name in above:
                assert not re.search(rf"^\s*(from|import) {name}\b", text, re.M), (
                    f"{source.name} imports {name}"
                )
