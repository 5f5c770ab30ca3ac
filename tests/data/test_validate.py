"""Validation reports every problem in one pass, located; loaders skip what is broken."""

import json
import os

from PIL import Image

from ocrloop.config import DataConfig
from ocrloop.data.dataset import Dataset


def _image(path, size=(60, 40), color="white", **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def _pdf(path, pages):
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.new("RGB", (200, 100), c) for c in ["white", "gray", "black"][:pages]]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=72)


def _entry(image, text="hello", **extra):
    return {"image": image, "text": text, "category": "receipt", "business": "ecommerce", **extra}


def test_every_problem_is_reported_in_one_pass(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/good.png")
    _image(root / "train/big.png", size=(200, 100))
    (root / "train/empty.png").write_bytes(b"")
    truncated = _image(root / "train/truncated.png", size=(300, 300), color="red")
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "train/notes.txt").write_text("not a document")
    (root / "train/fake.png").write_bytes(b"definitely not a png" * 10)
    outside = _image(tmp_path / "outside.png", color="blue")
    os.symlink(outside, root / "train/link.png")
    _image(root / "train/leak.png", color="green")
    _image(root / "test/leak_copy.png", color="green")
    _pdf(root / "train/contract.pdf", pages=2)
    entries = [
        _entry("train/good.png"),
        _entry("train/missing.png"),
        _entry("train/empty.png"),
        _entry("train/truncated.png"),
        _entry("train/notes.txt"),
        _entry("train/fake.png"),
        _entry("train/link.png"),
        _entry("../outside.png", split="train"),
        _entry("/etc/passwd", split="train"),
        _entry("train/big.png"),
        _entry("train/leak.png"),
        _entry("test/leak_copy.png"),
        _entry("train/contract.pdf"),  # 2 pages, 1 text
        _entry("holdout/good.png"),  # unknown split
        _entry("train/good2.png", text=""),
        _entry("train/good3.png", text=42),
        "not an object",
    ]
    (root / "annotations.json").write_text(json.dumps(entries))

    dataset = Dataset.open(root, DataConfig(max_image_pixels=10_000, pdf_dpi=36))
    found = {str(p) for p in dataset.errors}

    def reported(location, fragment):
        return any(line.startswith(location) and fragment in line for line in found)

    assert reported("train/missing.png", "file not found")
    assert reported("train/empty.png", "0 bytes")
    assert reported("train/truncated.png", "truncated")
    assert reported("train/notes.txt", "unsupported format .txt")
    assert reported("train/fake.png", "not a valid image")
    assert reported("annotations.json[6].image", "symlink that points outside")
    assert reported("annotations.json[7].image", "escapes the dataset root")
    assert reported("annotations.json[8].image", "absolute paths")
    assert reported("train/big.png", "over the limit of 10000")
    assert reported("train/leak.png", "leakage") and reported("test/leak_copy.png", "leakage")
    assert reported("annotations.json[12].pages", "2 page(s) but 1 text(s)")
    assert reported("annotations.json[13].split", "unknown split 'holdout'")
    assert reported("annotations.json[14].text", "empty")
    assert reported("annotations.json[15].text", "must be a string, got int")
    assert reported("annotations.json[16]", "expected an object")
    # Only the good image survives for training.
    assert [e.source for e in dataset.examples()] == ["train/good.png"]


def test_invalid_utf8_and_malformed_lines_in_jsonl_are_located(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/a.png")
    _image(root / "val/b.png", color="black")
    lines = [
        json.dumps(_entry("train/a.png")).encode(),
        b'{"image": "train/x.png", "text": "caf\xe9"}',
        b"{not json",
        json.dumps(_entry("val/b.png")).encode(),
    ]
    (root / "annotations.jsonl").write_bytes(b"\n".join(lines))
    dataset = Dataset.open(root)
    messages = [str(p) for p in dataset.errors]
    assert any(m.startswith("annotations.jsonl:2") and "invalid UTF-8" in m for m in messages)
    assert any(m.startswith("annotations.jsonl:3") and "malformed JSON" in m for m in messages)
    assert sorted(e.split for e in dataset.examples()) == ["train", "val"]


def test_invalid_utf8_in_annotations_json_names_the_line(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotations.json").write_bytes(b'[\n{"image": "train/a.png",\n "text": "\xff"}]')
    problems = [str(p) for p in Dataset.open(root).errors]
    assert problems == ["annotations.json:3: invalid UTF-8 at byte 37"]


def test_imagefolder_metadata_per_split(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/a.png")
    _image(root / "test/b.png", color="black")
    (root / "train/metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "A"}) + "\n")
    (root / "test/metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "B", "category": "invoice"}) + "\n")
    dataset = Dataset.open(root)
    assert not dataset.problems
    examples = {e.source: e for e in dataset.examples()}
    assert examples["train/a.png"].split == "train" and examples["train/a.png"].category == "unknown"
    assert examples["test/b.png"].split == "test" and examples["test/b.png"].category == "invoice"


def test_explicit_split_field_wins_over_folder(tmp_path):
    root = tmp_path / "ds"
    _image(root / "images/a.png")
    (root / "annotations.json").write_text(json.dumps([_entry("images/a.png", split="val")]))
    assert [e.split for e in Dataset.open(root).examples()] == ["val"]


def test_exif_rotation_is_applied_when_loading(tmp_path):
    root = tmp_path / "ds"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _image(root / "train/phone.jpg", size=(80, 30), exif=exif)
    (root / "annotations.json").write_text(json.dumps([_entry("train/phone.jpg")]))
    dataset = Dataset.open(root)
    assert [p.severity for p in dataset.problems] == ["warning"]
    (example,) = dataset.examples()
    assert dataset.load_image(example).size == (30, 80)


def test_multi_page_pdf_is_one_example_per_page_at_the_configured_dpi(tmp_path):
    root = tmp_path / "ds"
    _pdf(root / "train/contract.pdf", pages=3)
    (root / "annotations.json").write_text(json.dumps([
        {"image": "train/contract.pdf", "pages": ["one", "two", "three"], "category": "contract", "business": "legal"}
    ]))
    dataset = Dataset.open(root, DataConfig(pdf_dpi=144))
    examples = dataset.examples("train")
    assert [(e.page, e.text, e.kind) for e in examples] == [(0, "one", "pdf"), (1, "two", "pdf"), (2, "three", "pdf")]
    first, last = dataset.load_image(examples[0]), dataset.load_image(examples[2])
    assert first.size == (400, 200)  # 200x100 pt page at 144 dpi
    assert first.getpixel((10, 10)) == (255, 255, 255) and last.getpixel((10, 10)) == (0, 0, 0)


def test_a_file_broken_after_validation_is_skipped_by_the_loader(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/a.png")
    _image(root / "train/b.png", color="black")
    (root / "annotations.json").write_text(json.dumps([_entry("train/a.png"), _entry("train/b.png")]))
    dataset = Dataset.open(root)
    (root / "train/a.png").write_bytes(b"garbage")
    loaded = [example.source for example, _ in dataset.iter_images(dataset.examples())]
    assert loaded == ["train/b.png"]
    assert any("skipped" in str(p) and p.location == "train/a.png" for p in dataset.warnings)
