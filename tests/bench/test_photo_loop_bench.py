"""bench photo-loop at tiny size: a reader becomes a workspace's base model, photographed documents of one business go
through the real loop, and the reader, the champion, Tesseract and the blind control read held-out photos from a seed
the workspace never saw."""

import json

from ocrloop.bench.photo_loop import HELDOUT_RENDER_PROCESSES, heldout_photos
from ocrloop.bench.settings import BenchPhotoLoopSettings
from ocrloop.config import DataConfig, load_config
from ocrloop.data.dataset import Dataset
from ocrloop.loop.history import loop_history
from tests.conftest import run_cli


def test_bench_photo_loop_runs_the_loop_and_scores_before_after_and_the_controls(tiny_presets, tmp_path):
    out, work = tmp_path / "photo.json", tmp_path / "work"
    run_cli("bench", "photo-loop", "--out", str(out), "--reader", "tiny-qwen2.5-vl", "--documents", "24", "--heldout", "3",
            "--scale", "0.35", "--steps", "2", "--batch-size", "2", "--min-test-pages", "1", "--resolution", "tiny",
            "--max-new-tokens", "8", "--backend", "hf", "--evals", "2", "--render-processes", "2", "--workers", "1",
            "--work", str(work), check=True)
    results = json.loads(out.read_text())
    # the challenger adapts the vision tower too, reads twice while it trains, and takes --batch-size pages a step
    training = load_config(work / "workspace").training
    assert (training.lora_targets, training.eval_steps, training.gradient_accumulation_steps,
            training.dataloader_workers) == (["attention", "mlp", "vision"], 1, 1, 1)
    run_card = json.loads(next((work / "workspace").rglob("run_card.json")).read_text())
    assert [v["step"] for v in run_card["metrics"]["validation"]] == [1, 2]
    workload = results["workload"]
    assert workload["business"] == "ecommerce" and workload["heldout_pages"] >= 3
    assert workload["heldout_texts_also_in_training"] == 0
    # Held-out photos are in a layout the workspace never trained on: template 2 tabulates items under
    # "| Item | Qty |"; templates 0 and 1 never do.
    assert (workload["train_templates"], workload["heldout_templates"]) == ([0, 1], [2])
    trained = [e.text for e in Dataset.open(work / "workspace" / "data" / "ocr_documents").examples()]
    heldout = [e.text for e in Dataset.open(next(work.glob("heldout-photos-*-templates-2"))).examples()]
    assert trained and heldout
    assert all("| Item | Qty |" in text for text in heldout) and not any("| Item | Qty |" in text for text in trained)
    # The held-out photos do not depend on --render-processes: every run (and bench pretrain's read of the unseen
    # layout) reads the same pages.
    other = BenchPhotoLoopSettings(out=out, reader="tiny-qwen2.5-vl", heldout=3, scale=0.35, render_processes=3,
                                   work=tmp_path / "other")
    assert [e.text for e in Dataset.open(heldout_photos(other, DataConfig())[0]).examples()] == heldout
    assert workload["render_processes"] == 2 and workload["heldout_render_processes"] == HELDOUT_RENDER_PROCESSES
    assert workload["reading"] == {"resolution": "tiny", "prompt": "markdown", "max_new_tokens": 8}
    history = loop_history(work / "workspace" / "ocrloop.db")
    assert len(history) == 1 and results["loop"]["ran"] and results["loop"]["history"][0]["run_id"] == history[0]["run_id"]
    # the champion is the challenger when it was promoted, the reader itself when not
    assert results["loop"]["champion_is_the_reader"] == (not results["loop"]["promoted"])
    for key in ("reader", "champion", "blind_control", "tesseract"):
        assert results[key]["pages"] == workload["heldout_pages"], key
        assert {"cer", "median_page_cer", "normalized_edit_distance"} <= set(results[key]["strip_markdown"])
    assert results["tesseract"]["engine"].startswith("tesseract")
    # every read of the held-out photos kept, the reader's and the champion's, in page order (bench/layout_words.py)
    for key in ("reader", "champion"):
        assert [r["reference"] for r in results[key]["reads"]] == heldout[:workload["heldout_pages"]], key
    assert "reads" not in results["test_split"]["champion"]
    # the loop's own test split (trained layouts, documents never trained on) is scored the same way
    test_pages = sum(m["pages"] for m in results["loop"]["history"][0]["mix"] if m["split"] == "test")
    for key in ("reader", "champion", "tesseract"):
        assert results["test_split"][key]["pages"] == test_pages, key
    assert results["test_split"]["champion"]["plain"]["cer"] == results["loop"]["history"][0]["challenger_test_cer"] \
        or results["loop"]["champion_is_the_reader"]
    # ... and the held-out documents unphotographed: the same texts, in order, as clean flat pages
    flat = Dataset.open(next(work.glob("heldout-unphotographed-*")))
    assert [e.text for e in flat.examples()] == heldout
    assert all(str(e.source).endswith(".png") for e in flat.examples())
    for key in ("reader", "champion", "tesseract"):
        assert results["unphotographed"][key]["pages"] == workload["heldout_pages"], key
    # ... and held-out photos from the held-out seed in the trained layouts: read only to be reported
    in_trained = [e.text for e in Dataset.open(next(work.glob("heldout-photos-*-templates-0-1"))).examples()]
    assert in_trained and not set(in_trained) & set(trained)
    assert not any("| Item | Qty |" in text for text in in_trained)
    for key in ("reader", "champion", "tesseract"):
        assert results["heldout_trained_layouts"][key]["pages"] == len(in_trained), key
    # Tesseract reads flat pages far better than their photos
    assert results["unphotographed"]["tesseract"]["strip_markdown"]["cer"] < results["tesseract"]["strip_markdown"]["cer"]
    assert out.with_suffix(".png").stat().st_size > 0

    # Tesseract added later where the run had none (a GPU machine): the held-out photos and the workspace's photos are
    # rendered again, in a fresh folder, from the result's workload, and read the same as in the run
    tesseract, test_tesseract = results.pop("tesseract"), results["test_split"].pop("tesseract")
    flat_tesseract = results["unphotographed"].pop("tesseract")
    in_trained_tesseract = results["heldout_trained_layouts"].pop("tesseract")
    out.write_text(json.dumps({**results, "tesseract": {"error": "pytesseract is not installed"}}))
    run_cli("bench", "photo-loop", "--out", str(out), "--add-tesseract", "--work", str(tmp_path / "elsewhere"), check=True)
    added = json.loads(out.read_text())
    assert added["tesseract"] == tesseract and added["test_split"]["tesseract"] == test_tesseract
    assert added["unphotographed"]["tesseract"] == flat_tesseract
    assert added["heldout_trained_layouts"]["tesseract"] == in_trained_tesseract
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps({"workload": workload}))
    result = run_cli("bench", "photo-loop", "--out", str(unfinished), "--add-tesseract")
    assert result.returncode != 0 and "not a finished bench photo-loop result" in result.stderr
    assert "Traceback" not in result.stderr
    unfinished.write_text('{"workload": ')  # cut off while written by hand or copied
    result = run_cli("bench", "photo-loop", "--out", str(unfinished), "--add-tesseract")
    assert result.returncode != 0 and "is not JSON" in result.stderr and "Traceback" not in result.stderr

    # a second run into the same folder would mix in the first one's workspace: refused in one line
    again = run_cli("bench", "photo-loop", "--out", str(out), "--reader", "tiny-qwen2.5-vl", "--work", str(work))
    assert again.returncode != 0 and "earlier run's workspace" in again.stderr and "Traceback" not in again.stderr


def test_held_out_layouts_that_were_also_trained_on_are_refused_in_one_line(tmp_path):
    result = run_cli("bench", "photo-loop", "--out", str(tmp_path / "x.json"), "--reader", "tiny-qwen2.5-vl",
                     "--train-templates", "0,1", "--heldout-templates", "1,2", "--work", str(tmp_path / "work"))
    assert result.returncode != 0 and "both trained on and held out" in result.stderr and "Traceback" not in result.stderr


def test_a_run_without_a_reader_is_refused_in_one_line(tmp_path):
    result = run_cli("bench", "photo-loop", "--out", str(tmp_path / "x.json"), "--work", str(tmp_path / "work"))
    assert result.returncode != 0 and "--reader is required" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


def test_a_reader_that_is_not_a_model_is_refused_before_anything_is_rendered(tmp_path):
    not_a_model = tmp_path / "reader"
    not_a_model.mkdir()
    for reader in (str(not_a_model), str(tmp_path / "no-such-reader")):
        result = run_cli("bench", "photo-loop", "--out", str(tmp_path / "x.json"), "--reader", reader,
                         "--work", str(tmp_path / "work"))
        assert result.returncode != 0 and result.stderr.startswith(f"error: {reader}:"), result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "work").exists()
