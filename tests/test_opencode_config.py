"""The per-instance OpenCode config (pure; the real binary checks it in the e2e module)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from swarm_pool.config import Config, load_config
from swarm_pool.errors import ConfigError
from swarm_pool.opencode.config import (
    CONFIG_ENV,
    SCRIPTED_MODEL,
    deep_merge,
    mcp_timeout_ms,
    opencode_config,
    opencode_env,
    serialize,
)
from swarm_pool.protocol import MCP_SERVER_NAME

URL = "http://127.0.0.1:47123/v1"


def test_scripted_model_is_an_openai_compatible_provider(tmp_path: Path) -> None:
    cfg = opencode_config(Config(), project_root=tmp_path, model_url=URL + "/")
    provider = cfg["provider"]["swarmpool"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": URL, "apiKey": "x"}
    assert list(provider["models"]) == ["scripted"]
    assert cfg["model"] == cfg["small_model"] == SCRIPTED_MODEL == "swarmpool/scripted"
    with pytest.raises(ConfigError, match="no scripted model URL"):
        opencode_config(Config(), project_root=tmp_path, model_url=None)


def test_a_real_provider_model_is_passed_through(tmp_path: Path) -> None:
    config = Config()
    config.opencode.model = "anthropic/claude-sonnet-4-5"
    cfg = opencode_config(config, project_root=tmp_path, model_url=None)
    assert cfg["model"] == "anthropic/claude-sonnet-4-5"
    # No provider block: the user's own provider config and credentials apply.
    assert "provider" not in cfg and "small_model" not in cfg
    # A bad model name is refused by the config itself, before anything is built.
    for bad in ("claude", "/x", "x/"):
        with pytest.raises(ValidationError, match="use 'scripted' or 'provider/model'"):
            config.opencode.model = bad
        with pytest.raises(ConfigError, match=r"opencode\.model"):
            load_config(environ={"SWARM_POOL_OPENCODE__MODEL": f'"{bad}"'})


def test_mcp_server_block(tmp_path: Path) -> None:
    config = Config()
    config.workers.check_timeout_s = 600
    cfg = opencode_config(config, project_root=tmp_path, model_url=URL)
    assert list(cfg["mcp"]) == [MCP_SERVER_NAME]
    server = cfg["mcp"][MCP_SERVER_NAME]
    assert server["type"] == "local"
    # env -u: the MCP server never holds the instance's password, not even in its
    # /proc/PID/environ (OpenCode's `environment` can only add variables).
    env, *drop, python, flag, module = server["command"]
    assert Path(env).name == "env"
    assert drop == ["-u", "OPENCODE_SERVER_PASSWORD", "-u", "SWARM_POOL_MCP_SECRET"]
    assert [python, flag, module] == [sys.executable, "-m", "swarm_pool.mcp_server"]
    # The bash tool's shell is our wrapper (opencode/shell.py).
    assert cfg["shell"] == str(tmp_path.resolve() / ".swarm" / "bin" / "bash")
    assert server["enabled"] is True
    assert server["environment"] == {"SWARM_POOL_PROJECT": str(tmp_path.resolve())}
    # Longer than a check command may run inside swarm_complete.
    assert server["timeout"] == 660_000
    config.opencode.mcp_enabled = False
    assert "mcp" not in opencode_config(config, project_root=tmp_path, model_url=URL)


def test_shared_mcp_goes_through_the_relay(tmp_path: Path) -> None:
    mcp_url = "http://127.0.0.1:4999/mcp"
    cfg = opencode_config(Config(), project_root=tmp_path, model_url=URL, mcp_url=mcp_url)
    server = cfg["mcp"][MCP_SERVER_NAME]
    env, *drop, python, isolated, no_site, relay, url = server["command"]
    assert Path(env).name == "env" and "SWARM_POOL_MCP_SECRET" in drop
    # -I -S: no site-packages, no user hooks; the relay imports the standard library only.
    assert [python, isolated, no_site, url] == [sys.executable, "-I", "-S", mcp_url]
    assert Path(relay).name == "relay.py" and Path(relay).is_file()
    assert server["timeout"] == mcp_timeout_ms(Config())


def test_headless_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = opencode_config(Config(), project_root=tmp_path, model_url=URL)
    assert (cfg["snapshot"], cfg["lsp"], cfg["formatter"]) == (False, False, False)
    config = load_config(
        environ={"SWARM_POOL_OPENCODE__SNAPSHOT": "true", "SWARM_POOL_OPENCODE__LSP": "true"}
    )
    cfg = opencode_config(config, project_root=tmp_path, model_url=URL)
    assert (cfg["snapshot"], cfg["lsp"]) == (True, True)
    assert Config().opencode.mcp == "shared"
    with pytest.raises(ConfigError, match=r"opencode\.mcp"):
        load_config(environ={"SWARM_POOL_OPENCODE__MCP": '"remote"'})


def test_permission_policy_never_asks(tmp_path: Path) -> None:
    cfg = opencode_config(Config(), project_root=tmp_path, model_url=URL)
    perm = cfg["permission"]
    assert perm == Config().opencode.permission
    assert (perm["edit"], perm["bash"]) == ("allow", "allow")
    assert perm["external_directory"] == "deny"
    assert perm["question"] == "deny"

    def actions(value: object) -> list[object]:
        return list(value.values()) if isinstance(value, dict) else [value]

    assert all(a != "ask" for v in perm.values() for a in actions(v))
    assert cfg["share"] == "disabled" and cfg["autoupdate"] is False
    assert cfg["default_agent"] == "build"


def test_extra_config_is_deep_merged_last(tmp_path: Path) -> None:
    config = Config()
    config.opencode.extra_config = {
        "permission": {"bash": "deny", "read": {"secret/*": "deny"}},
        "mcp": {MCP_SERVER_NAME: {"enabled": False}},
        "share": "manual",
        "instructions": ["AGENTS.md"],
    }
    cfg = opencode_config(config, project_root=tmp_path, model_url=URL)
    assert cfg["permission"]["bash"] == "deny"
    assert cfg["permission"]["edit"] == "allow"
    assert cfg["permission"]["read"]["secret/*"] == "deny"
    assert cfg["permission"]["read"]["*.env"] == "deny"
    assert cfg["mcp"][MCP_SERVER_NAME]["enabled"] is False
    assert cfg["mcp"][MCP_SERVER_NAME]["type"] == "local"
    assert (cfg["share"], cfg["instructions"]) == ("manual", ["AGENTS.md"])
    # The config object is not mutated by building or merging.
    assert config.opencode.permission["bash"] == "allow"
    assert "secret/*" not in config.opencode.permission["read"]


def test_deep_merge_copies() -> None:
    base = {"a": {"b": [1, 2], "c": 1}}
    merged = deep_merge(base, {"a": {"c": 2, "d": {"e": 3}}, "f": [4]})
    assert merged == {"a": {"b": [1, 2], "c": 2, "d": {"e": 3}}, "f": [4]}
    merged["a"]["b"].append(9)
    assert base == {"a": {"b": [1, 2], "c": 1}}


def test_serialize_and_env(tmp_path: Path) -> None:
    cfg = opencode_config(Config(), project_root=tmp_path, model_url=URL)
    text = serialize(cfg)
    assert "\n" not in text and json.loads(text) == cfg
    env = opencode_env(Config(), project_root=tmp_path, model_url=URL)
    assert list(env) == [CONFIG_ENV] == ["OPENCODE_CONFIG_CONTENT"]
    assert json.loads(env[CONFIG_ENV]) == cfg
