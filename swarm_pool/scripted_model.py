"""Entry point of the scripted model server: ``python -m swarm_pool.scripted_model serve``.

Room: entry points.

The supervisor runs it as a child like any other; ``swarm-pool model serve`` calls the
same ``serve``. It prints one ``listening on URL`` line once bound, serves until SIGTERM
or SIGINT, then wakes any hanging request and exits 0. The model itself lives in
``swarm_pool.model``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from swarm_pool.errors import SwarmPoolError
from swarm_pool.model import ScriptBook, make_server


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    scripts: Path | None = None,
    default_delay_s: float = 0.0,
    verbose: bool = False,
) -> None:
    """Serve in the foreground until SIGTERM/SIGINT; raises SwarmPoolError on bad input."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    book = ScriptBook.from_path(scripts, default_delay_s)
    server = make_server(book, host=host, port=port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on this thread.
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"scripted model listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.model.stop_event.set()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm_pool.scripted_model")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the scripted model on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--scripts", type=Path, default=None, help="scripts TOML file")
    p.add_argument("--delay", type=float, default=0.0, help="default delay before answers")
    p.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        serve(
            host=args.host,
            port=args.port,
            scripts=args.scripts,
            default_delay_s=args.delay,
            verbose=args.verbose,
        )
    except SwarmPoolError as e:
        print(f"scripted model: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
