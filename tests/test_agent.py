"""OCRAgent.read_files: pages loaded and prepared a batch ahead, in a thread, while the model reads; the same results
in input order, failures kept to their own documents."""

import threading

import pytest

from ocrloop.agent import OCRAgent, _ahead
from ocrloop.config import OcrloopConfig
from ocrloop.data.synth import SynthOptions, generate_documents, write_document
from ocrloop.models import load_model
from tests.conftest import fast_decoding_agent


def test_read_ahead_keeps_order_and_raises_where_the_error_was():
    def items():
        yield 1
        yield 2
        raise ValueError("third")

    seen = []
    with pytest.raises(ValueError, match="third"):
        for item in _ahead(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_closing_the_read_ahead_early_stops_its_thread():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    reader = _ahead(endless(), depth=2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    assert not any(thread.name == "ocrloop-prepare" for thread in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # at most the depth (and the one being put) beyond what was taken


def test_read_files_prepares_pages_in_another_thread_with_the_same_results(tiny_presets, tmp_path):
    documents = generate_documents(SynthOptions(n=5, seed=3, scale=0.3, categories=("receipt", "invoice")))
    paths = [write_document(document, tmp_path) for document in documents]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    paths.insert(2, broken)

    agent = OCRAgent(load_model("tiny-qwen2.5-vl", backend="hf"), "tiny", OcrloopConfig())
    threads = []
    prepare = agent.bundle.prepare
    agent.bundle.prepare = lambda image, reading: (threads.append(threading.current_thread().name), prepare(image, reading))[1]
    options = dict(prompt="ocr", resolution="small")
    results = list(agent.read_files(paths, batch_pages=2, **options))
    assert set(threads) == {"ocrloop-prepare"}  # never on the thread that runs the model
    assert [path for path, _ in results] == paths
    assert isinstance(results[2][1], Exception) and "broken.png" in str(results[2][1])
    agent.bundle.prepare = prepare
    for path, result in results[:2] + results[3:]:
        alone = agent.read_file(path, **options)
        assert [page.text for page in result.pages] == [page.text for page in alone.pages]


def test_read_files_through_a_continuous_decoder_reads_what_batches_read(tiny_presets, tmp_path):
    """``ocrloop ocr --fast-decode`` on a DeepSeek-OCR model: pages of several documents (a two-page PDF among
    them) join the decode as slots free up; the same texts, documents in order, a broken file failed in its place."""
    documents = generate_documents(SynthOptions(n=5, seed=4, scale=0.3, categories=("receipt", "invoice")))
    paths = [write_document(document, tmp_path) for document in documents]
    first, second = documents[0].pages[0], documents[1].pages[0]
    two_pages = tmp_path / "two_pages.pdf"
    first.save(two_pages, save_all=True, append_images=[second])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    paths[2:2] = [broken, two_pages]
    options = dict(prompt="ocr", resolution="small", batch_pages=3)

    continuous = fast_decoding_agent("tiny-deepseek-ocr-2", True, max_new_tokens=12, name="tiny")
    batched = fast_decoding_agent("tiny-deepseek-ocr-2", False, max_new_tokens=12, name="tiny")
    admitted = []
    decoder = continuous.decoder(3, prompt="ocr", resolution="small")
    admit = decoder.admit
    decoder.admit = lambda pages, tags: (admitted.append(len(pages)), admit(pages, tags))[1]
    results = list(continuous.read_files(paths, **options))
    expected = list(batched.read_files(paths, **options))
    assert [path for path, _ in results] == paths
    assert isinstance(results[2][1], Exception) and "broken.png" in str(results[2][1])
    for (_, result), (_, reference) in zip(results, expected):
        if not isinstance(reference, Exception):
            assert [page.text for page in result.pages] == [page.text for page in reference.pages]
            assert all(page.seconds > 0 for page in result.pages)
    assert len(results[3][1].pages) == 2
    assert sum(admitted) == 7 and max(admitted) <= 3  # seven pages through three slots
