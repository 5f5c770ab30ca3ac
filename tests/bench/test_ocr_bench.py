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
        assert set(split) == {"vision_seconds", "prefill_seconds", "prepare_seconds", "decode_seconds_per_token",
                              "batch_seconds"}
        assert all(isinstance(value, float) and math.isfinite(value) for value in split.values())


def test_bench_ocr_reads_through_the_continuous_decoder_at_forced_lengths(tmp_path):
    out = tmp_path / "ocr.json"
    run_cli("bench", "ocr", "--out", str(out), "--size", "tiny", "--resolution", "small", "--batch-sizes", "3",
            "--pages", "3", "--tokens-per-page", "5", "--cache", "continuous", "--work", str(tmp_path / "work"), check=True)
    results = json.loads(out.read_text())
    assert results["workload"]["cache_implementation"] == "continuous"
    entry = results["batch_sizes"]["3"]
    # every page ran to its five tokens (the bench refuses a result where one stopped early)
    assert entry["status"] == "succeeded" and entry["mean_new_tokens_per_page"] == 5 and entry["pages"] == 3
    split = entry["time_split"]  # the admission is the first token, the steps after it the rest
    assert split["batch_seconds"] > 0 and split["decode_seconds_per_token"] > 0
    assert list((tmp_path / "work" / "checkpoints").glob("*-never-stopping"))


def test_experts_kept_on_grouped_gemms_read_the_same_text(tiny_presets):
    """``--experts grouped_mm`` changes how MoE experts are computed while decoding, never what is read."""
    from PIL import Image

    from ocrloop.data.synth import SynthOptions, generate_documents
    from ocrloop.models import load_model
    from ocrloop.models.experts import KEPT_GROUPED_MM, use_experts

    bundle = load_model("tiny-deepseek-ocr-2", backend="hf")
    pages = [d.pages[0] for d in generate_documents(SynthOptions(n=3, categories=("receipt",), scale=0.4, seed=2))]
    pages.append(Image.new("RGB", (120, 300), "white"))
    default = bundle.generate(pages, prompt="ocr", resolution="small", max_new_tokens=12)
    use_experts(bundle.model, "grouped_mm")
    assert set(bundle.model.get_experts_implementation().values()) == {KEPT_GROUPED_MM}
    assert bundle.generate(pages, prompt="ocr", resolution="small", max_new_tokens=12) == default
    assert [bundle.generate([page], prompt="ocr", resolution="small", max_new_tokens=12)[0] for page in pages] == default


def test_grouped_experts_with_the_static_cache_are_refused_in_one_line(tmp_path):
    result = run_cli("bench", "ocr", "--out", str(tmp_path / "x.json"), "--size", "tiny", "--experts", "grouped_mm")
    assert result.returncode != 0 and "add --cache dynamic" in result.stderr and "Traceback" not in result.stderr


def test_bench_ocr_compares_process_counts_each_reading_its_own_pages(tmp_path):
    out = tmp_path / "scaling.json"
    run_cli("bench", "ocr", "--out", str(out), "--size", "tiny", "--batch-sizes", "2", "--pages", "2",
            "--tokens-per-page", "4", "--cache", "dynamic", "--work", str(tmp_path / "work"), "--processes", "1,2",
            check=True, env={"OMP_NUM_THREADS": "1"})
    merged = json.loads(out.read_text())
    one, two = (merged["processes"][count] for count in ("1", "2"))
    assert one["workload"]["processes"] == 1 and two["workload"]["processes"] == 2
    # Each process read its own 2 pages: twice the pages in the two-process run.
    assert (one["batch_sizes"]["2"]["pages"], two["batch_sizes"]["2"]["pages"]) == (2, 4)
    ratio = merged["scaling_vs_one_process"]["2"]["2"]
    assert ratio == two["batch_sizes"]["2"]["pages_per_second"] / one["batch_sizes"]["2"]["pages_per_second"]
    assert (tmp_path / "scaling-x1.json").is_file() and (tmp_path / "scaling-x2.json").is_file()
