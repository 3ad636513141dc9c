"""cws_actors: supervised actors, mailboxes, the router, the event bus and the plugin host.

Built on :mod:`supervision`; nothing here imports ``api`` or ``providers``. The actor
layer lands with issue 3; until then this package holds no public names.
"""

__all__: list[str] = []
