"""bench photo-loop at tiny size: a reader becomes a workspace's base model, photographed documents of one business go
through the real loop, and the reader, the champion, Tesseract and the blind control read held-out photos from a seed
the workspace never saw."""

import json

from ocrloop.loop.history import loop_history
from tests.conftest import run_cli


def test_bench_photo_loop_runs_the_loop_and_scores_before_after_and_the_controls(tiny_presets, tmp_path):
    out, work = tmp_path / "photo.json", tmp_path / "work"
    run_cli("bench", "photo-loop", "--out", str(out), "--reader", "tiny-qwen2.5-vl", "--documents", "24", "--heldout", "3",
            "--scale", "0.35", "--steps", "2", "--batch-size", "2", "--min-test-pages", "1", "--resolution", "tiny",
            "--max-new-tokens", "8", "--backend", "hf", "--work", str(work), check=True)
    results = json.loads(out.read_text())
    workload = results["workload"]
    assert workload["business"] == "ecommerce" and workload["heldout_pages"] >= 3
    assert workload["heldout_texts_also_in_training"] == 0
    assert workload["reading"] == {"resolution": "tiny", "prompt": "markdown", "max_new_tokens": 8}
    history = loop_history(work / "workspace" / "ocrloop.db")
    assert len(history) == 1 and results["loop"]["ran"] and results["loop"]["history"][0]["run_id"] == history[0]["run_id"]
    # the champion is the challenger when it was promoted, the reader itself when not
    assert results["loop"]["champion_is_the_reader"] == (not results["loop"]["promoted"])
    for key in ("reader", "champion", "blind_control", "tesseract"):
        assert results[key]["pages"] == workload["heldout_pages"], key
        assert {"cer", "median_page_cer", "normalized_edit_distance"} <= set(results[key]["strip_markdown"])
    assert results["tesseract"]["engine"].startswith("tesseract")
    assert out.with_suffix(".png").stat().st_size > 0

    # a second run into the same folder would mix in the first one's workspace: refused in one line
    again = run_cli("bench", "photo-loop", "--out", str(out), "--reader", "tiny-qwen2.5-vl", "--work", str(work))
    assert again.returncode != 0 and "earlier run's workspace" in again.stderr and "Traceback" not in again.stderr
