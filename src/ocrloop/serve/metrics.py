"""Prometheus metrics: what the service does, and what the loop recorded in the registry.

Service metrics are counted as requests happen. Loop metrics are read from the SQLite registry at
each scrape (``RegistryCollector``), so ``ocrloop loop run`` in another process shows up at the next
scrape without talking to the service. Names follow the plan where it named them
(``ocr_accuracy``, ``ocr_training_speed_multiplier``, ``ocr_vram_reduction_percent``,
``ocr_cost_per_run_usd``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter as Tally
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ocrloop.registry.champions import serving_model
from ocrloop.registry.store import GENERAL, Registry, business_label

log = logging.getLogger("ocrloop.serve")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class RegistryCollector:
    """Reads the loop's figures from the registry on every scrape."""

    def __init__(self, registry_location: str | Path, base_model: str):
        self.registry_location = registry_location
        self.base_model = base_model

    def collect(self):
        try:
            with Registry(self.registry_location) as registry:
                yield from self._collect(registry)
        except Exception as error:  # noqa: BLE001 - a broken registry must not take /metrics down
            log.warning("registry metrics unavailable: %s", error)
            failed = GaugeMetricFamily("ocrloop_registry_up", "1 if the registry could be read at this scrape.")
            failed.add_metric([], 0)
            yield failed

    def _collect(self, registry: Registry):
        up = GaugeMetricFamily("ocrloop_registry_up", "1 if the registry could be read at this scrape.")
        up.add_metric([], 1)
        yield up

        evaluations = registry.evaluations()
        latest_test: dict[str, dict] = {}
        for row in evaluations:
            if row["split"] == "test":
                latest_test[row["model_name"]] = json.loads(row["report_json"])

        accuracy = GaugeMetricFamily("ocr_accuracy", "1 - CER of the serving model on its last test evaluation.",
                                     labels=["doc_type", "business"])
        champions = GaugeMetricFamily("ocrloop_champion_info", "The model serving each business (1).", labels=["business", "model"])
        businesses = sorted({p["business"] for p in registry.promotions()} | {GENERAL})
        for business in businesses:
            name = serving_model(registry, self.base_model, business).name
            champions.add_metric([business_label(business), name], 1)
            report = latest_test.get(name)
            if report:
                accuracy.add_metric(["all", business_label(business)], report["overall"]["accuracy"])
                for category, scores in sorted(report["by_category"].items()):
                    accuracy.add_metric([category, business_label(business)], scores["accuracy"])
        yield accuracy
        yield champions

        cer = GaugeMetricFamily("ocr_cer", "Test CER of each model version, overall and per document type.", labels=["model", "doc_type"])
        wer = GaugeMetricFamily("ocr_wer", "Test WER of each model version, overall and per document type.", labels=["model", "doc_type"])
        for model, report in sorted(latest_test.items()):
            cer.add_metric([model, "all"], report["overall"]["cer"])
            wer.add_metric([model, "all"], report["overall"]["wer"])
            for category, scores in sorted(report["by_category"].items()):
                cer.add_metric([model, category], scores["cer"])
                wer.add_metric([model, category], scores["wer"])
        yield cer
        yield wer

        runs = registry.runs()
        by_status = CounterMetricFamily("ocrloop_runs", "Runs recorded in the registry.", labels=["kind", "status"])
        for (kind, status), count in sorted(Tally((r["kind"], r["status"]) for r in runs).items()):
            by_status.add_metric([kind, status], count)
        yield by_status

        promotions = CounterMetricFamily("ocrloop_promotions", "Champion decisions.", labels=["decision"])
        for decision, count in sorted(Tally(p["decision"] for p in registry.promotions()).items()):
            promotions.add_metric([decision], count)
        yield promotions

        trained = [r for r in runs if r["kind"] == "train" and r["status"] == "succeeded"]
        last = trained[-1] if trained else None
        last_metrics = json.loads(last["metrics_json"]) if last and last["metrics_json"] else {}
        for name, documentation, value in (
            ("ocr_cost_per_run_usd", "GPU cost of the last training run.", last and last["cost_usd"]),
            ("ocrloop_training_duration_seconds", "Wall time of the last training run.", last and last["wall_seconds"]),
            ("ocrloop_training_peak_vram_bytes", "Peak GPU memory of the last training run.", last and last["peak_vram_bytes"]),
            ("ocrloop_training_samples_per_second", "Steady training throughput of the last run (samples/s).",
             last_metrics.get("samples_per_second")),
            ("ocrloop_training_tokens_per_second", "Steady training throughput of the last run (tokens/s).",
             last_metrics.get("tokens_per_second")),
        ):
            family = GaugeMetricFamily(name, documentation)
            if value is not None:
                family.add_metric([], float(value))
            yield family

        bench = [r for r in runs if r["kind"] == "bench" and r["status"] == "succeeded"]
        bench_metrics = json.loads(bench[-1]["metrics_json"]) if bench and bench[-1]["metrics_json"] else {}
        speed = GaugeMetricFamily("ocr_training_speed_multiplier",
                                  "Training throughput over plain transformers + peft, from the last `ocrloop bench train`.")
        vram = GaugeMetricFamily("ocr_vram_reduction_percent",
                                 "Peak VRAM saved against plain transformers + peft, from the last `ocrloop bench train`.")
        if bench_metrics.get("speedup_vs_baseline") is not None:
            speed.add_metric([], bench_metrics["speedup_vs_baseline"])
        if bench_metrics.get("vram_reduction_vs_baseline") is not None:
            vram.add_metric([], 100 * bench_metrics["vram_reduction_vs_baseline"])
        yield speed
        yield vram

        documents = GaugeMetricFamily("ocrloop_documents", "Documents in the dataset at its last recorded snapshot.",
                                      labels=["category", "split", "business"])
        datasets = registry.datasets()
        if datasets:
            for row in json.loads(datasets[-1]["mix_json"]):
                documents.add_metric([row["category"], row["split"], row["business"]], row["documents"])
        yield documents


class ServiceMetrics:
    """The service's own counters plus the registry's figures, on one Prometheus registry."""

    def __init__(self, registry_location: str | Path, base_model: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("ocr_requests", "HTTP requests by route and status code.", ["route", "code"], registry=self.registry)
        self.latency = Histogram("ocr_request_duration_seconds", "Request latency by route.", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.pages = Counter("ocr_pages_processed", "Pages read, by business.", ["business"], registry=self.registry)
        self.page_latency = Histogram("ocr_page_duration_seconds", "Time from a page's arrival to its text.",
                                      buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_pages = Histogram("ocr_batch_pages", "Pages per GPU batch (continuous batching: pages decoding together after pages joined).", buckets=(1, 2, 4, 8, 16, 32, 64),
                                     registry=self.registry)
        self.pii = Counter("ocr_pii_detections", "Personal data found in OCR output, by kind.", ["kind"], registry=self.registry)
        self.model_swaps = Counter("ocr_model_swaps", "Champions swapped in while serving.", registry=self.registry)
        self.registry.register(RegistryCollector(registry_location, base_model))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
