"""``python -m swarm_pool``: the CLI (``cli/``), as the ``swarm-pool`` command.

Room: entry points.
"""

from swarm_pool.cli import main

main()
