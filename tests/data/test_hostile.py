"""Hostile datasets and interrupted imports: every problem named, nothing stored lost, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ocrloop.config import DataConfig
from ocrloop.data.add import IncomingDocument, add_documents
from ocrloop.data.dataset import Dataset
from ocrloop.data.files import inspect_file, load_page
from tests.conftest import run_cli


def _image(path, size=(60, 40), color="white"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _pdf(path, pages, size=(300, 400)):
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.new("RGB", size, (255, 255 - 10 * i, 255)) for i in range(pages)]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=72)
    return path


def _entry(image, text="hello", **extra):
    return {"image": image, "text": text, "category": "receipt", "business": "ecommerce", **extra}


def test_pdfs_are_read_safely_from_many_threads(tmp_path):
    paths = [_pdf(tmp_path / f"{i}.pdf", pages=12) for i in range(6)]
    data = DataConfig(pdf_dpi=72)

    def read_all(index):
        path = paths[index % len(paths)]
        info, reason = inspect_file(path, data)
        assert reason is None, reason
        return [load_page(path, page, data).size for page in range(info.pages)]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(read_all, range(48)))
    assert all(pages == [(300, 400)] * 12 for pages in sizes)


def test_validate_names_what_would_crash_later(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/good.png")
    _image(root / "train/thin.png", size=(1, 4000))
    _image(root / "train/wide.png", size=(4000, 2))
    _pdf(root / "train/long.pdf", pages=12, size=(20, 20))
    _pdf(root / "train/ribbon.pdf", pages=1, size=(2, 20000))
    os.symlink(root / "train/loop-b.png", root / "train/loop-a.png")
    os.symlink(root / "train/loop-a.png", root / "train/loop-b.png")
    entries = [
        _entry("train/good.png"),
        _entry("train/good.png", text="lone \ud800 surrogate"),
        _entry("train/thin.png"),
        _entry("train/wide.png"),
        {**_entry("train/long.pdf"), "text": None},
        _entry("train/ribbon.pdf"),
        _entry("train/loop-a.png"),
        _entry("../../etc/passwd"),
        _entry("/etc/hostname"),
        _entry("train/good.png", business="sh\udcffop"),
    ]
    del entries[4]["text"]
    entries[4]["pages"] = [f"p{i}" for i in range(12)]
    (root / "annotations.json").write_text(json.dumps(entries))  # json escapes the surrogates as \ud800

    dataset = Dataset.open(root, DataConfig(max_pdf_pages=10))
    found = [str(p) for p in dataset.errors]

    def reported(location, fragment):
        return any(line.startswith(location) and fragment in line for line in found), found

    assert reported("annotations.json[1].text", "lone surrogate")
    assert reported("train/thin.png", "aspect ratio 4000:1")
    assert reported("train/wide.png", "aspect ratio 2000:1")
    assert reported("train/long.pdf", "12 pages, over the limit of 10")
    assert reported("train/ribbon.pdf", "page 1")
    assert reported("annotations.json[6].image", "symlink loop")
    assert reported("annotations.json[7].image", "escapes the dataset root")
    assert reported("annotations.json[8].image", "absolute paths")
    assert reported("annotations.json[9].business", "lone surrogate")
    assert not any("unknown split" in line for line in found)
    assert [e.source for e in dataset.examples()] == ["train/good.png"]
    # What validate passes, the readers can read (stats and manifests encode every text).
    dataset.manifest()


def test_a_surrogate_in_annotations_fails_validate_not_training(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/a.png")
    (root / "annotations.json").write_text(json.dumps([_entry("train/a.png", text="total \udcff 5")]))
    result = run_cli("data", "validate", "-d", str(root), "-w", str(tmp_path))
    assert result.returncode == 1 and "lone surrogate" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    stats = run_cli("data", "stats", "-d", str(root), "-w", str(tmp_path))
    assert "Traceback" not in stats.stderr, stats.stderr


_KILLED_ADD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import ocrloop.data.add as add
    from PIL import Image

    root, scratch, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    scratch.mkdir(exist_ok=True)
    paths = []
    for index in range(6):
        paths.append(scratch / f"new{index}.png")
        Image.new("RGB", (32, 32), (index * 40, 9, 9)).save(paths[-1])

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "before-annotations":  # every copy made, the annotation file not yet rewritten
        add._append_entries = die
    else:  # in the middle of copying the third file: a half-written temporary file
        real_copy, copies = add.atomic_copy, []
        def copy_then_die(source, destination):
            copies.append(source)
            if len(copies) == 3:
                import shutil, tempfile
                handle = tempfile.NamedTemporaryFile(dir=Path(destination).parent, prefix="." + Path(destination).name + ".",
                                                     suffix=".tmp", delete=False)
                handle.write(Path(source).read_bytes()[:50])
                handle.flush()
                die()
            return real_copy(source, destination)
        add.atomic_copy = copy_then_die
    add.add_documents(root, [add.IncomingDocument(p, (f"text {i}",), "receipt", "ecommerce", "train")
                             for i, p in enumerate(paths)])
    """
)


