"""Durable job state: one SQLite database (WAL) plus atomically written blob files.

Layout under the state directory::

    edgefl.sqlite3                      jobs, versions, device sessions, tasks, buffered updates
    jobs/<job_id>/versions/v000001.npz  the global weights of each model version
    jobs/<job_id>/updates/<uuid>.f32    the arrays of each buffered (accepted, not yet
                                        aggregated) update: float32, parameters in name order
    jobs/<job_id>/metrics.jsonl         one JSON object per evaluated model version

Rules that make a killed server resume exactly where it stood and count no update twice:

* Every state change of a job arrives as a list of :data:`Change` values and is applied in **one**
  transaction by :meth:`Store.commit` (``synchronous=NORMAL`` in WAL mode: a committed transaction
  survives the process being killed). The job runtime commits before it replies.
* A model version's weights file is written to a temporary name and ``os.replace``\\ d *before* the
  transaction that records the version, so a committed version always has its weights; a file
  without a row (killed in between) is simply overwritten when that version is made again.
* An accepted update is a row plus a file holding its arrays; the file is written before the
  transaction that inserts the row, so a committed row always finds a complete file (a file
  without a row, from a kill in between, is deleted when the job is opened again). The transaction
  that records a new model version deletes every buffered update row of the job (the aggregator
  consumed them) and stores the aggregator's state; the files go after it commits. After a restart
  the buffered updates re-fed to a fresh aggregator are exactly those not yet folded into a
  version. (Update arrays live in files rather than in SQLite because a 250 KB blob per update
  costs several milliseconds of WAL writing and checkpointing; a plain file write costs a tenth.)
* Task ids are rows too (open, accepted, or closed with a reason), so a report for a task handed out
  before a restart is still recognised, and a duplicate is still a duplicate.

The store is synchronous and is used from the event-loop thread only; a commit takes well under a
millisecond (no fsync per commit in WAL/NORMAL mode).
"""

from __future__ import annotations

import io
import os
import sqlite3
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import attrs
import numpy as np
import orjson

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from edgefl.api import Weights

