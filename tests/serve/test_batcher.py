"""The service's page batcher with continuous decoding: pages from many threads join a running decode, read what
plain generation reads, and a page (or a step) that fails fails only its own requests."""

import threading

import pytest

from ocrloop.agent import OCRAgent
from ocrloop.config import OcrloopConfig
from ocrloop.data.synth import SynthOptions, generate_documents
from ocrloop.models import load_model
from ocrloop.serve.batcher import PageBatcher
from tests.conftest import FAST_RESOLUTION, fast_decoding_agent

PRESET = "tiny-deepseek-ocr-2"
READ = {"prompt": "ocr", "resolution": FAST_RESOLUTION[PRESET]}


@pytest.fixture(scope="module")
def pages():
    return [d.pages[0] for d in generate_documents(SynthOptions(n=5, categories=("receipt", "invoice"), scale=0.35, seed=8))]


def agent_for(continuous: bool) -> OCRAgent:
    return fast_decoding_agent(PRESET, continuous, max_new_tokens=8)


def submit_from_threads(batcher: PageBatcher, agent: OCRAgent, prepared: list) -> list:
    futures = [None] * len(prepared)

    def send(index: int) -> None:
        futures[index] = batcher.submit(agent, prepared[index], READ["prompt"], READ["resolution"])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(prepared))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return futures


def test_pages_from_many_threads_join_the_running_decode_and_read_what_batches_read(tiny_presets, pages):
    agent = agent_for(continuous=True)
    expected = agent_for(continuous=False).read(pages, **READ)
    in_decode = []
    batcher = PageBatcher(max_batch_pages=2, max_wait_seconds=0.01, on_batch=in_decode.append)
    try:
        prepared = [agent.prepare(page, **READ) for page in pages]
        futures = submit_from_threads(batcher, agent, prepared)
        assert [future.result(timeout=120) for future in futures] == expected
    finally:
        batcher.close()
    decoder = agent.decoder(2, **READ)
    assert decoder is not None and decoder.active == 0
    assert decoder.cache_bytes == 0  # idle: its cache's memory given back
    # five pages through two slots: at least three admissions, never more than two pages decoding together
    assert len(in_decode) >= 3 and max(in_decode) <= 2


def test_without_continuous_batching_the_agent_offers_no_decoder(tiny_presets):
    assert agent_for(continuous=False).decoder(4, **READ) is None
    assert OCRAgent(load_model(PRESET, backend="hf"), PRESET, OcrloopConfig()).decoder(4, **READ) is None  # no fast_decode


def test_a_page_that_cannot_be_admitted_or_a_failed_step_fails_only_its_own_requests(tiny_presets, pages):
    agent = agent_for(continuous=True)
    expected = agent.read(pages[:3], **READ)
    prepared = [agent.prepare(page, **READ) for page in pages[:3]]
    broken = agent.prepare(pages[3], **READ)
    broken.vision["pixel_values"] = broken.vision["pixel_values"][..., :7]  # no image the tower can take
    batcher = PageBatcher(max_batch_pages=4, max_wait_seconds=0.05)
    try:
        futures = submit_from_threads(batcher, agent, [prepared[0], broken, prepared[1]])
        assert futures[0].result(timeout=120) == expected[0] and futures[2].result(timeout=120) == expected[1]
        with pytest.raises(Exception):
            futures[1].result(timeout=120)

        decoder = agent.decoder(4, **READ)
        step = decoder.step
        decoder.step = lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: device-side assert"))
        with pytest.raises(RuntimeError, match="device-side assert"):
            batcher.submit(agent, prepared[2], READ["prompt"], READ["resolution"]).result(timeout=120)
        decoder.step = step
        assert batcher.submit(agent, prepared[2], READ["prompt"], READ["resolution"]).result(timeout=120) == expected[2]
    finally:
        batcher.close()
