"""The click CLI: parse, call the core, print (table or ``--json``), map errors to exits.

Room: cli.

The root group and its error mapping live in ``group.py``; each command module below adds
its commands to it. They are imported here by name, so a missing module is an import error,
never a command that silently disappears.
"""

from __future__ import annotations

from swarm_pool.cli import (  # noqa: F401  (imported for the commands they add)
    mcp_cmds,
    model_cmds,
    pool_cmds,
    store_cmds,
    view_cmds,
    worker_cmds,
)
from swarm_pool.cli.group import PROG, error_line, main

__all__ = ["PROG", "error_line", "main"]
