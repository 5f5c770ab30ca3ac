"""The service under hostile input and concurrency: no 5xx, bad pages isolated, errors in one JSON shape."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from ocrloop.config import OcrloopConfig
from ocrloop.serve.app import create_app
from ocrloop.workspace import init_workspace
from tests.serve.conftest import running_server
from tests.serve.test_service import _ocr, _pdf, _png


def _one_line_error(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error, response.text
    return error


def _pdf_of_size(width_pt: float, height_pt: float) -> bytes:
    image = Image.new("RGB", (max(1, round(width_pt)), max(1, round(height_pt))), "white")
    buffer = io.BytesIO()
    image.save(buffer, format="PDF", resolution=72)
    return buffer.getvalue()


def _metric(url: str, prefix: str) -> float:
    lines = [line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith(prefix)]
    return sum(float(line.split()[-1]) for line in lines)


def test_concurrent_pdfs_are_rasterized_safely(server):
    pdf = _pdf(2)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _ocr(server, pdf, name=f"doc{i}.pdf"), range(24)))
    assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers if a.status_code != 200]
    assert _ocr(server, pdf, name="after.pdf").status_code == 200  # PDFium still works afterwards


def test_a_page_the_model_cannot_take_fails_only_its_own_request(server):
    bad = {"thin image": (_png(1, 4000), "page.png"), "wide image": (_png(4000, 2), "wide.png"),
           "thin pdf page": (_pdf_of_size(1, 20000), "thin.pdf")}
    with ThreadPoolExecutor(12) as pool:
        good = [pool.submit(_ocr, server, _png(seed=i)) for i in range(9)]
        refused = {label: pool.submit(_ocr, server, content, name) for label, (content, name) in bad.items()}
        good = [future.result() for future in good]
        refused = {name: future.result() for name, future in refused.items()}
    assert [a.status_code for a in good] == [200] * 9, [a.text for a in good if a.status_code != 200]
    for name, answer in refused.items():
        assert answer.status_code == 422, (name, answer.text)
        assert "aspect ratio" in _one_line_error(answer) or "min_page_side" in _one_line_error(answer), name
    assert "page 1" in refused["thin pdf page"].json()["error"]
    assert _metric(server, 'ocr_requests_total{code="5') == 0


def test_options_errors_and_business_bounds(server):
    typo = _ocr(server, _png(), **{"pii-policy": "reject"})
    assert typo.status_code == 422 and "did you mean 'pii_policy'" in _one_line_error(typo)
    form_typo = httpx.post(server + "/v1/ocr", files={"file": ("a.png", _png())}, data={"promt": "ocr"}, timeout=60)
    assert form_typo.status_code == 422 and "'promt'" in _one_line_error(form_typo)
    malformed = httpx.post(server + "/v1/ocr", content=b"--xyz\r\nnot a part", timeout=60,
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= malformed.status_code < 500 and _one_line_error(malformed)
    not_found = httpx.get(server + "/v2/nothing")
    assert not_found.status_code == 404 and _one_line_error(not_found)
    labels_before = _metric(server, "ocr_pages_processed_total")
    for index in range(5):
        unknown = _ocr(server, _png(), business=f"made-up-{index}")
        assert unknown.status_code == 422 and "not known" in _one_line_error(unknown)
    assert 'business="made-up' not in httpx.get(server + "/metrics").text
    assert _metric(server, "ocr_pages_processed_total") == labels_before
    known = _ocr(server, _png(), business="ecommerce")
    assert known.status_code == 200, known.text
    answer = known.json()
    assert answer["request_id"] == known.headers["x-request-id"]
    assert answer["pages"][0]["width"] == 320 and answer["pages"][0]["height"] == 240
    renamed = _ocr(server, _png(), name="scan.pdf")  # the bytes say PNG, whatever the name says
    assert renamed.status_code == 200, renamed.text


def test_chunked_upload_over_the_limit_is_cut_off_early(server):
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss

    def chunks():
        block = b"\x89PNG\r\n\x1a\n" + b"0" * (1 << 20)
        for _ in range(200):  # 200 MiB, far over the 300 kB limit
            yield block

    try:
        answer = httpx.post(server + "/v1/ocr", content=chunks(), headers={"content-type": "image/png"}, timeout=120)
        assert answer.status_code == 413 and "over the limit" in _one_line_error(answer)
    except httpx.WriteError:
        pass  # the server answered 413 and closed while the client was still sending: also a refusal
    assert process.memory_info().rss - rss_before < 50 * 2**20
    assert httpx.get(server + "/healthz").status_code == 200


def test_unhandled_errors_are_json_500s_and_counted(tmp_path):
    config = OcrloopConfig(base_model=str(tmp_path / "missing-model")).resolve(tmp_path)
    app = create_app(config)

    def broken():
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/broken")
        assert answer.status_code == 500 and answer.json()["request_id"] == answer.headers["x-request-id"]
        assert "a bug" not in answer.text
        assert 'ocr_requests_total{code="500",route="/broken"} 1.0' in client.get("/metrics").text


def test_missing_model_is_a_json_503_and_not_ready(tmp_path):
    root = tmp_path / "ws"
    init_workspace(root, OcrloopConfig(base_model=str(tmp_path / "not-downloaded" / "DeepSeek-OCR-2")))
    with running_server(root) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        deadline = time.monotonic() + 60
        while (ready := httpx.get(url + "/readyz")).json().get("error", "").startswith("loading"):
            assert time.monotonic() < deadline, "the model load never finished"
            time.sleep(0.2)
        assert ready.status_code == 503 and "not-downloaded" in _one_line_error(ready)
        answer = _ocr(url, _png())
        assert answer.status_code == 503
        error = _one_line_error(answer)
        assert "not-downloaded" in error and "hf download" in error
    assert "Traceback" not in (root / "serve.log").read_text()


def test_ready_after_the_model_has_read_a_page(server):
    deadline = time.monotonic() + 120
    while (ready := httpx.get(server + "/readyz")).status_code != 200:
        assert ready.status_code == 503 and time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    assert ready.json()["status"] == "ready" and ready.json()["seconds_to_read_a_page"] > 0


def _rendered(lines: list[str]) -> bytes:
    font = ImageFont.truetype("DejaVuSans.ttf", 36) if _has_font("DejaVuSans.ttf") else ImageFont.load_default(36)
    image = Image.new("RGB", (1100, 90 + 70 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((40, 40 + 70 * index), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _has_font(name: str) -> bool:
    try:
        ImageFont.truetype(name, 12)
        return True
    except OSError:
        return False


@pytest.fixture
def tesseract_workspace(tmp_path):
    root = tmp_path / "ws"
    init_workspace(root)
    values = yaml.safe_load((root / "ocrloop.yaml").read_text())
    values["serve"] = {"max_batch_pages": 4}
    (root / "ocrloop.yaml").write_text(yaml.safe_dump(values))
    return root


def test_personal_data_read_by_tesseract_is_never_echoed(tesseract_workspace):
    page = _rendered(["Payroll record", "SSN: 219-09-9999", "Card 4111 1111 1111 1111"])
    with running_server(tesseract_workspace, "--engine", "tesseract", pii_policy="reject") as url:
        rejected = _ocr(url, page)
        assert rejected.status_code == 422, rejected.text
        assert rejected.json()["pii"] == {"ssn": 1, "credit_card": 1}
        redacted = _ocr(url, page, pii_policy="redact")
        assert redacted.status_code == 200 and redacted.json()["model"].startswith("tesseract")
        text = redacted.json()["text"]
        assert "[SSN]" in text and "[CREDIT_CARD]" in text and "Payroll" in text
        metrics = httpx.get(url + "/metrics").text
    log = (tesseract_workspace / "serve.log").read_text()
    for value in ("219-09-9999", "219-09", "09-9999", "4111 1111", "1111 1111 1111", "4111111111111111"):
        assert value not in rejected.text and value not in redacted.text and value not in metrics and value not in log
