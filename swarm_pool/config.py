"""The configuration: pydantic models for ``conf/pool.toml``, with every default here.

Room: base.

Sources, lowest to highest precedence: the defaults below, a TOML file (``--config PATH``,
else ``$SWARM_POOL_CONFIG``, else ``<project>/.swarm/pool.toml`` or
``<project>/swarm-pool.toml`` when present), then ``SWARM_POOL_<SECTION>__<KEY>`` env vars
(for example ``SWARM_POOL_POOL__SIZE=4``). Unknown keys and bad values fail with one line
that names the key and the value.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from swarm_pool.errors import ConfigError

ENV_PREFIX = "SWARM_POOL_"
# The store URL's env override, which `start` also hands to the daemon it launches.
STORE_URL_ENV = "SWARM_POOL_STORE__URL"
# ... and the host name (`start --host`).
HOST_ENV = "SWARM_POOL_POOL__HOST"
# Env vars with this prefix that are not config overrides.
_NON_CONFIG_ENV = {
    "SWARM_POOL_OPENCODE",
    "SWARM_POOL_CONFIG",
    "SWARM_POOL_HOME",
    # The project root the pool passes to its instances (and so to MCP servers).
    "SWARM_POOL_PROJECT",
    # The MCP server's log level (stderr).
    "SWARM_POOL_MCP_LOG",
    # Fault points armed by tests (swarm_pool.faults).
    "SWARM_POOL_FAULTS",
    # The shared MCP server's token secret, in that child's environment only.
    "SWARM_POOL_MCP_SECRET",
    # The pool's own process tag (pool/orphans.py), inherited by all its processes.
    "SWARM_POOL_TAG",
    # Process tags the test suite puts in every child's environment.
    "SWARM_POOL_TEST_ID",
    "SWARM_POOL_TEST_SESSION",
    # Tests: fail instead of skipping when no PostgreSQL server binaries are found.
    "SWARM_POOL_REQUIRE_PG",
}


# A host's name in a store shared by several hosts: what DNS allows in one label or a
# dotted name, so the machine's hostname fits by default.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")


def default_host() -> str:
    """The machine's hostname, as the default ``[pool] host``."""
    return socket.gethostname() or "localhost"


