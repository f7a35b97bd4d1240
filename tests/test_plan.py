"""Plan files: parsing, the checks that reject bad plans, order, and the store mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_pool.errors import PlanError
from swarm_pool.swarm.plans.plan import Plan, load_plan, parse_plan

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "conf" / "demo-plan.toml"


def task(
    tid: str, files: list[str] | None = None, deps: list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    owned = files or [f"{tid.replace(' ', '_')}.txt"]
    return {"id": tid, "title": f"task {tid}", "files": owned, "depends_on": deps or [], **kw}


def plan(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"epic": {"title": "epic"}, "tasks": list(tasks)}


REJECTED = [
    ("cycle", plan(task("a", deps=["b"]), task("b", deps=["a"])), "dependency cycle: a -> b -> a"),
    ("self-dependency", plan(task("a", deps=["a"])), "dependency cycle: a -> a"),
    (
        "long cycle",
        plan(task("a", deps=["c"]), task("b", deps=["a"]), task("c", deps=["b"]), task("d")),
        "dependency cycle: a -> c -> b -> a",
    ),
    ("unknown dependency", plan(task("a", deps=["zz"])), "task 'a' depends on unknown task 'zz'"),
    (
        "duplicate id",
        plan(task("a"), task("b"), task("a")),
        "duplicate task id 'a' (tasks 1 and 3)",
    ),
    (
        "independent glob overlap",
        plan(task("a", ["src/*.py"]), task("b", ["src/util.py"])),
        "tasks 'a' and 'b' may run in parallel but both own files matching "
        "'src/*.py' / 'src/util.py'",
    ),
    (
        "same literal file",
        plan(task("a", ["x.py"]), task("b", ["y.py"]), task("c", ["x.py"], deps=["b"])),
        "tasks 'a' and 'c'",
    ),
    (
        "directory owns its tree",
        plan(task("a", ["pkg"]), task("b", ["pkg/mod.py"])),
        "'pkg' / 'pkg/mod.py'",
    ),
    (
        "trailing slash directory",
        plan(task("a", ["pkg/"]), task("b", ["pkg/sub/**/*.txt"])),
        "tasks 'a' and 'b'",
    ),
    (
        "siblings of a common parent",
        plan(task("p"), task("a", ["**/*.md"], deps=["p"]), task("b", ["docs/x.md"], deps=["p"])),
        "tasks 'a' and 'b'",
    ),
    ("escaping path", plan(task("a", ["../outside.py"])), "must be relative to the project"),
    ("absolute path", plan(task("a", ["/etc/passwd"])), "must be relative to the project"),
    ("empty pattern", plan(task("a", [" "])), "empty file pattern"),
    ("bad script", plan(task("a", script=[{"args": {"x": 1}}])), "script of task 'a'"),
    (
        "missing title",
        {"epic": {"title": "e"}, "tasks": [{"id": "a"}]},
        "tasks[1].title: Field required",
    ),
    ("no tasks", {"epic": {"title": "e"}, "tasks": []}, "tasks: List should have at least 1 item"),
    ("unknown key", plan(task("a", owner="me")), "tasks[1].owner: Extra inputs are not permitted"),
    ("bad id", plan(task("a b")), "tasks[1].id: String should match pattern"),
    ("bad routing", {**plan(task("a")), "pool": {"routing": "random"}}, "pool.routing"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_bad_plans_are_rejected_with_one_clear_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(data, source="p.toml")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("p.toml: ")
    assert message in text


ACCEPTED = [
    ("dependent overlap", plan(task("a", ["src/*.py"]), task("b", ["src/util.py"], deps=["a"]))),
    (
        "transitive overlap",
        plan(task("a", ["x.py"]), task("m", deps=["a"]), task("b", ["x.py"], deps=["m"])),
    ),
    ("reverse order in file", plan(task("b", ["x.py"], deps=["a"]), task("a", ["x.py"]))),
    ("disjoint", plan(task("a", ["src/a.py", "docs/"]), task("b", ["src/b.py", "tests/*.py"]))),
    ("similar names", plan(task("a", ["pkg"]), task("b", ["pkg2/x.py", "pk"]))),
    ("read-only may overlap", plan(task("a", ["x.py"]), task("b", ["y.py"], read_only=["x.py"]))),
    ("good script", plan(task("a", ["x.py"], script=[{"include": "default"}]))),
]


@pytest.mark.parametrize("data", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_good_plans_are_accepted(data: dict[str, Any]) -> None:
    assert parse_plan(data).validate().tasks


def test_demo_plan_loads_with_the_promised_shape() -> None:
    p = load_plan(DEMO)
    assert len(p.tasks) == 4
    assert p.title and p.shared_context.strip()
    deps = {t.id: set(t.depends_on) for t in p.tasks}
    joiner = next(t for t, d in deps.items() if len(d) == 2)
    parallel = deps[joiner]
    independent = set(deps) - parallel - {joiner}
    assert all(not deps[t] for t in parallel | independent) and len(independent) == 1
    literal = [f for t in p.tasks for f in t.files]
    assert len(literal) == len(set(literal))
    assert not any(set(f) & set("*?[{") for f in literal)
    assert p.waves() == [["core", "report", "docs"], ["cli"]]
    subtasks = p.to_beads()
    assert [s.title for s in subtasks] == [t.title for t in p.tasks]
    assert subtasks[p.index_of("cli") - 1].depends_on == [
        str(p.index_of("core")),
        str(p.index_of("report")),
    ]
    assert p.pool.size == 2


def test_load_plan_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[epic\ntitle = 1\n")
    with pytest.raises(PlanError, match="invalid TOML"):
        load_plan(bad)
    cyclic = tmp_path / "cyclic.toml"
    cyclic.write_text(
        '[epic]\ntitle = "e"\n'
        '[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["a"]\ndepends_on = ["b"]\n'
        '[[tasks]]\nid = "b"\ntitle = "B"\nfiles = ["b"]\ndepends_on = ["a"]\n'
    )
    with pytest.raises(PlanError, match=r"cyclic\.toml: dependency cycle"):
        load_plan(cyclic)
    assert len(load_plan(cyclic, validate=False).tasks) == 2  # parse-only on request


@st.composite
def dags(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 9))
    tasks = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        tasks.append(task(f"t{i}", [f"f{i}.py"], [f"t{d}" for d in sorted(deps)]))
    order = draw(st.permutations(tasks))
    return parse_plan(plan(*order))


@settings(max_examples=60, deadline=None)
@given(dags())
def test_topo_order_waves_and_indexes_respect_dependencies(p: Plan) -> None:
    order = p.topo_order()
    assert sorted(order) == sorted(t.id for t in p.tasks)
    pos = {tid: i for i, tid in enumerate(order)}
    wave_of = {tid: w for w, ids in enumerate(p.waves()) for tid in ids}
    subtasks = p.to_beads()
    for t in p.tasks:
        for dep in t.depends_on:
            assert pos[dep] < pos[t.id]
            assert wave_of[dep] < wave_of[t.id]
            assert dep in p.ancestors(t.id)
        spec = subtasks[p.index_of(t.id) - 1]
        assert spec.depends_on == [str(p.index_of(d)) for d in t.depends_on]
        assert spec.files == t.files
