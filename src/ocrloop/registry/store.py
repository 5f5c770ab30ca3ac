"""SQLite registry of everything ocrloop did.

WAL journaling lets readers run while one process writes; every write is one
``BEGIN IMMEDIATE`` transaction, so concurrent writers queue (up to ``timeout`` seconds)
instead of failing or interleaving, and a process killed mid-write leaves the last
committed state. Rows are never updated in place except a run's status/finish fields.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ocrloop.errors import RegistryError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    manifest_hash TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    documents INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    mix_json TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    business TEXT,
    dataset_id INTEGER REFERENCES datasets(id),
    config_json TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    wall_seconds REAL,
    peak_vram_bytes INTEGER,
    gpu_hours REAL,
    cost_usd REAL,
    metrics_json TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    family TEXT NOT NULL,
    base_model TEXT NOT NULL,
    parent_id INTEGER REFERENCES models(id),
    run_id TEXT REFERENCES runs(id),
    business TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    model_name TEXT NOT NULL,
    dataset_id INTEGER REFERENCES datasets(id),
    split TEXT NOT NULL,
    cer REAL NOT NULL,
    wer REAL NOT NULL,
    report_json TEXT NOT NULL,
    run_id TEXT REFERENCES runs(id),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY,
    model_name TEXT NOT NULL,
    business TEXT NOT NULL,
    previous_model_name TEXT,
    decision TEXT NOT NULL CHECK (decision IN ('promoted', 'rejected', 'rollback', 'manual')),
    reason TEXT NOT NULL,
    run_id TEXT REFERENCES runs(id),
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs(started_at);
CREATE INDEX IF NOT EXISTS evaluations_by_model ON evaluations(model_name);
CREATE INDEX IF NOT EXISTS promotions_by_business ON promotions(business, id);
"""

GENERAL = "*"  # the business key of the general (all-business) champion, as stored
GENERAL_NAME = "general"  # its one name everywhere a person reads or types it


def business_label(key: str | None) -> str:
    """How a business key is shown (CLI, metrics labels, API answers): ``general`` for the general scope."""
    return GENERAL_NAME if key in (None, GENERAL) else key


