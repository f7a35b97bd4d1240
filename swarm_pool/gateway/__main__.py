"""The gateway's server entry: ``python -m swarm_pool.gateway --project DIR --port P``.

Room: gateway.

The supervisor launches this as a pool child (kind ``gateway``). It serves the Starlette
app with uvicorn on 127.0.0.1 (uvloop and httptools when installed), logs plain lines to
stderr (the supervisor points that at ``.swarm/instances/gateway/gateway.log``), and
takes its settings from ``--settings`` (the sections of the pool's config it uses) and
every secret from the private state file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from swarm_pool.config import Config
from swarm_pool.errors import SwarmPoolError
from swarm_pool.gateway.app import Gateway, build_app
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.serve import loopback_server
from swarm_pool.store.core import open_project_store


def _settings(raw: str | None) -> Config:
    data = json.loads(raw) if raw else {}
    return Config.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm_pool.gateway", description=__doc__)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--settings", default=None, help="JSON of config sections")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = _settings(args.settings)
        paths = ProjectPaths(args.project.resolve())
        store = open_project_store(paths, config)
    except (SwarmPoolError, ValueError) as e:
        print(f"swarm-pool gateway: {e}", file=sys.stderr)
        return 1
    gateway = Gateway(paths, config, store=store)
    server = loopback_server(build_app(gateway), args.port, ws="websockets-sansio")
    try:
        server.run()
    finally:
        store.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
