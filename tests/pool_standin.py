"""A cheap stand-in child for the pool tests: ``python tests/pool_standin.py MODE --port P``.

Modes: ``serve`` answers ``GET /`` with 200 ``{"healthy": true}``; ``crash`` exits 3 at
once; ``sick`` serves, but answers 503 once ``$STANDIN_SICK_FILE`` exists; ``fat``
allocates ``$STANDIN_MB`` MB and serves; ``stubborn`` serves, ignores SIGTERM and has a
grandchild that ignores it too (to prove stop kills the whole tree with SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        sick = os.environ.get("STANDIN_SICK_FILE")
        code = 503 if sick and os.path.exists(sick) else 200
        body = json.dumps({"healthy": code == 200}).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    mode = sys.argv[1]
    port = int(sys.argv[sys.argv.index("--port") + 1])
    print(f"standin {mode} pid {os.getpid()} port {port}", flush=True)
    if mode == "crash":
        sys.exit(3)
    ballast = b""
    if mode == "fat":
        ballast = b"x" * (int(os.environ.get("STANDIN_MB", "64")) * 2**20)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(600)",
            ]
        )
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    try:
        server.serve_forever()
    finally:
        del ballast
    time.sleep(0)


if __name__ == "__main__":
    main()
