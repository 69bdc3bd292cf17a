"""A crash-safe SQLite store of per-checkpoint results.

Every finished checkpoint is one row, written in its own transaction, so a process killed at any moment
(``SIGKILL`` included) leaves every result committed before the kill intact and nothing half-written.
Rows are keyed by ``(checkpoint_id, settings_hash)``: the checkpoint's identity (see
:meth:`slt.sweeps.checkpoints.Checkpoint.identity`) and a hash of every setting that changes the numbers. A
rerun with the same settings skips the checkpoints already done; a rerun with other settings computes
fresh rows beside the old ones. A finished result is never overwritten, so rerunning cannot create
duplicates or lose work.

The file is an ordinary SQLite database (standard library ``sqlite3``, write-ahead log) that any SQLite
client can read while a sweep is running::

    SELECT step, status, json_extract(summary, '$.llc_mean') FROM results ORDER BY step;
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from slt.results.serialize import to_jsonable

__all__ = ["ResultStore", "StoredResult", "RunInfo", "settings_hash", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    settings_hash TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    checkpoint_id TEXT NOT NULL,
    settings_hash TEXT NOT NULL REFERENCES runs(settings_hash),
    step INTEGER NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT,
    summary TEXT NOT NULL,
    payload TEXT NOT NULL,
    seconds REAL,
    finished REAL NOT NULL,
    PRIMARY KEY (checkpoint_id, settings_hash)
);
CREATE INDEX IF NOT EXISTS results_by_run ON results (settings_hash, step);
"""


