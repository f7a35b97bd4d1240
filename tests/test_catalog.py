"""The trimmed models catalog an instance loads (swarm_pool/opencode/catalog.py).

That a real instance then lists only the pool's providers is checked against the binary
in ``test_pool_e2e.py``; here the choice of providers, the sources (the user's
``OPENCODE_MODELS_PATH``, OpenCode's cached download) and the fallback to OpenCode's
full catalog run on files alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.config import Config
from swarm_pool.opencode.catalog import (
    MODELS_PATH_ENV,
    instance_catalog_env,
    trimmed_catalog,
    used_providers,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.instance import build_instance_env

FULL = {
    "anthropic": {"id": "anthropic", "name": "Anthropic", "env": ["K"], "models": {"m": {}}},
    "openai": {"id": "openai", "name": "OpenAI", "env": ["K"], "models": {"n": {}}},
    "groq": {"id": "groq", "name": "Groq", "env": ["K"], "models": {"g": {}}},
}


def config(**opencode: Any) -> Config:
    return Config.model_validate({"opencode": opencode})


def source(tmp_path: Path, data: dict[str, Any] = FULL) -> dict[str, str]:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    return {MODELS_PATH_ENV: str(path), "HOME": str(tmp_path / "home")}


def test_the_scripted_model_needs_an_empty_catalog(tmp_path: Path) -> None:
    env: dict[str, str] = {"HOME": str(tmp_path)}
    instance_catalog_env(config(), tmp_path / "inst", env)
    path = Path(env[MODELS_PATH_ENV])
    assert json.loads(path.read_text()) == {}
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_real_model_keeps_its_provider_only(tmp_path: Path) -> None:
    path = trimmed_catalog(config(model="anthropic/m"), tmp_path / "inst", source(tmp_path))
    assert path is not None
    assert json.loads(path.read_text()) == {"anthropic": FULL["anthropic"]}


def test_every_provider_the_config_names_is_kept(tmp_path: Path) -> None:
    cfg = config(
        model="anthropic/m",
        extra_config={
            "small_model": "openai/n",
            "enabled_providers": ["anthropic", "openai"],
            # Defined in full by the config: no catalog entry needed, none in it.
            "provider": {"local": {"npm": "@ai-sdk/openai-compatible", "models": {"x": {}}}},
        },
    )
    assert used_providers(cfg) == ({"anthropic", "openai", "local"}, {"anthropic", "openai"})
    path = trimmed_catalog(cfg, tmp_path / "inst", source(tmp_path))
    assert path is not None
    assert set(json.loads(path.read_text())) == {"anthropic", "openai"}


def test_opencodes_cached_download_is_the_second_source(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "opencode" / "models.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps(FULL))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    path = trimmed_catalog(config(model="groq/g"), tmp_path / "inst", env)
    assert path is not None
    assert json.loads(path.read_text()) == {"groq": FULL["groq"]}


def test_a_provider_no_catalog_has_keeps_opencodes_full_catalog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"HOME": str(tmp_path / "home")}
    with caplog.at_level(logging.WARNING):
        assert trimmed_catalog(config(model="anthropic/m"), tmp_path / "inst", env) is None
        assert trimmed_catalog(config(model="mistral/m"), tmp_path / "i", source(tmp_path)) is None
    assert "no catalog" in caplog.text and "lacks mistral" in caplog.text
    # An unreadable source is no source.
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    env = {MODELS_PATH_ENV: str(bad), "HOME": str(tmp_path / "home")}
    assert trimmed_catalog(config(model="anthropic/m"), tmp_path / "inst", env) is None


def test_full_leaves_the_users_catalog_alone(tmp_path: Path) -> None:
    env = source(tmp_path)
    before = dict(env)
    instance_catalog_env(config(model="anthropic/m", models_catalog="full"), tmp_path, env)
    assert env == before


def test_an_instance_env_points_at_the_trimmed_catalog(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    base = {MODELS_PATH_ENV: "/somewhere/else.json", "HOME": str(tmp_path)}
    env = build_instance_env(
        config(), paths=paths, name="oc-1", password="pw", model_url="http://x/v1", base_env=base
    )
    assert env[MODELS_PATH_ENV] == str(paths.instances_dir / "models.json")


def test_a_bad_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="models_catalog"):
        config(models_catalog="small")
