"""Plugin packaging: ``.cwsplugin`` archives, Ed25519 signatures and safe removal.

Nothing is re-exported here; the face is :mod:`cws_actors`.
"""
