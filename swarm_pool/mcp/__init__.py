"""The agents' tools over MCP (official ``mcp`` SDK; stdio, and streamable HTTP
for the pool's shared server).

Room: mcp.

Layout: ``schemas`` (argument models and their JSON schemas), ``identity`` (who is
calling: from ``swarmmail_init`` or the worktree the process runs in), ``runtime`` (the
per-process state: store, store thread, identity), ``registry`` (validation and error
mapping for every call), ``verify`` (what ``swarm_complete`` checks), ``reports``
(``swarm_progress`` and ``swarm_complete``), ``worker_tools`` and ``coordinator_tools``
(the tools, as ``WORKER_SPECS`` and ``COORDINATOR_SPECS``), ``relay``, ``server`` (SDK
wiring, which serves both lists) and ``http`` (the shared server over HTTP).
"""
