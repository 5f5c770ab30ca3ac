"""bench pretrain at tiny size: the whole curriculum runs through the training engine, every stage is scored,
the final reader is scored on held-out pages beside the blind control and Tesseract, and it is saved readable."""

import json
import os
import signal
import subprocess
import sys
import time

from ocrloop.bench.pretrain import heldout_pages
from ocrloop.config import DataConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.lessons import LessonOptions, synthesize_lessons
from ocrloop.models import load_model
from tests.conftest import run_cli


def test_bench_pretrain_runs_every_stage_and_scores_the_controls(tmp_path):
    out, model = tmp_path / "pretrain.json", tmp_path / "reader"
    run_cli("bench", "pretrain", "--out", str(out), "--size", "tiny", "--lessons", "32,32,16,8", "--steps", "3,3,3,3",
            "--batch-sizes", "8,8,4,4", "--heldout", "4", "--workers", "0", "--render-processes", "2",
            "--max-new-tokens", "8,8,16,16", "--evals-per-stage", "1", "--work", str(tmp_path / "work"),
            "--save-model", str(model), "--scrambled", "0.5", "--photos", "0.5", "--templates", "0,1", "--random-layouts", "0.5",
            "--mixed-names", "0.5", "--random-labels", "0.5", "--line-sizes", "12,24",
            "--glyphs-read-at", "100", "--time-budget", "1", "--time-reserve", "0", check=True)
    results = json.loads(out.read_text())
    assert [s["stage"] for s in results["stages"]] == ["glyphs", "lines", "blocks", "pages"]
    # Scrambled lessons are rendered apart from plain ones (a later plain run must not reuse them).
    assert results["workload"]["scrambled"] == 0.5
    assert sorted(p.name for p in (tmp_path / "work").glob("*-scrambled-0.5*")) == [
        "blocks-16-scrambled-0.5-templates-0-1-random-layouts-0.5-mixed-names-0.5-random-labels-0.5",
        "pages-8-scrambled-0.5-photos-0.5-templates-0-1-random-layouts-0.5-mixed-names-0.5-random-labels-0.5"]
    assert results["workload"]["templates"] == [0, 1] and results["workload"]["random_layouts"] == 0.5
    assert results["workload"]["mixed_names"] == 0.5 and results["workload"]["random_labels"] == 0.5
    # lines of other heights are lessons of their own too; their validation lines keep the default heights
    assert results["workload"]["line_sizes"] == [12, 24] and (tmp_path / "work" / "lines-32-line-sizes-12-24").is_dir()
    # Any CER of 8 new tokens is at most 100: the glyph stage ends at its first read (after step 1 of 3), and the
    # lines stage gets the two steps it left. The 1 s budget is spent before the pages stage begins: it is cut at its
    # first check (step 2 of 3), and still read, scored and saved; the stages before it are never cut.
    assert [(s["steps"], s["max_steps"]) for s in results["stages"]] == [(1, 3), (5, 5), (3, 3), (2, 3)]
    assert results["stages"][-1]["time_budget"]["cuts"] == [{"at_step": 2, "end": 2}]
    assert [s["time_budget"] for s in results["stages"][:-1]] == [None, None, None]
    samples = [s["samples_before"] for s in results["stages"]]
    assert samples == [0, 8, 48, 60]  # steps x batch of the stages before
    # glyph and line readers are not asked to write pages
    assert [s["heldout_pages_after"] is None for s in results["stages"]] == [True, True, False, False]
    for stage in results["stages"][1:]:
        assert stage["curve"] and stage["waited_for_lessons_seconds"] >= 0  # later lessons render while earlier ones train
    # what the validation reads of each stage cost, apart from its training steps
    assert all(s["validation_seconds"] > 0 for s in results["stages"])
    assert all(point["read_characters"] >= 0 and point["reference_characters"] > 0
               for s in results["stages"] for point in s["curve"])
    # One background process renders the later stages in order, each ready before its stage trains.
    ready = [s["lessons_ready_seconds"] for s in results["stages"]]
    assert ready[1:] == sorted(ready[1:]) and min(ready) > 0
    # then the test pages and the unseen layout, first read after the blocks stage
    assert ready[-1] <= results["test_sets_ready_seconds"] <= results["stages"][2]["stage_started_seconds"] + \
        results["stages"][2]["stage_seconds"]
    assert all(s["lessons_ready_seconds"] <= s["stage_started_seconds"] + s["waited_for_lessons_seconds"] + 1e-6
               for s in results["stages"])
    # the set-up before the first step, part by part, adds up to it
    setup = results["setup_seconds"]
    assert list(setup) == ["random_checkpoint", "validation_lessons", "glyphs_lessons"]
    assert all(seconds >= 0 for seconds in setup.values())
    assert abs(sum(setup.values()) - results["synth_seconds"]) < 1e-6
    for stage in results["stages"][2:]:
        assert 0 <= stage["heldout_pages_after"]["cer"]
    # With photographed pages or new layouts among the lessons, the reader also reads bench photo-loop's held-out
    # documents (a layout no lesson uses), as photos and as the same documents on clean pages.
    assert results["workload"]["photos"] == 0.5
    assert results["heldout_photos"]["examples"][0]["reference"] != results["heldout_pages"]["examples"][0]["reference"]
    assert [e["reference"] for e in results["heldout_unseen_layout"]["examples"]] == \
        [e["reference"] for e in results["heldout_photos"]["examples"]]
    # every read of the unseen layout kept, in page order (bench/layout_words.py counts the words written)
    for key in ("heldout_photos", "heldout_unseen_layout"):
        assert [r["reference"] for r in results[key]["reads"][:3]] == [e["reference"] for e in results[key]["examples"]]
        assert len(results[key]["reads"]) == 4
    # The last stage's read of the held-out pages is the final one.
    assert results["stages"][-1]["heldout_pages_after"]["cer"] == results["heldout_pages"]["strip_markdown"]["cer"]
    # Every stage's curve reads its own validation lessons; the pages stage's are clean pages other than the held-out
    # test pages, which are read only to be reported (nothing is chosen on them).
    assert [p["step"] for p in results["stages"][-1]["curve"]] == [2]
    validation = {e.text for e in Dataset.open(tmp_path / "work" / "validation-pages-4").examples()}
    test_pages = {e.text for e in Dataset.open(tmp_path / "work" / "heldout-pages-4").examples()}
    assert len(validation) == len(test_pages) == 4 and not validation & test_pages
    for key in ("heldout_pages", "blind_control", "heldout_photos", "heldout_unseen_layout"):
        scored = results[key]
        assert scored["pages"] == 4
        assert {"cer", "mean_page_cer", "median_page_cer", "normalized_edit_distance"} <= set(scored["strip_markdown"])
        # each page's CER, and how far the pooled CER could move on other pages of the kind
        low, high = scored["strip_markdown"]["cer_interval_95"]
        assert low <= scored["strip_markdown"]["cer"] <= high and len(scored["strip_markdown"]["page_cers"]) == 4
        # the pages that weigh most on it, worst first, each with what it should have read and what it read
        worst = scored["worst"]
        assert [w["cer"] for w in worst] == sorted(scored["strip_markdown"]["page_cers"], reverse=True)[:3]
        assert all(w["reference"] and "read" in w for w in worst)
    assert results["tesseract"]["pages"] == 4 and results["tesseract"]["strip_markdown"]["cer"] < 0.2
    assert out.with_suffix(".png").stat().st_size > 0
    reader = load_model(str(model), backend="hf")
    assert reader.reading.prompt == "ocr" and reader.reading.resolution == "base"
    assert next(reader.model.parameters()).dtype.is_floating_point

    # Tesseract scored afterwards (for results made on a machine without it) reads the same pages again.
    del results["tesseract"]
    out.write_text(json.dumps(results))
    run_cli("bench", "pretrain", "--out", str(out), "--add-tesseract", "--work", str(tmp_path / "work"), check=True)
    assert json.loads(out.read_text())["tesseract"]["pages"] == 4

    # A run stopped before its end has no final read: Tesseract has nothing to stand beside, said in one line.
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"stages": results["stages"][:2], "complete": False}))
    refused = run_cli("bench", "pretrain", "--out", str(partial), "--add-tesseract", "--work", str(tmp_path / "work"))
    assert refused.returncode != 0 and "did not finish" in refused.stderr and "Traceback" not in refused.stderr


