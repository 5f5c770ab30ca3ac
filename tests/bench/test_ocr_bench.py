"""`ocrloop bench ocr` on the tiny preset: forced page lengths and where a batch's time goes."""

import json

from tests.conftest import run_cli


def test_bench_ocr_forces_page_lengths_and_splits_the_time(tmp_path):
    out = tmp_path / "ocr.json"
    run_cli("bench", "ocr", "--out", str(out), "--size", "tiny", "--batch-sizes", "1,2", "--pages", "2",
            "--tokens-per-page", "6", "--cache", "dynamic", "--work", str(tmp_path / "work"), check=True)
    results = json.loads(out.read_text())
    assert results["workload"]["tokens_per_page"] == 6
    for batch in ("1", "2"):
        entry = results["batch_sizes"][batch]
        assert entry["status"] == "succeeded" and entry["mean_new_tokens_per_page"] == 6
        split = entry["time_split"]
        assert split["vision_seconds"] > 0 and split["prefill_seconds"] >= 0 and split["decode_seconds_per_token"] > 0
        assert split["batch_seconds"] >= split["vision_seconds"]