def settings_hash(settings: Any) -> str:
    """A short, stable hash of JSON-able settings (key order does not matter)."""
    text = json.dumps(to_jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StoredResult:
    """One checkpoint's row in the store.

    Attributes
    ----------
    checkpoint_id : str
        Identity of the checkpoint (path, size and modification time, or a content hash; and step).
    settings_hash : str
        Hash of the settings the result was computed with.
    step : int
        Training step.
    source : str
        Where the checkpoint came from (a path, or a description of weights in memory).
    status : {"done", "failed"}
        Whether the checkpoint was measured.
    error : str or None
        The error message of a failed checkpoint.
    summary : dict
        Scalars per measure (``llc_mean``, ``llc_stderr``, ``train_loss``, ...).
    payload : dict
        Full results per measure (``payload["llc"]`` is an ``LLCResult.to_dict()``), plus the warnings
        raised while measuring.
    seconds : float
        Wall time spent on the checkpoint.
    finished : float
        Unix time at which the row was written.
    """

    checkpoint_id: str
    settings_hash: str
    step: int
    source: str
    status: str
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    seconds: float = float("nan")
    finished: float = float("nan")

    @property
    def ok(self) -> bool:
        """``True`` when the checkpoint was measured."""
        return self.status == "done"

    @property
    def run(self) -> str:
        """The training run the checkpoint belongs to (see :func:`slt.sweeps.trajectory.run_key`).

        Rows written before runs were recorded fall back to the folder of their source file.
        """
        stored = self.payload.get("run") if isinstance(self.payload, dict) else None
        if isinstance(stored, str):
            return stored
        return os.path.dirname(self.source) if os.path.isabs(self.source) else ""


@dataclass(frozen=True)
class RunInfo:
    """A set of settings that results in the store were computed with."""

    settings_hash: str
    settings: dict[str, Any]
    created: float
    last_used: float
    num_done: int
    num_failed: int


class ResultStore:
    """Per-checkpoint results in an SQLite file, committed one checkpoint at a time.

    Parameters
    ----------
    path : str or PathLike
        The database file (created if missing), or ``":memory:"`` for a store that lives only as long
        as this object.
    timeout : float
        Seconds to wait for a lock held by another connection.
    readonly : bool
        Open an existing store for reading only: nothing is written (no tables, no journal mode), so a
        store on read-only media or owned by someone else can be read. ``slt report`` and
        :meth:`slt.Trajectory.load` open stores this way.

    Raises
    ------
    ValueError
        When the file is not an SQLite database, or is one that is not an slt result store (another
        application's database is refused without being changed).

    Notes
    -----
    One process writes (the process that runs the sweep; workers only compute); readers may open the
    file at the same time. The write-ahead log keeps readers and the writer from blocking each other.
    On file systems without shared memory (some network file systems) SQLite cannot use the
    write-ahead log; the store then falls back to SQLite's rollback journal, equally safe.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        if readonly:
            self._conn = _connect_readonly(self.path, timeout)
            version = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = version[0] if version else "0"
        else:
            if self.path != ":memory:":
                parent = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(parent):
                    raise ValueError(
                        f"cannot create the result store {self.path}: folder {parent} does not exist"
                    )
            try:
                self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
                _check_is_store(self._conn, self.path, may_be_empty=True)
                self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                if self.path != ":memory:":
                    # SQLite keeps its rollback journal (equally crash-safe) where WAL is unavailable
                    self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
                self._conn.execute("PRAGMA synchronous = FULL")
                with self._transaction():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                version = self._conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise ValueError(f"{self.path} is not a usable slt result store: {exc}") from exc
        if int(version) > SCHEMA_VERSION:
            raise ValueError(
                f"{self.path} was written by a newer slt (store schema {version}, this slt reads "
                f"{SCHEMA_VERSION})"
            )

    # -- context management -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (results are already committed)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({self.path!r})"

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    # -- notes kept beside the results ------------------------------------------------------------

    def get_note(self, key: str) -> Any:
        """The JSON value stored under ``key`` by :meth:`put_note`, or ``None``."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (f"note:{key}",)).fetchone()
        return json.loads(row[0]) if row else None

    def put_note(self, key: str, value: Any) -> None:
        """Store a JSON-able ``value`` under ``key``, replacing any earlier one.

        Sweeps keep the sampler settings they chose at reference checkpoints this way, so that a rerun
        does not choose again.
        """
        with self._transaction():
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"note:{key}", json.dumps(to_jsonable(value), sort_keys=True)),
            )

    # -- runs -------------------------------------------------------------------------------------

    def register_run(self, settings: dict[str, Any]) -> str:
        """Record a set of settings (or mark it used again) and return its hash."""
        key = settings_hash(settings)
        now = time.time()
        text = json.dumps(to_jsonable(settings), sort_keys=True)
        with self._transaction():
            self._conn.execute(
                "INSERT INTO runs (settings_hash, settings, created, last_used) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(settings_hash) DO UPDATE SET last_used = excluded.last_used",
                (key, text, now, now),
            )
        return key

    def runs(self) -> list[RunInfo]:
        """Every set of settings in the store, most recently used first."""
        rows = self._conn.execute(
            "SELECT r.settings_hash, r.settings, r.created, r.last_used, "
            "COALESCE(SUM(s.status = 'done'), 0), COALESCE(SUM(s.status = 'failed'), 0) "
            "FROM runs r LEFT JOIN results s ON s.settings_hash = r.settings_hash "
            "GROUP BY r.settings_hash ORDER BY r.last_used DESC, r.rowid DESC"
        ).fetchall()
        return [RunInfo(h, json.loads(s), c, u, int(d), int(f)) for h, s, c, u, d, f in rows]

    def resolve_run(self, settings_hash: str | None = None) -> RunInfo:
        """The run with the given hash (or hash prefix), or the most recently used one."""
        runs = self.runs()
        if not runs:
            raise ValueError(f"the result store {self.path} holds no results yet")
        if settings_hash is None:
            return runs[0]
        matches = [r for r in runs if r.settings_hash.startswith(settings_hash)]
        if len(matches) != 1:
            known = ", ".join(r.settings_hash for r in runs)
            what = "no run" if not matches else "several runs"
            raise ValueError(f"{what} in {self.path} match settings hash {settings_hash!r}; known: {known}")
        return matches[0]

    # -- results ----------------------------------------------------------------------------------

    def record(self, result: StoredResult) -> bool:
        """Commit one checkpoint's result atomically.

        A finished (``"done"``) row is never replaced; a failed row is replaced by a newer attempt.
        ``result.finished`` is set to the commit time when the row is written.

        Returns
        -------
        bool
            Whether the row was written.
        """
        now = time.time()
        with self._transaction():
            cursor = self._conn.execute(
                "INSERT INTO results (checkpoint_id, settings_hash, step, source, status, error, summary, "
                "payload, seconds, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(checkpoint_id, settings_hash) DO UPDATE SET step = excluded.step, "
                "source = excluded.source, status = excluded.status, error = excluded.error, "
                "summary = excluded.summary, payload = excluded.payload, seconds = excluded.seconds, "
                "finished = excluded.finished WHERE results.status != 'done'",
                (
                    result.checkpoint_id,
                    result.settings_hash,
                    int(result.step),
                    result.source,
                    result.status,
                    result.error,
                    json.dumps(to_jsonable(result.summary)),
                    json.dumps(to_jsonable(result.payload)),
                    _nullable(result.seconds),
                    now,
                ),
            )
            written = cursor.rowcount > 0
        if written:
            result.finished = now
        return written

    def statuses(self, settings_hash: str) -> dict[str, str]:
        """``{checkpoint_id: status}`` of every row computed with ``settings_hash``."""
        rows = self._conn.execute(
            "SELECT checkpoint_id, status FROM results WHERE settings_hash = ?", (settings_hash,)
        ).fetchall()
        return dict(rows)

    def results(self, settings_hash: str, checkpoint_ids: Iterable[str] | None = None) -> list[StoredResult]:
        """Rows computed with ``settings_hash`` (only those of ``checkpoint_ids`` if given), by step."""
        rows = self._conn.execute(
            "SELECT rowid, checkpoint_id, settings_hash, step, source, status, error, summary, payload, "
            "seconds, finished FROM results WHERE settings_hash = ? ORDER BY step, finished",
            (settings_hash,),
        ).fetchall()
        wanted = None if checkpoint_ids is None else set(checkpoint_ids)
        return [self._row(row) for row in rows if wanted is None or row[1] in wanted]

    def _row(self, row: tuple[Any, ...]) -> StoredResult:
        """A :class:`StoredResult` from a row of the results table; a bad value names its row and column."""
        rowid, cid, key, step, source, status, error, summary, payload, seconds, finished = row

        def bad(column: str, value: Any, expected: str) -> ValueError:
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
            return ValueError(
                f"the result store {self.path} is damaged: row {rowid} of table results (checkpoint "
                f"{str(cid)[:80]!r}) has {text} in column {column!r}, expected {expected}; delete that row "
                "or recompute into a new store"
            )

        def number(column: str, value: Any) -> float:
            if value is None:
                return float("nan")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise bad(column, value, "a number")

        def mapping(column: str, value: Any) -> dict[str, Any]:
            try:
                decoded = json.loads(value)
            except (TypeError, ValueError):
                raise bad(column, value, "a JSON object") from None
            if not isinstance(decoded, dict):
                raise bad(column, value, "a JSON object")
            return decoded

        for column, value in (("checkpoint_id", cid), ("settings_hash", key), ("source", source)):
            if not isinstance(value, str):
                raise bad(column, value, "text")
        if not isinstance(step, int) or isinstance(step, bool):
            raise bad("step", step, "an integer")
        if status not in ("done", "failed"):
            raise bad("status", status, "'done' or 'failed'")
        if error is not None and not isinstance(error, str):
            raise bad("error", error, "text or NULL")
        return StoredResult(
            checkpoint_id=cid,
            settings_hash=key,
            step=step,
            source=source,
            status=status,
            error=error,
            summary=mapping("summary", summary),
            payload=mapping("payload", payload),
            seconds=number("seconds", seconds),
            finished=number("finished", finished),
        )

    def count(self, settings_hash: str | None = None, status: str | None = None) -> int:
        """Number of result rows (for one settings hash and/or one status)."""
        query, args = "SELECT COUNT(*) FROM results WHERE 1 = 1", []
        if settings_hash is not None:
            query += " AND settings_hash = ?"
            args.append(settings_hash)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        return int(self._conn.execute(query, args).fetchone()[0])