def checked_host(value: str) -> str:
    """``value`` if it is a valid host name; ConfigError otherwise."""
    if not HOST_NAME_RE.match(value):
        raise ConfigError(
            f"bad host name {value!r}: use letters, digits, '.', '_' and '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return value


class _Section(BaseModel):
    # Strict: values come from TOML (and env overrides in TOML syntax), which are typed;
    # the string "yes" is not a boolean and 2.0 is not an integer.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class PoolSection(_Section):
    size: int = Field(2, ge=1, le=64, description="instances started by `start`")
    # Below Linux's ephemeral range (32768-60999 by default): a port in it can be taken
    # by any outgoing connection's local end between our bind probe and the child's bind.
    port_min: int = Field(27100, ge=1024, le=65535)
    port_max: int = Field(27999, ge=1024, le=65535)
    start_timeout_s: float = Field(30.0, gt=0)
    stop_grace_s: float = Field(5.0, ge=0)
    routing: Literal["least_busy", "dedicated"] = "least_busy"
    max_sessions_per_instance: int = Field(4, ge=1)
    active_instances: int = Field(
        0, ge=0, description="instances that take work before the rest (0: one per core)"
    )
    avoid_restarted_s: float = Field(30.0, ge=0, description="new work avoids it this long")
    avoid_flapping_restarts: int = Field(2, ge=0, description="restarts in flap_window_s")
    # Several hosts on one PostgreSQL store: this pool's name among them.
    host: str = Field(default_factory=default_host, description="empty: the machine's hostname")
    hosts_beat_s: float = Field(2.0, gt=0, description="heartbeat period into the store")
    hosts_stale_s: float = Field(30.0, gt=0, description="a host silent this long is dead")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            return default_host()
        if not HOST_NAME_RE.match(value):
            raise ValueError(
                "use letters, digits, '.', '_' and '-' (at most 63, starting with a "
                "letter or digit)"
            )
        return value

    @model_validator(mode="after")
    def _range(self) -> PoolSection:
        if self.port_min > self.port_max:
            raise ValueError(f"port_min {self.port_min} > port_max {self.port_max}")
        if self.hosts_stale_s <= self.hosts_beat_s:
            raise ValueError(
                f"hosts_stale_s {self.hosts_stale_s} must exceed hosts_beat_s {self.hosts_beat_s}"
            )
        return self


class SupervisorSection(_Section):
    check_interval_s: float = Field(1.0, gt=0)
    health_interval_s: float = Field(
        5.0, gt=0, description="readiness probe period while healthy (every check if not)"
    )
    health_timeout_s: float = Field(2.0, gt=0)
    health_failures: int = Field(3, ge=1, description="K failed health checks -> restart")
    slow_answer_s: float = Field(15.0, gt=0, description="a health answer this late is alive")
    no_progress_s: float = Field(15.0, ge=0, description="silence before restart, idle")
    no_progress_per_busy_s: float = Field(30.0, ge=0, description="... plus this per busy")
    max_rss_mb: int = Field(2048, ge=0, description="0 disables the memory limit")
    memory_checks: int = Field(3, ge=1, description="K checks over the limit -> restart")
    memory_grace_s: float = Field(300.0, ge=0, description="restart even if busy after")
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    stable_after_s: float = Field(60.0, ge=0, description="uptime that resets backoff")
    flap_max_restarts: int = Field(5, ge=1, description="more than R restarts ...")
    flap_window_s: float = Field(120.0, gt=0, description="... within this window -> fatal")
    stats_interval_s: float = Field(15.0, ge=0, description="instance_stats sample period")
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(3, ge=0)


class OpenCodeSection(_Section):
    binary: str = Field("", description="empty: $SWARM_POOL_OPENCODE, project install, PATH")
    # The OpenCode line: "1.18" (npm opencode-ai) or "2" (npm @opencode/cli). It picks
    # the project's pinned install, and a binary found otherwise must be of this line.
    version: Literal["1.18", "2"] = "1.18"
    model: str = Field("scripted", description='"scripted" or "provider/model"')
    disable_models_fetch: bool = True
    permission: dict[str, Any] = Field(
        default_factory=lambda: {
            "edit": "allow",
            "bash": "allow",
            "webfetch": "allow",
            "external_directory": "deny",
            "doom_loop": "deny",
            # OpenCode's question tool waits for a human answer; deny removes the tool.
            "question": "deny",
            # OpenCode asks before reading .env files; a worker gets a denial instead.
            "read": {"*": "allow", "*.env": "deny", "*.env.*": "deny", "*.env.example": "allow"},
        }
    )
    extra_config: dict[str, Any] = Field(default_factory=dict)
    mcp_enabled: bool = True
    # "shared": one MCP server per pool (a supervised child, streamable HTTP), reached
    # through a tiny stdio relay per directory that adds the directory's capability
    # token; "local": OpenCode starts a full MCP server per session directory (the
    # round-1 layout, ~78 MB and ~1 CPU-s each; kept for comparison).
    mcp: Literal["shared", "local"] = "shared"
    # OpenCode's per-step git snapshots (for its undo): ~700 short git processes per 8
    # workers and ~15% of its CPU; a worker's history is its branch, so off.
    snapshot: bool = False
    # Language servers: a TypeScript worktree's tsserver alone took 2.8-3.7 GB upstream;
    # off by default in 1.18.33 already, set explicitly since the docs disagree.
    lsp: bool = False
    # Formatters run after each edit; a worker's diff should be what the agent wrote.
    formatter: bool = False
    # OpenCode rebuilds its provider list from models.dev's whole catalog for every
    # session directory (half a cold worker's CPU); "trimmed" hands the instances only
    # the providers this config uses (swarm_pool/opencode/catalog.py), "full" OpenCode's.
    models_catalog: Literal["trimmed", "full"] = "trimmed"

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        provider, sep, name = value.partition("/")
        if value != "scripted" and not (sep and provider.strip() and name.strip()):
            raise ValueError("use 'scripted' or 'provider/model'")
        return value


class ModelSection(_Section):
    port: int = Field(0, ge=0, le=65535, description="0: allocate from the pool's range")
    scripts: str = Field("", description="TOML file of scripts; empty: built-in defaults")
    default_delay_s: float = Field(0.0, ge=0)


class WorkersSection(_Section):
    max_retries: int = Field(1, ge=0, description="retries of the task's own failures")
    infra_retry_window_s: float = Field(
        600.0, ge=0, description="infra retries allowed this long after the first one"
    )
    infra_retry_backoff_s: float = Field(1.0, ge=0, description="first infra retry's delay")
    infra_retry_backoff_max_s: float = Field(30.0, ge=0, description="cap of the doubling")
    timeout_s: float = Field(900.0, gt=0)
    supervisor_wait_s: float = Field(
        300.0, ge=0, description="how long `run` waits for a supervisor to serve the pool again"
    )
    check_command: str = Field("", description="run in the worktree by swarm_complete")
    check_timeout_s: float = Field(300.0, gt=0)
    base_branch: str = Field("", description="empty: the branch checked out at spawn")
    worktrees: Literal["slots", "fresh"] = Field(
        "slots",
        description="slots: reuse each instance's warm worktree directories; fresh: a new "
        "worktree path per bead (the benchmark's legacy mode)",
    )
    slot_keep_ignored: bool = Field(
        False, description="true: a slot's reset keeps ignored files (build caches)"
    )
    min_slots: int = Field(
        0,
        ge=0,
        description="slots each instance makes and opens as soon as it is ready, so the "
        "first beads skip OpenCode's per-directory set-up (0: made at dispatch, as needed)",
    )
    remote: str = Field(
        "origin", description="several hosts: the git remote branches and merges meet on"
    )
    push_wait_s: float = Field(
        60.0, ge=0, description="review/merge wait this long for another host's push"
    )
    sandbox: Literal["off", "bwrap"] = Field(
        "off", description="bwrap: each worker's bash tool runs in a bubblewrap sandbox"
    )
    sandbox_network: bool = Field(True, description="false: no network in the sandbox")
    session_sweep_s: float = Field(
        30.0, gt=0, description="how often the engine deletes sessions unknown to the store"
    )
    intent_grace_s: float = Field(
        10.0, gt=0, description="a recorded session not yet known prompted is settled after"
    )
    engine_stale_s: float = Field(
        30.0, gt=0, description="an engine heartbeat older than this: the engine is down"
    )

    def sandbox_label(self) -> str:
        """How status, the dashboard and `run` name the sandbox: off, bwrap, or
        bwrap (no network)."""
        if self.sandbox == "off":
            return "off"
        return self.sandbox if self.sandbox_network else f"{self.sandbox} (no network)"


class StoreSection(_Section):
    url: str = Field(
        "", description="empty: <project>/.swarm/swarm.db; sqlite:///PATH; postgresql://..."
    )
    busy_timeout_ms: int = Field(10000, ge=0)
    lock_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0, description="PostgreSQL connect timeout")
    synchronous_commit: bool = Field(
        False, description="PostgreSQL: a commit waits for its WAL flush (off: as SQLite's NORMAL)"
    )


