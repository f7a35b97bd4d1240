"""swarm-pool: a supervised pool of OpenCode servers for parallel agent swarms.

Room: base.
"""

__version__ = "0.1.0"
OPENCODE_VERSION = "1.18.33"