def test_a_run_stopped_within_a_stage_says_which_stage_and_how_long_it_waited_for_its_lessons(tmp_path):
    """What a run stopped by its time limit leaves: the stages it finished, and the one it was in (run 20 on the H200
    was stopped in its pages stage, and its result said nothing of it)."""
    out = tmp_path / "pretrain.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "ocrloop", "bench", "pretrain", "--out", str(out), "--size", "tiny",
                                "--lessons", "32,32,16,8", "--steps", "2,400,2,2", "--batch-sizes", "8,8,4,4",
                                "--heldout", "4", "--workers", "0", "--render-processes", "2", "--max-new-tokens", "8,8,16,16",
                                "--evals-per-stage", "1", "--glyphs-read-at", "0", "--work", str(tmp_path / "work")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def running() -> str | None:
        return json.loads(out.read_text()).get("running", {}).get("stage") if out.is_file() else None

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and running() != "lines" and process.poll() is None:
        time.sleep(0.05)
    assert running() == "lines" and process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and [s["stage"] for s in partial["stages"]] == ["glyphs"]
    stage = partial["running"]
    assert stage["waited_for_lessons_seconds"] >= 0
    assert stage["stage_started_seconds"] >= partial["stages"][0]["stage_started_seconds"]
    assert 0 < stage["lessons_ready_seconds"] <= stage["stage_started_seconds"] + stage["waited_for_lessons_seconds"] + 1e-6