_STORE_TABLES = {"meta", "runs", "results"}


def _check_is_store(conn: sqlite3.Connection, path: str, *, may_be_empty: bool) -> None:
    """Refuse, before anything is written, a database that is not an slt result store."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and may_be_empty:
        return
    if not _STORE_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:8]) or "none"
        conn.close()
        raise ValueError(
            f"{path} is an SQLite database but not an slt result store (its tables: {shown}); slt left it "
            "unchanged. Give slt a new file name or a store written by slt analyze."
        )


def _connect_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """Open an existing store without writing to it (read-only URI, immutable when needed)."""
    from urllib.parse import quote

    if path == ":memory:" or not os.path.isfile(path):
        raise ValueError(f"no result store at {path}")
    uri = "file:" + quote(os.path.abspath(path))
    last: Exception | None = None
    # a store in write-ahead-log mode needs its -shm file; where that cannot be created (read-only
    # folder or media) SQLite can still read the file as immutable
    for options in ("?mode=ro", "?mode=ro&immutable=1"):
        conn = None
        try:
            conn = sqlite3.connect(uri + options, uri=True, timeout=timeout, isolation_level=None)
            _check_is_store(conn, path, may_be_empty=False)
            conn.execute("SELECT COUNT(*) FROM results").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            last = exc
            if conn is not None:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise ValueError(f"{path} is not a usable slt result store: {exc}") from exc
    raise ValueError(f"cannot read the result store {path}: {last}")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _nullable(value: float) -> float | None:
    return None if value != value else float(value)
