"""`ocrloop report` renders the registry's history into one self-contained HTML file."""

from __future__ import annotations

import base64
import re

from PIL import Image
import io

from ocrloop.loop.history import loop_history
from ocrloop.loop.report import render_report
from ocrloop.workspace import Workspace
from tests.conftest import run_cli


def test_report_has_plots_and_the_before_after_table(looped_workspace, tmp_path):
    out = tmp_path / "report.html"
    result = run_cli("report", "-w", str(looped_workspace), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # mix, loop runs per week, CER/WER per version, loss and validation curves, duration/VRAM/cost
    assert "Training loss and validation CER of recent runs" in page and "Loop runs per week" in page
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.size[0] > 300 and image.size[1] > 150
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    history = loop_history(Workspace.load(looped_workspace).config.registry_path)
    last = [row for row in history if row["challenger_test_cer"] is not None][-1]
    assert f"Before / after: {last['champion']} &rarr; {last['challenger']}" in page
    for category in last["challenger_cer_by_category"]:
        assert f"<td>{category}</td>" in page
    assert page.count("<tr><td>20") == len(history)  # one row per loop run


def test_report_on_an_empty_registry_says_what_is_missing(tmp_path):
    from ocrloop.registry import Registry

    with Registry(tmp_path / "ocrloop.db"):
        pass
    page = render_report(tmp_path / "ocrloop.db")
    assert "no loop run yet" in page and "no loop decision recorded yet" in page and "<img" not in page
    assert "no training run has recorded its curves yet" in page
