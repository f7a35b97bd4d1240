"""A table-driven corpus of bad inputs: CLI usage, config, plans, the store, MCP arguments.

Every case gets one clear line on stderr (``swarm-pool: error: ...``) naming the
problem, a non-zero exit (2 for usage errors, 1 for the rest), no traceback, no event
written, no ``.swarm/`` created where there was none, and no process left running (the
autouse fixture of conftest.py proves that for every process a case could start; the
cases that start pools also check the project's processes). CLI cases run in-process
through click's runner, so the corpus stays fast; the few that need a live pool share
one real pool (module fixture).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from swarm_pool.cli import main
from swarm_pool.mcp.registry import Registry, ToolOutcome
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.server import default_specs
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import events as ev
from swarm_pool.store import open_project_store, open_store
from swarm_pool.store.events import BeadSpec
from tests.pool_cli import NO_MODEL_ENV, cli, make_project, pool_processes
from tests.support import init_repo

GOOD_TASK = '[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["a.txt"]\n'
EPIC = '[epic]\ntitle = "e"\n'


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # placeholders: {root} {conf} {plan} {epic} {bead} {tmp}
    code: int
    text: str  # expected in the one stderr line
    store: str = "none"  # none | seeded | garbage | truncated
    conf: str | None = None  # written to {conf}
    plan: str | bytes | None = None  # written to {plan}
    env: dict[str, str] = field(default_factory=dict)


def c(id: str, args: str, code: int, text: str, **kw: Any) -> Case:
    return Case(id, tuple(args.split()), code, text, **kw)


USAGE = [
    c("unknown option", "status --bogus", 2, "No such option '--bogus'"),
    c("unknown option before command", "--bogus status", 2, "No such option '--bogus'"),
    c("unknown command", "frobnicate", 2, "No such command 'frobnicate'"),
    c("missing argument", "spawn", 2, "Missing argument 'BEAD_ID'"),
    c("scale not a number", "scale many", 2, "'many' is not a valid integer"),
    c("scale zero", "scale 0", 2, "0 is not in the range 1<=x<=64"),
    c("start size zero", "start -n 0", 2, "0 is not in the range 1<=x<=64"),
    c("start size too big", "start -n 65", 2, "65 is not in the range 1<=x<=64"),
    c("answer needs one of", "answer bd-abc.1", 2, "give exactly one of --reply or --answer"),
    c("answer bad reply", "answer bd-abc.1 --reply maybe", 2, "'maybe' is not one of"),
    c("log unknown type", "log --type nonsense", 2, "'nonsense' is not one of"),
    c("log negative seq", "log --since-seq -1", 2, "-1 is not in the range x>=0"),
    c("dashboard refresh too slow", "dashboard --refresh 5", 2, "5.0 is not in the range"),
    c("run missing plan", "run {tmp}/nope.toml", 2, "does not exist"),
    c("run plan is a dir", "run {tmp}", 2, "is a directory"),
    c("spawn bad routing", "spawn bd-abc.1 --routing random", 2, "'random' is not one of"),
    c("await bad timeout", "await bd-abc --timeout soon", 2, "'soon' is not a valid float"),
    c("logs missing name", "logs", 2, "Missing argument 'NAME'"),
    c("model serve bad port", "model serve --port http", 2, "'http' is not a valid integer"),
    c("project missing", "--project {tmp}/nope status", 1, "project dir does not exist"),
    c("project missing after", "poll --project {tmp}/nope", 1, "project dir does not exist"),
    c("project is a file", "status --project {conf}", 2, "is a file", conf=""),
    c("config is a dir", "status --config {tmp}", 2, "is a directory"),
    c("mcp cwd and project", "mcp --cwd {tmp} --project {root}", 2, "alias of --project"),
    c("mcp project missing", "mcp --project {tmp}/nope", 2, "does not exist"),
    c(
        "mcp bad config",
        "mcp --project {root} --config {conf}",
        1,
        "unknown config key 'x'",
        conf="x = 1\n",
    ),
]

CONFIG = [
    c("config missing", "status --config {tmp}/none.toml", 1, "config file not found"),
    c("config bad toml", "start --config {conf}", 1, "is not valid TOML", conf="[pool\n"),
    c("config not utf-8", "start --config {conf}", 1, "not UTF-8", conf=b'x = "\xff"\n'),
    c(
        "config unknown key",
        "start --config {conf}",
        1,
        "unknown config key 'pool.siz'",
        conf="[pool]\nsiz = 3\n",
    ),
    c(
        "config string is not a bool",
        "start --config {conf}",
        1,
        "bad config value opencode.mcp_enabled='yes'",
        conf='[opencode]\nmcp_enabled = "yes"\n',
    ),
    c(
        "config int is not a bool",
        "run {plan} --config {conf}",
        1,
        "bad config value opencode.mcp_enabled=1",
        conf="[opencode]\nmcp_enabled = 1\n",
        plan=EPIC + GOOD_TASK,
    ),
    c(
        "config string is not an int",
        "start --config {conf}",
        1,
        "bad config value pool.size='2'",
        conf='[pool]\nsize = "2"\n',
    ),
    c(
        "config float is not an int",
        "start --config {conf}",
        1,
        "bad config value pool.size=2.0",
        conf="[pool]\nsize = 2.0\n",
    ),
    c(
        "config bool is not an int",
        "poll --config {conf}",
        1,
        "bad config value workers.max_retries=True",
        conf="[workers]\nmax_retries = true\n",
    ),
    c("config size zero", "start --config {conf}", 1, "pool.size=0", conf="[pool]\nsize = 0\n"),
    c(
        "config size too big",
        "start --config {conf}",
        1,
        "pool.size=65",
        conf="[pool]\nsize = 65\n",
    ),
    c(
        "config inverted ports",
        "start --config {conf}",
        1,
        "port_min 48000 > port_max 47000",
        conf="[pool]\nport_min = 48000\nport_max = 47000\n",
    ),
    c(
        "config bad routing",
        "run {plan} --config {conf}",
        1,
        "pool.routing='random'",
        conf='[pool]\nrouting = "random"\n',
        plan=EPIC + GOOD_TASK,
    ),
    c(
        "config bad model",
        "start --config {conf}",
        1,
        "opencode.model='gpt4': Value error, use 'scripted' or 'provider/model'",
        conf='[opencode]\nmodel = "gpt4"\n',
    ),
    c(
        "config zero health failures",
        "start --config {conf}",
        1,
        "supervisor.health_failures=0",
        conf="[supervisor]\nhealth_failures = 0\n",
    ),
    c(
        "config jitter above one",
        "start --config {conf}",
        1,
        "supervisor.backoff_jitter=2",
        conf="[supervisor]\nbackoff_jitter = 2\n",
    ),
    c(
        "config negative timeout",
        "start --config {conf}",
        1,
        "workers.timeout_s=-1",
        conf="[workers]\ntimeout_s = -1\n",
    ),
    c(
        "config section not a table",
        "status --config {conf}",
        1,
        "bad config value pool=3",
        conf="pool = 3\n",
    ),
    c(
        "env unknown key",
        "start",
        1,
        "unknown config key 'pool.siz'",
        env={"SWARM_POOL_POOL__SIZ": "3"},
    ),
    c(
        "env bad shape",
        "status",
        1,
        "bad env override SWARM_POOL_POOL='3'",
        env={"SWARM_POOL_POOL": "3"},
    ),
    c(
        "env bare word is not a bool",
        "start",
        1,
        "opencode.mcp_enabled='yes'",
        env={"SWARM_POOL_OPENCODE__MCP_ENABLED": "yes"},
    ),
    c("env array is not an int", "start", 1, "pool.size=[1]", env={"SWARM_POOL_POOL__SIZE": "[1]"}),
    c(
        "env bad model",
        "run {plan}",
        1,
        "opencode.model='nomodel'",
        env={"SWARM_POOL_OPENCODE__MODEL": "nomodel"},
        plan=EPIC + GOOD_TASK,
    ),
]


def task(tid: str, extra: str = "", files: str = '["{tid}.txt"]') -> str:
    owned = files.replace("{tid}", tid)
    return f'[[tasks]]\nid = "{tid}"\ntitle = "T {tid}"\nfiles = {owned}\n{extra}'


PLANS = [
    c(
        "plan not utf-8",
        "run {plan}",
        1,
        "not UTF-8 text (byte 0xff",
        plan=b'[epic]\ntitle = "\xff\xfe"\n',
    ),
    c("plan bad toml", "run {plan}", 1, "invalid TOML", plan="[epic\n"),
    c("plan empty", "run {plan}", 1, "epic: Field required", plan=""),
    c("plan no tasks", "run {plan}", 1, "tasks: Field required", plan=EPIC),
    c(
        "plan empty tasks",
        "run {plan}",
        1,
        "tasks: List should have at least 1 item",
        plan="tasks = []\n" + EPIC,
    ),
    c(
        "plan empty files",
        "run {plan}",
        1,
        "tasks[1].files: List should have at least 1 item",
        plan=EPIC + task("a", files="[]"),
    ),
    c(
        "plan files missing",
        "run {plan}",
        1,
        "tasks[1].files: Field required",
        plan=EPIC + '[[tasks]]\nid = "a"\ntitle = "A"\n',
    ),
    c(
        "plan files not a list",
        "run {plan}",
        1,
        "tasks[1].files: Input should be a valid list",
        plan=EPIC + task("a", files='"a.txt"'),
    ),
    c(
        "plan cycle",
        "run {plan}",
        1,
        "dependency cycle: a -> b -> a",
        plan=EPIC + task("a", 'depends_on = ["b"]\n') + task("b", 'depends_on = ["a"]\n'),
    ),
    c(
        "plan self dependency",
        "run {plan}",
        1,
        "dependency cycle: a -> a",
        plan=EPIC + task("a", 'depends_on = ["a"]\n'),
    ),
    c(
        "plan unknown dependency",
        "run {plan}",
        1,
        "depends on unknown task 'zz'",
        plan=EPIC + task("a", 'depends_on = ["zz"]\n'),
    ),
    c(
        "plan duplicate id",
        "run {plan}",
        1,
        "duplicate task id 'a'",
        plan=EPIC + task("a") + task("a"),
    ),
    c(
        "plan parallel overlap",
        "run {plan}",
        1,
        "may run in parallel",
        plan=EPIC + task("a", files='["src/**"]') + task("b", files='["src/x.py"]'),
    ),
    c(
        "plan escaping path",
        "run {plan}",
        1,
        "must be relative to the project",
        plan=EPIC + task("a", files='["../x.py"]'),
    ),
    c(
        "plan absolute path",
        "run {plan}",
        1,
        "must be relative to the project",
        plan=EPIC + task("a", files='["/etc/passwd"]'),
    ),
    c(
        "plan blank pattern",
        "run {plan}",
        1,
        "empty file pattern",
        plan=EPIC + task("a", files='[" "]'),
    ),
    c(
        "plan bad id",
        "run {plan}",
        1,
        "tasks[1].id: String should match pattern",
        plan=EPIC + task("a b"),
    ),
    c(
        "plan unknown key",
        "run {plan}",
        1,
        "tasks[1].owner: Extra inputs are not permitted",
        plan=EPIC + task("a", 'owner = "me"\n'),
    ),
    c(
        "plan title not a string",
        "run {plan}",
        1,
        "tasks[1].title: Input should be a valid string",
        plan=EPIC + '[[tasks]]\nid = "a"\ntitle = 1\nfiles = ["a"]\n',
    ),
    c(
        "plan empty epic title",
        "run {plan}",
        1,
        "epic.title: String should have at least 1",
        plan='[epic]\ntitle = ""\n' + GOOD_TASK,
    ),
    c(
        "plan size is a string",
        "run {plan}",
        1,
        "pool.size: Input should be a valid integer",
        plan=EPIC + GOOD_TASK + '[pool]\nsize = "2"\n',
    ),
    c(
        "plan size zero",
        "run {plan}",
        1,
        "pool.size: Input should be greater than or equal to 1",
        plan=EPIC + GOOD_TASK + "[pool]\nsize = 0\n",
    ),
    c(
        "plan bad routing",
        "run {plan}",
        1,
        "pool.routing",
        plan=EPIC + GOOD_TASK + '[pool]\nrouting = "random"\n',
    ),
    c(
        "plan bad script",
        "run {plan}",
        1,
        "script of task 'a'",
        plan=EPIC + task("a", "script = [{ args = { x = 1 } }]\n"),
    ),
    c(
        "plan tasks not tables",
        "run {plan}",
        1,
        "Input should be a valid",
        plan='tasks = ["a"]\n' + EPIC,
    ),
]

STORE = [
    c("garbage store poll", "poll", 1, "is damaged (file is not a database)", store="garbage"),
    c("garbage store start", "start -n 1", 1, "is damaged", store="garbage", env=NO_MODEL_ENV),
    c(
        "garbage store run",
        "run {plan}",
        1,
        "is damaged",
        store="garbage",
        plan=EPIC + GOOD_TASK,
        env=NO_MODEL_ENV,
    ),
    c("garbage store log", "log", 1, "db check", store="garbage"),
    c(
        "garbage store db check",
        "db check",
        1,
        "is damaged: file is not a database",
        store="garbage",
    ),
    c(
        "truncated store start",
        "start -n 1",
        1,
        "is damaged (database disk image is malformed)",
        store="truncated",
        env=NO_MODEL_ENV,
    ),
    c(
        "truncated store run",
        "run {plan}",
        1,
        "is damaged",
        store="truncated",
        plan=EPIC + GOOD_TASK,
        env=NO_MODEL_ENV,
    ),
    c("truncated store workers", "workers", 1, "db check", store="truncated"),
    c("truncated store metrics", "metrics", 1, "is damaged", store="truncated"),
    c("no store poll", "poll", 1, "no store at"),
    c("no store await", "await bd-abc", 1, "no store at"),
    c("no store review", "review bd-abc.1", 1, "no store at"),
    c("no store merge", "merge bd-abc.1", 1, "no store at"),
    c("no store spawn", "spawn bd-abc.1", 1, "no store at"),
    c("no store log", "log", 1, "no store at"),
    c("no store reservations", "reservations", 1, "no store at"),
    c("no store db rebuild", "db rebuild", 1, "no store at"),
    c(
        "unknown epic await",
        "await bd-zzzzzz --timeout 1",
        1,
        "epic bd-zzzzzz does not exist",
        store="seeded",
    ),
    c("unknown epic poll", "poll bd-zzzzzz", 1, "epic bd-zzzzzz does not exist", store="seeded"),
    c("malformed epic id", "poll nonsense", 1, "nonsense", store="seeded"),
    c(
        "unknown bead review",
        "review bd-zzzzzz.1",
        1,
        "bead bd-zzzzzz.1 has no worker",
        store="seeded",
    ),
    c(
        "unknown bead merge",
        "merge bd-zzzzzz.1",
        1,
        "bead bd-zzzzzz.1 has no worker",
        store="seeded",
    ),
    c("bead without worker review", "review {bead}", 1, "has no worker", store="seeded"),
    c("unknown bead answer", "answer bd-zzzzzz.1 --reply once", 1, "bd-zzzzzz.1", store="seeded"),
    c("unknown bead spawn", "spawn bd-zzzzzz.1", 1, "bd-zzzzzz.1", store="seeded"),
    c("spawn epic mismatch", "spawn {bead} --epic bd-zzzzzz", 1, "bd-zzzzzz", store="seeded"),
    c(
        "unknown epic metrics",
        "metrics --epic bd-zzzzzz",
        1,
        "no workers recorded for epic",
        store="seeded",
    ),
]

CASES = USAGE + CONFIG + PLANS + STORE


@pytest.fixture(scope="module")
def truncated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store with a few thousand events, cut to half its size."""
    folder = tmp_path_factory.mktemp("truncated") / ".swarm"
    folder.mkdir()
    with open_store(folder / "swarm.db") as store:
        store.append_many([ev.InstanceStats(instance="oc-1", rss_mb=1.0, cpu_percent=1.0)] * 3000)
    path = folder / "swarm.db"
    os.truncate(path, path.stat().st_size // 2)
    return path


@dataclass
class Scene:
    root: Path
    tmp: Path
    epic: str = "bd-none"
    bead: str = "bd-none.1"

    def fill(self, text: str) -> str:
        return text.format(
            root=self.root,
            tmp=self.tmp,
            conf=self.tmp / "conf.toml",
            plan=self.tmp / "plan.toml",
            epic=self.epic,
            bead=self.bead,
        )


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content))


