"""Entry point of the MCP server: ``python -m swarm_pool.mcp_server`` (stdio).

Room: entry points.

OpenCode starts it once per session directory, with that directory as cwd; the server
finds the project's store from there (``$SWARM_POOL_PROJECT`` first). The tools live in
the ``swarm_pool.mcp`` package.
"""

from __future__ import annotations

from swarm_pool.mcp.server import run


def main() -> None:
    run()


if __name__ == "__main__":
    main()
