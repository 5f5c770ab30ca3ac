"""`ocrloop bench serve` on the tiny preset: a real service under concurrent clients, and a model that never stops."""

import json

import pytest
import torch

from tests.conftest import run_cli


@pytest.mark.parametrize("family", ["deepseek-ocr-2", "qwen2.5-vl"])
def test_the_never_stopping_copy_always_prefers_another_token_to_a_stop(family, tmp_path):
    from ocrloop.bench.ocr import never_stopping_copy
    from ocrloop.models import FAMILIES, load_model

    original = FAMILIES[family]().build_random(tmp_path / "original", size="tiny")
    copy = never_stopping_copy(original, tmp_path / "copy", family)
    bundle, before = load_model(str(copy), backend="hf"), load_model(str(original), backend="hf")
    stops = bundle.family.stop_token_ids(bundle.tokenizer)
    others = torch.ones(bundle.model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
    others[stops] = False
    text_tokens = torch.nonzero(others[:len(bundle.tokenizer)]).flatten()
    ids = text_tokens[torch.randint(0, len(text_tokens), (3, 24))]
    with torch.no_grad():
        logits = bundle.model(input_ids=ids).logits
        unchanged = before.model(input_ids=ids).logits
    assert torch.all(logits[..., stops] == 0)
    assert torch.all(logits[..., others].max(dim=-1).values > 0)  # greedy decoding never picks a stop token
    assert not torch.all(unchanged[..., stops] == 0)
    assert torch.equal(logits[..., others], unchanged[..., others])  # everything else is the original checkpoint's


def test_bench_serve_loads_a_real_service_and_reports_its_rate(tmp_path):
    out = tmp_path / "serve.json"
    run_cli("bench", "serve", "--out", str(out), "--size", "tiny", "--resolution", "small", "--tokens-per-page", "4",
            "--clients", "3", "--requests", "9", "--warmup-requests", "3", "--max-batch-pages", "4",
            "--work", str(tmp_path / "work"), check=True)
    result = json.loads(out.read_text())
    assert result["model"].endswith("never-stopping")
    assert result["device"] == "cpu" and result["host"]
    assert result["server_errors"] == 0 and result["lost_answers"] == 0 and set(result["answers"]) == {"200"}
    assert result["pages_in_window"] >= 1 and result["pages_per_second"] > 0
    assert result["generated_tokens_per_second"] == result["pages_per_second"] * 4
    assert 0 < result["latency_seconds"]["p50"] <= result["latency_seconds"]["p99"]
    # The service formed batches of at most --max-batch-pages pages, warm-up read included.
    histogram = result["batch_pages_histogram"]
    assert histogram["4.0"] == histogram["+Inf"] >= 12 / 4


def test_a_missing_bench_ocr_result_is_refused_in_one_line(tmp_path):
    result = run_cli("bench", "serve", "--out", str(tmp_path / "x.json"), "--size", "tiny",
                     "--compare-with", str(tmp_path / "nothing.json"))
    assert result.returncode != 0 and "no bench ocr result" in result.stderr and "Traceback" not in result.stderr