def prepare(case: Case, tmp: Path, truncated: Path) -> Scene:
    root = init_repo(tmp / "proj").resolve()
    scene = Scene(root=root, tmp=tmp)
    if case.conf is not None:
        _write(tmp / "conf.toml", case.conf)
    if case.plan is not None:
        _write(tmp / "plan.toml", case.plan)
    db = ProjectPaths(root).db
    if case.store == "seeded":
        with open_project_store(ProjectPaths(root)) as store:
            epic = store.hive.create_epic(
                "seeded",
                [BeadSpec(title="a", files=["a.txt"]), BeadSpec(title="b", files=["b.txt"])],
            )
        scene.epic, scene.bead = epic.id, epic.cells[0].id
    elif case.store == "garbage":
        db.parent.mkdir()
        db.write_bytes(bytes(range(256)) * 16)
    elif case.store == "truncated":
        db.parent.mkdir()
        shutil.copy(truncated, db)
    return scene


def event_count(root: Path) -> int | None:
    db = ProjectPaths(root).db
    if not db.exists():
        return None
    try:
        with open_store(db) as store:
            return store.last_seq()
    except Exception:  # a damaged store: its bytes are compared instead
        return -1


@pytest.mark.parametrize("case", CASES, ids=[k.id for k in CASES])
def test_bad_input(case: Case, tmp_path: Path, truncated_template: Path) -> None:
    scene = prepare(case, tmp_path, truncated_template)
    db = ProjectPaths(scene.root).db
    before_bytes = db.read_bytes() if db.exists() else None
    before = event_count(scene.root) if case.store == "seeded" else None
    args = [scene.fill(a) for a in case.args]
    if "--project" not in args and "{root}" not in " ".join(case.args):
        args += ["--project", str(scene.root)]
    result = CliRunner().invoke(main, args, env=case.env, catch_exceptions=True)

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == case.code, (result.exit_code, result.stderr, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarm-pool: error: "), lines[0]
    assert case.text in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing written: no events (a damaged store is left byte for byte), no .swarm/.
    if case.store == "none":
        assert not (scene.root / ".swarm").exists()
    elif case.store == "seeded":
        assert event_count(scene.root) == before
    else:
        assert db.read_bytes() == before_bytes
    if case.args[0] in ("start", "run", "mcp"):
        assert pool_processes(scene.root) == []


def test_corpus_is_big_enough() -> None:
    assert len(CASES) + len(MCP_CASES) + len(LIVE_CASES) >= 60


# --- MCP arguments ----------------------------------------------------------------------

MCP_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("unknown tool", "swarm_frobnicate", {}, "unknown tool"),
    ("reserve paths not a list", "swarmmail_reserve", {"paths": "src/a.py"}, "paths"),
    ("reserve escapes the project", "swarmmail_reserve", {"paths": ["../x.py"]}, "outside"),
    ("reserve empty", "swarmmail_reserve", {"paths": []}, "paths"),
    ("reserve bad ttl", "swarmmail_reserve", {"paths": ["a.py"], "ttl_seconds": -5}, "ttl"),
    (
        "progress above 100",
        "swarm_progress",
        {"bead_id": "{bead}", "progress_percent": 150},
        "progress_percent",
    ),
    (
        "progress unknown bead",
        "swarm_progress",
        {"bead_id": "bd-zzzzzz.1", "progress_percent": 10},
        "bd-zzzzzz.1",
    ),
    ("send without subject", "swarmmail_send", {"to": ["x"], "body": "b"}, "subject"),
    ("extra argument", "swarmmail_inbox", {"nope": 1}, "nope"),
    ("create epic without title", "hive_create_epic", {"subtasks": [{"title": "a"}]}, "title"),
    ("create epic no subtasks", "hive_create_epic", {"title": "e", "subtasks": []}, "subtasks"),
    (
        "poll unknown epic",
        "swarm_poll_workers",
        {"epic_id": "bd-zzzzzz"},
        "epic bd-zzzzzz does not exist",
    ),
    (
        "await unknown epic",
        "swarm_await_workers",
        {"epic_id": "bd-zzzzzz", "timeout_s": 1},
        "epic bd-zzzzzz does not exist",
    ),
    ("await negative timeout", "swarm_await_workers", {"timeout_s": -1}, "timeout_s"),
    ("review unknown bead", "swarm_review", {"bead_id": "bd-zzzzzz.1"}, "bd-zzzzzz.1"),
    ("merge unknown bead", "swarm_worktree_merge", {"bead_id": "bd-zzzzzz.1"}, "bd-zzzzzz.1"),
    ("spawn unknown bead", "swarm_spawn_async", {"bead_id": "bd-zzzzzz.1"}, "bd-zzzzzz.1"),
    ("query unknown epic", "hive_query", {"epic_id": "bd-zzzzzz"}, "bd-zzzzzz"),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "text"), [m[1:] for m in MCP_CASES], ids=[m[0] for m in MCP_CASES]
)
def test_bad_mcp_arguments(tmp_path: Path, tool: str, arguments: dict[str, Any], text: str) -> None:
    root = init_repo(tmp_path / "proj").resolve()
    paths = ProjectPaths(root)
    with open_project_store(paths) as store:
        epic = store.hive.create_epic("seeded", [BeadSpec(title="a", files=["a.txt"])])
        before = store.last_seq()
    bead = epic.cells[0].id
    filled = {
        k: (v.replace("{bead}", bead) if isinstance(v, str) else v) for k, v in arguments.items()
    }
    runtime = Runtime(root, opener=lambda _cwd: open_store(paths.db, project_root=root))

    async def call() -> ToolOutcome:
        return await Registry(default_specs()).dispatch(runtime, tool, filled)

    try:
        outcome = anyio.run(call)
    finally:
        runtime.close()
    assert outcome.is_error
    first = outcome.text.strip().splitlines()[0]
    assert text in outcome.text, outcome.text
    assert first and "Traceback" not in outcome.text and "internal error" not in outcome.text
    with open_project_store(paths) as store:
        assert store.last_seq() == before


