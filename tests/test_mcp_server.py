"""The MCP server driven for real: the official ``mcp`` stdio client spawns
``python -m swarm_pool.mcp_server`` in a worktree of a tmp project (real git, real SQLite
store), lists the tools, makes good and bad calls, and checks the store afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from swarm_pool.paths import ProjectPaths
from swarm_pool.protocol import COORDINATOR_TOOLS, WORKER_TOOLS
from swarm_pool.store import Store, open_project_store
from swarm_pool.store.events import BeadSpec
from tests.support import SESSION_TAG_ENV, TEST_TAG_ENV, git, init_repo

_PASS_ENV = (
    TEST_TAG_ENV,
    SESSION_TAG_ENV,
    "SWARM_POOL_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
)


@dataclass
class Project:
    root: Path
    epic_id: str
    beads: list[str]

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(self.root)

    def store(self) -> Store:
        return open_project_store(self.paths)

    def worktree(self, bead: str) -> Path:
        path = self.paths.worktrees_dir / bead
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            git(self.root, "worktree", "add", "-q", "-b", f"swarm/{bead}", str(path))
        return path

    def last_seq(self) -> int:
        with self.store() as store:
            return store.last_seq()


def make_project(root: Path, subtasks: list[BeadSpec] | None = None) -> Project:
    init_repo(root, {"README.md": "demo\n", "src/keep.py": "x = 1\n"})
    specs = subtasks or [
        BeadSpec(title="a", files=["src/a.py"]),
        BeadSpec(title="b", files=["src/b/**", "docs/b.md"]),
        BeadSpec(title="c", files=["src/a.py"]),
    ]
    with open_project_store(ProjectPaths(root)) as store:
        epic = store.hive.create_epic("demo epic", specs)
    return Project(root=root, epic_id=epic.id, beads=[c.id for c in epic.cells])


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


def server_env(project_root: Path, **extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env["SWARM_POOL_PROJECT"] = str(project_root)
    env["SWARM_POOL_MCP_LOG"] = "INFO"
    env.update(extra)
    return env


@asynccontextmanager
async def mcp_session(
    cwd: Path,
    project_root: Path,
    *,
    errlog: Path | None = None,
    args: tuple[str, ...] = ("-m", "swarm_pool.mcp_server"),
    **env: str,
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=list(args), cwd=cwd, env=server_env(project_root, **env)
    )
    log_path = errlog or (cwd.parent / f".mcp-{cwd.name}.log")
    with log_path.open("a") as log:
        async with stdio_client(params, errlog=log) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """``(is_error, data)``: the structured result, or the error text."""
    result = await session.call_tool(name, args)
    text = result.content[0].text  # type: ignore[union-attr]
    if result.is_error:
        return True, text
    return False, result.structured_content


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn)


# --- tool list ------------------------------------------------------------------------


def test_tools_and_input_schemas(project: Project) -> None:
    wt = project.worktree(project.beads[0])

    async def main() -> None:
        async with mcp_session(wt, project.root) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(WORKER_TOOLS) <= set(tools)
            assert set(tools) <= set(WORKER_TOOLS) | set(COORDINATOR_TOOLS)
            required = {n: set(t.input_schema.get("required", [])) for n, t in tools.items()}
            props = {n: set(t.input_schema["properties"]) for n, t in tools.items()}
            assert required["swarmmail_reserve"] == {"paths"}
            assert props["swarmmail_reserve"] == {"paths", "exclusive", "ttl_seconds", "reason"}
            assert required["swarmmail_release"] == set()
            assert props["swarmmail_release"] == {"paths", "reservation_ids"}
            assert required["swarmmail_send"] == {"to", "subject", "body"}
            assert {"importance", "thread_id", "ack_required"} <= props["swarmmail_send"]
            assert required["swarmmail_inbox"] == set()
            assert props["swarmmail_inbox"] == {"unread_only", "limit"}
            assert required["swarmmail_read_message"] == {"message_id"}
            assert required["swarmmail_ack"] == {"message_id"}
            assert required["swarmmail_init"] == set()
            assert required["swarm_progress"] == {"bead_id", "progress_percent"}
            assert props["swarm_progress"] == {
                "bead_id",
                "progress_percent",
                "message",
                "files_touched",
                "attempt",
            }
            assert required["swarm_complete"] == {"bead_id", "summary", "files_touched"}
            pct = tools["swarm_progress"].input_schema["properties"]["progress_percent"]
            assert (pct["minimum"], pct["maximum"]) == (0, 100)
            for tool in tools.values():
                assert tool.description
                assert tool.input_schema["type"] == "object"
                assert tool.input_schema["additionalProperties"] is False

    run_async(main)


# --- good calls -----------------------------------------------------------------------


def test_worker_flow_good_calls(project: Project) -> None:
    bead, _, bead_c = project.beads
    wt = project.worktree(bead)
    me = f"worker-{bead}"
    with project.store() as store:
        first = store.mail.send("coordinator", [me], "hello", "please start", ack_required=True)

    async def main() -> None:
        async with mcp_session(
            wt, project.root, SWARM_POOL_WORKERS__CHECK_COMMAND="test -f src/a.py && echo checked"
        ) as s:
            err, data = await call(s, "swarmmail_init", {"task_description": "do a"})
            assert not err, data
            assert data["agent_name"] == me
            assert (data["bead_id"], data["epic_id"]) == (bead, project.epic_id)
            assert data["owned_files"] == ["src/a.py"]

            err, data = await call(
                s, "swarmmail_reserve", {"paths": ["src/a.py"], "reason": "edit a"}
            )
            assert not err and data["granted"], data
            assert [r["pattern"] for r in data["reservations"]] == ["src/a.py"]

            # An absolute path inside the worktree means the same project file.
            err, data = await call(s, "swarmmail_reserve", {"paths": [str(wt / "notes.md")]})
            assert not err and data["granted"], data
            extra_id = data["reservations"][0]["id"]
            assert data["reservations"][0]["pattern"] == "notes.md"
            err, data = await call(s, "swarmmail_release", {"reservation_ids": [extra_id]})
            assert not err and [r["pattern"] for r in data["released"]] == ["notes.md"]

            err, data = await call(s, "swarmmail_inbox", {"unread_only": True})
            assert not err and data["count"] == 1
            assert data["messages"][0]["subject"] == "hello"
            assert data["messages"][0]["body_preview"] == "please start"
            err, data = await call(s, "swarmmail_read_message", {"message_id": first.id})
            assert not err and data["message"]["body"] == "please start"
            err, data = await call(s, "swarmmail_ack", {"message_id": first.id})
            assert not err and data["message"]["acked_at"]
            err, data = await call(s, "swarmmail_inbox", {"unread_only": True})
            assert not err and data["count"] == 0

            err, data = await call(
                s,
                "swarmmail_send",
                {
                    "to": "coordinator",
                    "subject": "status",
                    "body": "on it",
                    "importance": "high",
                    "thread_id": "t-1",
                },
            )
            assert not err and data["sent"], data

            err, data = await call(
                s,
                "swarm_progress",
                {
                    "bead_id": bead,
                    "progress_percent": 50,
                    "message": "half",
                    "files_touched": ["src/a.py"],
                },
            )
            assert not err and data["recorded"], data

            (wt / "src" / "a.py").write_text("a = 1\n")
            err, data = await call(
                s,
                "swarm_complete",
                {"bead_id": bead, "summary": "wrote a", "files_touched": ["src/a.py"]},
            )
            assert not err, data
            assert data["status"] == "success" and data["accepted"]
            assert data["violations"] == []
            assert data["released"] == ["src/a.py"]
            assert data["check"]["exit_code"] == 0
            assert "checked" in data["check"]["output_tail"]

    run_async(main)

    with project.store() as store:
        types = [e.type for e in store.read()]
        for t in (
            "agent_registered",
            "file_reserved",
            "file_released",
            "message_read",
            "message_acked",
            "message_sent",
            "worker_progress",
            "worker_completed",
        ):
            assert t in types, t
        reg = store.read(types=["agent_registered"])[-1].to_dict()
        assert (reg["agent"], reg["bead_id"], reg["epic_id"]) == (me, bead, project.epic_id)
        assert reg["worktree"] == str(wt)
        prog = store.read(types=["worker_progress"])[-1].to_dict()
        assert (prog["progress_percent"], prog["message"]) == (50, "half")
        done = store.read(types=["worker_completed"])[-1].to_dict()
        assert done["status"] == "success" and done["bead_id"] == bead
        assert done["files_touched"] == ["src/a.py"]
        assert done["verification"]["changed_files"] == ["src/a.py"]
        assert done["verification"]["check"]["passed"] is True
        assert store.reservations.active(me) == []
        assert store.hive.get_cell(bead).status == "closed"
        assert store.hive.get_cell(bead_c).status == "open"
        sent = [m for m in store.mail.inbox("coordinator") if m.subject == "status"]
        assert sent and sent[0].sender == me and sent[0].importance == "high"
        worker = store.workers.get(bead)
        assert worker is not None and worker.status == "completed"


def test_overlapping_reservation_is_denied_with_holder_name(project: Project) -> None:
    bead_a, _, bead_c = project.beads
    wt_a, wt_c = project.worktree(bead_a), project.worktree(bead_c)

    async def main() -> None:
        async with mcp_session(wt_a, project.root) as sa, mcp_session(wt_c, project.root) as sc:
            err, data = await call(sa, "swarmmail_reserve", {"paths": ["src/a.py"]})
            assert not err and data["granted"]
            before = project.last_seq()
            err, data = await call(sc, "swarmmail_reserve", {"paths": ["src/**", "docs/c.md"]})
            assert not err, data
            assert data["granted"] is False
            assert data["holders"] == [f"worker-{bead_a}"]
            assert data["conflicts"][0]["holder"] == f"worker-{bead_a}"
            assert f"held by worker-{bead_a}" in data["message"]
            # All-or-nothing: docs/c.md was not reserved either.
            with project.store() as store:
                assert store.reservations.active(f"worker-{bead_c}") == []
                new = [e.type for e in store.read(after_seq=before)]
                assert "file_reserved" not in new

    run_async(main)


def test_concurrent_reserves_from_two_processes_grant_one(project: Project) -> None:
    bead_a, _, bead_c = project.beads
    wt_a, wt_c = project.worktree(bead_a), project.worktree(bead_c)
    results: dict[str, Any] = {}

    async def main() -> None:
        async with mcp_session(wt_a, project.root) as sa, mcp_session(wt_c, project.root) as sc:

            async def grab(name: str, s: ClientSession) -> None:
                results[name] = await call(s, "swarmmail_reserve", {"paths": ["src/a.py"]})

            async with anyio.create_task_group() as tg:
                tg.start_soon(grab, "a", sa)
                tg.start_soon(grab, "c", sc)

    run_async(main)
    granted = [name for name, (err, data) in results.items() if not err and data["granted"]]
    assert len(granted) == 1, results
    with project.store() as store:
        assert len(store.reservations.active()) == 1


# --- verification ---------------------------------------------------------------------


def test_complete_reports_files_outside_owned_patterns(project: Project) -> None:
    bead = project.beads[1]  # owns src/b/** and docs/b.md
    wt = project.worktree(bead)
    (wt / "src" / "b").mkdir(parents=True)
    (wt / "src" / "b" / "x.py").write_text("x\n")
    (wt / "src" / "keep.py").write_text("changed\n")  # tracked, outside the contract
    (wt / "stray.txt").write_text("stray\n")  # untracked, outside, and not reported
    git(wt, "add", "src/b/x.py")
    git(wt, "commit", "-q", "-m", "b")

    async def main() -> None:
        async with mcp_session(wt, project.root) as s:
            err, data = await call(
                s,
                "swarm_complete",
                {
                    "bead_id": bead,
                    "summary": "did b",
                    "files_touched": ["src/b/x.py", "src/keep.py", "docs/b.md"],
                },
            )
            assert not err, data
            assert data["status"] == "success"
            assert data["changed_files"] == ["src/b/x.py", "src/keep.py", "stray.txt"]

    run_async(main)
    with project.store() as store:
        done = store.read(types=["worker_completed"])[-1].to_dict()
        assert set(done["violations"]) == {
            "changed outside the owned patterns: src/keep.py",
            "changed outside the owned patterns: stray.txt",
            "changed but not in files_touched: stray.txt",
            "in files_touched but not changed: docs/b.md",
        }
        assert done["verification"]["outside_owned"] == ["src/keep.py", "stray.txt"]
        assert done["verification"]["check"] is None
        assert store.hive.get_cell(bead).status == "closed"


def test_complete_with_failing_check_is_failed_and_blocks_the_cell(project: Project) -> None:
    bead = project.beads[0]
    wt = project.worktree(bead)
    (wt / "src" / "a.py").write_text("a\n")

    async def main() -> None:
        async with mcp_session(
            wt, project.root, SWARM_POOL_WORKERS__CHECK_COMMAND="echo 'tests: 1 failed'; exit 3"
        ) as s:
            err, data = await call(s, "swarmmail_reserve", {"paths": ["src/a.py"]})
            assert not err and data["granted"]
            err, data = await call(
                s,
                "swarm_complete",
                {"bead_id": bead, "summary": "a", "files_touched": ["src/a.py"]},
            )
            assert not err, data
            assert data["status"] == "failed" and not data["accepted"]
            assert data["cell_status"] == "blocked"

    run_async(main)
    with project.store() as store:
        done = store.read(types=["worker_completed"])[-1].to_dict()
        assert done["status"] == "failed"
        assert "exit code 3" in done["error"]
        check = done["verification"]["check"]
        assert check["exit_code"] == 3 and check["passed"] is False
        assert "tests: 1 failed" in check["output_tail"]
        assert store.reservations.active() == []
        assert store.hive.get_cell(bead).status == "blocked"
        worker = store.workers.get(bead)
        assert worker is not None and worker.status == "failed"


def test_check_command_timeout_is_recorded(project: Project) -> None:
    bead = project.beads[0]
    wt = project.worktree(bead)

    async def main() -> None:
        async with mcp_session(
            wt,
            project.root,
            SWARM_POOL_WORKERS__CHECK_COMMAND="sleep 30",
            SWARM_POOL_WORKERS__CHECK_TIMEOUT_S="0.5",
        ) as s:
            err, data = await call(
                s, "swarm_complete", {"bead_id": bead, "summary": "a", "files_touched": []}
            )
            assert not err, data
            assert data["status"] == "failed"
            assert data["check"]["timed_out"] is True
            assert data["error"] == "check command timed out"

    run_async(main)


# --- bad calls ------------------------------------------------------------------------

# (tool, arguments, expected text in the error)
BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("swarmmail_reserve", {"paths": ["../x"]}, "escapes the project"),
    ("swarmmail_reserve", {"paths": ["/etc/passwd"]}, "escapes the project"),
    ("swarmmail_reserve", {"paths": []}, "paths"),
    ("swarmmail_reserve", {}, "missing required argument: paths"),
    ("swarmmail_reserve", {"paths": ["src/a.py"], "ttl_seconds": -5}, "ttl_seconds must be"),
    ("swarmmail_reserve", {"paths": ["src/a.py"], "force": True}, "unknown argument: force"),
    ("swarmmail_reserve", {"paths": ["  "]}, "empty"),
    ("swarmmail_release", {"reservation_ids": ["res-nope"]}, "not held by"),
    ("swarmmail_release", {"paths": ["src/zzz.py"]}, "not reserved by"),
    (
        "swarm_progress",
        {"bead_id": "{bead}", "progress_percent": 150},
        "progress_percent must be between 0 and 100",
    ),
    (
        "swarm_progress",
        {"bead_id": "bd-zzzzzz.9", "progress_percent": 10},
        "bd-zzzzzz.9 does not exist",
    ),
    ("swarm_progress", {"bead_id": "{other}", "progress_percent": 10}, "not for bead"),
    ("swarm_progress", {"bead_id": "{bead}", "progress_percent": "lots"}, "progress_percent"),
    (
        "swarm_progress",
        {"bead_id": "{bead}", "progress_percent": 5, "files_touched": ["../../x"]},
        "escapes the project",
    ),
    (
        "swarm_complete",
        {"bead_id": "{bead}", "summary": "x"},
        "missing required argument: files_touched",
    ),
    ("swarm_complete", {"bead_id": "{bead}", "summary": "", "files_touched": []}, "summary"),
    (
        "swarm_complete",
        {"bead_id": "bd-zzzzzz.9", "summary": "x", "files_touched": []},
        "does not exist",
    ),
    ("swarm_complete", {"bead_id": "{other}", "summary": "x", "files_touched": []}, "not for bead"),
    ("swarmmail_send", {"to": [], "subject": "s", "body": "b"}, "to"),
    (
        "swarmmail_send",
        {"to": ["x"], "subject": "s", "body": "b", "importance": "critical"},
        "importance",
    ),
    ("swarmmail_send", {"to": ["bad name!"], "subject": "s", "body": "b"}, "not valid"),
    ("swarmmail_inbox", {"limit": 0}, "limit must be between 1 and 200"),
    ("swarmmail_read_message", {"message_id": "msg-nope"}, "does not exist"),
    ("swarmmail_ack", {"message_id": "msg-nope"}, "does not exist"),
    ("swarmmail_init", {"bead_id": "{other}"}, "cannot register you"),
    ("swarmmail_init", {"agent_name": "../evil"}, "not valid"),
    ("swarmmail_init", {"epic_id": "bd-zzzzzz"}, "not to epic"),
    ("no_such_tool", {}, "unknown tool"),
]


def test_bad_calls_return_readable_errors_and_write_nothing(project: Project) -> None:
    bead, other, _ = project.beads
    wt = project.worktree(bead)
    errlog = project.root.parent / "mcp-bad.log"

    async def main() -> None:
        async with mcp_session(wt, project.root, errlog=errlog) as s:
            for tool, raw_args, expected in BAD_CALLS:
                args = {
                    k: (v.format(bead=bead, other=other) if isinstance(v, str) else v)
                    for k, v in raw_args.items()
                }
                before = project.last_seq()
                err, text = await call(s, tool, args)
                assert err, (tool, args, text)
                assert expected in text, (tool, args, text)
                assert "internal error" not in text
                assert project.last_seq() == before, (tool, args, "wrote to the store")
            # The server is still healthy after all of that.
            err, data = await call(s, "swarm_progress", {"bead_id": bead, "progress_percent": 1})
            assert not err, data

    run_async(main)
    assert "Traceback" not in errlog.read_text()


def test_outside_a_worktree_the_caller_must_init(project: Project) -> None:
    async def main() -> None:
        async with mcp_session(project.root, project.root) as s:
            before = project.last_seq()
            err, text = await call(s, "swarmmail_reserve", {"paths": ["README.md"]})
            assert err and "call swarmmail_init" in text
            err, text = await call(s, "swarmmail_inbox", {})
            assert err and "call swarmmail_init" in text
            err, text = await call(s, "swarmmail_init", {})
            assert err and "needs agent_name" in text
            assert project.last_seq() == before
            err, data = await call(s, "swarmmail_init", {"agent_name": "coordinator"})
            assert not err and data["agent_name"] == "coordinator" and data["bead_id"] is None
            err, data = await call(s, "swarmmail_reserve", {"paths": ["README.md"]})
            assert not err and data["granted"] and data["holder"] == "coordinator"

    run_async(main)


def test_without_a_project_tools_error_but_the_server_runs(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"
    lonely.mkdir()

    async def main() -> None:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "swarm_pool.mcp_server"],
            cwd=lonely,
            env={k: v for k, v in server_env(lonely).items() if k != "SWARM_POOL_PROJECT"},
        )
        with (tmp_path / "err.log").open("a") as log:
            async with stdio_client(params, errlog=log) as (r, w), ClientSession(r, w) as s:
                await s.initialize()
                assert len((await s.list_tools()).tools) >= len(WORKER_TOOLS)
                err, text = await call(s, "swarmmail_inbox", {})
                assert err and "internal error" not in text
                assert not (lonely / ".swarm").exists()

    run_async(main)


def test_cli_mcp_command_serves_stdio(project: Project) -> None:
    wt = project.worktree(project.beads[0])

    async def main() -> None:
        async with mcp_session(wt, project.root, args=("-m", "swarm_pool", "mcp")) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            assert set(WORKER_TOOLS) <= names
            err, data = await call(s, "swarmmail_init", {})
            assert not err and data["agent_name"] == f"worker-{project.beads[0]}"

    run_async(main)
