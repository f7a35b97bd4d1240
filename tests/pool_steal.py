#!/usr/bin/env python3
"""Stand-in opencode that loses the race for its port: ``pool_steal.py serve ... --port P``.

Before the real binary starts, a detached foreign process (its own session, not in our
process tree) starts listening on P and writes its pid to ``$STEAL_PIDFILE``; then the
real opencode (``$STEAL_REAL_BINARY``) is exec'ed with the same arguments and fails to
bind. This is the "port taken between allocation and bind" case, made deterministic.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def main() -> None:
    real = os.environ["STEAL_REAL_BINARY"]
    port = int(sys.argv[sys.argv.index("--port") + 1])
    pidfile = os.environ["STEAL_PIDFILE"]
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            with open(pidfile, "w") as fh:
                fh.write(str(os.getpid()))
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # do not hold the instance log open
                os.dup2(devnull, fd)
            os.write(ready_w, b"x")
            time.sleep(300)
        os._exit(0)
    os.read(ready_r, 1)
    os.execv(real, [real, *sys.argv[1:]])


if __name__ == "__main__":
    main()