def test_a_killed_add_leaves_no_orphans_after_the_next_add(tmp_path):
    root = tmp_path / "ds"
    keep = _image(tmp_path / "kept.png", color="green")
    add_documents(root, [IncomingDocument(keep, ("kept",), "receipt", "ecommerce", "train")])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt, where in enumerate(["before-annotations", "while-copying"]):
        process = subprocess.run([sys.executable, "-c", _KILLED_ADD, str(root), str(tmp_path / f"scratch{attempt}"), where],
                                 env=env, timeout=120)
        assert process.returncode == -signal.SIGKILL
        left = Dataset.open(root)
        assert left.errors == [] and [r.source for r in left.records] == ["train/kept.png"]
        assert left.warnings, "the leftovers are reported by validate"
        again = add_documents(root, [IncomingDocument(tmp_path / f"scratch{attempt}" / "new0.png", ("again",), "receipt",
                                                      "ecommerce", "train")])
        assert again.cleaned and [r.source for r in again.added] == ["train/new0.png"]
        on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.parent != root)
        dataset = Dataset.open(root)
        assert on_disk == sorted(r.source for r in dataset.records) == ["train/kept.png", "train/new0.png"]
        assert dataset.warnings == [] and dataset.errors == []
        assert not list(root.glob(".*.tmp")) and not (root / ".ocrloop-add.journal").exists()
        (root / "annotations.json").write_text(json.dumps([_entry("train/kept.png", text="kept")]))
        (root / "train/new0.png").unlink()


def test_a_user_file_nobody_annotated_is_reported_and_kept(tmp_path):
    root = tmp_path / "ds"
    keep = _image(tmp_path / "kept.png", color="green")
    add_documents(root, [IncomingDocument(keep, ("kept",), "receipt", "ecommerce", "train")])
    mine = _image(root / "train/placed-by-hand.png", color="red")
    assert any(p.location == "train/placed-by-hand.png" for p in Dataset.open(root).warnings)
    other = _image(tmp_path / "other.png", color="blue")
    add_documents(root, [IncomingDocument(other, ("other",), "receipt", "ecommerce", "train")])
    assert mine.exists()


def test_data_add_refuses_undecodable_text_in_one_line(tmp_path):
    scan = _image(tmp_path / "scan.png")
    run_cli("init", str(tmp_path / "ws"), check=True)
    result = subprocess.run([sys.executable, "-m", "ocrloop", "data", "add", str(scan), "--text", b"total \xff 5",
                             "--category", "receipt", "--business", "ecommerce", "-w", str(tmp_path / "ws")],
                            capture_output=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "lone surrogate" in stderr and "Traceback" not in stderr
    assert json.loads((tmp_path / "ws/data/ocr_documents/annotations.json").read_text()) == []


def test_annotations_nested_absurdly_deep_are_one_problem(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotations.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "annotations.jsonl").write_text("")
    problems = [str(p) for p in Dataset.open(root).errors]
    assert problems == ["annotations.json: JSON nested too deeply to be a list of examples"]
