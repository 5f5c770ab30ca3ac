"""bench/compare_stages.py: one stage of several bench pretrain results, side by side."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "compare_stages.py"


def _results(lessons: int, losses: list[float], cers: list[float]) -> dict:
    lines = {"stage": "lines", "lessons": lessons, "steps": 200, "batch_size": 256, "steady_samples_per_second": 2900.0,
             "loss_by_step": [[100 * (i + 1), loss] for i, loss in enumerate(losses)],
             "curve": [{"step": 100 * (i + 1), "samples": 25600 * (i + 1), "cer": cer} for i, cer in enumerate(cers)]}
    return {"stages": [{**lines, "stage": "glyphs"}, lines], "parameters": 17_600_256}


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)


def test_each_run_ends_where_its_stage_ended_and_repetition_is_counted_in_passes(tmp_path):
    few, many = tmp_path / "few.json", tmp_path / "many.json"
    few.write_text(json.dumps(_results(12_800, [0.9, 0.05], [0.3, 0.2])))
    many.write_text(json.dumps(_results(51_200, [0.9, 0.2], [0.3, 0.1])))
    done = _run(tmp_path, "--stage", "lines", "--out", "cmp.png", f"{few}=few lines", f"{many}=many lines")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "cmp.json").read_text())["runs"]
    assert summary["few lines"]["passes"] == 4 and summary["many lines"]["passes"] == 1
    assert (summary["few lines"]["final_loss"], summary["few lines"]["heldout_cer"]) == (0.05, 0.2)
    assert summary["many lines"]["heldout_cer"] == 0.1
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert "few lines: 200 steps, 4 passes, loss 0.050, held-out lines 20.0%" in done.stdout


def test_a_stage_the_run_does_not_have_or_a_missing_file_is_one_line(tmp_path):
    only_lines = tmp_path / "run.json"
    only_lines.write_text(json.dumps(_results(12_800, [0.9], [0.3])))
    for arguments in (["--stage", "pages", "--out", "x.png", str(only_lines)], ["--out", "x.png", "absent.json=x"]):
        refused = _run(tmp_path, *arguments)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and refused.stderr.startswith("error: ")
