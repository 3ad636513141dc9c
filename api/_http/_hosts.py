"""The ``Host:`` check that stops DNS rebinding: a web page whose name is made to point
at 127.0.0.1 reaches the daemon from a browser, but its requests still name the page's
host. The daemon answers only the names it is known by: its bound address, loopback
addresses, ``localhost`` and the names in ``[daemon] allowed_hosts``. An IP address
cannot be rebound, so a daemon bound to every address (``0.0.0.0``) takes any."""

from __future__ import annotations

import ipaddress

from .._config import DaemonConfig


def host_name(header: str) -> str:
    """The name in a ``Host:`` value, without its port, lower-cased: ``[::1]:8947`` is
    ``::1``, ``Example.org.:80`` is ``example.org``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def allowed_names(config: DaemonConfig) -> list[str]:
    """The names configured besides addresses: ``localhost``, the bound host and
    ``allowed_hosts``."""
    configured = [name.strip().lower() for name in config.allowed_hosts.split(",")]
    return list(dict.fromkeys(["localhost", config.host.lower(), *filter(None, configured)]))


def host_allowed(name: str, config: DaemonConfig) -> bool:
    """Whether a request naming ``name`` in ``Host:`` is for this daemon."""
    if name in allowed_names(config):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    try:
        bound = ipaddress.ip_address(config.host)
    except ValueError:
        return False
    return bound.is_unspecified or address == bound
