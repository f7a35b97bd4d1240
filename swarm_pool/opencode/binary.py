"""Finding the ``opencode`` binary the pool runs, and which OpenCode line it is.

Room: opencode.

Lookup order: config ``opencode.binary``, then ``$SWARM_POOL_OPENCODE``, then the project's
own pinned install of the line ``opencode.version`` names (``.tools/opencode/...`` for
1.18, ``.tools/opencode2/opencode`` for 2.x, next to the swarm-pool source checkout, made
by ``scripts/setup``), then ``PATH``. An explicit choice (config or env) that does not
point to an executable is an error rather than a silent fallback, so a typo is never
masked by some other opencode on ``PATH``. A binary's line comes from its own
``--version`` (``1.18.33``, ``opencode v2.1.2``), never from which HTTP paths answer: a
2.x server answers the v1 paths with its web UI's HTML and status 200. ``check_binary``
refuses a binary of neither line, or of another line than ``opencode.version`` asks for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from swarm_pool.config import Config
from swarm_pool.errors import BinaryNotFoundError, OpenCodeVersionError


class OpenCodeLine(StrEnum):
    """The two OpenCode lines the pool runs; the value is what ``opencode.version`` says."""

    V1 = "1.18"  # npm opencode-ai, the v1 server API (/session, /event)
    V2 = "2"  # npm @opencode/cli, the /api/* server API


PINNED: dict[OpenCodeLine, str] = {OpenCodeLine.V1: "1.18.33", OpenCodeLine.V2: "2.1.2"}
NPM_PACKAGE: dict[OpenCodeLine, str] = {
    OpenCodeLine.V1: "opencode-ai",
    OpenCodeLine.V2: "@opencode/cli",
}
ENV_VAR = "SWARM_POOL_OPENCODE"
# Relative to the swarm-pool source checkout (the folder holding pyproject.toml).
PROJECT_INSTALLS: dict[OpenCodeLine, Path] = {
    OpenCodeLine.V1: Path(".tools/opencode/node_modules/opencode-linux-x64/bin/opencode"),
    OpenCodeLine.V2: Path(".tools/opencode2/opencode"),
}
_VERSION = re.compile(r"^(?:opencode\s+)?v?(\d+)\.(\d+)\.(\d+)\S*$")
VERSION_TIMEOUT_S = 30.0


def install_hint(line: OpenCodeLine) -> str:
    return (
        "run scripts/setup in the swarm-pool checkout, or "
        f"`npm install {NPM_PACKAGE[line]}@{PINNED[line]}` and set {ENV_VAR} or "
        "opencode.binary to the binary"
    )


@dataclass(frozen=True)
class BinaryInfo:
    """A binary as its ``--version`` describes it."""

    path: Path
    version: str
    line: OpenCodeLine


def line_of(version_output: str) -> tuple[str, OpenCodeLine | None]:
    """The version a ``--version`` output names, and its line (None: neither line)."""
    text = version_output.strip()
    m = _VERSION.match(text.splitlines()[-1].strip() if text else "")
    if m is None:
        return text[:60], None
    major, minor = int(m.group(1)), int(m.group(2))
    version = ".".join(m.group(i) for i in (1, 2, 3))
    if major == 1 and minor == 18:
        return version, OpenCodeLine.V1
    if major == 2:
        return version, OpenCodeLine.V2
    return version, None


def binary_info(path: Path) -> BinaryInfo:
    """Ask ``path --version``; OpenCodeVersionError unless it is 1.18 or 2.x."""
    try:
        out = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OpenCodeVersionError(f"{path} --version failed: {e}") from e
    if out.returncode != 0:
        raise OpenCodeVersionError(f"{path} --version exited with status {out.returncode}")
    version, line = line_of(out.stdout)
    if line is None:
        raise OpenCodeVersionError(
            f"{path} is opencode {version or 'of no version'!r}; swarm-pool runs OpenCode "
            f"1.18 ({PINNED[OpenCodeLine.V1]}) or 2.x ({PINNED[OpenCodeLine.V2]})"
        )
    return BinaryInfo(path=path, version=version, line=line)


def check_binary(config: Config) -> BinaryInfo:
    """The binary ``find_opencode`` chooses, of the line ``opencode.version`` asks for."""
    info = binary_info(find_opencode(config))
    wanted = OpenCodeLine(config.opencode.version)
    if info.line is not wanted:
        raise OpenCodeVersionError(
            f"{info.path} is opencode {info.version} (line {info.line.value}), but "
            f"opencode.version is {wanted.value!r}; set opencode.version = "
            f"{info.line.value!r} or point opencode.binary at a {wanted.value} binary"
        )
    return info


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
    line = OpenCodeLine((config or Config()).opencode.version)
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
            f"opencode binary from {where} not found or not executable: {value} "
            f"({install_hint(line)})"
        )
    pinned = (root or source_root()) / PROJECT_INSTALLS[line]
    if _executable(pinned):
        return pinned
    found = shutil.which("opencode", path=search_path)
    if found:
        return Path(found).resolve()
    raise BinaryNotFoundError(f"opencode binary not found; {install_hint(line)}")
