"""Real OpenCode agents using our MCP tools: the opencode binary, the scripted model, and
``python -m swarm_pool.mcp_server`` started by OpenCode in each session's worktree.

Two opencode instances and one scripted model are shared by the module, on one project
(git repo + store + epic); each test uses its own beads and worktrees. The instances get
the pool's own per-instance config (``swarm_pool.opencode.config``), whose MCP entry
points the servers at the project's store through ``SWARM_POOL_PROJECT``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.config import Config
from swarm_pool.opencode.config import opencode_config
from swarm_pool.protocol import MCP_SERVER_NAME, Contract, agent_tool_name, render_contract
from swarm_pool.store.events import BeadSpec
from tests.opencode_fixture import (
    ModelServerProcess,
    OpenCodeServer,
    start_model_server,
    start_opencode,
)
from tests.support import wait_for
from tests.test_mcp_server import Project, make_project

# Generous: the machine is shared with other opencode-heavy test runs.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]
SESSION_TIMEOUT_S = 180.0


@dataclass
class Rig:
    project: Project
    model: ModelServerProcess
    instances: list[OpenCodeServer]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("mcp-e2e")
    # The first two beads own the same file (for the conflict test); the third is the
    # plain default-script worker.
    project = make_project(
        base / "proj",
        [
            BeadSpec(title="holder", files=["src/shared.py"]),
            BeadSpec(title="contender", files=["src/shared.py"]),
            BeadSpec(title="writer", files=["src/a.py", "docs/a.md"]),
        ],
    )
    started: list[OpenCodeServer | ModelServerProcess] = []
    try:
        model = start_model_server(base / "model", shared=True)
        started.append(model)
        # The pool's own per-instance config: scripted model, our MCP server, permissions.
        config = opencode_config(Config(), project_root=project.root, model_url=model.url)
        instances = []
        for name in ("oc-a", "oc-b"):
            inst = start_opencode(base / name, config, shared=True)
            started.append(inst)
            instances.append(inst)
        yield Rig(project=project, model=model, instances=instances)
    finally:
        for proc in reversed(started):
            proc.stop()


def _prompt(project: Project, bead: str, files: list[str], script: Any = None) -> str:
    contract = Contract(
        bead_id=bead,
        epic_id=project.epic_id,
        title=f"work on {bead}",
        worktree=str(project.worktree(bead)),
        files=files,
        script=script,
    )
    return f"You are a swarm worker for {bead}.\n\n{render_contract(contract)}\n"


def _run_session(
    inst: OpenCodeServer, worktree: Path, prompt: str
) -> tuple[str, list[dict[str, Any]]]:
    """Create a session in ``worktree``, prompt it, wait until idle; its messages."""
    with inst.client() as client:
        session = client.create_session(str(worktree), title="mcp e2e")
        sid = session["id"]
        client.prompt_async(sid, prompt, directory=str(worktree))

        def finished() -> list[dict[str, Any]] | None:
            if sid in client.session_status(directory=str(worktree)):
                return None
            msgs = client.messages(sid, directory=str(worktree))
            last = msgs[-1] if msgs else None
            if last is None or last.get("info", {}).get("role") != "assistant":
                return None
            info = last.get("info", {})
            # A step that ended in tool calls is followed by another one.
            if not info.get("time", {}).get("completed") or info.get("finish") == "tool-calls":
                return None
            return msgs

        msgs = wait_for(finished, timeout=SESSION_TIMEOUT_S, interval=0.25)
        return sid, msgs


def _tool_parts(msgs: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    name = agent_tool_name(tool)
    return [
        p
        for m in msgs
        for p in m.get("parts", [])
        if p.get("type") == "tool" and p.get("tool") == name
    ]


def test_default_script_session_records_the_worker_flow(rig: Rig) -> None:
    project = rig.project
    bead = project.beads[2]
    wt = project.worktree(bead)
    inst = rig.instances[0]
    sid, msgs = _run_session(inst, wt, _prompt(project, bead, ["src/a.py", "docs/a.md"]))

    with inst.client() as client:
        status = client.mcp_status(directory=str(wt))
    assert status[MCP_SERVER_NAME]["status"] == "connected", status

    complete = _tool_parts(msgs, "swarm_complete")
    assert complete and complete[0]["state"]["status"] == "completed", complete
    assert (wt / "src" / "a.py").is_file()
    assert (wt / "docs" / "a.md").is_file()
    assert "written by the swarm-pool scripted model" in (wt / "src" / "a.py").read_text()

    with project.store() as store:
        events = store.read(bead_id=bead)
        types = [e.type for e in events]
        for wanted in ("file_reserved", "worker_progress", "worker_completed"):
            assert wanted in types, types
        reg = [e.to_dict() for e in store.read(types=["agent_registered"])]
        assert any(r["bead_id"] == bead and r["agent"] == f"worker-{bead}" for r in reg), reg
        order = [t for t in types if t in ("file_reserved", "worker_progress", "worker_completed")]
        assert order == ["file_reserved", "file_reserved", "worker_progress", "worker_completed"]
        done = store.read(types=["worker_completed"], bead_id=bead)[-1].to_dict()
        assert done["status"] == "success", done
        assert done["files_touched"] == ["docs/a.md", "src/a.py"]
        assert done["verification"]["changed_files"] == ["docs/a.md", "src/a.py"]
        assert done["violations"] == [], done["violations"]
        assert store.reservations.active(f"worker-{bead}") == []
        assert store.hive.get_cell(bead).status == "closed"
    assert sid


def test_overlapping_reservations_on_two_instances_name_the_holder(rig: Rig) -> None:
    project = rig.project
    holder, contender = project.beads[0], project.beads[1]
    hold_script = [
        {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}},
        {"tool": "swarmmail_reserve", "args": {"paths": "{files}", "reason": "holding"}},
    ]
    wt_h, wt_c = project.worktree(holder), project.worktree(contender)
    _, msgs_h = _run_session(
        rig.instances[0], wt_h, _prompt(project, holder, ["src/shared.py"], hold_script)
    )
    granted = _tool_parts(msgs_h, "swarmmail_reserve")
    assert granted and '"granted": true' in granted[0]["state"]["output"], granted

    _, msgs_c = _run_session(
        rig.instances[1], wt_c, _prompt(project, contender, ["src/shared.py"], hold_script)
    )
    denied = _tool_parts(msgs_c, "swarmmail_reserve")
    assert denied, msgs_c
    output = denied[0]["state"]["output"]
    assert '"granted": false' in output, output
    assert f"worker-{holder}" in output, output

    with project.store() as store:
        held = store.reservations.active()
        assert [(r.holder, r.pattern) for r in held] == [(f"worker-{holder}", "src/shared.py")]
        conflicts = [e.to_dict() for e in store.read(types=["file_conflict"])]
        assert conflicts and conflicts[-1]["holder"] == f"worker-{contender}"
        store.reservations.release(f"worker-{holder}")

    # The two MCP servers ran in two different opencode instances.
    for inst, wt in ((rig.instances[0], wt_h), (rig.instances[1], wt_c)):
        with inst.client() as client:
            assert client.mcp_status(directory=str(wt))[MCP_SERVER_NAME]["status"] == "connected"
