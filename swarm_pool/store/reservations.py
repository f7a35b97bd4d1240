"""File reservations: enforced, all-or-nothing, overlap-checked both ways, with a TTL.

Room: store.

Owns ``reserve``/``release``/``renew``/``active`` and pattern normalization. A request
conflicts with every active reservation of another holder whose pattern can match a
path one of the requested patterns can match (``patterns_overlap``, symmetric), when
either side is exclusive. The check and the grant run in one write transaction, so two
agents can never both hold overlapping exclusive patterns; a denied request grants
nothing and records a ``file_conflict`` event naming the holders in the way. Expiry is
lazy: expired rows are ignored by reads and released (``file_released``, reason
``expired``) by the next write that looks at them. Patterns are made relative to the
project root; absolute paths outside it, ``..`` escapes and symlinks leading out are
rejected with ``PathEscapeError``.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarm_pool.errors import NotFoundError, PathEscapeError, ReservationError
from swarm_pool.store.db import Row
from swarm_pool.store.events import (
    EPIC_ID_RE,
    FileConflict,
    FileReleased,
    FileRenewed,
    FileReserved,
    now_ms,
)
from swarm_pool.store.globs import has_magic, patterns_overlap
from swarm_pool.store.projections import pattern_prefix
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView
from swarm_pool.store.tx import Reader, Writer


@dataclass(frozen=True)
class ReservationView(RowView):
    id: str
    holder: str
    pattern: str
    exclusive: bool
    reason: str
    bead_id: str | None
    epic_id: str | None
    created_at: int
    expires_at: int

    DECODE = {"exclusive": bool}


@dataclass(frozen=True)
class ConflictView:
    holder: str
    pattern: str  # the one held
    requested: str  # ours

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReserveResult:
    granted: bool
    reservations: list[ReservationView] = field(default_factory=list)
    conflicts: list[ConflictView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "reservations": [r.to_dict() for r in self.reservations],
            "conflicts": [c.to_dict() for c in self.conflicts],
        }

    @property
    def holders(self) -> list[str]:
        """The other holders in the way, each once."""
        return list(dict.fromkeys(c.holder for c in self.conflicts))


def _check_ttl(ttl_s: float) -> int:
    if not isinstance(ttl_s, int | float) or isinstance(ttl_s, bool):
        raise ReservationError(f"ttl_s must be a number of seconds, got {ttl_s!r}")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ReservationError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return max(1, int(ttl_s * 1000))


def _check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not holder.strip():
        raise ReservationError("a reservation needs a holder name")
    return holder.strip()


class Reservations:
    def __init__(self, recorder: Recorder, project_root: Path) -> None:
        self._rec = recorder
        self.project_root = project_root
        self._real_root = Path(os.path.realpath(project_root))

    # --- normalization ----------------------------------------------------------------

    def normalize(self, pattern: str) -> str:
        """A pattern relative to the project root, with ``/`` separators and no ``.``
        or ``..`` segments. A directory (an existing one, or a trailing ``/``) becomes
        ``dir/**``; the root itself becomes ``**``. PathEscapeError if it leaves the
        project."""
        if not isinstance(pattern, str) or not pattern.strip():
            raise ReservationError("empty file pattern")
        raw = pattern.strip()
        if "\x00" in raw:
            raise ReservationError(f"bad file pattern {pattern!r}")
        text = os.path.expanduser(raw) if raw.startswith("~") else raw
        dir_hint = text.endswith("/")
        if text.startswith("/"):
            text = self._relative_to_root(text, pattern)
        parts: list[str] = []
        for seg in text.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if not parts:
                    raise PathEscapeError(f"pattern {pattern!r} leaves the project with '..'")
                if has_magic(parts[-1]):
                    raise PathEscapeError(
                        f"pattern {pattern!r} uses '..' after a wildcard; spell the path out"
                    )
                parts.pop()
                continue
            parts.append(seg)
        if not parts:
            return "**"
        self._check_symlinks(parts, pattern)
        rel = "/".join(parts)
        is_dir = dir_hint or (not has_magic(rel) and (self.project_root / rel).is_dir())
        if is_dir and parts[-1] != "**":
            rel += "/**"
        return rel

    def _relative_to_root(self, text: str, original: str) -> str:
        norm = os.path.normpath(text)
        for root in (str(self.project_root), str(self._real_root)):
            if norm == root:
                return ""
            if norm.startswith(root.rstrip("/") + "/"):
                return norm[len(root.rstrip("/")) + 1 :]
        # The literal prefix may reach the root through a symlink (/tmp -> /private/tmp).
        prefix = _literal_prefix(norm)
        real = os.path.realpath(prefix) if prefix else "/"
        root = str(self._real_root)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            rest = norm[len(prefix) :].lstrip("/")
            inside = real[len(root) :].lstrip("/")
            return "/".join(p for p in (inside, rest) if p)
        raise PathEscapeError(f"pattern {original!r} is outside the project {self.project_root}")

    def _check_symlinks(self, parts: list[str], original: str) -> None:
        # Resolve the literal prefix: a symlink inside the project may point out of it.
        literal: list[str] = []
        for seg in parts:
            if has_magic(seg) or seg == "**":
                break
            literal.append(seg)
        if not literal:
            return
        real = os.path.realpath(self.project_root.joinpath(*literal))
        root = str(self._real_root)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise PathEscapeError(
                f"pattern {original!r} leads outside the project {self.project_root} "
                "through a symlink"
            )

    def _normalize_all(self, patterns: Sequence[str]) -> list[str]:
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise ReservationError("reserve needs at least one file pattern")
        return list(dict.fromkeys(self.normalize(p) for p in patterns))

    # --- operations -------------------------------------------------------------------

    def reserve(
        self,
        holder: str,
        patterns: Sequence[str],
        *,
        exclusive: bool = True,
        ttl_s: float = 3600,
        reason: str = "",
        bead_id: str | None = None,
        epic_id: str | None = None,
    ) -> ReserveResult:
        """Grant every pattern or none. Re-reserving a pattern one already holds renews it."""
        holder = _check_holder(holder)
        ttl_ms = _check_ttl(ttl_s)
        if epic_id is not None and not EPIC_ID_RE.match(epic_id):
            raise ReservationError(f"bad epic id {epic_id!r}: epic ids look like bd-<hash>")
        wanted = self._normalize_all(patterns)
        with self._rec.writing() as w:
            now = now_ms()
            _expire(w, now)
            req = _Request(holder, exclusive, reason, bead_id, epic_id, now, now + ttl_ms)
            conflicts = [
                ConflictView(holder=r["holder"], pattern=r["pattern"], requested=p)
                for r in _candidates(w, holder, wanted)
                for p in wanted
                if (exclusive or r["exclusive"]) and patterns_overlap(r["pattern"], p)
            ]
            if conflicts:
                w.append(
                    FileConflict(
                        holder=holder,
                        requested=wanted,
                        conflicts=[c.to_dict() for c in conflicts],
                        bead_id=bead_id,
                        epic_id=epic_id,
                        timestamp=now,
                    )
                )
                return ReserveResult(granted=False, conflicts=conflicts)
            return ReserveResult(granted=True, reservations=_grant(w, req, wanted))

    def release(
        self,
        holder: str,
        *,
        ids: Sequence[str] | None = None,
        patterns: Sequence[str] | None = None,
        reason: str = "",
    ) -> list[ReservationView]:
        """Release by id, by pattern (either matches), or, given neither, everything the
        holder has. Returns what was released; releasing nothing held is not an error."""
        holder = _check_holder(holder)
        wanted_patterns = None if patterns is None else set(self._normalize_all(patterns))
        if isinstance(ids, str):
            ids = [ids]
        with self._rec.writing() as w:
            rows = w.query("SELECT * FROM reservations WHERE holder = ? ORDER BY seq", (holder,))
            if ids is not None or wanted_patterns is not None:
                id_set = set(ids or ())
                pats = wanted_patterns or set()
                rows = [r for r in rows if r["id"] in id_set or r["pattern"] in pats]
            for r in rows:
                w.append(
                    FileReleased(
                        reservation_id=r["id"], holder=holder, pattern=r["pattern"], reason=reason
                    )
                )
            return [ReservationView.from_row(r) for r in rows]

    def renew(
        self, holder: str, *, ttl_s: float, ids: Sequence[str] | None = None
    ) -> list[ReservationView]:
        """Push the expiry of the holder's active reservations (or of ``ids``) to now +
        ttl. An id the holder does not hold (any more) is a NotFoundError."""
        holder = _check_holder(holder)
        ttl_ms = _check_ttl(ttl_s)
        if isinstance(ids, str):
            ids = [ids]
        with self._rec.writing() as w:
            now = now_ms()
            _expire(w, now)
            active = w.query("SELECT * FROM reservations WHERE holder = ? ORDER BY seq", (holder,))
            if ids is not None:
                by_id = {r["id"]: r for r in active}
                missing = [i for i in ids if i not in by_id]
                if missing:
                    raise NotFoundError(
                        f"reservation {missing[0]} is not held by {holder} (released or expired)"
                    )
                active = [by_id[i] for i in dict.fromkeys(ids)]
            out = []
            for r in active:
                expires_at = now + ttl_ms
                w.append(
                    FileRenewed(
                        reservation_id=r["id"], holder=holder, expires_at=expires_at, timestamp=now
                    )
                )
                out.append(ReservationView.from_row({**r, "expires_at": expires_at}))
            return out

    def release_events(self, bead_id: str, holder: str, reason: str) -> list[FileReleased]:
        """The events releasing everything ``holder`` or bead ``bead_id`` holds, for the
        caller to append in the same transaction as the outcome that ends the work."""
        return [
            FileReleased(reservation_id=r.id, holder=r.holder, pattern=r.pattern, reason=reason)
            for r in self.active()
            if r.holder == holder or r.bead_id == bead_id
        ]

    def active(self, holder: str | None = None) -> list[ReservationView]:
        """Unexpired reservations (of one holder), oldest first. Read-only."""
        now = now_ms()
        with self._rec.reading() as r:
            if holder is None:
                rows = r.query(
                    "SELECT * FROM reservations WHERE expires_at > ? ORDER BY seq", (now,)
                )
            else:
                rows = r.query(
                    "SELECT * FROM reservations WHERE holder = ? AND expires_at > ? ORDER BY seq",
                    (holder, now),
                )
        return [ReservationView.from_row(row) for row in rows]

    def conflicts(
        self, holder: str, patterns: Sequence[str], *, exclusive: bool = True
    ) -> list[ConflictView]:
        """What ``reserve`` would run into right now, without reserving. Read-only."""
        wanted = self._normalize_all(patterns)
        return [
            ConflictView(holder=r.holder, pattern=r.pattern, requested=p)
            for r in self.active()
            if r.holder != holder
            for p in wanted
            if (exclusive or r.exclusive) and patterns_overlap(r.pattern, p)
        ]


def _expire(w: Writer, now: int) -> None:
    """Release the expired reservations (lazily, when a write looks at them)."""
    rows = w.query("SELECT * FROM reservations WHERE expires_at <= ? ORDER BY seq", (now,))
    for r in rows:
        w.append(
            FileReleased(
                reservation_id=r["id"],
                holder=r["holder"],
                pattern=r["pattern"],
                reason="expired",
                timestamp=now,
            )
        )


def _candidates(r: Reader, holder: str, wanted: list[str]) -> list[Row]:
    """Other holders' reservations that may overlap one of ``wanted``: those whose
    literal head is an ancestor of (or equal to) a request's head, or lies below it."""
    heads = {pattern_prefix(p) for p in wanted}
    if "" in heads:
        return r.query("SELECT * FROM reservations WHERE holder != ? ORDER BY seq", (holder,))
    found: dict[str, Row] = {}
    for head in sorted(heads):
        parts = head.split("/")
        ancestors = ["", *("/".join(parts[:n]) for n in range(1, len(parts) + 1))]
        rows = r.query(
            f"SELECT * FROM reservations WHERE holder != ? AND (prefix IN"
            f" ({', '.join('?' * len(ancestors))}) OR (prefix > ? AND prefix < ?))",
            # "/" + 1 == "0": the range holds exactly the heads below ``head/``.
            (holder, *ancestors, head + "/", head + "0"),
        )
        for row in rows:
            found[row["id"]] = row
    return sorted(found.values(), key=lambda row: int(row["seq"]))


def _literal_prefix(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/"):
        if has_magic(seg):
            break
        out.append(seg)
    return "/".join(out) or "/"


@dataclass(frozen=True)
class _Request:
    """A reservation request that met no conflict, inside its write transaction."""

    holder: str
    exclusive: bool
    reason: str
    bead_id: str | None
    epic_id: str | None
    now: int
    expires_at: int


def _grant(w: Writer, req: _Request, patterns: list[str]) -> list[ReservationView]:
    """Grant every pattern for ``req``: renew what the holder already holds (same pattern,
    same mode), reserve the rest."""
    held_rows = w.query("SELECT * FROM reservations WHERE holder = ? ORDER BY seq", (req.holder,))
    mine = {(r["pattern"], bool(r["exclusive"])): r for r in held_rows}
    granted: list[ReservationView] = []
    for p in patterns:
        held = mine.get((p, req.exclusive))
        if held is None:
            granted.append(_reserve_new(w, req, p))
            continue
        new_expiry = max(req.expires_at, held["expires_at"])
        w.append(
            FileRenewed(
                reservation_id=held["id"],
                holder=req.holder,
                expires_at=new_expiry,
                timestamp=req.now,
            )
        )
        granted.append(ReservationView.from_row({**held, "expires_at": new_expiry}))
    return granted


def _reserve_new(w: Writer, req: _Request, pattern: str) -> ReservationView:
    event = FileReserved(
        reservation_id=f"rsv-{uuid.uuid4().hex[:12]}",
        holder=req.holder,
        pattern=pattern,
        exclusive=req.exclusive,
        expires_at=req.expires_at,
        reason=req.reason,
        bead_id=req.bead_id,
        epic_id=req.epic_id,
        timestamp=req.now,
    )
    w.append(event)
    row = {**event.model_dump(), "id": event.reservation_id, "created_at": event.timestamp}
    return ReservationView.from_row(row)
