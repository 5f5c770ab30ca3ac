"""The registry on both back-ends (a SQLite file, a real PostgreSQL server): no lost writes between processes,
no half-written transaction after a kill, the same answers."""

import multiprocessing
import os
import signal
import sqlite3
import time

import pytest

from ocrloop.errors import RegistryError
from ocrloop.registry import Registry


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """Where a fresh registry lives: a SQLite file, or an empty database on the test PostgreSQL server."""
    return str(tmp_path / "registry.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _write_runs(path: str, worker: int, count: int) -> None:
    with Registry(path) as registry:
        for index in range(count):
            run_id = registry.start_run("train", {"worker": worker, "index": index})
            registry.finish_run(run_id, "succeeded", wall_seconds=0.1, metrics={"index": index})
            registry.add_evaluation(f"model-{worker}-{index}", "test", {"overall": {"cer": 0.1, "wer": 0.2}}, run_id=run_id)


def test_two_processes_writing_at_once_lose_nothing(location):
    path = location
    Registry(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_runs, args=(path, worker, 60)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with Registry(path) as registry:
        assert registry.integrity_ok()
        runs = registry.runs()
        assert len(runs) == 120
        assert {r["status"] for r in runs} == {"succeeded"}
        assert len(registry.evaluations()) == 120


def test_run_lifecycle_records_failures_too(location):
    with Registry(location) as registry:
        run_id = registry.start_run("train", {"epochs": 3})
        assert registry.run(run_id)["status"] == "running"
        registry.finish_run(run_id, "failed", error="CUDA out of memory", wall_seconds=12.5, cost_usd=0.01)
        row = registry.run(run_id)
        assert (row["status"], row["error"], row["wall_seconds"]) == ("failed", "CUDA out of memory", 12.5)
        with pytest.raises(RegistryError):
            registry.finish_run("no-such-run", "failed")


def test_champion_follows_promotions_and_ignores_rejections(location):
    with Registry(location) as registry:
        assert registry.champion() is None
        registry.add_model("v1", "/m/v1", "deepseek-ocr-2", "base")
        registry.add_model("v2", "/m/v2", "deepseek-ocr-2", "base", parent="v1")
        registry.record_promotion("v1", "promoted", "first model")
        registry.record_promotion("v2", "rejected", "CER worse on invoices")
        assert registry.champion() == "v1"
        registry.record_promotion("v2", "promoted", "better", business="saas")
        assert registry.champion("saas") == "v2" and registry.champion() == "v1"
        assert registry.promotions("saas")[0]["previous_model_name"] is None
        assert registry.model("v2")["parent_id"] == registry.model("v1")["id"]


def test_dataset_snapshot_is_idempotent_per_manifest(location):
    with Registry(location) as registry:
        mix = [{"split": "train", "category": "receipt", "business": "ecommerce", "documents": 2, "pages": 2}]
        first = registry.record_dataset("abc", "/data", mix, {"documents": []})
        again = registry.record_dataset("abc", "/data", mix, {"documents": []})
        assert first == again and len(registry.datasets()) == 1
        assert registry.dataset_manifest(first) == {"documents": []}


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bogus = tmp_path / "r.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not a usable registry"):
        Registry(bogus)


def test_wal_mode_is_on(tmp_path):
    Registry(tmp_path / "r.db").close()
    assert sqlite3.connect(tmp_path / "r.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"



def _write_until_killed(location: str, ready) -> None:
    """Each transaction writes a run, its model and its evaluation together."""
    with Registry(location) as registry:
        for index in range(100_000):
            with registry.transaction() as db:
                db.execute("INSERT INTO runs (id, kind, status, config_json, started_at) VALUES (?, 'train', 'succeeded', '{}', 'now')",
                           (f"run-{index}",))
                db.execute("INSERT INTO models (name, path, family, base_model, run_id, created_at) VALUES (?, '/m', 'f', 'b', ?, 'now')",
                           (f"model-{index}", f"run-{index}"))
                db.execute("INSERT INTO evaluations (model_name, split, cer, wer, report_json, run_id, created_at)"
                           " VALUES (?, 'test', 0.1, 0.2, '{}', ?, 'now')", (f"model-{index}", f"run-{index}"))
            if index == 20:
                ready.set()


def test_a_writer_killed_mid_transaction_leaves_whole_transactions_only(location):
    Registry(location).close()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    writer = context.Process(target=_write_until_killed, args=(location, ready))
    writer.start()
    assert ready.wait(timeout=120), "the writer never got going"
    time.sleep(0.05)  # somewhere inside a later transaction
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(timeout=30)
    with Registry(location) as registry:
        assert registry.integrity_ok()
        runs, models, evaluations = len(registry.runs()), len(registry.models()), len(registry.evaluations())
        assert runs > 20 and runs == models == evaluations  # every transaction whole, or not there at all
        registry.start_run("train", {})  # and the registry takes writes again at once
