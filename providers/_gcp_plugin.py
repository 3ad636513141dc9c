"""The ``gcp`` plugin: Compute Engine instances through ``GCPProvider``, in a process of
its own.

Registered in the ``cws_actors.plugins`` entry-point group. Configure it in the daemon's
config file::

    [plugins.overrides.gcp]
    config = { project = "my-project", zones = ["us-central1-a"],
               credentials_file = "/etc/cws/gcp-service-account.json" }
    # api_endpoint = "http://127.0.0.1:8080" for a local fake (anonymous credentials)

Without ``project`` the plugin stays loaded but answers every call with 503
"not configured", naming the setting, until it is set and the plugin reloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import trio

from ._base import CloudProvider, ProviderNotConfigured
from ._plugin import ProviderPlugin, provider_metadata


class GCPPlugin(ProviderPlugin):
    """Google Compute Engine as the ``gcp`` cloud provider."""

    # Its SDK (google-cloud-compute, about a second to import) in its process before
    # initialize: a warm spare has it imported, so a restart does not wait for it (and
    # the daemon never imports it).
    preload = ("providers._gcp",)
    metadata = provider_metadata(
        "gcp",
        "Google Compute Engine instances: list, show, start, stop, and their events",
        credentials=(
            os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),
            os.path.join(os.path.expanduser("~"), ".config", "gcloud"),
        ),
    )

    async def make_provider(self, config: Mapping[str, Any]) -> CloudProvider:
        # Imported here, in the plugin's process: the daemon imports this module to
        # read the plugin's capabilities, and the SDK would cost it a second at start.
        from ._gcp import GCPProvider

        if not config.get("project"):
            raise ProviderNotConfigured(
                "gcp: no project; set config.project under [plugins.overrides.gcp]"
            )
        # Building the clients may look up default credentials (blocking I/O).
        return await trio.to_thread.run_sync(GCPProvider.from_config, config)
