"""The per-instance OpenCode config, passed as ``OPENCODE_CONFIG_CONTENT`` (never written
into the user's repo).

Room: opencode.

It owns five choices: the model (the built-in scripted one, served on loopback, or the
user's own ``provider/model`` so their credentials keep working), the swarm MCP server
(``[opencode] mcp``: "shared", the default, is the pool's one MCP server reached through
a stdlib relay per session directory that adds the directory's capability token;
"local" is a whole MCP server per session directory; both start through ``env -u`` so
they never hold the instance's password), the bash tool's ``shell`` (our wrapper,
``opencode/shell.py``), the headless switches (``snapshot``, ``lsp``, ``formatter``), and a
permission policy under which a background worker never waits for a human (from
``[opencode].permission``). OpenCode
merges this over the user's global and project config, so keys we do not set stay
theirs. ``[opencode].extra_config`` is deep-merged last and wins.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swarm_pool.config import Config
from swarm_pool.errors import ConfigError
from swarm_pool.opencode.shell import SECRET_ENV, shell_path
from swarm_pool.protocol import MCP_SERVER_NAME

SCRIPTED = "scripted"
SCRIPTED_PROVIDER = "swarmpool"
SCRIPTED_MODEL = f"{SCRIPTED_PROVIDER}/{SCRIPTED}"
MCP_MODULE = "swarm_pool.mcp_server"
RELAY_PATH = Path(__file__).resolve().parent.parent / "mcp" / "relay.py"
CONFIG_ENV = "OPENCODE_CONFIG_CONTENT"


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested mappings merge key by key; lists and scalars are replaced."""
    merged: dict[str, Any] = {k: _copy(v) for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _model_section(model: str, model_url: str | None) -> dict[str, Any]:
    if model == SCRIPTED:
        if not model_url:
            raise ConfigError(
                "opencode.model is 'scripted' but no scripted model URL is known "
                "(is the model server running?)"
            )
        return {
            "provider": {
                SCRIPTED_PROVIDER: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "swarm-pool scripted model",
                    "options": {"baseURL": model_url.rstrip("/"), "apiKey": "x"},
                    "models": {SCRIPTED: {"name": "scripted (offline)"}},
                }
            },
            "model": SCRIPTED_MODEL,
            # OpenCode asks its small model for session titles; keep that offline too.
            "small_model": SCRIPTED_MODEL,
        }
    provider, sep, name = model.partition("/")
    if not (sep and provider and name):
        raise ConfigError(
            f"bad config value opencode.model={model!r}: use 'scripted' or 'provider/model'"
        )
    return {"model": model}


def _env_minus_secrets() -> list[str]:
    drop = [arg for var in SECRET_ENV for arg in ("-u", var)]
    return [shutil.which("env") or "/usr/bin/env", *drop]


def relay_command(mcp_url: str) -> list[str]:
    """The per-directory relay to the shared server: ``-I -S`` skip site-packages and the
    user's environment hooks, so it starts in ~20 ms of CPU and ~12 MB."""
    return [*_env_minus_secrets(), sys.executable, "-I", "-S", str(RELAY_PATH), mcp_url]


def mcp_command() -> list[str]:
    """How OpenCode starts our MCP server: this interpreter, so the venv's packages load.

    OpenCode gives a local MCP server its own whole environment plus ``environment``,
    which can add or override a variable but not remove one; ``env -u`` removes the
    secrets before our server starts (so not even its /proc/PID/environ holds them).
    """
    return [*_env_minus_secrets(), sys.executable, "-m", MCP_MODULE]


def mcp_timeout_ms(config: Config) -> int:
    return int(max(60.0, config.workers.check_timeout_s + 60.0) * 1000)


def opencode_config(
    config: Config,
    *,
    project_root: Path,
    model_url: str | None,
    mcp_url: str | None = None,
) -> dict[str, Any]:
    """The config for one instance of the pool of ``project_root``.

    ``model_url`` is the scripted model's base URL (``http://127.0.0.1:P/v1``); it is
    required when ``config.opencode.model`` is ``"scripted"`` and ignored otherwise.
    ``mcp_url`` is the shared MCP server's (``http://127.0.0.1:P/mcp``): given, each
    directory reaches it through the relay; None, each gets a whole MCP server.
    """
    oc = config.opencode
    out: dict[str, Any] = {
        # A pool instance is headless: no sharing, no self-update behind the pool's back.
        "share": "disabled",
        "autoupdate": False,
        # Workers edit files: pin the agent, whatever the user's own default is (plan is
        # read-only). The prompt can still pick another agent per message.
        "default_agent": "build",
        # The bash tool's shell: drops the secrets, and boxes the worker when configured.
        "shell": str(shell_path(project_root.resolve())),
        # Headless switches ([opencode] in config.py says why each is off).
        "snapshot": oc.snapshot,
        "lsp": oc.lsp,
        "formatter": oc.formatter,
    }
    out.update(_model_section(oc.model, model_url))
    if oc.mcp_enabled:
        # The pool passes mcp_url only when it runs the shared server ([opencode] mcp =
        # "shared"); a config built without one (a test rig) gets the per-directory one.
        command = relay_command(mcp_url) if mcp_url else mcp_command()
        out["mcp"] = {
            MCP_SERVER_NAME: {
                "type": "local",
                "command": command,
                "enabled": True,
                # Tool calls time out after this (ms; OpenCode's default is the MCP SDK's
                # 60 s); swarm_complete may run the check command for check_timeout_s.
                "timeout": mcp_timeout_ms(config),
                # The MCP process inherits the instance's env; this pins the store even
                # when a session directory sits outside the project tree.
                "environment": {"SWARM_POOL_PROJECT": str(project_root.resolve())},
            }
        }
    out["permission"] = _copy(oc.permission)
    return deep_merge(out, oc.extra_config)


def serialize(config: Mapping[str, Any]) -> str:
    """Compact JSON for ``OPENCODE_CONFIG_CONTENT``."""
    return json.dumps(config, separators=(",", ":"), sort_keys=False)


def opencode_env(
    config: Config, *, project_root: Path, model_url: str | None, mcp_url: str | None = None
) -> dict[str, str]:
    """The environment entries that hand an instance its config."""
    built = opencode_config(config, project_root=project_root, model_url=model_url, mcp_url=mcp_url)
    return {CONFIG_ENV: serialize(built)}
