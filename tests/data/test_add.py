import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

from ocrloop.data.add import IncomingDocument, add_documents, read_sidecar_texts
from ocrloop.data.dataset import Dataset
from ocrloop.errors import DatasetError


def _scan(path, color):
    Image.new("RGB", (64, 48), color).save(path)
    return path


def test_add_copies_and_refuses_duplicates(tmp_path):
    root = tmp_path / "ds"
    scan = _scan(tmp_path / "r1.png", "red")
    (tmp_path / "r1.md").write_text("**Total:** $5\n")
    document = IncomingDocument(scan, read_sidecar_texts(scan), "receipt", "ecommerce", "train")
    first = add_documents(root, [document])
    assert [r.source for r in first.added] == ["train/r1.png"]
    renamed = _scan(tmp_path / "other-name.png", "red")  # same content, other name, other split
    second = add_documents(root, [IncomingDocument(renamed, ("x",), "receipt", "ecommerce", "test")])
    assert second.added == [] and "already in the dataset" in second.refused[0]
    dataset = Dataset.open(root)
    assert dataset.errors == []
    assert [(e.source, e.text) for e in dataset.examples()] == [("train/r1.png", "**Total:** $5")]


def test_moving_renames_the_callers_files_into_place_and_returns_what_it_inspected(tmp_path):
    root = tmp_path / "ds"
    staging = root / ".staging"
    staging.mkdir(parents=True)
    scans = [_scan(staging / f"s{index}.png", (index, 0, 0)) for index in range(3)]
    result = add_documents(root, [IncomingDocument(p, (f"t{p.stem}",), "receipt", "ecommerce", "train") for p in scans],
                           move=True)
    assert not any(staging.iterdir())  # renamed, not copied
    dataset = Dataset.open(root)
    assert dataset.errors == [] and [r.source for r in dataset.records] == ["train/s0.png", "train/s1.png", "train/s2.png"]
    assert result.files == dataset.files  # what adding inspected is what opening finds


def test_a_bad_file_in_a_batch_adds_nothing(tmp_path):
    root = tmp_path / "ds"
    good = _scan(tmp_path / "good.png", "blue")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(DatasetError, match="bad.png: file is empty"):
        add_documents(root, [
            IncomingDocument(good, ("ok",), "receipt", "ecommerce", "train"),
            IncomingDocument(bad, ("ok",), "receipt", "ecommerce", "train"),
        ])
    assert not (root / "train/good.png").exists()


def test_missing_ground_truth_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no ground truth"):
        read_sidecar_texts(_scan(tmp_path / "x.png", "white"))


_ADDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from PIL import Image
    from ocrloop.data.add import IncomingDocument, add_documents

    root, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    scratch.mkdir(exist_ok=True)
    print("ready", flush=True)
    for index in range(100000):
        path = scratch / f"doc{index}.png"
        Image.new("RGB", (32, 32), (index % 256, index // 256 % 256, 7)).save(path)
        add_documents(root, [IncomingDocument(path, (f"text {index}",), "receipt", "ecommerce", "train")],
                      move=sys.argv[3] == "move")
    """
)


@pytest.mark.parametrize("how", ["copy", "move"])
def test_killing_an_import_at_any_moment_leaves_a_consistent_dataset(tmp_path, how):
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(4):
        process = subprocess.Popen([sys.executable, "-c", _ADDER, str(root), str(tmp_path / f"scratch{attempt}"), how],
                                   env=env, stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(0.6 + 0.37 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait()
        annotations = json.loads((root / "annotations.json").read_text())  # never half-written
        dataset = Dataset.open(root)
        assert dataset.errors == [], dataset.errors[:3]
        assert len(dataset.records) == len(annotations)
    assert len(annotations) > 4


def test_without_a_split_documents_are_split_by_content_the_same_every_time(tmp_path):
    from collections import Counter

    from ocrloop.config import DataConfig

    scans = [_scan(tmp_path / f"s{i}.png", (i % 256, i // 256, 3)) for i in range(200)]
    first = add_documents(tmp_path / "a", [IncomingDocument(p, ("t",), "receipt", "ecommerce") for p in scans])
    again = add_documents(tmp_path / "b", [IncomingDocument(p, ("t",), "receipt", "ecommerce") for p in reversed(scans)])
    by_name = lambda result: {r.source.split("/", 1)[1]: r.split for r in result.added}  # noqa: E731
    assert by_name(first) == by_name(again)  # order and batches do not matter, only content
    counts = Counter(r.split for r in first.added)
    assert counts["train"] > 130 and 8 <= counts["val"] <= 35 and 8 <= counts["test"] <= 35, counts
    none = add_documents(tmp_path / "c", [IncomingDocument(p, ("t",), "receipt", "ecommerce") for p in scans[:20]],
                         DataConfig(test_fraction=0, val_fraction=0))
    assert {r.split for r in none.added} == {"train"}
    assert all(r.source.startswith(f"{r.split}/") for r in first.added)
