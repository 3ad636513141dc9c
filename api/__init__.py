"""api: the daemon's faces: the HTTP app, its client and the ``cws`` command line.

It composes the lower layers (``cws_actors``, ``providers``, ``supervision``) and is
imported by nothing in the project.
"""

__all__: list[str] = []
