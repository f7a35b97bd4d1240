"""Scripts of the scripted model, without HTTP: validation, loading, selection, expansion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swarm_pool.errors import ScriptError
from swarm_pool.model.scripts import (
    Context,
    ScriptBook,
    context_from_texts,
    expand,
    load_script_file,
    parse_inline,
    parse_script_file,
)
from swarm_pool.protocol import Contract, agent_tool_name, render_contract

ROOT = Path(__file__).resolve().parent.parent


def _ctx(**kw: Any) -> Context:
    base: dict[str, Any] = {
        "bead_id": "bd-abc123.2",
        "epic_id": "bd-abc123",
        "worktree": "/wt",
        "files": ["src/a.py", "docs/*.md", "b.txt"],
    }
    base.update(kw)
    return Context(**base)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({}, "a step needs a tool, a text, an include, or a fault"),
        ({"tool": "write", "hang": True, "malformed": True}, "only one of http_error"),
        ({"text": "x", "args": {"a": 1}}, "args given without a tool"),
        ({"include": "default", "tool": "write"}, "an include step cannot"),
        ({"http_error": 500, "times": 2}, "needs a tool or a text"),
        ({"text": "x", "times": 2}, "times applies to a fault"),
        ({"text": "x", "retry_after_s": 1}, "retry_after_s applies to http_error"),
        ({"http_error": 200}, "greater than or equal to 400"),
        ({"tool": "write", "delay_s": -1}, "greater than or equal to 0"),
        ({"tool": "write", "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_inline_steps_raise_script_error(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ScriptError) as err:
        parse_inline([{"text": "fine"}, step], "inline script of bd-x.1")
    assert "bad script in inline script of bd-x.1: steps.1" in str(err.value)
    assert message in str(err.value)


def test_script_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="scripts file not found"):
        load_script_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scripts.x\n")
    with pytest.raises(ScriptError, match="is not valid TOML"):
        load_script_file(bad)
    with pytest.raises(ScriptError, match="names unknown script 'ghost'"):
        parse_script_file({"match": {"*.1": "ghost"}})
    with pytest.raises(ScriptError, match="includes unknown script 'ghost'"):
        parse_script_file({"scripts": {"a": {"steps": [{"include": "ghost"}]}}})
    with pytest.raises(ScriptError, match=r"scripts\.a\.stepz"):
        parse_script_file({"scripts": {"a": {"stepz": []}}})


def test_include_cycles_are_refused_when_played() -> None:
    book = ScriptBook(
        parse_script_file(
            {
                "scripts": {
                    "a": {"steps": [{"include": "b"}]},
                    "b": {"steps": [{"include": "a"}]},
                },
                "match": {"*": "a"},
            }
        )
    )
    with pytest.raises(ScriptError, match="include each other"):
        book.plan(_ctx())


def test_the_shipped_example_file_is_valid() -> None:
    book = ScriptBook.from_path(ROOT / "conf" / "scripts.example.toml")
    for name in book.file.scripts:
        assert book.plan(_ctx(bead_id=name)).steps, name
    assert book.select(_ctx(bead_id="bd-abc123.9"))[0] == "slow"


def test_default_script_writes_only_literal_owned_files() -> None:
    plan = ScriptBook().plan(_ctx())
    assert plan.script_name == "default"
    tools = [s.tool for s in plan.steps]
    assert tools == [
        agent_tool_name("swarmmail_init"),
        agent_tool_name("swarmmail_reserve"),
        "write",
        "write",
        agent_tool_name("swarm_progress"),
        agent_tool_name("swarm_complete"),
    ]
    assert plan.steps[0].args == {"bead_id": "bd-abc123.2"}
    assert plan.steps[1].args["paths"] == ["src/a.py", "docs/*.md", "b.txt"]
    assert [s.args["filePath"] for s in plan.steps[2:4]] == ["/wt/src/a.py", "/wt/b.txt"]
    assert "bd-abc123.2" in plan.steps[2].args["content"]
    assert plan.steps[4].args["progress_percent"] == 50
    assert plan.steps[5].args == {
        "bead_id": "bd-abc123.2",
        "summary": "scripted worker wrote 2 file(s) for bd-abc123.2",
        "files_touched": ["src/a.py", "b.txt"],
        "attempt": 1,
    }
    assert plan.final_text == "Done with bd-abc123.2."


def test_selection_order_inline_bead_epic_match_default() -> None:
    data = {
        "scripts": {
            "bd-abc123.2": {"steps": [{"text": "by bead"}]},
            "bd-abc123": {"steps": [{"text": "by epic"}]},
            "globbed": {"steps": [{"text": "by glob"}]},
            "default": {"steps": [{"text": "file default"}]},
        },
        "match": {"*.7": "globbed", "*": "default"},
    }
    book = ScriptBook(parse_script_file(data))
    inline = Contract(bead_id="bd-abc123.2", epic_id="bd-abc123", script=[{"text": "inline"}])

    def first_text(ctx: Context) -> str | None:
        return book.plan(ctx).steps[0].text

    assert first_text(_ctx(contract=inline)) == "inline"
    assert first_text(_ctx()) == "by bead"
    assert first_text(_ctx(bead_id="bd-abc123.5")) == "by epic"
    assert first_text(_ctx(bead_id="bd-ffff00.7", epic_id="bd-ffff00")) == "by glob"
    assert first_text(_ctx(bead_id="bd-ffff00.1", epic_id="bd-ffff00")) == "file default"
    assert ScriptBook().plan(_ctx(bead_id="")).script_name == "default"


def test_expand_fills_known_placeholders_and_keeps_other_braces() -> None:
    values = _ctx().values("src/a.py")
    assert expand("{files}", values) == ["src/a.py", "docs/*.md", "b.txt"]
    assert expand("{literal_files}", values) == ["src/a.py", "b.txt"]
    assert expand("x {files}", values) == "x src/a.py, docs/*.md, b.txt"
    assert expand({"k": ["{path}", 3, {"n": "{bead_id}/{epic_id}"}]}, values) == {
        "k": ["/wt/src/a.py", 3, {"n": "bd-abc123.2/bd-abc123"}]
    }
    code = "def f():\n    return {x} and {'a': 1} and {attempt}"
    assert expand(code, values) == "def f():\n    return {x} and {'a': 1} and 1"


def test_each_file_with_no_literal_files_plays_nothing() -> None:
    plan = ScriptBook().plan(_ctx(files=["src/**"]))
    assert "write" not in [s.tool for s in plan.steps]
    assert plan.steps[-1].args["files_touched"] == []


def test_context_from_a_contract_a_bare_bead_id_or_the_system_prompt() -> None:
    contract = Contract(
        bead_id="bd-abc123.3", epic_id="bd-abc123", files=["a.py"], worktree="/w", attempt=2
    )
    ctx = context_from_texts(["do it\n" + render_contract(contract)], [], "ses_1")
    assert (ctx.bead_id, ctx.epic_id, ctx.worktree, ctx.files, ctx.attempt) == (
        "bd-abc123.3",
        "bd-abc123",
        "/w",
        ["a.py"],
        2,
    )
    assert ctx.session_id == "ses_1"
    system = "<env>\n  Working directory: /tmp/some dir\n  Platform: linux\n</env>"
    bare = context_from_texts(["please handle bd-0a1b2c.4 now"], [system])
    assert (bare.bead_id, bare.epic_id, bare.worktree) == (
        "bd-0a1b2c.4",
        "bd-0a1b2c",
        "/tmp/some dir",
    )
    assert context_from_texts(["hello"], []).bead_id == ""
    in_system = context_from_texts(["go"], ["rules\n" + render_contract(contract)])
    assert (in_system.bead_id, in_system.worktree) == ("bd-abc123.3", "/w")