__all__ = [
    "Change",
    "CloseTask",
    "DeleteDevice",
    "JobRow",
    "PutDevice",
    "PutJobState",
    "PutTask",
    "PutUpdate",
    "PutVersion",
    "Store",
    "StoreError",
    "StoredUpdate",
    "TaskRecord",
    "decode_weights",
    "encode_weights",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0,
    current_version INTEGER NOT NULL DEFAULT 0,
    next_ticket INTEGER NOT NULL DEFAULT 1,
    finished INTEGER NOT NULL DEFAULT 0,
    evaluated_version INTEGER NOT NULL DEFAULT 0,
    counters TEXT NOT NULL DEFAULT '{}',
    aggregator_state BLOB
);
CREATE TABLE IF NOT EXISTS versions (
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    num_updates INTEGER NOT NULL,
    PRIMARY KEY (job_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    job_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ticket INTEGER NOT NULL,
    version INTEGER NOT NULL,
    issued_at REAL NOT NULL,
    status TEXT NOT NULL,
    closed_at REAL,
    PRIMARY KEY (job_id, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS updates (
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    num_samples INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    file TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT
);
CREATE INDEX IF NOT EXISTS updates_job ON updates (job_id, seq);
"""


class StoreError(RuntimeError):
    """The state directory or database cannot be used (message names the path and the cause)."""


# --------------------------------------------------------------------------------------------------
# Values


@attrs.frozen
class JobRow:
    """A job's scalar state as last committed."""

    job_id: str
    folder: str
    fingerprint: str
    name: str
    current_version: int
    next_ticket: int
    finished: bool
    evaluated_version: int
    counters: Mapping[str, int]
    aggregator_state: dict[str, np.ndarray] | None


@attrs.frozen
class TaskRecord:
    """One task handed out: the server's authoritative record of who got which model version.

    ``status``: ``open`` (awaiting the report), ``accepted``, or the reason it was closed without
    being aggregated (``stale``, ``expired``, ``superseded``, ``invalid``, ...).
    """

    task_id: str
    device_id: str
    ticket: int
    version: int
    issued_at: float
    status: str = "open"
    closed_at: float | None = None


@attrs.frozen(eq=False)
class StoredUpdate:
    """An accepted, not yet aggregated update as read back from the database."""

    task_id: str
    device_id: str
    version: int
    num_samples: int
    delta: Weights


# Changes: what a job commits, applied in one transaction by Store.commit.


@attrs.frozen
class PutDevice:
    """Insert or replace a device's session (any JSON-able mapping)."""

    device_id: str
    data: Mapping[str, object]


@attrs.frozen
class DeleteDevice:
    device_id: str


@attrs.frozen
class PutTask:
    record: TaskRecord


@attrs.frozen
class CloseTask:
    task_id: str
    status: str
    at: float


@attrs.frozen(eq=False)
class PutUpdate:
    """An accepted update; its task is marked ``accepted`` in the same transaction."""

    task_id: str
    device_id: str
    version: int
    num_samples: int
    delta: Weights
    at: float


@attrs.frozen(eq=False)
class PutVersion:
    """A new model version: its weights (file), the consumption of every buffered update, and the
    aggregator state, all at once."""

    version: int
    weights: Weights
    num_updates: int
    aggregator_state: Mapping[str, np.ndarray]
    at: float


@attrs.frozen
class PutJobState:
    """Scalar job fields; ``None`` leaves a field as it is."""

    next_ticket: int | None = None
    finished: bool | None = None
    counters: Mapping[str, int] | None = None
    evaluated_version: int | None = None


Change: TypeAlias = (
    PutDevice | DeleteDevice | PutTask | CloseTask | PutUpdate | PutVersion | PutJobState
)


# --------------------------------------------------------------------------------------------------
# Array encodings


def encode_weights(weights: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` image of ``weights`` (uncompressed; float32 stays float32)."""
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in weights.items()}
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_weights(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_weights` (never unpickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _pack_delta(delta: Mapping[str, np.ndarray], schema: Mapping[str, tuple[int, ...]]) -> bytes:
    """The float32 bytes of every tensor, in sorted name order (the schema gives the layout)."""
    if delta.keys() != schema.keys():
        raise ValueError(
            f"update names {sorted(delta)} do not match the job's parameters {sorted(schema)}"
        )
    return b"".join(
        np.ascontiguousarray(delta[name], dtype=np.float32).tobytes() for name in sorted(schema)
    )


def _unpack_delta(blob: bytes, schema: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    flat = np.frombuffer(blob, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(schema):
        shape = schema[name]
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = flat[offset : offset + n].reshape(shape).copy()
        offset += n
    if offset != flat.size:
        raise StoreError(f"stored update has {flat.size} floats, the job's schema {offset}")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# The store


class Store:
    """The server's durable state (see the module docstring). Not thread-safe: one thread uses it.

    Args:
        root: the state directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "edgefl.sqlite3", isolation_level=None, check_same_thread=True
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=OFF")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"state directory {self.root}: {e}") from None
        self._schemas: dict[str, dict[str, tuple[int, ...]]] = {}
        self._closed = False

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close it (again: no effect)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # -- jobs ------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def version_path(self, job_id: str, version: int) -> Path:
        return self.job_dir(job_id) / "versions" / f"v{version:06d}.npz"

    def updates_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "updates"

    def metrics_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "metrics.jsonl"

    def open_job(
        self,
        *,
        folder: str,
        fingerprint: str,
        name: str,
        schema: Mapping[str, tuple[int, ...]],
        now: float,
    ) -> tuple[JobRow, bool]:
        """The job for this folder: resumed when the folder (by path) was seen before with the same
        content fingerprint, otherwise created with a fresh id (an earlier job of the folder is
        retired: its id stays known so late reports can be answered).

        Returns:
            (the job's row, whether it was resumed).
        """
        row = self._db.execute(
            "SELECT job_id FROM jobs WHERE folder = ? AND fingerprint = ? AND retired = 0",
            (folder, fingerprint),
        ).fetchone()
        resumed = row is not None
        if row is None:
            job_id = str(uuid.uuid4())
            with self._transaction():
                self._db.execute("UPDATE jobs SET retired = 1 WHERE folder = ?", (folder,))
                self._db.execute(
                    "INSERT INTO jobs (job_id, folder, fingerprint, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (job_id, folder, fingerprint, name, now),
                )
        else:
            job_id = row[0]
        self._schemas[job_id] = {k: tuple(v) for k, v in schema.items()}
        (self.job_dir(job_id) / "versions").mkdir(parents=True, exist_ok=True)
        updates = self.updates_dir(job_id)
        updates.mkdir(parents=True, exist_ok=True)
        referenced = {
            r[0] for r in self._db.execute("SELECT file FROM updates WHERE job_id = ?", (job_id,))
        }
        for path in updates.iterdir():  # left by a kill between a file and its row, or after
            if path.name not in referenced:  # the version that consumed it
                path.unlink(missing_ok=True)
        return self.job_row(job_id), resumed

    def job_row(self, job_id: str) -> JobRow:
        row = self._db.execute(
            "SELECT job_id, folder, fingerprint, name, current_version, next_ticket, finished,"
            " evaluated_version, counters, aggregator_state FROM jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id} in {self.root}")
        state = decode_weights(row[9]) if row[9] is not None else None
        return JobRow(
            job_id=row[0],
            folder=row[1],
            fingerprint=row[2],
            name=row[3],
            current_version=row[4],
            next_ticket=row[5],
            finished=bool(row[6]),
            evaluated_version=row[7],
            counters=orjson.loads(row[8]),
            aggregator_state=state,
        )

    def retired_job_ids(self) -> set[str]:
        """Ids of jobs that existed but were replaced by a changed job folder."""
        return {r[0] for r in self._db.execute("SELECT job_id FROM jobs WHERE retired = 1")}

    # -- reads -----------------------------------------------------------------------------------

    def read_version(self, job_id: str, version: int) -> dict[str, np.ndarray]:
        """The weights of a committed model version (safe to call from any thread)."""
        return decode_weights(self.version_path(job_id, version).read_bytes())

    def devices(self, job_id: str) -> Iterator[dict[str, object]]:
        for (data,) in self._db.execute("SELECT data FROM devices WHERE job_id = ?", (job_id,)):
            yield orjson.loads(data)

    def task(self, job_id: str, task_id: str) -> TaskRecord | None:
        row = self._db.execute(
            "SELECT task_id, device_id, ticket, version, issued_at, status, closed_at"
            " FROM tasks WHERE job_id = ? AND task_id = ?",
            (job_id, task_id),
        ).fetchone()
        return None if row is None else TaskRecord(*row)

    def open_tasks(self, job_id: str) -> list[TaskRecord]:
        rows = self._db.execute(
            "SELECT task_id, device_id, ticket, version, issued_at, status, closed_at"
            " FROM tasks WHERE job_id = ? AND status = 'open'",
            (job_id,),
        )
        return [TaskRecord(*r) for r in rows]

    def pending_updates(self, job_id: str) -> Iterator[StoredUpdate]:
        """The accepted updates not yet consumed by a version, in acceptance order (one at a time,
        so replaying them needs memory for one update, not all)."""
        schema = self._schemas[job_id]
        folder = self.updates_dir(job_id)
        rows = self._db.execute(
            "SELECT task_id, device_id, version, num_samples, file FROM updates"
            " WHERE job_id = ? ORDER BY seq",
            (job_id,),
        ).fetchall()
        for task_id, device_id, version, num_samples, name in rows:
            try:
                blob = (folder / name).read_bytes()
            except OSError as e:
                raise StoreError(f"buffered update of task {task_id}: {e}") from None
            yield StoredUpdate(
                task_id, device_id, version, num_samples, _unpack_delta(blob, schema)
            )

    def count_pending(self, job_id: str) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM updates WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(n)

    def versions(self, job_id: str) -> list[tuple[int, float, int]]:
        """(version, created_at, num_updates) of every committed version, oldest first."""
        return list(
            self._db.execute(
                "SELECT version, created_at, num_updates FROM versions WHERE job_id = ?"
                " ORDER BY version",
                (job_id,),
            )
        )

    # -- writes ----------------------------------------------------------------------------------

    def commit(self, job_id: str, changes: Sequence[Change]) -> None:
        """Apply ``changes`` to job ``job_id`` in one transaction (nothing when empty).

        Raises:
            StoreError: the database refused the write (disk full, ...); nothing was applied.
        """
        if not changes:
            return
        # Files first: a committed version or update row must always find its file.
        written: list[Path] = []
        files: dict[str, str] = {}  # task id -> update file name
        for change in changes:
            if isinstance(change, PutVersion):
                _write_atomic(
                    self.version_path(job_id, change.version), encode_weights(change.weights)
                )
            elif isinstance(change, PutUpdate):
                name = f"{uuid.uuid4().hex}.f32"
                path = self.updates_dir(job_id) / name
                path.write_bytes(_pack_delta(change.delta, self._schemas[job_id]))
                written.append(path)
                files[change.task_id] = name
        consumed: list[str] = []
        db = self._db
        try:
            with self._transaction():
                for change in changes:
                    match change:
                        case PutDevice(device_id, data):
                            db.execute(
                                "INSERT OR REPLACE INTO devices (job_id, device_id, data)"
                                " VALUES (?, ?, ?)",
                                (job_id, device_id, orjson.dumps(data)),
                            )
                        case DeleteDevice(device_id):
                            db.execute(
                                "DELETE FROM devices WHERE job_id = ? AND device_id = ?",
                                (job_id, device_id),
                            )
                        case PutTask(r):
                            db.execute(
                                "INSERT OR REPLACE INTO tasks (job_id, task_id, device_id, ticket,"
                                " version, issued_at, status, closed_at)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (
                                    job_id,
                                    r.task_id,
                                    r.device_id,
                                    r.ticket,
                                    r.version,
                                    r.issued_at,
                                    r.status,
                                    r.closed_at,
                                ),
                            )
                        case CloseTask(task_id, status, at):
                            db.execute(
                                "UPDATE tasks SET status = ?, closed_at = ?"
                                " WHERE job_id = ? AND task_id = ?",
                                (status, at, job_id, task_id),
                            )
                        case PutUpdate():
                            db.execute(
                                "INSERT INTO updates (job_id, task_id, device_id, version,"
                                " num_samples, accepted_at, file) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (
                                    job_id,
                                    change.task_id,
                                    change.device_id,
                                    change.version,
                                    change.num_samples,
                                    change.at,
                                    files[change.task_id],
                                ),
                            )
                            db.execute(
                                "UPDATE tasks SET status = 'accepted', closed_at = ?"
                                " WHERE job_id = ? AND task_id = ?",
                                (change.at, job_id, change.task_id),
                            )
                        case PutVersion():
                            db.execute(
                                "INSERT OR REPLACE INTO versions (job_id, version, created_at,"
                                " num_updates) VALUES (?, ?, ?, ?)",
                                (job_id, change.version, change.at, change.num_updates),
                            )
                            consumed += [
                                r[0]
                                for r in db.execute(
                                    "SELECT file FROM updates WHERE job_id = ?", (job_id,)
                                )
                            ]
                            db.execute("DELETE FROM updates WHERE job_id = ?", (job_id,))
                            db.execute(
                                "UPDATE jobs SET current_version = ?, aggregator_state = ?"
                                " WHERE job_id = ?",
                                (change.version, encode_weights(change.aggregator_state), job_id),
                            )
                        case PutJobState(next_ticket, finished, counters, evaluated):
                            if next_ticket is not None:
                                db.execute(
                                    "UPDATE jobs SET next_ticket = ? WHERE job_id = ?",
                                    (next_ticket, job_id),
                                )
                            if finished is not None:
                                db.execute(
                                    "UPDATE jobs SET finished = ? WHERE job_id = ?",
                                    (int(finished), job_id),
                                )
                            if counters is not None:
                                db.execute(
                                    "UPDATE jobs SET counters = ? WHERE job_id = ?",
                                    (orjson.dumps(dict(counters)), job_id),
                                )
                            if evaluated is not None:
                                db.execute(
                                    "UPDATE jobs SET evaluated_version = ? WHERE job_id = ?",
                                    (evaluated, job_id),
                                )
        except sqlite3.Error as e:
            for path in written:
                path.unlink(missing_ok=True)
            raise StoreError(f"cannot commit job {job_id} state to {self.root}: {e}") from e
        folder = self.updates_dir(job_id)
        for name in consumed:
            (folder / name).unlink(missing_ok=True)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