# --- cases that need a live pool (one shared pool) -------------------------------------

LIVE_CASES: list[tuple[str, tuple[str, ...], int, str]] = [
    ("restart unknown instance", ("restart", "oc-9"), 1, "no instance named 'oc-9'"),
    ("attach unknown instance", ("attach", "oc-9", "--print"), 1, "no instance named 'oc-9'"),
    ("logs unknown instance", ("logs", "oc-9"), 1, "no log for instance 'oc-9'"),
    ("second start", ("start", "-n", "1"), 1, "a pool is already running"),
    ("scale out of range", ("scale", "65"), 2, "65 is not in the range 1<=x<=64"),
]


@pytest.fixture(scope="module")
def live_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_project(tmp_path_factory.mktemp("corpus") / "proj")
    out = cli("start", "-n", "1", project=root, env=NO_MODEL_ENV, session_scoped=True)
    assert out.returncode == 0, out.stderr
    try:
        yield root
    finally:
        cli("stop", project=root, session_scoped=True)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "code", "text"), [x[1:] for x in LIVE_CASES], ids=[x[0] for x in LIVE_CASES]
)
def test_bad_input_with_a_live_pool(
    live_pool: Path, args: tuple[str, ...], code: int, text: str
) -> None:
    before = event_count(live_pool)
    pids = sorted(p.pid for p in pool_processes(live_pool))
    out = cli(*args, project=live_pool, env=NO_MODEL_ENV, session_scoped=True)
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarm-pool: error: "), out.stderr
    assert text in lines[0], lines[0]
    # The pool is untouched: the same processes, no pool event written by the refusal
    # (the supervisor's own periodic samples aside).
    assert sorted(p.pid for p in pool_processes(live_pool)) == pids
    with open_project_store(ProjectPaths(live_pool)) as store:
        new = [s.type for s in store.read(after_seq=before or 0)]
    assert set(new) <= {"instance_stats"}, new
