"""`[sandbox]` in plugin.toml: what a plugin asks for, and how grants answer (issue 19)."""

from __future__ import annotations

import pytest

from cws_actors import Endpoint, ManifestError, NetworkMode, PathAccess, PathRule, Sandbox
from cws_actors._plugins._manifest import parse_manifest
from cws_actors._plugins._sandbox import parse_grants, ungranted

PLUGIN = {"name": "s", "version": "1.0.0", "api_version": "1.0", "entry": "s:S"}


def manifest(sandbox: dict | None = None, limits: dict | None = None):
    data: dict = {"plugin": PLUGIN}
    if sandbox is not None:
        data["sandbox"] = sandbox
    if limits is not None:
        data["limits"] = limits
    return parse_manifest(data, source="plugin.toml")


def test_no_table_asks_for_nothing() -> None:
    sandbox = manifest().metadata.sandbox
    assert sandbox == Sandbox()
    assert sandbox.requests() == ()
    assert not sandbox.declared
    assert manifest({}).metadata.sandbox.declared  # an empty table is a declaration


def test_every_request_reads_as_a_grant_would_name_it() -> None:
    meta = manifest(
        {
            "filesystem": [{"path": "/etc/ssl", "access": "read"}, {"path": "/srv/x"}],
            "network": ["api.example.com:443", 5432, "*:8080"],
            "exec": ["/usr/bin/git"],
            "secrets": ["aws_key"],
            "apis": ["events:publish"],
            "memory_mb": 256,
            "processes": 8,
            "disk_mb": 100,
        }
    ).metadata
    sandbox = meta.sandbox
    assert sandbox.filesystem == (PathRule("/etc/ssl"), PathRule("/srv/x", PathAccess.READ))
    assert sandbox.network is NetworkMode.LIST
    assert sandbox.endpoints == (
        Endpoint("api.example.com", 443),
        Endpoint(None, 5432),
        Endpoint(None, 8080),
    )
    assert sandbox.requests() == (
        "filesystem:read:/etc/ssl",
        "filesystem:read:/srv/x",
        "network:api.example.com:443",
        "network:*:5432",
        "network:*:8080",
        "exec:/usr/bin/git",
        "secrets:aws_key",
        "apis:events:publish",
    )
    assert (meta.limits.memory_mb, meta.limits.processes, meta.limits.disk_mb) == (256, 8, 100)


@pytest.mark.parametrize(
    ("sandbox", "message"),
    [
        ({"network": "everywhere"}, 'sandbox.network is "none", "loopback" or a list'),
        ({"network": ["api.example.com"]}, "a network entry is a port or 'host:port'"),
        ({"network": [70000]}, "port"),
        ({"filesystem": [{"path": "etc"}]}, "a sandbox path must be absolute"),
        ({"filesystem": [{"path": "/a/../b"}]}, "without '..'"),
        ({"filesystem": [{"path": "/a", "access": "all"}]}, 'access is "read" or "write"'),
        ({"exec": True}, "sandbox.exec is false or a list"),
        ({"exec": ["git"]}, "a sandbox path must be absolute"),
        ({"secrets": ["a b"]}, "a secret's name is letters"),
        ({"network_bps": 1000}, "unknown sandbox.network_bps (did you mean 'network'?)"),
    ],
)
def test_a_bad_sandbox_is_refused_saying_what_is_expected(sandbox: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=r"plugin\.toml") as caught:
        manifest(sandbox)
    assert message in str(caught.value)


def test_limits_stated_twice_must_agree() -> None:
    assert manifest({"memory_mb": 256}, {"memory_mb": 256}).metadata.limits.memory_mb == 256
    with pytest.raises(ManifestError, match=r"limits.memory_mb = 128 and sandbox.memory_mb"):
        manifest({"memory_mb": 256}, {"memory_mb": 128})


def test_grants_cover_requests_by_name_kind_or_all() -> None:
    requests = ("network:*:443", "secrets:aws_key", "secrets:gcp_key", "exec:/usr/bin/git")
    assert ungranted(requests, ()) == list(requests)
    assert ungranted(requests, parse_grants("network,secrets:aws_key")) == [
        "secrets:gcp_key",
        "exec:/usr/bin/git",
    ]
    assert ungranted(requests, parse_grants("all")) == []
    assert ungranted(requests, parse_grants("network, secrets, exec")) == []
    with pytest.raises(ValueError, match="'netwrok' is not a grant"):
        parse_grants("netwrok")
