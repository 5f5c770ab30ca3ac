"""Batch OCR shared out over processes (torchrun, gloo on the CPU): the same results as one process, merged in
input order in index.jsonl; a rerun reads only what is not finished; same-named inputs never overwrite each other."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ocrloop.config import DataConfig
from ocrloop.data.synth import LineOptions, synthesize_lines
from tests.conftest import run_cli
from tests.train.test_distributed import _free_port


def _torchrun_ocr(workspace: Path, pages: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
               "-m", "ocrloop", "ocr", str(pages), "--out", str(out), "-w", str(workspace)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def _workspace_and_lines(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A workspace on the tiny Qwen preset, and 5 rendered text lines (in LINES/train)."""
    workspace = tmp_path / "ws"
    run_cli("init", str(workspace), "--base-model", "tiny-qwen2.5-vl", check=True)
    lines = tmp_path / "lines"
    synthesize_lines(lines, LineOptions(n=5, seed=seed), DataConfig())
    return workspace, lines


def test_sharded_ocr_equals_one_process_in_input_order_and_resumes(tiny_presets, tmp_path):
    workspace, lines = _workspace_and_lines(tmp_path, seed=8)
    pages = tmp_path / "pages"
    for folder, chosen in (("a", range(0, 3)), ("b", range(2, 5))):  # line 2 is in both folders, under one name
        (pages / folder).mkdir(parents=True)
        for index in chosen:
            shutil.copy(lines / "train" / f"line_s8_{index:06d}.png", pages / folder)

    run_cli("ocr", str(pages), "--out", str(tmp_path / "one"), "-w", str(workspace), check=True)
    _torchrun_ocr(workspace, pages, tmp_path / "two")
    one, two = (sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("one", "two"))
    assert one == two and len(one) == 7  # six results (the shared name kept apart) and the index
    for name in one:
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    index = _index(tmp_path / "two")
    inputs = sorted(str(p) for p in pages.rglob("*.png"))
    assert [d["input"] for d in index] == inputs and all(d["done"] for d in index)

    # A process that died leaves its unfinished documents without results: the rerun reads those alone.
    lost = [tmp_path / "two" / d["output"] for d in index[1:3]]
    for path in lost:
        path.unlink()
    # The rerun asks for two processes with --gpus, which starts torchrun itself.
    rerun = run_cli("ocr", str(pages), "--out", str(tmp_path / "two"), "--gpus", "2", "-w", str(workspace),
                    env={"OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "4 already done" in rerun.stderr and "process 2 of 2: read 1 pages of 1 documents" in rerun.stderr
    assert all(path.read_text() == (tmp_path / "one" / path.name).read_text() for path in lost)
    assert all(d["done"] for d in _index(tmp_path / "two"))


def test_sharded_ocr_without_out_is_refused_in_one_line(tiny_presets, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "WORLD_SIZE": "2", "RANK": "0"}
    result = subprocess.run([sys.executable, "-m", "ocrloop", "ocr", str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "give --out" in result.stderr and "Traceback" not in result.stderr


def test_ocr_reads_pages_of_several_documents_per_batch_and_reads_the_same(tiny_presets, tmp_path):
    """Batches cross documents (a two-page PDF among images); a broken file fails alone, in its place."""
    from PIL import Image

    workspace, lines = _workspace_and_lines(tmp_path, seed=9)
    pages = tmp_path / "pages"
    pages.mkdir()
    images = sorted((lines / "train").glob("*.png"))
    for image in images[:4]:
        shutil.copy(image, pages)
    first, second = (Image.open(path).convert("RGB") for path in images[3:5])
    first.save(pages / "two_pages.pdf", save_all=True, append_images=[second])
    (pages / "broken.png").write_bytes(b"not an image")

    outputs = {}
    for size in ("1", "4", "4 --fast-decode"):
        out = tmp_path / f"batch{size.replace(' ', '')}"
        result = run_cli("ocr", str(pages), "--out", str(out), "--format", "json", "--read-batch-size", *size.split(),
                         "-w", str(workspace))
        assert result.returncode == 1 and "1 unreadable, of 6 documents" in result.stderr
        assert result.stderr.count("broken.png") == 1
        assert "read 6 pages of 5 documents in " in result.stderr  # and the rate, for timing a batch job
        outputs[size] = {p.name: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(outputs["4"]) == sorted(outputs["1"]) and len(outputs["4"]) == 5
    assert len(outputs["4"]["two_pages.json"]["pages"]) == 2
    # The four single-page images went through one generation: each page carries the same share of its time.
    shares = {document["pages"][0]["seconds"] for name, document in outputs["4"].items() if name.startswith("line_")}
    assert len(shares) == 1
    for name, document in outputs["4"].items():
        assert [p["text"] for p in document["pages"]] == [p["text"] for p in outputs["1"][name]["pages"]]
        assert [p["text"] for p in outputs["4 --fast-decode"][name]["pages"]] == [p["text"] for p in document["pages"]]
