"""A gateway port already in use (your own ``opencode serve`` on 4096, say) is one clear
error at ``start``, before any instance starts, and nothing is left running."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.pool_cli import NO_MODEL_ENV, cli, make_project
from tests.test_pool_bad_input import assert_clean_failure


def test_a_taken_gateway_port_fails_start_with_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (project / ".swarm").mkdir()
        (project / ".swarm" / "pool.toml").write_text(f"[gateway]\nport = {port}\n")
        out = cli("start", "-n", "1", "--gateway", project=project, env=NO_MODEL_ENV)
        assert_clean_failure(out, project, f"the gateway's port {port} on 127.0.0.1 is taken")
        assert "opencode serve" in out.stderr and "[gateway] port" in out.stderr
        # The port's owner was left alone: it still accepts connections.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
