"""The models catalog a pool's instances load: only the providers the pool uses.

Room: opencode.

OpenCode 1.18.33 bundles models.dev's catalog (about 4.4 MB of providers and models) and
builds its provider list from all of it again for every session directory it opens.
That was half of a cold worker's CPU (about 0.9 CPU-s and 60 MB of RSS per directory,
measured on 8 cold workers on one instance). ``OPENCODE_MODELS_PATH`` replaces the bundled
catalog with a file, so with ``[opencode] models_catalog = "trimmed"`` (the default) each
instance gets one holding only the providers the pool's config names: none at all for
the scripted model (its provider is defined in full by the instance config), the
model's provider otherwise, taken from the user's own catalog (``OPENCODE_MODELS_PATH``)
or OpenCode's cached download. When that source lacks one of them, the instances keep
OpenCode's full catalog (a warning says so): slower, never broken.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swarm_pool.config import Config
from swarm_pool.paths import write_private

MODELS_PATH_ENV = "OPENCODE_MODELS_PATH"
CATALOG_FILE = "models.json"

log = logging.getLogger(__name__)


def used_providers(config: Config) -> tuple[set[str], set[str]]:
    """The providers the instances' config names, as (all of them, those a catalog must
    supply): its model's and small model's (unless scripted), ``enabled_providers`` and
    the ones ``provider`` configures; a configured provider that lists its own models
    needs no catalog entry (a custom one has none)."""
    oc = config.opencode
    extra = oc.extra_config
    models = [oc.model, extra.get("model"), extra.get("small_model")]
    named = {m.partition("/")[0] for m in models if isinstance(m, str) and "/" in m}
    enabled = extra.get("enabled_providers")
    if isinstance(enabled, list):
        named |= {p for p in enabled if isinstance(p, str)}
    configured = extra.get("provider")
    defined: set[str] = set()
    if isinstance(configured, dict):
        for name, section in configured.items():
            named.add(name)
            if isinstance(section, dict) and section.get("models"):
                defined.add(name)
    return named, named - defined


def cached_catalog(env: Mapping[str, str]) -> Path:
    """Where OpenCode keeps the catalog it downloads (``$XDG_CACHE_HOME/opencode``)."""
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "opencode" / CATALOG_FILE


def _source(env: Mapping[str, str]) -> tuple[Path, dict[str, Any]] | None:
    for path in (env.get(MODELS_PATH_ENV), cached_catalog(env)):
        if not path:
            continue
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return Path(path), data
    return None


def trimmed_catalog(config: Config, folder: Path, env: Mapping[str, str]) -> Path | None:
    """Write the instances' catalog into ``folder`` and return its path, or None when they
    should load OpenCode's full one (``models_catalog = "full"``, or no catalog at hand
    holds every provider the pool uses)."""
    if config.opencode.models_catalog == "full":
        return None
    named, needed = used_providers(config)
    found = _source(env) if named else None
    missing = needed - set(found[1] if found else {})
    if missing:
        names = ", ".join(sorted(missing))
        why = (
            f"{found[0]} lacks {names}"
            if found
            else f"no catalog to take {names} from (set {MODELS_PATH_ENV}, or run opencode "
            "once to cache one)"
        )
        log.warning("instances load OpenCode's full models catalog, slower per directory: %s", why)
        return None
    data = found[1] if found else {}
    catalog = {p: data[p] for p in sorted(named) if p in data}
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / CATALOG_FILE
    write_private(path, json.dumps(catalog, separators=(",", ":")))
    return path


def instance_catalog_env(config: Config, folder: Path, env: dict[str, str]) -> None:
    """Point ``env`` (an instance's) at the trimmed catalog, when there is one."""
    path = trimmed_catalog(config, folder, env)
    if path is not None:
        env[MODELS_PATH_ENV] = os.fspath(path)