def business_key(name: str | None) -> str:
    """The stored key of a business a person named; ``general`` (or nothing) is the general scope."""
    return GENERAL if name in (None, "", GENERAL_NAME, GENERAL) else name


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Registry:
    """A handle on the registry database at ``path`` (created on first use)."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._connection.row_factory = sqlite3.Row
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute("PRAGMA foreign_keys=ON")
            version = self._connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RegistryError(f"{self.path}: made by a newer ocrloop (schema {version}); upgrade ocrloop")
            if version < SCHEMA_VERSION:
                with self.transaction() as db:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as error:
            raise RegistryError(f"{self.path}: not a usable registry database ({error})") from None

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all statements inside commit together or not at all."""
        db = self._connection
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise RegistryError(f"{self.path}: could not start a write ({error})") from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in self._connection.execute(sql, params).fetchall()]

    # datasets -------------------------------------------------------------------------------

    def record_dataset(self, manifest_hash: str, root: str, mix: list[dict], manifest: dict) -> int:
        """Record a dataset snapshot (idempotent per manifest hash); return its id."""
        documents = sum(row["documents"] for row in mix)
        pages = sum(row["pages"] for row in mix)
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO datasets (manifest_hash, root, documents, pages, mix_json, manifest_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (manifest_hash, root, documents, pages, json.dumps(mix), json.dumps(manifest), _now()),
            )
            return db.execute("SELECT id FROM datasets WHERE manifest_hash = ?", (manifest_hash,)).fetchone()[0]

    def datasets(self) -> list[dict[str, Any]]:
        return self._rows("SELECT id, manifest_hash, root, documents, pages, mix_json, created_at FROM datasets ORDER BY id")

    def dataset_manifest(self, dataset_id: int) -> dict | None:
        row = self._connection.execute("SELECT manifest_json FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        return json.loads(row[0]) if row else None

    # runs -----------------------------------------------------------------------------------

    def start_run(self, kind: str, config: dict, dataset_id: int | None = None, business: str | None = None) -> str:
        """Record a run as ``running`` before it does anything; return its id."""
        run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, kind, status, business, dataset_id, config_json, started_at) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (run_id, kind, business, dataset_id, json.dumps(config, default=str), _now()),
            )
        return run_id

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        wall_seconds: float | None = None,
        peak_vram_bytes: int | None = None,
        gpu_hours: float | None = None,
        cost_usd: float | None = None,
        metrics: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Close a run as ``succeeded`` or ``failed`` with its measurements."""
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, wall_seconds = ?, peak_vram_bytes = ?, gpu_hours = ?,"
                " cost_usd = ?, metrics_json = ?, error = ? WHERE id = ?",
                (status, _now(), wall_seconds, peak_vram_bytes, gpu_hours, cost_usd,
                 json.dumps(metrics) if metrics is not None else None, error, run_id),
            ).rowcount
        if not updated:
            raise RegistryError(f"no run {run_id!r} in {self.path}")

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        if kind:
            return self._rows("SELECT * FROM runs WHERE kind = ? ORDER BY started_at, id", kind)
        return self._rows("SELECT * FROM runs ORDER BY started_at, id")

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", run_id)
        return rows[0] if rows else None

    # models, evaluations, promotions ----------------------------------------------------------

    def add_model(self, name: str, path: str, family: str, base_model: str, *, parent: str | None = None,
                  run_id: str | None = None, business: str | None = None) -> int:
        with self.transaction() as db:
            parent_id = None
            if parent is not None:
                row = db.execute("SELECT id FROM models WHERE name = ?", (parent,)).fetchone()
                parent_id = row[0] if row else None
            cursor = db.execute(
                "INSERT INTO models (name, path, family, base_model, parent_id, run_id, business, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, path, family, base_model, parent_id, run_id, business, _now()),
            )
            return cursor.lastrowid

    def models(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM models ORDER BY id")

    def model(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM models WHERE name = ?", name)
        return rows[0] if rows else None

    def add_evaluation(self, model_name: str, split: str, report: dict, *, dataset_id: int | None = None,
                       run_id: str | None = None) -> int:
        """Record an evaluation report (``EvaluationReport.to_json()``)."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO evaluations (model_name, dataset_id, split, cer, wer, report_json, run_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model_name, dataset_id, split, report["overall"]["cer"], report["overall"]["wer"],
                 json.dumps(report), run_id, _now()),
            )
            return cursor.lastrowid

    def evaluations(self, model_name: str | None = None) -> list[dict[str, Any]]:
        if model_name:
            return self._rows("SELECT * FROM evaluations WHERE model_name = ? ORDER BY id", model_name)
        return self._rows("SELECT * FROM evaluations ORDER BY id")

    def record_promotion(self, model_name: str, decision: str, reason: str, *, business: str = GENERAL,
                         run_id: str | None = None) -> int:
        """Record a promotion decision; a ``promoted``/``rollback``/``manual`` row makes ``model_name`` champion."""
        with self.transaction() as db:
            previous = db.execute(
                "SELECT model_name FROM promotions WHERE business = ? AND decision != 'rejected' ORDER BY id DESC LIMIT 1",
                (business,),
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO promotions (model_name, business, previous_model_name, decision, reason, run_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model_name, business, previous[0] if previous else None, decision, reason, run_id, _now()),
            )
            return cursor.lastrowid

    def promotions(self, business: str | None = None) -> list[dict[str, Any]]:
        if business:
            return self._rows("SELECT * FROM promotions WHERE business = ? ORDER BY id", business)
        return self._rows("SELECT * FROM promotions ORDER BY id")

    def champion(self, business: str = GENERAL) -> str | None:
        """The name of the current champion for ``business`` (``GENERAL`` for all), or None."""
        row = self._connection.execute(
            "SELECT model_name FROM promotions WHERE business = ? AND decision != 'rejected' ORDER BY id DESC LIMIT 1",
            (business,),
        ).fetchone()
        return row[0] if row else None

    def integrity_ok(self) -> bool:
        return self._connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
