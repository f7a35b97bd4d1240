"""The root of every event: ``BaseEvent`` (frozen, no extra fields, a
``timestamp`` in ms since the epoch, set at creation) and ``now_ms``.

Room: store.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


def now_ms() -> int:
    return int(time.time() * 1000)


class BaseEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: int = Field(default_factory=now_ms, ge=0)
