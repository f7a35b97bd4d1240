"""The pool's Python API: start, status, stop, restart, scale, attach info.

The CLI is a thin layer over these functions (and scripts can call them directly).
``start_pool`` checks what it can up front (project writable, binary present, no running
supervisor), launches the daemon detached, waits on the state file until every child is
ready, and on any failure stops everything it started before raising the daemon's own
error. ``stop_pool`` asks the supervisor to stop and then, whether or not it was alive,
kills whatever the state file still lists (verified by pid and ``create_time``) and
every process that carries the pool's tag (``orphans.py``), so ``stop`` always leaves
nothing behind. ``pool_status`` reads the state file plus live
psutil and HTTP figures, so it works when the supervisor is dead. Room: pool.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from swarm_pool.config import HOST_ENV, STORE_URL_ENV, Config
from swarm_pool.errors import (
    InstanceStartError,
    PoolAlreadyRunningError,
    PoolError,
    PoolNotRunningError,
    ProcessError,
    SwarmPoolError,
    UnknownInstanceError,
)
from swarm_pool.opencode.binary import check_binary
from swarm_pool.opencode.shell import check_bwrap
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import control, process
from swarm_pool.pool.instance import busy_sessions
from swarm_pool.pool.orphans import POOL_TAG_ENV, new_tag, sweep_tagged
from swarm_pool.pool.ports import PortLeases, wait_port_free
from swarm_pool.pool.state import (
    InstanceState,
    PoolPhase,
    PoolState,
    child_view,
    read_state,
    read_state_quietly,
    write_state,
)
from swarm_pool.store import open_project_store
from swarm_pool.store.pgpass import seal_store_url

_POLL_S = 0.05
# The daemon's exit statuses (``swarm_pool.daemon``), which ``start_pool`` interprets.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ALREADY_RUNNING = 3


def _running_state(paths: ProjectPaths) -> PoolState | None:
    state = read_state(paths.state_file)
    if state is not None and state.supervisor_alive():
        return state
    return None


def start_pool(
    paths: ProjectPaths,
    config: Config,
    *,
    size: int | None = None,
    config_path: Path | None = None,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
    gateway: bool = False,
) -> PoolState:
    """Start the daemon and wait until every child is ready; raise (with nothing left
    running) otherwise. ``gateway`` turns the gateway on for this run (``--gateway``)."""
    running = _running_state(paths)
    if running is not None:
        assert running.supervisor is not None
        raise PoolAlreadyRunningError(
            f"a pool is already running in {paths.root} (supervisor pid "
            f"{running.supervisor.pid}); see `swarm-pool status`, or `swarm-pool stop` first"
        )
    check_binary(config)  # found, and of the line opencode.version names
    if config.workers.sandbox == "bwrap":
        check_bwrap()  # a missing or broken bubblewrap fails here, never silently later
    if config.opencode.model == "scripted" and not _module_exists("swarm_pool.scripted_model"):
        raise SwarmPoolError(
            "opencode.model is 'scripted' but swarm_pool.scripted_model is not installed; "
            "set opencode.model to a provider/model"
        )
    check_store(paths, config)
    # Only now that every check passed: the first thing start writes is .swarm/ itself.
    paths.ensure()
    size = size if size is not None else config.pool.size
    argv = [sys.executable, "-m", "swarm_pool.daemon", "--project", str(paths.root)]
    argv += ["--size", str(size)]
    if config_path is not None:
        argv += ["--config", str(config_path.resolve())]
    env = dict(os.environ if environ is None else environ)
    if config.store.url:
        # The daemon, its instances and their MCP servers open the same store; an env
        # entry keeps the URL off every command line (`ps` shows those), and its
        # password goes to a private passfile rather than into anyone's environment.
        env[STORE_URL_ENV] = seal_store_url(config.store.url, paths.swarm_dir, env)
    # JSON quoting is TOML's too: a host named "1" stays a string.
    env[HOST_ENV] = json.dumps(config.pool.host)
    env[POOL_TAG_ENV] = _pool_tag(paths)
    if gateway:
        env["SWARM_POOL_GATEWAY__ENABLED"] = "true"
    started = time.monotonic()
    try:
        daemon = process.launch(argv, env=env, cwd=paths.root, log_path=paths.supervisor_log).popen
    except ProcessError as e:
        raise PoolError(str(e)) from e
    # The daemon's own start-up deadline is 2 * start_timeout + 5 s; give it room to
    # report and to stop what it started before giving up on it.
    limit = timeout or (2 * config.pool.start_timeout_s + 5 + config.pool.stop_grace_s + 15)
    try:
        return _wait_started(paths, daemon, started + limit)
    except BaseException:
        _abort_start(paths, config, daemon)
        raise


def check_store(paths: ProjectPaths, config: Config) -> None:
    """Open the project's store if there is one, so a damaged store fails ``start`` with
    its own error before anything is launched (the supervisor would only log it)."""
    if not paths.db.exists():
        return
    open_project_store(paths, config).close()


def _pool_tag(paths: ProjectPaths) -> str:
    """The previous pool's tag while any of its children still runs (they will be
    adopted, and must be swept with the rest), else a fresh one."""
    previous = read_state_quietly(paths.state_file)
    if (
        previous is not None
        and previous.tag
        and any(rec.ref is not None and rec.ref.alive() for rec in previous.instances)
    ):
        return previous.tag
    return new_tag()


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _wait_started(
    paths: ProjectPaths, daemon: subprocess.Popen[bytes], deadline: float
) -> PoolState:
    while True:
        rc = daemon.poll()
        state = read_state_quietly(paths.state_file)
        if state is not None and (state.supervisor is None or state.supervisor.pid != daemon.pid):
            state = None  # an older pool's file: our daemon has not written yet
        if state is not None and state.error is not None:
            raise control.error_class(state.error.type)(state.error.message)
        if rc is not None:
            if rc == EXIT_ALREADY_RUNNING:
                raise PoolAlreadyRunningError(f"a pool is already running in {paths.root}")
            raise PoolError(
                f"the supervisor exited with status {rc} during start-up; "
                f"see {paths.supervisor_log}"
            )
        if state is not None and state.phase == PoolPhase.RUNNING:
            return state
        if time.monotonic() > deadline:
            detail = ""
            if state is not None:
                late = [r for r in state.instances if r.state != InstanceState.READY]
                detail = ": " + "; ".join(f"{r.name} {r.state} {r.reason}".strip() for r in late)
            raise InstanceStartError(f"the pool did not become ready in time{detail}")
        time.sleep(_POLL_S)


def _abort_start(paths: ProjectPaths, config: Config, daemon: subprocess.Popen[bytes]) -> None:
    """Stop the daemon we launched and everything it started."""
    if daemon.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            daemon.terminate()
        try:
            daemon.wait(timeout=config.pool.stop_grace_s + 20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=5)
    state = read_state_quietly(paths.state_file)
    if state is not None and state.supervisor is not None and state.supervisor.pid == daemon.pid:
        _kill_leftovers(state, config)


def _kill_leftovers(state: PoolState, config: Config) -> list[str]:
    """Stop every child the state lists that still runs (pid + create_time verified)."""
    leases = PortLeases(config.pool.port_min, config.pool.port_max)
    owners = [state.supervisor.ref] if state.supervisor else []
    killed: list[str] = []
    for rec in state.instances:
        ref = rec.ref
        if ref is not None and ref.alive():
            with contextlib.suppress(ProcessError):
                process.stop(ref, grace_s=config.pool.stop_grace_s, port=rec.port)
            killed.append(rec.name)
        if rec.port is not None:
            refs = [*owners, *([ref] if ref else [])]
            with contextlib.suppress(SwarmPoolError):
                leases.release(rec.port, refs)
    return killed


def stop_pool(paths: ProjectPaths, config: Config) -> dict[str, Any]:
    """Stop the supervisor and every child; {"was_running", "killed", "ports"}."""
    state = read_state(paths.state_file)
    if state is None:
        return {"was_running": False, "killed": [], "ports": []}
    was_running = state.supervisor_alive()
    # Only ports something of ours held when we began must be free at the end; an old
    # record's port may belong to another pool by now.
    held = [
        r.port
        for r in state.instances
        if r.port is not None and ((r.ref is not None and r.ref.alive()) or was_running)
    ]
    if was_running and state.supervisor is not None:
        ref = state.supervisor.ref
        try:
            if state.socket:
                control.call(Path(state.socket), "stop", timeout=10)
            else:
                raise PoolNotRunningError("no control socket")
        except PoolError:
            proc = ref.process()
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.terminate()
        limit = time.monotonic() + config.pool.stop_grace_s + 30
        while ref.alive() and time.monotonic() < limit:
            time.sleep(_POLL_S)
        proc = ref.process()
        if proc is not None:  # a wedged supervisor: it is ours (pid + create_time)
            with contextlib.suppress(Exception):
                proc.kill()
    state = read_state(paths.state_file) or state
    killed = _kill_leftovers(state, config)
    # Whatever agents detached and the supervisor could not take down with it (or it
    # was dead): every process still carrying the pool's tag.
    swept = sweep_tagged(state.tag, config.pool.stop_grace_s)
    busy = [p for p in held if not wait_port_free(p, 5.0)]
    for rec in state.instances:
        rec.state = InstanceState.STOPPED
        rec.pid = None
        rec.create_time = None
        rec.draining = False
    if state.phase != PoolPhase.FAILED:
        state.phase = PoolPhase.STOPPED
    write_state(paths.state_file, state)
    if busy:
        raise PoolError(f"ports still in use after stop: {', '.join(map(str, busy))}")
    return {"was_running": was_running, "killed": killed, "ports": held, "swept": swept}


def pool_status(
    paths: ProjectPaths, *, live: bool = True, cpu_interval: float = 0.2
) -> dict[str, Any]:
    """``{"supervisor": {...}, "instances": [...]}`` plus ``ok`` (running, all ready)."""
    state = read_state(paths.state_file)
    if state is None:
        return {
            "project": str(paths.root),
            "supervisor": {"pid": None, "running": False, "phase": None, "sandbox": "off"},
            "instances": [],
            "ok": False,
        }
    running = state.supervisor_alive()
    signs = _live_signs(state) if running else {}
    views = []
    refs = {}
    for rec in state.instances:
        if rec.name in signs:
            rec.last_sign_at = signs[rec.name]
        view = child_view(rec)
        ref = rec.ref
        alive = ref is not None and ref.alive()
        if not alive and not running:
            # Nothing will bring it back: report what is really there.
            view.update(state=InstanceState.STOPPED, pid=None, uptime_s=None)
        if alive and ref is not None and live:
            stats = process.tree_stats(ref)
            if stats is not None:
                view["rss_mb"] = round(stats[0], 1)
            refs[rec.name] = ref
        views.append(view)
    if live and refs:
        cpu = process.cpu_percents(list(refs.values()), interval=cpu_interval)
        for view in views:
            ref = refs.get(view["name"])
            if ref is not None:
                view["cpu_percent"] = cpu.get(ref.pid)
        targets = [v for v in views if v["kind"] == "opencode" and v["name"] in refs]
        if targets:
            with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
                passwords = {r.name: r.password for r in state.instances}
                counts = pool.map(
                    lambda v: busy_sessions(v["url"], passwords.get(v["name"], "")), targets
                )
                for view, count in zip(targets, counts, strict=True):
                    view["busy_sessions"] = count
    ok = running and bool(views) and all(v["state"] == InstanceState.READY for v in views)
    return {
        "project": str(paths.root),
        "supervisor": {
            "pid": state.supervisor.pid if state.supervisor else None,
            "running": running,
            "phase": state.phase if running else PoolPhase.STOPPED,
            "sandbox": state.sandbox,
        },
        "instances": views,
        "ok": ok,
    }


def _live_signs(state: PoolState) -> dict[str, float | None]:
    """Each child's last sign of life as the supervisor knows it now (the state file is
    only written on changes); empty when the supervisor does not answer."""
    if not state.socket:
        return {}
    try:
        answer = control.call(Path(state.socket), "status", timeout=2.0)
    except PoolError:
        return {}
    found: dict[str, float | None] = {}
    for rec in answer.get("instances", []) if isinstance(answer, dict) else []:
        if isinstance(rec, dict) and isinstance(rec.get("name"), str):
            sign = rec.get("last_sign_at")
            found[rec["name"]] = float(sign) if isinstance(sign, int | float) else None
    return found


def _control(paths: ProjectPaths) -> tuple[PoolState, Path]:
    state = _running_state(paths)
    if state is None or not state.socket:
        raise PoolNotRunningError(f"no pool is running in {paths.root}; `swarm-pool start` first")
    return state, Path(state.socket)


def restart_pool(paths: ProjectPaths, config: Config, name: str | None = None) -> dict[str, Any]:
    state, sock = _control(paths)
    if name is not None and state.child(name) is None:
        raise UnknownInstanceError(f"no instance named {name!r} in the pool")
    count = 1 if name else len(state.instances)
    timeout = (config.pool.start_timeout_s + config.pool.stop_grace_s + 10) * count
    result: dict[str, Any] = control.call(sock, "restart", name=name, timeout=timeout)
    return result


def scale_pool(paths: ProjectPaths, config: Config, size: int) -> dict[str, Any]:
    _state, sock = _control(paths)
    timeout = 2 * config.pool.start_timeout_s + config.pool.stop_grace_s + 30
    result: dict[str, Any] = control.call(sock, "scale", size=size, timeout=timeout)
    return result


def attach_info(paths: ProjectPaths, name: str) -> dict[str, str]:
    """``{"url", "username", "password"}`` of a running instance, or of the gateway
    (``name`` "gateway", with the gateway's own password)."""
    state = read_state(paths.state_file)
    if state is None:
        raise PoolNotRunningError(f"no pool in {paths.root}; `swarm-pool start` first")
    if name == "gateway":
        gw = state.gateway()
        if gw is None or gw.url is None or gw.ref is None or not gw.ref.alive():
            raise PoolNotRunningError(
                f"the pool in {paths.root} runs no gateway; `swarm-pool start --gateway`"
            )
        return {"url": gw.url, "username": "opencode", "password": state.gateway_password}
    rec = state.child(name)
    if rec is None or rec.kind != "opencode":
        names = ", ".join(r.name for r in state.opencode()) or "none"
        raise UnknownInstanceError(f"no instance named {name!r} (instances: {names})")
    ref = rec.ref
    if rec.url is None or ref is None or not ref.alive():
        raise PoolNotRunningError(f"instance {name} is not running ({rec.state})")
    return {"url": rec.url, "username": "opencode", "password": rec.password}
