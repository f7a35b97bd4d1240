#!/usr/bin/env python3
"""Stand-in opencode that loses the race for its port: ``pool_steal.py serve ... --port P``.

It writes P to ``$STEAL_PORTFILE`` and waits until something else listens on P: the test
starts that foreign process itself, outside the pool's process tree (anything this
stand-in forked would be re-parented to the supervisor, the pool's child subreaper, and
stopped with the pool). Then the real opencode (``$STEAL_REAL_BINARY``) is exec'ed with
the same arguments and fails to bind. This is the "port taken between allocation and
bind" case, made deterministic.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    real = os.environ["STEAL_REAL_BINARY"]
    if sys.argv[1:] == ["--version"]:  # `start` asks which OpenCode line it is
        os.execv(real, [real, "--version"])
    port = int(sys.argv[sys.argv.index("--port") + 1])
    with open(os.environ["STEAL_PORTFILE"], "w") as fh:
        fh.write(str(port))
    deadline = time.monotonic() + 60
    while not _taken(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.execv(real, [real, *sys.argv[1:]])


if __name__ == "__main__":
    main()
