"""The loop on a real workspace with the tiny Qwen2.5-VL preset: triggers, decisions, faults, locks."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ocrloop.config import LoopConfig
from ocrloop.data.dataset import Manifest, ManifestEntry
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.evaluate.metrics import ScoredPair, evaluate_pairs
from ocrloop.loop.recipe import FineTuneLoop, compare
from ocrloop.registry.champions import serving_model
from ocrloop.loop.triggers import data_triggers, drift_trigger, schedule_trigger
from ocrloop.registry import Registry
from ocrloop.workspace import Workspace
from tests.conftest import make_workspace, run_cli

def _report(category_cers: dict[str, tuple[str, str]]):
    return evaluate_pairs([ScoredPair(ref, hyp, category) for category, (ref, hyp) in category_cers.items()])


def test_compare_needs_a_real_win_and_no_category_regression():
    champion = _report({"receipt": ("abcdefghij", "abcdefghzz"), "invoice": ("abcdefghij", "abcdefghij")})
    better = _report({"receipt": ("abcdefghij", "abcdefghij"), "invoice": ("abcdefghij", "abcdefghij")})
    same = _report({"receipt": ("abcdefghij", "abcdefghzz"), "invoice": ("abcdefghij", "abcdefghij")})
    trades = _report({"receipt": ("abcdefghij", "abcdefghij"), "invoice": ("abcdefghij", "abcdefghiz")})
    assert compare(better, champion, 0.0, 0.0)[0]
    assert not compare(same, champion, 0.0, 0.0)[0]  # a tie is not a win
    assert not compare(better, champion, 0.2, 0.0)[0]  # 10 points better overall, margin 20
    promoted, reason = compare(trades, champion, 0.0, 0.05)
    assert not promoted and "category invoice regresses" in reason
    assert compare(trades, champion, 0.0, 0.2)[0]


def _manifest(*entries):
    return Manifest([ManifestEntry(h, f"train/{h}.png", "train", c, b, 1, "t") for h, c, b in entries])


def test_data_triggers_count_content_not_names():
    before = _manifest(("a", "receipt", "ecommerce"), ("b", "invoice", "saas"))
    loop = LoopConfig(new_documents_threshold=2)
    assert [t.name for t in data_triggers(before, None, loop)] == ["first-run"]
    assert data_triggers(before, before, loop) == []
    grown = _manifest(("a", "receipt", "ecommerce"), ("b", "invoice", "saas"), ("c", "receipt", "ecommerce"), ("d", "invoice", "saas"))
    assert [t.name for t in data_triggers(grown, before, loop)] == ["new-documents"]
    new_kind = _manifest(("a", "receipt", "ecommerce"), ("b", "invoice", "saas"), ("e", "contract", "legal"))
    assert [t.name for t in data_triggers(new_kind, before, loop)] == ["new-category", "new-business"]


def test_schedule_and_drift_triggers():
    now = dt.datetime(2026, 12, 1, 8, tzinfo=dt.timezone.utc)
    assert schedule_trigger("monthly", "2026-11-30T23:00:00+00:00", now).name == "schedule"
    assert schedule_trigger("monthly", "2026-12-01T01:00:00+00:00", now) is None
    assert schedule_trigger("weekly", "2026-11-24T08:00:00+00:00", now).name == "schedule"
    assert schedule_trigger("weekly", "2026-11-25T00:00:00+00:00", now) is None
    assert schedule_trigger("none", "2020-01-01T00:00:00+00:00", now) is None
    loop = LoopConfig(max_validation_cer=0.1, drift_tolerance=0.02)
    assert drift_trigger(0.2, None, loop).name == "drift"
    assert drift_trigger(0.05, 0.02, loop).name == "drift"
    assert drift_trigger(0.03, 0.02, loop) is None


def test_serving_model_prefers_business_then_general_then_base(tmp_path):
    with Registry(tmp_path / "r.db") as registry:
        assert serving_model(registry, "base-model", "legal").name == "base:base-model"
        registry.add_model("general-v1", "/m/g1", "qwen2.5-vl", "base-model")
        registry.add_model("legal-v1", "/m/l1", "qwen2.5-vl", "base-model", business="legal")
        registry.record_promotion("general-v1", "promoted", "won")
        assert serving_model(registry, "base-model", "legal").path == "/m/g1"
        registry.record_promotion("legal-v1", "promoted", "won", business="legal")
        assert serving_model(registry, "base-model", "legal").path == "/m/l1"
        assert serving_model(registry, "base-model", "saas").path == "/m/g1"


def test_first_run_then_nothing_then_new_documents(tiny_presets, tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    dry = FineTuneLoop(workspace, dry_run=True).run()
    assert not dry.ran and [t.name for t in dry.triggers] == ["first-run"]
    first = FineTuneLoop(workspace).run()
    assert first.ran and first.champion == "base:tiny-qwen2.5-vl" and first.promoted is not None
    assert "CER" in first.reason
    idle = FineTuneLoop(workspace).run()
    assert not idle.ran and idle.reason == "no trigger fired: nothing to do"
    synthesize_dataset(workspace.config.dataset_dir, SynthOptions(n=6, seed=2, scale=0.3, categories=("receipt",)), workspace.config.data)
    second = FineTuneLoop(workspace).run()
    assert second.ran and [t.name for t in second.triggers] == ["new-documents"]
    with Registry(workspace.config.registry_path) as registry:
        loops = registry.runs("loop")
        assert [r["status"] for r in loops] == ["succeeded", "succeeded"]
        decisions = registry.promotions()
        assert len(decisions) == 2 and {d["decision"] for d in decisions} <= {"promoted", "rejected"}
        champion = registry.champion()
        expected = second.challenger if second.promoted else (first.challenger if first.promoted else None)
        assert champion == expected
        assert registry.integrity_ok()


def test_per_business_loop_trains_on_its_own_documents(tiny_presets, tmp_path):
    workspace = make_workspace(tmp_path / "ws", n=12)
    dataset = __import__("ocrloop.data.dataset", fromlist=["Dataset"]).Dataset.open(workspace.config.dataset_dir)
    # A business with test pages: the loop refuses to judge one without (loop.min_test_pages).
    business = next(b for b in sorted({r.business for r in dataset.records}) if dataset.examples("test", business=b))
    result = FineTuneLoop(workspace, business=business, force=True).run()
    assert result.ran and result.business == business
    with Registry(workspace.config.registry_path) as registry:
        (train_run,) = registry.runs("train")
        assert train_run["business"] == business
        card = json.loads((Path(registry.model(result.challenger)["path"]) / "run_card.json").read_text())
        assert {row["business"] for row in card["data"]["mix"]} == {business}


def _loop_process(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "ocrloop", "loop", "run", "-w", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_loop_killed_mid_training_is_retried_and_the_registry_stays_consistent(tiny_presets, tmp_path, request, backend):
    make_workspace(tmp_path / "ws")
    values = yaml.safe_load((tmp_path / "ws/ocrloop.yaml").read_text())
    values["training"]["max_steps"] = 400  # long enough to be killed in the middle
    if backend == "postgresql":
        values["registry_url"] = request.getfixturevalue("postgres_url")
    (tmp_path / "ws/ocrloop.yaml").write_text(yaml.safe_dump(values))
    workspace = Workspace.load(tmp_path / "ws")
    process = _loop_process(tmp_path / "ws")
    checkpoints = workspace.config.models_dir

    def saved_steps() -> list[int]:
        # Checkpoints rotate (save_total_limit): wait for any from step 2 on, not for checkpoint-2 itself.
        return [int(p.name.rsplit("-", 1)[1]) for p in checkpoints.glob("*/checkpoints/checkpoint-*")
                if p.name.rsplit("-", 1)[1].isdigit()]

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(step >= 2 for step in saved_steps()) and process.poll() is None:
        time.sleep(0.05)
    assert any(step >= 2 for step in saved_steps()) and process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Registry(workspace.config.registry_location) as registry:
        assert registry.integrity_ok() and [r["status"] for r in registry.runs("loop")] == ["running"]
    values["training"]["max_steps"] = 4
    (tmp_path / "ws/ocrloop.yaml").write_text(yaml.safe_dump(values))
    result = FineTuneLoop(Workspace.load(tmp_path / "ws")).run()
    assert result.ran
    with Registry(workspace.config.registry_location) as registry:
        loops = registry.runs("loop")
        assert [r["status"] for r in loops] == ["failed", "succeeded"]
        assert "interrupted" in loops[0]["error"]
        assert [r["status"] for r in registry.runs("train")] == ["failed", "succeeded"]
        # The retry resumed in the interrupted run's folder: one model, one output.
        assert len([m for m in registry.models() if m["family"] != "base"]) == 1
        assert json.loads(loops[1]["config_json"])["output_dir"] == json.loads(loops[0]["config_json"])["output_dir"]


def test_two_loops_at_once_train_once(tiny_presets, tmp_path):
    make_workspace(tmp_path / "ws")
    first, second = _loop_process(tmp_path / "ws"), _loop_process(tmp_path / "ws")
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 1], outputs
    assert any("another ocrloop loop is running" in err for _, err in outputs)
    with Registry(tmp_path / "ws/ocrloop.db") as registry:
        assert len(registry.runs("loop")) == 1 and len(registry.runs("train")) == 1


def test_models_promote_and_rollback_by_hand(tiny_presets, tmp_path):
    workspace = make_workspace(tmp_path / "ws", n=6)
    with Registry(workspace.config.registry_path) as registry:
        registry.add_model("v1", "/m/v1", "qwen2.5-vl", "tiny-qwen2.5-vl")
        registry.add_model("v2", "/m/v2", "qwen2.5-vl", "tiny-qwen2.5-vl")
    ws = str(tmp_path / "ws")
    run_cli("models", "promote", "v1", "-w", ws, check=True)
    run_cli("models", "promote", "v2", "-w", ws, check=True)
    assert "v1 is the general champion again (was v2)" in run_cli("models", "rollback", "-w", ws, check=True).stdout
    with Registry(workspace.config.registry_path) as registry:
        assert registry.champion() == "v1"
    missing = run_cli("models", "promote", "v9", "-w", ws)
    assert missing.returncode == 1 and "no model named 'v9'" in missing.stderr
    listed = run_cli("models", "list", "-w", ws, check=True, env={"COLUMNS": "80"}).stdout
    assert "v1" in listed and "general" in listed
    assert max(len(line) for line in listed.splitlines()) <= 80 and "…" not in listed

    # A worse model needs --force; rolling back past the first champion returns to the base model.
    with Registry(workspace.config.registry_path) as registry:
        registry.add_evaluation("v1", "test", _scored(0.10))
        registry.add_evaluation("v2", "test", _scored(0.30))
    worse = run_cli("models", "promote", "v2", "-w", ws)
    assert worse.returncode == 1 and "CER 30.00% vs 10.00%" in worse.stderr and "--force" in worse.stderr
    assert "v2 is now the general champion" in run_cli("models", "promote", "v2", "--force", "-w", ws, check=True).stdout
    run_cli("models", "rollback", "-w", ws, check=True)
    back_to_base = run_cli("models", "rollback", "-w", ws, check=True).stdout
    assert "base:tiny-qwen2.5-vl is the general champion again (was v1)" in back_to_base, back_to_base
    with Registry(workspace.config.registry_path) as registry:
        assert serving_model(registry, "tiny-qwen2.5-vl", None).name == "base:tiny-qwen2.5-vl"
    nothing = run_cli("models", "rollback", "-w", ws)
    assert nothing.returncode == 1 and "served by the base model already" in nothing.stderr


def _scored(cer: float) -> dict:
    overall = {"pages": 1, "cer": cer, "wer": cer, "accuracy": 1 - cer}
    return {"overall": overall, "by_category": {"receipt": overall}, "by_business": {"ecommerce": overall}}


def test_the_loop_refuses_to_judge_on_a_test_split_too_small(tiny_presets, tmp_path):
    make_workspace(tmp_path / "ws", n=6, min_test_pages=50)
    result = run_cli("loop", "run", "-w", str(tmp_path / "ws"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "fewer than loop.min_test_pages = 50" in result.stderr and "ocrloop data add" in result.stderr
    with Registry(tmp_path / "ws" / "ocrloop.db") as registry:
        assert registry.runs() == [] and registry.promotions() == []
