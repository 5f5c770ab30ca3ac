"""bench/photo_layouts.py: a photo loop's held-out photos in the trained layouts, scored layout by layout; and the
layout a page's text is in."""

import json
import random
import subprocess
import sys
from pathlib import Path

from ocrloop.bench.photo_loop import heldout_photos_in_trained_layouts
from ocrloop.bench.scoring import page_category, page_layout
from ocrloop.bench.settings import BenchPhotoLoopSettings
from ocrloop.config import DataConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.synth import DOCUMENT_TEMPLATES
from ocrloop.evaluate.metrics import Normalization

SCRIPT = Path(__file__).parents[2] / "bench" / "photo_layouts.py"


def test_every_layout_of_receipts_and_invoices_is_told_from_its_text():
    for category in ("receipt", "invoice"):
        for layout, template in enumerate(DOCUMENT_TEMPLATES[category]):
            for seed in range(20):
                text = "\n".join(template(random.Random(seed), "ecommerce"))
                assert page_layout(text) == (category, layout), text
                assert page_category(text) == category  # a till's receipt ("Order no.") says no "Receipt"
    assert page_layout("# Cable Corner\n- Desk Lamp x1: $70.00") is None


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments, "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, cwd=tmp_path)


def test_each_layouts_pooled_cer_is_weighed_by_its_pages_lengths(tmp_path):
    workload = {"reader": "tiny-qwen2.5-vl", "business": "ecommerce", "categories": ["receipt", "invoice"],
                "documents": 24, "heldout_documents": 6, "heldout_pages": 6, "train_templates": [0, 1],
                "heldout_templates": [2], "scale": 0.35, "render_processes": 2, "heldout_render_processes": 2}
    settings = BenchPhotoLoopSettings(out=tmp_path / "x.json", reader="tiny-qwen2.5-vl", heldout=6, scale=0.35,
                                      work=tmp_path / "work")
    texts = [e.text for e in Dataset.open(heldout_photos_in_trained_layouts(settings, DataConfig(), 2)).examples()]
    layouts = [page_layout(text) for text in texts]
    assert len(set(layouts)) > 1 and None not in layouts
    reader, champion = [0.5, 0.1, 0.3, 0.2, 0.9, 0.0], [0.1] * 6
    results = {"workload": workload, "heldout_trained_layouts": {
        "reader": {"strip_markdown": {"page_cers": reader}, "worst": [{"page": 4, "reference": texts[4]}]},
        "champion": {"strip_markdown": {"page_cers": champion}},
        "tesseract": {"error": "pytesseract is not installed"}}}
    (tmp_path / "loop.json").write_text(json.dumps(results))
    done = _run(tmp_path, "loop.json", "--out", "layouts.json")
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "layouts.json").read_text())["loop.json"]
    first = f"{layouts[0][0]} {layouts[0][1]}"
    mine = [page for page, layout in enumerate(layouts) if layout == layouts[0]]
    lengths = [len(Normalization(strip_markdown=True).apply(texts[page])) for page in mine]
    assert found[first]["pages"] == len(mine)
    assert abs(found[first]["reader"] - sum(reader[p] * n for p, n in zip(mine, lengths)) / sum(lengths)) < 1e-12
    assert abs(found[first]["champion"] - 0.1) < 1e-12 and "tesseract" not in found[first]
    assert sum(scores["pages"] for scores in found.values()) == 6
    assert f"loop.json, {first} ({len(mine)} pages): reader " in done.stdout

    # pages rendered otherwise than the result's are refused in one line
    results["heldout_trained_layouts"]["reader"]["worst"] = [{"page": 4, "reference": texts[3]}]
    (tmp_path / "other.json").write_text(json.dumps(results))
    refused = _run(tmp_path, "other.json")
    assert refused.returncode != 0 and "page 4 rendered here is not the one the result read" in refused.stderr
    assert "Traceback" not in refused.stderr
