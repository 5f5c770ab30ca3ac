"""The learning benchmark's mechanics at tiny size: a curve per category, Tesseract on the same pages, a plot."""

import json

from PIL import Image

from tests.conftest import run_cli


def test_bench_learn_writes_the_curve_the_yardstick_and_a_plot(tiny_presets, tmp_path):
    out = tmp_path / "results" / "learn.json"
    common = ["--out", str(out), "--work", str(tmp_path / "work")]
    run_cli("bench", "learn", *common, "--size", "tiny", "--train-documents", "8", "--heldout-documents", "4", "--steps", "4",
            "--eval-steps", "2", "--batch-size", "2", "--resolution", "tiny", "--scale", "0.4", "--workers", "2", check=True)
    results = json.loads(out.read_text())
    assert [point["step"] for point in results["curve"]] == [2, 4]
    assert results["workload"]["train_pages"] >= 4 and results["workload"]["heldout_pages"] >= 4
    for point in results["curve"]:
        assert set(point["by_category"]) == {"receipt", "invoice"}
        assert all({"cer", "wer"} <= set(scores) for scores in point["by_category"].values())
    tesseract = results["tesseract"]
    assert tesseract["engine"].startswith("tesseract-5")
    assert tesseract["strip_markdown"]["cer"] <= tesseract["plain"]["cer"]  # markup is counted against it otherwise
    with Image.open(out.with_suffix(".png")) as plot:
        assert plot.size[0] > 500

    # Where Tesseract was missing (the GPU machine), it is scored afterwards on the same held-out pages, made again.
    results["tesseract"] = {"error": "not installed"}
    out.write_text(json.dumps(results))
    run_cli("bench", "learn", "--add-tesseract", *common, check=True)
    assert json.loads(out.read_text())["tesseract"] == tesseract
