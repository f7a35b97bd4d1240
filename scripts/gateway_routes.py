#!/usr/bin/env python3
"""Regenerate swarm_pool/gateway/routes.json from OpenCode's OpenAPI description.

Usage: scripts/gateway_routes.py SPEC.json  (an instance's own ``GET /doc``, or the
reference copy of the pinned version). The gateway classifies these routes by rule
(swarm_pool/gateway/table.py), so a new OpenCode version means regenerating this file,
not editing a hand-written list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "swarm_pool" / "gateway" / "routes.json"
METHODS = ("get", "post", "put", "patch", "delete")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    routes = []
    for path, ops in spec["paths"].items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            params = sorted(
                p["name"] for p in op.get("parameters", []) if p.get("in") in ("query", "path")
            )
            routes.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "operation": op.get("operationId", ""),
                    "params": params,
                }
            )
    lines = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in routes)
    OUT.write_text(f'{{"source": {json.dumps(Path(argv[1]).name)},\n "routes": [\n{lines}\n]}}\n')
    print(f"{len(routes)} routes -> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
