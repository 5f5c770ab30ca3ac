"""The loop recipe: decide whether to retrain, train a challenger, promote it only if it wins.

``FineTuneLoop(workspace, business=...).run()`` holds the workspace's loop lock for its whole
run (a second loop started meanwhile stops at once with a clear message), first closes runs
left ``running`` by a killed loop (their training resumes from its checkpoints), then:
triggers -> challenger training -> evaluation of challenger and champion on the same test
pages -> one comparison -> one promotion row. Every step is a registry transaction, so a
loop killed anywhere leaves the registry consistent and the next run retries.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from tqdm.auto import tqdm

from ocrloop.data.dataset import Dataset, Manifest
from ocrloop.errors import OcrloopError
from ocrloop.evaluate.evaluator import evaluate_model
from ocrloop.evaluate.metrics import EvaluationReport
from ocrloop.locking import LockBusy, file_lock
from ocrloop.loop.triggers import Trigger, data_triggers, drift_trigger, schedule_trigger
from ocrloop.models import MODEL_CARD, load_model, read_model_card
from ocrloop.models.reading import ReadingSettings, resolve_reading
from ocrloop.registry import Registry
from ocrloop.registry.champions import Champion, serving_model
from ocrloop.registry.store import GENERAL
from ocrloop.train.finetune import RUN_CARD, card_measurements, failure_message, train
from ocrloop.workspace import Workspace

LOCK_NAME = ".ocrloop-loop.lock"


@dataclass
class LoopResult:
    business: str
    triggers: list[Trigger]
    ran: bool
    reason: str
    run_id: str | None = None
    challenger: str | None = None
    champion: str | None = None
    promoted: bool | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False  # the loop cannot decide until the user fixes something (``reason`` says what)


def compare(challenger: EvaluationReport, champion: EvaluationReport, margin: float, tolerance: float) -> tuple[bool, str]:
    """Promote only if the challenger beats the champion overall by ``margin`` and no category regresses past ``tolerance``."""
    new, old = challenger.overall.cer, champion.overall.cer
    if not new < old - margin:
        by = f" by more than {margin:.2%}" if margin else ""
        return False, f"test CER {new:.2%} does not beat the champion's {old:.2%}{by}"
    for category, metrics in sorted(challenger.by_category.items()):
        before = champion.by_category.get(category)
        if before is not None and metrics.cer > before.cer + tolerance:
            return False, (f"category {category} regresses: CER {metrics.cer:.2%} vs {before.cer:.2%} "
                           f"(tolerance {tolerance:.2%})")
    return True, f"test CER {new:.2%} beats the champion's {old:.2%}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "general"


class FineTuneLoop:
    """One pass of the loop for ``business`` (None: all documents, the general champion)."""

    def __init__(self, workspace: Workspace, *, business: str | None = None, dry_run: bool = False, force: bool = False,
                 console: Console | None = None, now: dt.datetime | None = None,
                 on_training: Callable[[dict[str, Any]], None] | None = None):
        self.workspace = workspace
        self.config = workspace.config
        self.business = business
        self.key = business or GENERAL
        self.dry_run = dry_run
        self.force = force
        self.console = console or Console(stderr=True)
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self._reports: dict[tuple[str, str], EvaluationReport] = {}
        # Called with the training job (config, output_dir, resume, business) just before the challenger trains: under
        # torchrun, rank 0 runs the loop and hands each job to the other processes, which train beside it.
        self.on_training = on_training

    # --- entry point -----------------------------------------------------------------------------

    def run(self) -> LoopResult:
        try:
            with file_lock(self.workspace.root / LOCK_NAME, timeout=0, what=f"the fine-tune loop of {self.workspace.root}"):
                with Registry(self.config.registry_location) as registry:
                    self.registry = registry
                    stale = [] if self.dry_run else self._close_stale_runs()
                    return self._run(stale)
        except LockBusy:
            raise OcrloopError(f"another ocrloop loop is running in {self.workspace.root}; nothing done") from None

    def _run(self, stale: list[dict]) -> LoopResult:
        self.dataset = Dataset.open(self.config.dataset_dir, self.config.data)
        if not self.dataset.examples("train", business=self.business):
            return LoopResult(self.key, [], False, f"no training documents{self._for()}")
        test_pages = len(self.dataset.examples("test", business=self.business))
        if test_pages < self.config.loop.min_test_pages:
            return LoopResult(self.key, [], False, (
                f"the test split has {test_pages} page(s){self._for()}, fewer than loop.min_test_pages = "
                f"{self.config.loop.min_test_pages}: a challenger cannot be judged on it. Add labelled documents "
                "(`ocrloop data add` splits them train/val/test by content), or lower loop.min_test_pages"), blocked=True)
        self.manifest = self.dataset.manifest(self.business)
        triggers = self.decide()
        if stale and not triggers:
            triggers = [Trigger("retry", f"run {stale[-1]['id']} was interrupted; retrying")]
        if not triggers:
            return LoopResult(self.key, [], False, "no trigger fired: nothing to do")
        if self.dry_run:
            return LoopResult(self.key, triggers, False, "dry run: would retrain")
        return self._train_and_judge(triggers, stale)

    def _for(self) -> str:
        return f" for business {self.business!r}" if self.business else ""

    # --- deciding --------------------------------------------------------------------------------

    def _last_completed(self) -> dict | None:
        runs = [r for r in self.registry.runs("loop") if r["business"] == self.key and r["status"] == "succeeded"]
        return runs[-1] if runs else None

    def decide(self) -> list[Trigger]:
        """Every trigger that fires now, each with its reason."""
        last = self._last_completed()
        previous = None
        if last and last["dataset_id"] is not None:
            payload = self.registry.dataset_manifest(last["dataset_id"])
            previous = Manifest.from_json(payload) if payload else None
        triggers = data_triggers(self.manifest, previous, self.config.loop)
        scheduled = schedule_trigger(self.config.loop.schedule, last["started_at"] if last else None, self.now)
        if scheduled:
            triggers.append(scheduled)
        drift = self._drift()
        if drift:
            triggers.append(drift)
        if self.force:
            triggers.append(Trigger("forced", "--force"))
        return triggers

    def _drift(self) -> Trigger | None:
        loop = self.config.loop
        champion = serving_model(self.registry, self.config.base_model, self.business)
        if champion.key == "base" or not (loop.check_drift or loop.max_validation_cer is not None):
            return None
        if not self.dataset.examples("val", business=self.business):
            return None
        current = self._evaluate(champion, "val").overall.cer
        at_promotion = [e for e in self.registry.evaluations(champion.name) if e["split"] == "val"]
        return drift_trigger(current, at_promotion[0]["cer"] if at_promotion else None, loop)

    # --- training and judging ----------------------------------------------------------------------

    def _close_stale_runs(self) -> list[dict]:
        """Runs left ``running`` by a killed loop of this key: we hold the lock, so their process is gone."""
        stale = [r for r in self.registry.runs("loop") if r["status"] == "running" and r["business"] == self.key]
        for run in stale:
            output = json.loads(run["config_json"]).get("output_dir")
            for train_run in self.registry.runs("train"):
                if train_run["status"] == "running" and json.loads(train_run["config_json"]).get("output_dir") == output:
                    self.registry.finish_run(train_run["id"], "failed", error="interrupted: the process died")
            self.registry.finish_run(run["id"], "failed", error="interrupted: the process died; the next run retries")
        return stale

    def _evaluate(self, model: Champion, split: str) -> EvaluationReport:
        cache_key = (model.path, split)
        if cache_key not in self._reports:
            t = self.config.training
            bundle = load_model(model.path, backend=t.backend)
            examples = self.dataset.examples(split, business=self.business)
            # Each model reads with its own saved settings; the base model, which has none, with the workspace's.
            reading, _ = resolve_reading(bundle.reading, ReadingSettings.from_training(t))
            with tqdm(total=len(examples), unit="page", desc=f"reading {split} with {model.name}", file=sys.stderr,
                      leave=False, dynamic_ncols=True) as bar:
                evaluation = evaluate_model(bundle, self.dataset, examples, reading, batch_size=t.read_batch_size,
                                            progress=lambda done: bar.update(done - bar.n))
            self._reports[cache_key] = evaluation.report
        return self._reports[cache_key]

    def _challenger_output(self, stale: list[dict]) -> tuple[Path, bool]:
        """Where to train; an interrupted run's folder is reused so its checkpoints resume."""
        for run in reversed(stale):
            output = json.loads(run["config_json"]).get("output_dir")
            if output and Path(output).is_dir():
                return Path(output), True
        stamp = self.now.strftime("%Y%m%d-%H%M%S")
        return self.config.models_dir / f"{_slug(self.key if self.business else 'general')}-{stamp}", False

    def _train_and_judge(self, triggers: list[Trigger], stale: list[dict]) -> LoopResult:
        started = time.perf_counter()
        output, reused = self._challenger_output(stale)
        dataset_id = self.registry.record_dataset(self.manifest.manifest_hash, str(self.config.dataset_dir),
                                                  self.dataset.mix(self.business).to_json(), self.manifest.to_json())
        run_id = self.registry.start_run(
            "loop", {"output_dir": str(output), "triggers": [t.to_json() for t in triggers], "business": self.key},
            dataset_id=dataset_id, business=self.key,
        )
        for trigger in triggers:
            self.console.print(f"trigger {trigger.name}: {trigger.reason}", markup=False)
        try:
            champion = serving_model(self.registry, self.config.base_model, self.business)
            if champion.key == "base" and self.registry.model(champion.name) is None:
                self.registry.add_model(champion.name, champion.path, "base", self.config.base_model)
            challenger_name = self._train_challenger(output, reused, champion, run_id)
            challenger = Champion(challenger_name, str(output.resolve()), self.key)
            new_test, old_test = self._evaluate(challenger, "test"), self._evaluate(champion, "test")
            new_val = self._evaluate(challenger, "val") if self.dataset.examples("val", business=self.business) else None
            self.registry.add_evaluation(challenger_name, "test", new_test.to_json(), dataset_id=dataset_id, run_id=run_id)
            if new_val is not None:
                self.registry.add_evaluation(challenger_name, "val", new_val.to_json(), dataset_id=dataset_id, run_id=run_id)
            self.registry.add_evaluation(champion.name, "test", old_test.to_json(), dataset_id=dataset_id, run_id=run_id)
            promoted, reason = compare(new_test, old_test, self.config.loop.promotion_margin,
                                       self.config.loop.category_regression_tolerance)
            self.registry.record_promotion(challenger_name, "promoted" if promoted else "rejected",
                                           f"{reason} (champion {champion.name})", business=self.key, run_id=run_id)
            metrics = {"challenger": challenger_name, "champion": champion.name, "promoted": promoted, "reason": reason,
                       "challenger_test": new_test.to_json(), "champion_test": old_test.to_json(),
                       "challenger_val": new_val.to_json() if new_val else None}
            card = json.loads((output / RUN_CARD).read_text())
            self.registry.finish_run(
                run_id, "succeeded", wall_seconds=time.perf_counter() - started, **card_measurements(card), metrics=metrics,
            )
        except BaseException as error:
            self.registry.finish_run(run_id, "failed", wall_seconds=time.perf_counter() - started, error=failure_message(error))
            raise
        return LoopResult(self.key, triggers, True, reason, run_id, challenger_name, champion.name, promoted, metrics)

    def _train_challenger(self, output: Path, reused: bool, champion: Champion, loop_run_id: str) -> str:
        config = self.config
        if config.loop.train_from == "champion" and champion.key != "base":
            card = read_model_card(Path(champion.path)) or {}
            if card.get("kind") == "adapter":
                self.console.print("train_from=champion needs merged or full weights; the champion is an adapter, "
                                   "so the challenger starts from the base model", markup=False)
            else:
                config = config.model_copy(update={"base_model": champion.path})
        if reused and (output / MODEL_CARD).is_file():
            existing = [m for m in self.registry.models() if m["path"] == str(output.resolve())]
            if existing:
                return existing[-1]["name"]
        job = {"config": config, "output_dir": output, "resume": reused and (output / "checkpoints").is_dir(),
               "business": self.business}
        if self.on_training is not None:
            self.on_training(job)
        result = train(**job, registry=self.registry, console=self.console)
        return result.model_name

