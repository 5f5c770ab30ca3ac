import multiprocessing
import sqlite3

import pytest

from ocrloop.errors import RegistryError
from ocrloop.registry import Registry


def _write_runs(path: str, worker: int, count: int) -> None:
    with Registry(path) as registry:
        for index in range(count):
            run_id = registry.start_run("train", {"worker": worker, "index": index})
            registry.finish_run(run_id, "succeeded", wall_seconds=0.1, metrics={"index": index})
            registry.add_evaluation(f"model-{worker}-{index}", "test", {"overall": {"cer": 0.1, "wer": 0.2}}, run_id=run_id)


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "registry.db")
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


def test_run_lifecycle_records_failures_too(tmp_path):
    with Registry(tmp_path / "r.db") as registry:
        run_id = registry.start_run("train", {"epochs": 3})
        assert registry.run(run_id)["status"] == "running"
        registry.finish_run(run_id, "failed", error="CUDA out of memory", wall_seconds=12.5, cost_usd=0.01)
        row = registry.run(run_id)
        assert (row["status"], row["error"], row["wall_seconds"]) == ("failed", "CUDA out of memory", 12.5)
        with pytest.raises(RegistryError):
            registry.finish_run("no-such-run", "failed")


def test_champion_follows_promotions_and_ignores_rejections(tmp_path):
    with Registry(tmp_path / "r.db") as registry:
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


def test_dataset_snapshot_is_idempotent_per_manifest(tmp_path):
    with Registry(tmp_path / "r.db") as registry:
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
