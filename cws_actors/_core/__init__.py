"""The actor core: envelopes, mailboxes, rate limits, dead letters, the bus, the durable
event store, actors, cells, the router and the runtime that composes them.

It knows nothing of plugins or faults: the cell calls its hooks (``_hooks``) without
knowing who listens. Nothing is re-exported here; the face is :mod:`cws_actors`.
"""
