"""What ``scripts/setup`` installs is what the project pins: requirements.lock covers
pyproject.toml, and the OpenCode versions match ``opencode.binary.PINNED``.

Every dependency pyproject.toml names (the dev extra too) is pinned in the lock with ``==``
and at least one hash, at a version its specifier allows, and the installed version is
the pinned one. So adding a dependency without regenerating the lock fails here, not on a
clean clone next year.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from swarm_pool import OPENCODE_VERSION
from swarm_pool.opencode.binary import PINNED, OpenCodeLine

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def _locked() -> dict[str, tuple[str, int]]:
    """Name -> (version, number of hashes) for every pin in the lock."""
    pins: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = _PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            pins[current] = (m.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif not line.startswith(" "):
            current = None
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_every_declared_dependency_is_pinned_with_hashes() -> None:
    pins = _locked()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: regenerate it"
        version, hashes = pins[name]
        assert hashes >= 1, f"{req.name} has no hash in requirements.lock"
        assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"


def test_the_installed_packages_are_the_locked_ones() -> None:
    for name, (version, _) in _locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a pin for another platform or Python (its marker is false here)
        assert installed == version, f"{name}: installed {installed}, locked {version}"


def test_setup_installs_the_versions_the_package_pins() -> None:
    # scripts/setup names the npm versions in shell; binary.PINNED is what the pool
    # expects of them. Two places, so this ties them together.
    setup = (ROOT / "scripts/setup").read_text()
    found = dict(re.findall(r'^(OPENCODE2?_VERSION)="([^"]+)"$', setup, re.M))
    assert found == {
        "OPENCODE_VERSION": PINNED[OpenCodeLine.V1],
        "OPENCODE2_VERSION": PINNED[OpenCodeLine.V2],
    }
    assert PINNED[OpenCodeLine.V1] == OPENCODE_VERSION
