"""The daemon's HTTP app (quart-trio): one blueprint per resource, assembled by
:func:`create_app`.

Arrows point down::

    _app                  create_app: registers the blueprints below, nothing else
      ├── _health, _pages, _plugins, _snoozebot, _actors, _events, _cli,
      │   _instances, _faults, _plugin_endpoints       one blueprint per resource
      └── _hooks          token check, problem documents and counts on every request
    _requests             the daemon (an app extension), principal, JSON body, guarded
    _problems, _views, _openapi, _dashboard            documents and shapes

Below the room: ``api._daemon`` (the daemon object), ``api._auth`` (tokens and scopes).
"""

from ._app import create_app as create_app

__all__ = ["create_app"]
