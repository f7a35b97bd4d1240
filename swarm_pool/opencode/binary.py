"""Finding the ``opencode`` binary the pool runs.

Room: opencode.

Lookup order: config ``opencode.binary``, then ``$SWARM_POOL_OPENCODE``, then the project's
own pinned install (``.tools/opencode/...`` next to the swarm-pool source checkout, made by
``scripts/setup``), then ``PATH``. An explicit choice (config or env) that does not point
to an executable is an error rather than a silent fallback, so a typo is never masked by
some other opencode on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from swarm_pool.config import Config
from swarm_pool.errors import BinaryNotFoundError

PINNED_VERSION = "1.18.33"
ENV_VAR = "SWARM_POOL_OPENCODE"
# Relative to the swarm-pool source checkout (the folder holding pyproject.toml).
PROJECT_INSTALL = Path(".tools/opencode/node_modules/opencode-linux-x64/bin/opencode")
INSTALL_HINT = (
    f"run scripts/setup in the swarm-pool checkout, or `npm install opencode-ai@{PINNED_VERSION}`"
    f" and set {ENV_VAR} or opencode.binary to the binary"
)


def source_root() -> Path:
    """The swarm-pool source checkout (parent of the ``swarm_pool`` package)."""
    return Path(__file__).resolve().parent.parent.parent


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_opencode(
    config: Config | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    root: Path | None = None,
    search_path: str | None = None,
) -> Path:
    """The opencode binary to run; BinaryNotFoundError (saying how to install it) if none."""
    env = os.environ if environ is None else environ
    explicit = [
        ("config opencode.binary", config.opencode.binary if config else ""),
        (f"${ENV_VAR}", env.get(ENV_VAR, "")),
    ]
    for where, value in explicit:
        if not value:
            continue
        path = Path(value).expanduser()
        if _executable(path):
            return path.resolve()
        # A bare name in the config means "look it up on PATH".
        if os.sep not in value:
            found = shutil.which(value, path=search_path)
            if found:
                return Path(found).resolve()
        raise BinaryNotFoundError(
            f"opencode binary from {where} not found or not executable: {value} ({INSTALL_HINT})"
        )
    pinned = (root or source_root()) / PROJECT_INSTALL
    if _executable(pinned):
        return pinned
    found = shutil.which("opencode", path=search_path)
    if found:
        return Path(found).resolve()
    raise BinaryNotFoundError(f"opencode binary not found; {INSTALL_HINT}")