class GatewaySection(_Section):
    enabled: bool = Field(False, description="run the OpenCode-compatible gateway child")
    port: int = Field(4096, ge=1, le=65535, description="fixed port on 127.0.0.1")
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 503 while restarting")
    heartbeat_s: float = Field(10.0, gt=0, description="SSE heartbeat, as OpenCode sends")
    state_poll_s: float = Field(0.2, gt=0, description="how often it rereads pool.json")


class Config(_Section):
    pool: PoolSection = Field(default_factory=PoolSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    opencode: OpenCodeSection = Field(default_factory=OpenCodeSection)
    model: ModelSection = Field(default_factory=ModelSection)
    workers: WorkersSection = Field(default_factory=WorkersSection)
    store: StoreSection = Field(default_factory=StoreSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)

    @model_validator(mode="after")
    def _slots_fit(self) -> Config:
        limit = self.pool.max_sessions_per_instance
        if self.workers.min_slots > limit:
            raise ValueError(
                f"workers.min_slots {self.workers.min_slots} exceeds "
                f"pool.max_sessions_per_instance {limit}"
            )
        return self


def _format_error(err: ValidationError, data: Mapping[str, Any]) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key {loc!r}"
    if not loc:  # a check across sections: its message names the keys
        return f"bad config: {str(first['msg']).removeprefix('Value error, ')}"
    value = first.get("input")
    return f"bad config value {loc}={value!r}: {first['msg']}"


def _parse_env_value(raw: str) -> Any:
    # TOML syntax lets env vars carry numbers, booleans, arrays and tables; anything
    # that does not parse is taken as a plain string.
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NON_CONFIG_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"bad env override {name}={raw!r}: expected {ENV_PREFIX}<SECTION>__<KEY>"
            )
        section, key = parts
        out.setdefault(section, {})[key] = _parse_env_value(raw)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
            f"offset {e.start})"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e


def default_config_path(project_root: Path | None) -> Path | None:
    if project_root is None:
        return None
    for candidate in (project_root / ".swarm" / "pool.toml", project_root / "swarm-pool.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_config(
    path: Path | None = None,
    *,
    project_root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config from file and env; raise ConfigError on bad input."""
    env = os.environ if environ is None else environ
    if path is None and env.get("SWARM_POOL_CONFIG"):
        path = Path(env["SWARM_POOL_CONFIG"])
    if path is None:
        path = default_config_path(project_root)
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = _merge(data, _env_overrides(env))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, data)) from e
