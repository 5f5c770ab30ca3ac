"""Schemathesis against the running service's own OpenAPI schema: whatever it sends, no answer is a 5xx."""

from __future__ import annotations

import time

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_generated_request_gets_a_5xx(server):
    deadline = time.monotonic() + 120
    while httpx.get(server + "/readyz").status_code != 200:  # before that, /readyz's 503 is the right answer
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.2)
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {"POST /v1/ocr", "GET /v1/models", "GET /healthz",
                                                                    "GET /readyz", "GET /metrics"}
    failures = []
    for operation in operations:
        @settings(max_examples=60 if operation.path == "/v1/ocr" else 10, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call(base_url=server, timeout=60)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.query} -> {response.status_code} {response.text[:200]}")

        call()
    assert failures == []
    metrics = httpx.get(server + "/metrics").text
    assert [line for line in metrics.splitlines() if 'code="5' in line and 'route="/readyz"' not in line] == []
    ocr_answers = {line.split('code="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("ocr_requests_total") and 'route="/v1/ocr"' in line}
    print("POST /v1/ocr answers by code:", ocr_answers)
    assert sum(ocr_answers.values()) >= 50 and {"415", "422"} <= set(ocr_answers)
