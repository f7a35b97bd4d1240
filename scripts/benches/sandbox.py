"""Cost of one bash tool command through swarm-pool's shell: plain bash, the wrapper that
drops the secrets, and the wrapper that boxes the command in bubblewrap.

Each variant runs ``<shell> -c true`` (exactly how OpenCode 1.18.33 calls its shell) in
a real worktree of a scratch repository; the variants are interleaved round by round so
machine load hits them alike. Reported: median and p90 wall ms, and ratios to plain bash.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from swarm_pool.opencode.shell import find_bash, install_shell


def _time(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def run(args: Any) -> dict[str, Any]:
    rounds = 10 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="swarm-pool-bench-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        git = ["git", "-C", str(root)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        (root / "a.txt").write_text("a\n")
        subprocess.run([*git, "add", "a.txt"], check=True)
        ident = ["-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run([*git, *ident, "commit", "-qm", "init"], check=True)
        wt = root / ".swarm" / "worktrees" / "bd-1"
        subprocess.run([*git, "worktree", "add", "-q", "-b", "swarm/bd-1", str(wt)], check=True)
        plain = [find_bash(), "-c", "true"]
        wrapper_dir = Path(tmp) / "plain"
        wrapper = install_shell(wrapper_dir, sandbox=False)
        boxed = install_shell(root, sandbox=True)
        variants = {
            "bash": plain,
            "wrapper": [str(wrapper), "-c", "true"],
            "bwrap": [str(boxed), "-c", "true"],
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for argv in variants.values():
            _time(argv, wt)  # warm the page cache
        for _ in range(rounds):
            for name, argv in variants.items():
                times[name].append(_time(argv, wt))
    out: dict[str, Any] = {"rounds": rounds}
    base = statistics.median(times["bash"])
    for name, samples in times.items():
        samples.sort()
        med = statistics.median(samples)
        out[f"{name}_ms_p50"] = round(med, 2)
        out[f"{name}_ms_p90"] = round(samples[int(0.9 * (len(samples) - 1))], 2)
        out[f"{name}_vs_bash"] = round(med / base, 2)
    return out
