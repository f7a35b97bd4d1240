#!/usr/bin/env python3
"""Benchmarks: ``scripts/bench.py {pool,store,workers,gateway,sandbox} [--json] [--quick]``
(``store --backend sqlite|postgresql|both``; ``workers --variants legacy,lean [--workers 8,16]
[--sizes 1,2,4] [--waves 3] [--repeats 2]`` compares OpenCode/MCP/worktree set-ups side by
side, in waves, ``benches/variants.py``).

Each suite lives in ``scripts/benches/<name>.py`` and exposes ``run(args) -> dict``.
Results are compared side by side within one run, as ratios, never against constants.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("pool", "store", "workers", "gateway", "sandbox")


def machine() -> dict[str, Any]:
    return {
        "cpu_count": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="store suite: which store backends to measure (PostgreSQL: a throw-away server)",
    )
    parser.add_argument(
        "--no-attach",
        action="store_true",
        help="gateway suite: skip the slow 8 `opencode run --attach` part",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="workers suite: compare these variants side by side (e.g. legacy,lean) "
        "instead of the ADR figures",
    )
    parser.add_argument("--sizes", default="1,2", help="workers --variants: pool sizes K")
    parser.add_argument("--repeats", type=int, default=2, help="workers --variants: repeats")
    parser.add_argument(
        "--workers", default="8", help="workers --variants: workers per wave N (e.g. 8,16)"
    )
    parser.add_argument(
        "--waves",
        type=int,
        default=3,
        help="workers --variants: waves per pool (cold, then warm)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    suite = "variants" if args.suite == "workers" and args.variants else args.suite
    module = importlib.import_module(f"benches.{suite}")
    result = {"suite": args.suite, "machine": machine(), "results": module.run(args)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result["results"].items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