def test_the_last_stage_can_be_profiled_its_page_lessons_grouped_more_test_pages_read_and_no_stage_cut_without_a_budget(tmp_path):
    out = tmp_path / "pretrain.json"
    result = run_cli("bench", "pretrain", "--out", str(out), "--size", "tiny", "--lessons", "16,16,8,8", "--steps",
                     "1,1,1,4", "--batch-sizes", "8,8,4,4", "--heldout", "2", "--workers", "0", "--render-processes", "2",
                     "--max-new-tokens", "4,4,8,8", "--evals-per-stage", "1", "--glyphs-read-at", "0",
                     "--profile-steps", "1", "--group-by-length", "--test-pages", "5", "--work", str(tmp_path / "work"),
                     check=True)
    results = json.loads(out.read_text())
    assert results["workload"]["group_by_length"] is True
    # Five test pages, their blank twins, and the first two (--heldout) scored apart: the pages a run with the default
    # read, the same reads.
    pages = results["heldout_pages"]
    assert pages["pages"] == results["blind_control"]["pages"] == results["workload"]["heldout_pages"] == 5
    assert pages["first_pages"]["pages"] == 2
    assert pages["first_pages"]["strip_markdown"]["page_cers"] == pages["strip_markdown"]["page_cers"][:2]
    assert len(pages["reads"]) == 5 and pages["reads"][:3] == pages["examples"]
    assert "5 held-out pages" in result.stdout and "(the first 2: " in result.stdout
    five, two = (Dataset.open(heldout_pages(tmp_path / "other", n, ("receipt", "invoice"), DataConfig())[0],
                              DataConfig()).examples() for n in (5, 2))
    assert [e.text for e in five[:2]] == [e.text for e in two]
    # Only the pages stage groups (with all four grouped, run 25's glyph stage never left its plateau).
    cards = {run.name.rsplit("-", 1)[1]: json.loads((run / "run_card.json").read_text())
             for run in (tmp_path / "work" / "runs").iterdir()}
    assert {stage: card["config"]["training"]["group_by_length"] for stage, card in cards.items()} == {
        "glyphs": False, "lines": False, "blocks": False, "pages": True}
    stages = results["stages"]
    assert [s["steps"] for s in stages] == [1, 1, 1, 4] and [s["time_budget"] for s in stages] == [None] * 4
    assert [s["profile"] for s in stages[:-1]] == [None] * 3
    profile = stages[-1]["profile"]  # step 3 of 4, from the middle of the pages stage
    assert profile["steps"] == 1 and profile["seconds_per_step"] > 0 and "aten::" in profile["top_by_cpu_time"]


