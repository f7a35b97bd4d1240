"""What a worker's prompt is built from, kept on disk: ``PromptSpec``
and its file.

Room: swarm.worker.

The spec (a ``Contract`` plus the task text) lives under ``.swarm/prompts/<bead>.json``,
not in the worktree, where the worker would commit it: the engine, in another process,
needs it to dispatch a queued spawn or to retry a failed one with a new attempt number.
A retry or a requeue carries the latest queue event's title, prompt hash and routing
(``queue_again``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from swarm_pool.errors import WorkerError
from swarm_pool.paths import write_private
from swarm_pool.protocol import Contract
from swarm_pool.store.events import WorkerQueued
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.prompt import build_worker_prompt


@dataclass(frozen=True)
class PromptSpec:
    contract: Contract
    description: str = ""
    shared_context: str = ""
    success_criteria: tuple[str, ...] = ()
    # Per-spawn override of workers.timeout_s (None: the config's).
    timeout_s: float | None = None

    def render(self, attempt: int | None = None, reason: str = "") -> str:
        contract = self.contract
        if attempt is not None and attempt != contract.attempt:
            contract = contract.model_copy(update={"attempt": attempt})
        note = None
        if contract.attempt > 1 and reason:
            note = (
                f"Attempt {contract.attempt}: an earlier attempt at this task was interrupted "
                f"({reason}). Your worktree may already hold part of that work: inspect it "
                "first (git status, the files) and build on it rather than starting over."
            )
        return build_worker_prompt(
            contract,
            description=self.description,
            shared_context=self.shared_context,
            success_criteria=list(self.success_criteria),
            retry_note=note,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "contract": self.contract.model_dump(mode="json"),
                "description": self.description,
                "shared_context": self.shared_context,
                "success_criteria": list(self.success_criteria),
                "timeout_s": self.timeout_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PromptSpec:
        data = json.loads(text)
        return cls(
            contract=Contract.model_validate(data["contract"]),
            description=data.get("description", ""),
            shared_context=data.get("shared_context", ""),
            success_criteria=tuple(data.get("success_criteria", ())),
            timeout_s=data.get("timeout_s"),
        )


def _spec_path(ctx: SwarmContext, bead_id: str) -> Path:
    return ctx.prompts_dir / f"{bead_id}.json"


def save_spec(ctx: SwarmContext, bead_id: str, spec: PromptSpec) -> None:
    path = _spec_path(ctx, bead_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, spec.to_json())


def load_spec(ctx: SwarmContext, bead_id: str) -> PromptSpec:
    """The bead's spec: this host's copy, else (an engine on another host than the
    spawner's) the one its queue event carries, kept here from then on."""
    path = _spec_path(ctx, bead_id)
    try:
        return PromptSpec.from_json(path.read_text())
    except FileNotFoundError as e:
        stored = _stored_spec(ctx, bead_id)
        if stored is None:
            raise WorkerError(f"the prompt of {bead_id} is missing ({e.strerror})") from e
        save_spec(ctx, bead_id, stored)
        return stored
    except OSError as e:
        raise WorkerError(f"the prompt of {bead_id} is missing ({e.strerror})") from e
    except (ValueError, KeyError) as e:
        raise WorkerError(f"the prompt of {bead_id} is unreadable: {e}") from e


def _stored_spec(ctx: SwarmContext, bead_id: str) -> PromptSpec | None:
    for stored in ctx.store.read(types=["worker_queued"], bead_id=bead_id, descending=True):
        event = stored.event
        if isinstance(event, WorkerQueued) and event.spec:
            try:
                return PromptSpec.from_json(event.spec)
            except (ValueError, KeyError) as e:
                raise WorkerError(f"the stored prompt of {bead_id} is unreadable: {e}") from e
    return None


def queue_again(ctx: SwarmContext, worker: WorkerView, attempt: int, reason: str) -> WorkerQueued:
    """The ``worker_queued`` that puts the worker back in the queue as ``attempt``, in
    its worktree with its files, and with the title, prompt hash and routing of its
    latest queue event (the event's defaults if none is stored)."""
    last = ctx.last_event(worker.bead_id, WorkerQueued)
    if last is None:
        last = WorkerQueued(bead_id=worker.bead_id, epic_id=worker.epic_id)
    return WorkerQueued(
        bead_id=worker.bead_id,
        epic_id=worker.epic_id,
        attempt=attempt,
        title=last.title,
        worktree=worker.worktree,
        files=list(worker.files),
        prompt_hash=last.prompt_hash,
        routing=last.routing,
        reason=reason,
    )
