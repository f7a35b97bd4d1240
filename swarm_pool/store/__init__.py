"""The shared event store; knows nothing about processes.

Room: store.

Everything a swarm does is an event (``.swarm/swarm.db`` on SQLite, or one PostgreSQL
schema shared by several hosts); the projections (workers, cells, reservations,
messages, slots, hosts) are kept in the same transaction as each event. Open it with
``open_store``/``open_project_store``/``find_project_store`` and use the ``Store`` (see
``core.py``). From the bottom: the transaction types (``tx.py``), the tables
(``schema.py``), the projections, the recorder protocol (``recorder.py``) with its two
backends (``sqlite.py``, ``postgres.py``), then the facades and ``core.py``.
"""

from swarm_pool.store.core import Store, find_project_store, open_project_store, open_store
from swarm_pool.store.hive import CellView, EpicView
from swarm_pool.store.mail import MessageView
from swarm_pool.store.recorder import Recorder, StoredEvent
from swarm_pool.store.reservations import ConflictView, ReservationView, ReserveResult
from swarm_pool.store.workers import WorkerView

__all__ = [
    "CellView",
    "ConflictView",
    "EpicView",
    "MessageView",
    "Recorder",
    "ReservationView",
    "ReserveResult",
    "Store",
    "StoredEvent",
    "WorkerView",
    "find_project_store",
    "open_project_store",
    "open_store",
]
