"""The ``aws`` plugin: EC2 instances through ``AWSProvider``, in a process of its own.

Registered in the ``cws_actors.plugins`` entry-point group. Configure it in the daemon's
config file::

    [plugins.overrides.aws]
    config = { region = "eu-west-1", profile = "research" }
    # endpoint_url = "http://127.0.0.1:5000" for moto's server
    # env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]

The plugin process sees only the daemon's allow-listed environment (HOME, so
``~/.aws/config`` and ``~/.aws/credentials`` work), plus the variables ``env`` names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ._base import CloudProvider, ProviderRequestError
from ._plugin import ProviderPlugin, provider_metadata


class AWSPlugin(ProviderPlugin):
    """Amazon EC2 as the ``aws`` cloud provider."""

    # Its SDK (boto3) in its process before initialize: a warm spare has it
    # imported, so a restart does not wait for it (and the daemon never imports it).
    preload = ("providers._aws",)
    metadata = provider_metadata(
        "aws",
        "Amazon EC2 instances: list, show, start, stop, and their events",
        credentials=(
            os.environ.get("AWS_SHARED_CREDENTIALS_FILE"),
            os.environ.get("AWS_CONFIG_FILE"),
            os.path.join(os.path.expanduser("~"), ".aws"),
        ),
    )

    async def make_provider(self, config: Mapping[str, Any]) -> CloudProvider:
        # Imported here, in the plugin's process: the daemon imports this module to
        # read the plugin's capabilities, and the SDK would cost it a second at start.
        from ._aws import AWSProvider

        try:
            return await AWSProvider.create(config)
        except (TypeError, ValueError) as exc:
            # A ProviderRequestError is a ValueError too: keep its message, say where once.
            message = str(exc).removeprefix("aws: ")
            raise ProviderRequestError(
                f"aws: bad config under [plugins.overrides.aws]: {message}"
            ) from None
