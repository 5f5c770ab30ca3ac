"""`ocrloop bench ocr` on the tiny preset: forced page lengths and where a batch's time goes."""

import json
import math

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
        # The split is measured, not asserted on: wall-clock differences of a 6-token CPU run are noise.
        split = entry["time_split"]
        assert set(split) == {"vision_seconds", "prefill_seconds", "decode_seconds_per_token", "batch_seconds"}
        assert all(isinstance(value, float) and math.isfinite(value) for value in split.values())
