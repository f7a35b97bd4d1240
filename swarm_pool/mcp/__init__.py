"""The agents' tools over MCP (official ``mcp`` SDK, stdio).

Layout: ``schemas`` (argument models and their JSON schemas), ``identity`` (who is
calling: from ``swarmmail_init`` or the worktree the process runs in), ``runtime`` (the
per-process state: store, store thread, identity), ``registry`` (validation and error
mapping for every call), ``verify`` (what ``swarm_complete`` checks), ``worker_tools``
(the worker tools), ``server`` (SDK wiring). Coordinator tools go in their own module,
``coordinator_tools``, exposing ``COORDINATOR_SPECS``; ``server`` picks it up when present.
"""
