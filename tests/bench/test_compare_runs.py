"""bench/compare_runs.py: whole bench pretrain runs side by side, and their test pages against their pages steps."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "compare_runs.py"


def _scores(pages: int, cer: float) -> dict:
    return {"pages": pages, "strip_markdown": {"cer": cer, "cer_interval_95": [cer / 2, cer * 2]}}


def _results(stage_steps: dict[str, int], test_pages: int, cer: float, first: float | None = None) -> dict:
    stages = [{"stage": name, "steps": steps, "stage_started_seconds": 10.0 * i,
               "curve": [{"step": steps, "cer": 1 / (i + 1)}]} for i, (name, steps) in enumerate(stage_steps.items())]
    test = _scores(test_pages, cer)
    if first is not None:
        test["first_pages"] = _scores(64, first)
    return {"stages": stages, "heldout_pages": test, "blind_control": _scores(test_pages, 0.97)}


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)


def test_each_run_is_summarized_and_its_first_pages_compare_with_a_run_of_fewer_test_pages(tmp_path):
    steps = {"glyphs": 672, "lines": 1418, "blocks": 300, "pages": 670}
    many, few = tmp_path / "many.json", tmp_path / "few.json"
    many.write_text(json.dumps(_results(steps, 256, 0.034, first=0.029)))
    few.write_text(json.dumps(_results({**steps, "pages": 780}, 64, 0.042)))
    done = _run(tmp_path, "--out", "runs.png", f"{many}=28", str(few))
    assert done.returncode == 0, done.stderr
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert list(runs) == ["28", "few"]  # a run without a label is named by its file
    assert runs["28"]["steps"] == steps and runs["few"]["steps"]["pages"] == 780
    assert runs["28"]["validation_cer"]["lines"] == 0.5 and runs["28"]["pages_started_seconds"] == 30.0
    # the first 64 pages scored apart where there are more; where there are not, they are every test page
    assert (runs["28"]["test_pages"]["cer"], runs["28"]["first_pages"]["cer"]) == (0.034, 0.029)
    assert runs["few"]["first_pages"] == runs["few"]["test_pages"] == {"pages": 64, "cer": 0.042,
                                                                       "interval": [0.021, 0.084]}
    assert runs["28"]["unseen_layout_clean"] is None and runs["28"]["blind_control"]["cer"] == 0.97
    assert (tmp_path / "runs.png").stat().st_size > 0
    assert "28: steps glyphs 672, lines 1418, blocks 300, pages 670; lines 50.0%; pages from 30 s; test pages 3.40% " \
           "(256), the first 64 2.90%" in done.stdout


def test_a_run_without_a_page_reader_or_a_missing_file_is_one_line(tmp_path):
    lines_only = tmp_path / "lines.json"
    lines_only.write_text(json.dumps(_results({"glyphs": 10, "lines": 20}, 4, 0.9)))
    for argument in (str(lines_only), "absent.json=x"):
        refused = _run(tmp_path, "--out", "x.png", argument)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and refused.stderr.startswith("error: ")