def test_a_blocks_stage_of_no_steps_is_skipped_and_the_other_stages_keep_their_lessons(tmp_path):
    out = tmp_path / "pretrain.json"
    result = run_cli("bench", "pretrain", "--out", str(out), "--size", "tiny", "--lessons", "16,16,8,8", "--steps",
                     "2,1,0,2", "--batch-sizes", "8,8,4,4", "--heldout", "2", "--workers", "0", "--render-processes",
                     "2", "--max-new-tokens", "4,4,8,8", "--evals-per-stage", "1", "--glyphs-read-at", "100",
                     "--work", str(tmp_path / "work"), check=True)
    assert "stage blocks: skipped (0 steps)" in result.stderr
    results = json.loads(out.read_text())
    stages = results["stages"]
    assert [s["stage"] for s in stages] == ["glyphs", "lines", "pages"]
    # the glyph step it left goes to the lines stage; the pages stage starts from the lines reader
    assert [(s["steps"], s["max_steps"]) for s in stages] == [(1, 2), (2, 2), (2, 2)]
    assert [s["samples_before"] for s in stages] == [0, 8, 24]
    runs = sorted((tmp_path / "work" / "runs").iterdir())
    assert [run.name.rsplit("-", 1)[1] for run in runs] == ["glyphs", "lines", "pages"]
    card = json.loads((runs[-1] / "run_card.json").read_text())
    assert card["config"]["base_model"] == str(runs[1])
    # no blocks lessons rendered, for training or validation
    assert not list((tmp_path / "work").glob("*blocks*"))
    # each stage's lessons come from the seed of its place in the curriculum: the pages are the ones a run with a
    # blocks stage trains on
    assert stages[-1]["heldout_pages_after"] is not None and results["heldout_pages"]["pages"] == 2
    assert out.with_suffix(".png").stat().st_size > 0
    reference = tmp_path / "reference-pages"
    synthesize_lessons(reference, LessonOptions("pages", 8, seed=4, categories=("receipt", "invoice")), DataConfig(),
                       workers=2)
    assert sorted(e.text for e in Dataset.open(tmp_path / "work" / "pages-8", DataConfig()).examples()) == \
        sorted(e.text for e in Dataset.open(reference, DataConfig()).examples())


def test_a_stage_of_no_steps_or_a_learning_rate_out_of_range_is_refused_in_one_line(tmp_path):
    for flag, value in (("--steps", "840,0,300,300"), ("--steps", "840,1400,300,0"), ("--learning-rates", "3e-4,3e-4,-1,3e-4"),
                        ("--line-sizes", "4,20")):
        result = run_cli("bench", "pretrain", "--out", str(tmp_path / "x.json"), flag, value, "--work", str(tmp_path / "w"))
        assert result.returncode != 0 and f"error: {flag}:" in result.stderr and "Value error" not in result.stderr, \
            result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()
    result = run_cli("bench", "pretrain", "--out", str(tmp_path / "x.json"), "--line-sizes", "24,12", "--work",
                     str(tmp_path / "w"))
    # the validator's own sentence is the whole line, without pydantic's "Value error, " before it
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == \
        "error: --line-sizes 24,12: the smallest comes first"
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()

    # the photo loop's held-out layout in the lessons would make its photos a layout the reader was taught
    for reads_it in (("--photos", "0.3"), ("--random-layouts", "0.5"), ("--random-labels", "0.5")):
        result = run_cli("bench", "pretrain", "--out", str(tmp_path / "x.json"), *reads_it, "--templates", "0,2",
                         "--work", str(tmp_path / "w"))
        assert result.returncode != 0 and "--templates [2]" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "w").exists()


def test_lessons_rendered_now_are_the_dataset_that_opening_them_finds(tmp_path):
    from ocrloop.bench.pretrain import lessons_ready
    from ocrloop.config import DataConfig
    from ocrloop.data.lessons import LessonOptions

    rendered = lessons_ready(tmp_path / "lines", LessonOptions("lines", 24, seed=3), DataConfig(), processes=2)
    opened = lessons_ready(tmp_path / "lines", LessonOptions("lines", 24, seed=3), DataConfig(), processes=2)
    assert len(rendered.examples("train")) == 24 and rendered.problems == opened.problems == []
    assert rendered.examples() == opened.examples() and rendered.files == opened.files

