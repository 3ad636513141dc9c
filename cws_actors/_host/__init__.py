"""The plugin host: discovery, loading, installation (staging, roll-back, recovery),
status and the facade :class:`~cws_actors.PluginHost`, with its state database.

Nothing is re-exported here; the face is :mod:`cws_actors`.
"""
