"""The plugin model (what a plugin is and declares), its manifest and its loader.

Nothing is re-exported here; the face is :mod:`cws_actors`.
"""
