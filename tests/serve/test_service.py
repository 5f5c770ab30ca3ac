"""The OCR service over real HTTP: answers, limits, batching, champion swaps."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from ocrloop.registry import Registry
from ocrloop.workspace import Workspace
from tests.serve.conftest import running_server


def _png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    for x in range(0, width, 7):
        image.putpixel((x, (x * 13 + seed) % height), (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pdf(pages: int) -> bytes:
    images = [Image.new("RGB", (200, 260), (255, 255 - 20 * i, 255)) for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _ocr(url: str, content: bytes, name: str = "page.png", **params) -> httpx.Response:
    return httpx.post(url + "/v1/ocr", files={"file": (name, content)}, params=params, timeout=120)


def test_health_models_and_metrics(server, looped_workspace):
    health = httpx.get(server + "/healthz").json()
    assert health["status"] == "ok" and health["registry"] is True
    models = httpx.get(server + "/v1/models").json()
    with Registry(Workspace.load(looped_workspace).config.registry_path) as registry:
        assert [v["name"] for v in models["versions"]] == [m["name"] for m in registry.models()]
        champion = registry.champion()
    assert models["champions"].get("general") == champion
    metrics = httpx.get(server + "/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert "ocrloop_registry_up 1.0" in metrics.text
    assert 'ocrloop_runs_total{kind="loop",status="succeeded"} 2.0' in metrics.text


def test_ocr_image_json_and_markdown(server):
    answer = _ocr(server, _png())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] and body["mode"] and len(body["pages"]) == 1
    assert body["pages"][0]["page"] == 1 and body["pages"][0]["seconds"] > 0 and isinstance(body["text"], str)
    assert body["pii_policy"] == "redact" and isinstance(body["pii"], dict)
    markdown = _ocr(server, _png(), format="md")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.headers["x-ocrloop-model"] == body["model"] and markdown.headers["x-ocrloop-pages"] == "1"
    raw = httpx.post(server + "/v1/ocr", content=_png(), headers={"content-type": "image/png"}, timeout=120)
    assert raw.status_code == 200 and len(raw.json()["pages"]) == 1


def test_pdf_pages_are_read_in_order(server):
    answer = _ocr(server, _pdf(2), name="contract.pdf")
    assert answer.status_code == 200, answer.text
    assert [p["page"] for p in answer.json()["pages"]] == [1, 2]


def test_limits_and_bad_input_get_clear_4xx(server):
    cases = {
        "over the upload limit": (_ocr(server, b"\x89PNG" + b"0" * 400_000), 413),
        "over the pixel limit": (_ocr(server, _png(1200, 1000)), 413),
        "over the page limit": (_ocr(server, _pdf(3), name="long.pdf"), 413),
        "unsupported format": (_ocr(server, b"hello", name="notes.txt"), 415),
        "not an image": (_ocr(server, b"this is not a png at all", name="broken.png"), 422),
        "unknown prompt": (_ocr(server, _png(), prompt="poem"), 422),
        "unknown mode": (_ocr(server, _png(), mode="huge"), 422),
        "unknown format": (_ocr(server, _png(), format="xml"), 422),
        "unknown pii policy": (_ocr(server, _png(), pii_policy="shred"), 422),
        "no file": (httpx.post(server + "/v1/ocr", data={"prompt": "markdown"}, files={"x": ("a", b"")}), 422),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error, name
    metrics = httpx.get(server + "/metrics").text
    assert 'ocr_requests_total{code="413",route="/v1/ocr"} 3.0' in metrics
    assert "ocr_requests_total{code=\"500\"" not in metrics


def test_concurrent_requests_share_gpu_batches(server):
    def before():
        text = httpx.get(server + "/metrics").text
        count = next(line for line in text.splitlines() if line.startswith("ocr_batch_pages_count"))
        single = next(line for line in text.splitlines() if line.startswith('ocr_batch_pages_bucket{le="1.0"}'))
        return float(count.split()[-1]), float(single.split()[-1])

    batches_before, singles_before = before()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _ocr(server, _png(seed=i)), range(6)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    batches_after, singles_after = before()
    # Six pages arrived together: fewer batches than pages, so at least one batch held several.
    assert batches_after - batches_before < 6
    assert (batches_after - batches_before) - (singles_after - singles_before) >= 1


def test_too_many_concurrent_requests_get_429(served_workspace):
    with running_server(served_workspace, max_concurrent_requests=1, batch_wait_ms=300) as url:
        with ThreadPoolExecutor(6) as pool:
            codes = [a.status_code for a in pool.map(lambda i: _ocr(url, _png(seed=i)), range(6))]
    assert set(codes) == {200, 429}, codes


def test_promoted_champion_is_swapped_in_without_failing_requests(served_workspace, tiny_presets):
    config = Workspace.load(served_workspace).config
    with Registry(config.registry_path) as registry:
        registry.add_model("deepseek-v2", str(tiny_presets["tiny-deepseek-ocr-2"]), "deepseek-ocr-2", "tiny-deepseek-ocr-2")
        before = registry.champion()
    with running_server(served_workspace, champion_check_seconds=0.3) as url:
        assert _ocr(url, _png()).json()["model"] == before
        stop = threading.Event()
        answers: list[httpx.Response] = []

        def keep_asking():
            while not stop.is_set():
                answers.append(_ocr(url, _png(), mode="small"))

        workers = [threading.Thread(target=keep_asking) for _ in range(3)]
        for worker in workers:
            worker.start()
        with Registry(config.registry_path) as registry:
            registry.record_promotion("deepseek-v2", "manual", "test: promote by hand")
        deadline = time.monotonic() + 90
        while not any(a.status_code == 200 and a.json()["model"] == "deepseek-v2" for a in list(answers)):
            assert time.monotonic() < deadline, "the new champion was never served"
            time.sleep(0.2)
        stop.set()
        for worker in workers:
            worker.join()
        assert answers and all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        models = [a.json()["model"] for a in answers]
        assert models[0] == before and models[-1] == "deepseek-v2"
        assert httpx.get(url + "/v1/models").json()["serving"]["general"] == "deepseek-v2"
        assert "ocr_model_swaps_total 1.0" in httpx.get(url + "/metrics").text


def test_openapi_names_the_file_every_option_and_the_answer(server):
    schema = httpx.get(server + "/openapi.json").json()
    operation = schema["paths"]["/v1/ocr"]["post"]
    options = {"prompt", "mode", "business", "model", "format", "pii_policy"}
    assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == options
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
    assert set(form["properties"]) == options | {"file"}
    assert form["properties"]["file"]["contentMediaType"] == "application/octet-stream"
    answer = schema["components"]["schemas"]["OcrAnswer"]
    assert {"request_id", "model", "pages", "pii", "text"} <= set(answer["properties"])
    page = schema["components"]["schemas"]["PageAnswer"]
    assert set(page["properties"]) == {"page", "width", "height", "text", "seconds"}
    assert {"413", "415", "422", "429", "503"} <= set(operation["responses"])
    assert {"/healthz", "/readyz", "/v1/models", "/metrics"} <= set(schema["paths"])


def test_docs_work_offline(server):
    page = httpx.get(server + "/docs")
    assert page.status_code == 200 and "cdn." not in page.text
    scripts = [src for src in page.text.split('src="')[1:]]
    assert scripts, page.text
    for source in (s.split('"')[0] for s in scripts):
        asset = httpx.get(server + source)
        assert asset.status_code == 200 and len(asset.content) > 100_000, source  # served by the app itself


def test_two_replicas_on_one_postgresql_registry_both_switch_to_a_new_champion(looped_workspace, tiny_presets, tmp_path,
                                                                                postgres_url):
    """Replicas behind a load balancer share a PostgreSQL registry: a promotion made anywhere reaches both."""
    import shutil

    import yaml

    replicas = []
    for name in ("a", "b"):
        root = tmp_path / name
        shutil.copytree(looped_workspace, root)
        values = yaml.safe_load((root / "ocrloop.yaml").read_text())
        values["registry_url"] = postgres_url
        (root / "ocrloop.yaml").write_text(yaml.safe_dump(values))
        replicas.append(root)
    with Registry(postgres_url) as registry:
        registry.add_model("v1", str(tiny_presets["tiny-qwen2.5-vl"]), "qwen2.5-vl", "tiny-qwen2.5-vl")
        registry.add_model("v2", str(tiny_presets["tiny-deepseek-ocr-2"]), "deepseek-ocr-2", "tiny-deepseek-ocr-2")
        registry.record_promotion("v1", "manual", "test: the first champion")
    with running_server(replicas[0], champion_check_seconds=0.3) as first, \
            running_server(replicas[1], champion_check_seconds=0.3) as second:
        assert [_ocr(url, _png()).json()["model"] for url in (first, second)] == ["v1", "v1"]
        with Registry(postgres_url) as registry:  # as a loop on a training machine would
            registry.record_promotion("v2", "manual", "test: promoted elsewhere")
        for url in (first, second):
            deadline = time.monotonic() + 90
            while httpx.get(url + "/v1/models").json()["serving"]["general"] != "v2":
                assert time.monotonic() < deadline, f"{url} never switched to the new champion"
                time.sleep(0.2)
            answer = _ocr(url, _png(), mode="small")
            assert answer.status_code == 200 and answer.json()["model"] == "v2"
