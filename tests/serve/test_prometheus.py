"""A real Prometheus scrapes the running service with the committed scrape config; the dashboard
only queries metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serve.conftest import free_port, running_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


@pytest.fixture(scope="module")
def service(looped_workspace, tmp_path_factory):
    target = tmp_path_factory.mktemp("scraped") / "ws"
    shutil.copytree(looped_workspace, target)
    with running_server(target) as url:
        yield url


def _exported_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def _queried_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end():].lstrip()[:1]
        if match.group() not in PROMQL_WORDS and following != "(":
            names.add(match.group())
    return names


def test_dashboard_queries_only_exported_metrics(service):
    exported = _exported_names(httpx.get(service + "/metrics").text)
    dashboard = json.loads((DEPLOY / "grafana" / "ocrloop-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("document mix", "runs per week", "cer", "wer", "duration", "vram", "cost"):
        assert subject in titles, subject
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = _queried_names(target["expr"])
            assert names, target["expr"]
            queried |= names
    assert queried - exported == set(), f"dashboard queries metrics nobody exports: {sorted(queried - exported)}"
    assert {"ocr_accuracy", "ocr_training_speed_multiplier", "ocr_vram_reduction_percent", "ocr_cost_per_run_usd"} <= exported


def test_real_prometheus_scrapes_the_service(service, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: `make test` installs the Debian package `prometheus`"
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [service.removeprefix("http://")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        deadline = time.monotonic() + 60
        results = {}
        while time.monotonic() < deadline:
            try:
                for query in ('up{job="ocrloop"}', "ocrloop_registry_up", 'ocr_accuracy{doc_type="all"}', "ocrloop_runs_total"):
                    results[query] = httpx.get(api, params={"query": query}, timeout=5).json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                results = {}
            if results and all(results.values()) and results['up{job="ocrloop"}'][0]["value"][1] == "1":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"Prometheus never scraped the service: {results}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
        assert results["ocrloop_registry_up"][0]["value"][1] == "1"
        accuracy = float(results['ocr_accuracy{doc_type="all"}'][0]["value"][1])
        assert 0.0 <= accuracy <= 1.0
        assert {r["metric"]["kind"] for r in results["ocrloop_runs_total"]} >= {"loop", "train"}
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_dashboard_is_provisionable_with_variables_and_units():
    grafana = DEPLOY / "grafana"
    dashboard = json.loads((grafana / "ocrloop-dashboard.json").read_text())
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "ocrloop.yaml").read_text())
    (entry,) = provider["providers"]
    assert provider["apiVersion"] == 1 and entry["type"] == "file" and entry["options"]["path"]
    datasources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    # Provisioned dashboards get no import dialog: no __inputs, every ${...} must be a dashboard variable.
    assert "__inputs" not in dashboard and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["business"]["type"] == "query"
    text = json.dumps(dashboard)
    references = set(re.findall(r"\$\{(\w+)\}", text)) | set(re.findall(r"\$(\w+)", text))
    assert references - {"__all"} <= set(variables), references
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"no unit: {panel['title']}"
    titles = " ".join(p["title"] for p in dashboard["panels"])
    assert "1.4x" not in titles and "target 40%" not in titles
