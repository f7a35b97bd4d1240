"""The scripted model: an offline OpenAI-compatible server that plays scripts
of tool calls.

Room: model.

``scripts`` owns what a script is and which step comes next; ``decisions`` owns which
step answers a request, fault counting and the stats; ``server`` owns the HTTP wire
format and how faults are played on it. ``swarm_pool.scripted_model`` is the command-line entry
point (``python -m swarm_pool.scripted_model serve``).
"""

from __future__ import annotations

from swarm_pool.model.decisions import ScriptedModel
from swarm_pool.model.scripts import (
    Context,
    Script,
    ScriptBook,
    ScriptFile,
    Step,
    default_worker_script,
    load_script_file,
    parse_inline,
)
from swarm_pool.model.server import (
    MODEL_ID,
    ModelHTTPServer,
    RunningServer,
    make_server,
    start_in_thread,
)

__all__ = [
    "MODEL_ID",
    "Context",
    "ModelHTTPServer",
    "RunningServer",
    "Script",
    "ScriptBook",
    "ScriptFile",
    "ScriptedModel",
    "Step",
    "default_worker_script",
    "load_script_file",
    "make_server",
    "parse_inline",
    "start_in_thread",
]
