from __future__ import annotations

from pathlib import Path

import pytest

from swarm_pool.config import Config, load_config
from swarm_pool.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_pool_toml_documents_exactly_the_defaults() -> None:
    assert load_config(ROOT / "conf" / "pool.toml", environ={}) == Config()


def test_env_override_parses_types() -> None:
    cfg = load_config(environ={"SWARM_POOL_POOL__SIZE": "5", "SWARM_POOL_OPENCODE__MODEL": "a/b"})
    assert cfg.pool.size == 5
    assert cfg.opencode.model == "a/b"


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[pool]\nsizee = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'pool.sizee'"):
        load_config(p, environ={})


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[pool]\nsize = "many"\n')
    with pytest.raises(ConfigError, match=r"pool.size='many'"):
        load_config(p, environ={})


def test_bad_env_value_names_key() -> None:
    with pytest.raises(ConfigError, match=r"supervisor.health_failures=0"):
        load_config(environ={"SWARM_POOL_SUPERVISOR__HEALTH_FAILURES": "0"})


def test_inverted_port_range_is_rejected() -> None:
    with pytest.raises(ConfigError, match="port_min"):
        load_config(
            environ={"SWARM_POOL_POOL__PORT_MIN": "5000", "SWARM_POOL_POOL__PORT_MAX": "4000"}
        )
