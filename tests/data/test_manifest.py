import json
import shutil

from ocrloop.data.dataset import Dataset, Manifest


def test_renaming_a_file_is_not_a_new_document(dataset_copy):
    before = Dataset.open(dataset_copy).manifest()
    annotations = json.loads((dataset_copy / "annotations.json").read_text())
    source = annotations[0]["image"]
    renamed = source.replace(".", "_renamed.", 1)
    shutil.move(dataset_copy / source, dataset_copy / renamed)
    annotations[0]["image"] = renamed
    (dataset_copy / "annotations.json").write_text(json.dumps(annotations))
    after = Dataset.open(dataset_copy).manifest()
    assert after.manifest_hash == before.manifest_hash
    assert after.new_since(before) == []


def test_new_documents_are_found_by_content(dataset_copy, synthetic_dataset):
    from ocrloop.data.synth import SynthOptions, synthesize_dataset

    before = Dataset.open(synthetic_dataset).manifest()
    synthesize_dataset(dataset_copy, SynthOptions(n=3, seed=99, scale=0.4))
    after = Dataset.open(dataset_copy).manifest()
    assert after.manifest_hash != before.manifest_hash
    assert len(after.new_since(before)) == 3
    assert len(after.new_since(None)) == 15
    assert Manifest.from_json(after.to_json()).manifest_hash == after.manifest_hash


def test_mix_counts_documents_and_pages(synthetic_dataset):
    dataset = Dataset.open(synthetic_dataset)
    mix = dataset.mix()
    assert mix.total() == 12
    assert sum(mix.pages.values()) == len(dataset.examples())
    assert set(mix.by("category")) == {"receipt", "invoice", "contract", "tax_form"}
    assert set(mix.by("split")) == {"train", "val", "test"}
