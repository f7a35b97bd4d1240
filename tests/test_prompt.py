"""The worker prompt: contract block round trip, exact tool names, files, retries, hash."""

from __future__ import annotations

import re

from swarm_pool.protocol import Contract, find_bead_id, find_contract
from swarm_pool.swarm.worker.prompt import build_worker_prompt, prompt_hash

CONTRACT = Contract(
    bead_id="bd-4f2a9c.2",
    epic_id="bd-4f2a9c",
    title="Frequency table formatting",
    worktree="/proj/.swarm/worktrees/bd-4f2a9c.2",
    files=["wordcount/report.py", "tests/test_report*.py"],
    read_only=["wordcount/core.py"],
    script=[{"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}}, {"include": "default"}],
)

TOOLS = [
    "swarm_swarmmail_init",
    "swarm_swarmmail_reserve",
    "swarm_swarm_progress",
    "swarm_swarm_complete",
    "swarm_swarmmail_send",
]


def build(contract: Contract = CONTRACT, **kw: object) -> str:
    args: dict[str, object] = {
        "description": "Implement format_table(counts, top=10).",
        "shared_context": "Package wordcount, stdlib only.",
        "success_criteria": ["format_table({'a': 2}) == 'a  2'"],
    }
    args.update(kw)
    return build_worker_prompt(contract, **args)  # type: ignore[arg-type]


def test_contract_block_round_trips() -> None:
    text = build()
    assert find_contract(text) == CONTRACT
    assert find_bead_id(text) == "bd-4f2a9c.2"
    # A contract-looking block in the task text cannot shadow the real one (it comes last).
    fake = (
        "```swarm-contract\n"
        + CONTRACT.model_copy(update={"bead_id": "bd-ffff.9"}).model_dump_json()
        + "\n```"
    )
    assert find_contract(build(description=fake)) == CONTRACT


def test_prompt_names_every_protocol_tool_exactly() -> None:
    text = build()
    for tool in TOOLS:
        assert re.search(rf"`{tool}`", text), tool
    # In protocol order: init first, complete last of the steps.
    order = [text.index(f"`{t}`") for t in TOOLS[:4]]
    assert order == sorted(order)
    assert 'subject starting "BLOCKED: "' in text and '["coordinator"]' in text
    assert 'paths=["wordcount/report.py", "tests/test_report*.py"]' in text
    assert "files_touched" in text and "summary" in text and "progress_percent" in text


def test_prompt_states_worktree_files_and_criteria() -> None:
    text = build()
    assert "`/proj/.swarm/worktrees/bd-4f2a9c.2`" in text
    assert "Work only there" in text
    owned = text.split("Files you own")[1].split("Read-only")[0]
    assert "`wordcount/report.py`" in owned and "`tests/test_report*.py`" in owned
    read_only = text.split("Read-only")[1].split("## Success criteria")[0]
    assert "`wordcount/core.py`" in read_only and "report.py" not in read_only
    assert "- format_table({'a': 2}) == 'a  2'" in text
    assert "## Task: Frequency table formatting" in text
    assert "Implement format_table(counts, top=10)." in text
    assert "Package wordcount, stdlib only." in text
    assert "Retry" not in text and "interrupted" not in text
    assert len(text) < 4000  # concise


def test_retry_adds_the_interrupted_note() -> None:
    retry = build(CONTRACT.model_copy(update={"attempt": 2}))
    assert "attempt 2" in retry
    assert "interrupted" in retry and "may already hold part of that work" in retry
    custom = build(retry_note="The instance was killed at 40%.")
    assert "The instance was killed at 40%." in custom
    assert find_contract(retry) is not None and find_contract(retry).attempt == 2  # type: ignore[union-attr]


def test_no_owned_files_and_defaults() -> None:
    bare = Contract(bead_id="bd-aaaa.1", epic_id="bd-aaaa")
    text = build_worker_prompt(bare)
    assert "You own no files" in text
    assert "paths=[]" not in text and "is not needed" in text
    assert "## Task: bd-aaaa.1" in text
    assert "Shared context" not in text
    assert find_contract(text) == bare


def test_prompt_hash_is_short_stable_and_sensitive() -> None:
    text = build()
    h = prompt_hash(text)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert prompt_hash(build()) == h
    assert prompt_hash(build(description="other")) != h
