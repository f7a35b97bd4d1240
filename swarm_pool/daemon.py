"""The background supervisor process: ``python -m swarm_pool.daemon --project DIR``.

Room: the edges (the composition root). It joins the process manager (``pool/``) and
the worker engine (``swarm/``), so that nothing in ``pool/`` imports ``swarm/``: the
engine gets the supervisor's busy hint wired to its store, and listens to the
supervisor's one event stream reader per instance (its ``pulses``) instead of opening a
second stream to each instance. ``swarm-pool start``
launches it detached (own session, stdio to the supervisor log). It
logs plain lines to ``.swarm/supervisor.log``, turns SIGTERM, SIGINT and SIGHUP into a
clean stop of the whole pool, makes itself the child subreaper of everything below it
(so what an agent detaches is re-parented here, reaped, and killed on stop), and exits 0
after a clean stop, 1 when start-up failed (the reason is in the state file's
``error``), 3 when another supervisor already runs the project. SIGKILL leaves the
instances serving; the next ``start`` adopts them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from swarm_pool.config import Config, load_config
from swarm_pool.errors import EngineStartError, PoolAlreadyRunningError, SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.api import EXIT_ALREADY_RUNNING, EXIT_FAILED
from swarm_pool.pool.orphans import OrphanReaper, set_child_subreaper
from swarm_pool.pool.process import launched_pids
from swarm_pool.pool.pulse import Pulses
from swarm_pool.pool.supervisor import Supervisor, SupervisorOptions


def setup_logging(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # httpx logs every request at INFO; the health checks would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm_pool.daemon", description=__doc__)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args(argv)
    paths = ProjectPaths(args.project.resolve())
    log = logging.getLogger("swarm_pool.pool")
    try:
        paths.ensure()
        setup_logging(paths.supervisor_log)
        config = load_config(args.config, project_root=paths.root)
    except SwarmPoolError as e:
        print(f"swarm-pool supervisor: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.config is not None:
        # Every process of the pool that reads config (instances pass their env on to the
        # MCP servers they start) must read this one, not the project's default.
        os.environ["SWARM_POOL_CONFIG"] = str(args.config.resolve())

    reaper = OrphanReaper(launched_pids) if set_child_subreaper() else None
    supervisor = Supervisor(paths, config, SupervisorOptions(size=args.size, reaper=reaper))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping the pool", signal.Signals(signum).name)
        supervisor.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    engines: list[Any] = []
    # The engine starts once this supervisor holds the pool lock (a second daemon that
    # loses the race never runs one); if it cannot start, the start fails with why.
    supervisor.on_locked = lambda: engines.append(
        start_worker_engine(paths, config, supervisor.pulses)
    )
    # Busy is not dead: the engine knows which workers run on which instance even when
    # the instance is too loaded to say.
    supervisor.busy_hint = lambda name: engines[0].busy_on(name) if engines else None
    try:
        return supervisor.run()
    except PoolAlreadyRunningError as e:
        log.error("%s", e)
        return EXIT_ALREADY_RUNNING
    except SwarmPoolError as e:
        log.error("%s", e)
        return EXIT_FAILED
    except Exception:
        log.exception("supervisor crashed")
        return EXIT_FAILED
    finally:
        for engine in engines:
            engine.stop()


def start_worker_engine(paths: ProjectPaths, config: Config, streams: Pulses) -> Any:
    """The hook where the worker engine (``swarm/``) joins the supervisor process.

    The engine (stream watchers, queued spawns, failure detection and retries)
    acts only while this process's supervisor runs the pool.
    """
    # Imported here, not at the top: an engine that cannot be imported must fail the
    # start with that reason in the state file, like one whose store cannot be opened.
    try:
        from swarm_pool.swarm.engine.loop import Engine, EngineSettings
    except ImportError as e:
        raise EngineStartError(f"the worker engine cannot be imported: {e}") from e
    settings = EngineSettings(owner_pid=os.getpid())
    return Engine(paths, config, streams=streams, settings=settings).open().start()


if __name__ == "__main__":
    raise SystemExit(main())
