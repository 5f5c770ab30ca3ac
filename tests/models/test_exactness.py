"""The fast reading path reads exactly what plain generation reads: the static KV cache (the compiled decode on a
GPU) against the dynamic cache, a batch against one page at a time, fast decoding (batches and prompts padded to
repeating shapes, MoE experts read once a step), for every family, with and without a LoRA adapter. Random tiny
weights write nonsense, but deterministic nonsense: any padding or cache bug changes it."""

import dataclasses
import re

import pytest
import torch

from ocrloop.config import OcrloopConfig, apply_overrides
from ocrloop.data.synth import SynthOptions, generate_documents, synthesize_dataset
from ocrloop.models import load_model
from ocrloop.models.base import ModelError
from ocrloop.models.continuous import ContinuousDecoder
from ocrloop.models.reading import ReadingSettings
from ocrloop.train.finetune import train
from tests.conftest import FAST_RESOLUTION, SMALL_PAGES

PRESETS = ("tiny-qwen2.5-vl", "tiny-deepseek-ocr-2", "tiny-deepseek-ocr")


@pytest.fixture(scope="module")
def pages():
    """Pages of different sizes and lengths, so a batch pads."""
    documents = generate_documents(SynthOptions(n=4, categories=("receipt", "invoice"), scale=0.35, seed=21))
    return [d.pages[0] for d in documents]


@pytest.fixture(scope="module")
def adapters(tiny_presets, tmp_path_factory) -> dict[str, str]:
    """A LoRA adapter per family, trained a few steps at a high rate so it moves the weights."""
    root = tmp_path_factory.mktemp("exactness")
    dataset = root / "data"
    synthesize_dataset(dataset, SynthOptions(n=4, seed=5, scale=0.3, categories=("receipt",), split_fractions=(1.0, 0.0, 0.0)),
                       SMALL_PAGES)
    folders = {}
    for preset in PRESETS:
        config = OcrloopConfig(dataset_dir=dataset, registry_path=root / "registry.db", models_dir=root / "models",
                               base_model=preset, data=SMALL_PAGES)
        config = apply_overrides(config, {
            "training.resolution": FAST_RESOLUTION[preset], "training.batch_size": 2, "training.gradient_accumulation_steps": 1,
            "training.warmup_steps": 0, "training.learning_rate": 5e-2, "training.max_steps": 3, "training.save_steps": 100,
            "training.gradient_checkpointing": False, "training.max_new_tokens": 8})
        folders[preset] = str(train(config, root / "models" / preset).output_dir)
    return folders


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "adapter"])
def test_static_cache_and_batching_read_exactly_what_plain_generation_reads(preset, with_adapter, adapters, pages):
    model = load_model(adapters[preset] if with_adapter else preset, backend="hf")
    settings = {"prompt": "ocr", "resolution": FAST_RESOLUTION[preset], "max_new_tokens": 10}
    plain = [model.generate([page], **settings)[0] for page in pages]
    assert model.generate(pages, **settings) == plain
    assert model.generate(pages, cache_implementation="static", **settings) == plain
    assert [model.generate([page], cache_implementation="static", **settings)[0] for page in pages] == plain
    # fast decoding: three pages are read as a batch of four, prompts padded to a multiple of 64 tokens
    model.enable_fast_decode()
    shapes, generate = [], model.model.generate
    model.model.generate = lambda **kwargs: shapes.append(tuple(kwargs["input_ids"].shape)) or generate(**kwargs)
    assert model.generate(pages[:3], **settings) == plain[:3]
    assert shapes[0][0] == 4 and shapes[0][1] % 64 == 0, shapes
    assert model.generate(pages[:1], **settings) == plain[:1]
    if with_adapter:  # the adapter is really there: it reads differently from its base
        assert [load_model(preset, backend="hf").generate([page], **settings)[0] for page in pages] != plain


def sharpened(model):
    """``model`` with its text attention made peaked (queries and keys x8): random tiny weights attend almost
    uniformly, so a wrong mask or position would hardly change what they write; these do (checked by hand: an
    unmasked cache or positions off by one change the text)."""
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            if "language_model" in name and re.search(r"\.(q|k)_proj\.", name):
                parameter.mul_(8)
    return model


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "adapter"])
def test_pages_joining_a_running_decode_read_exactly_what_plain_generation_reads(preset, with_adapter, adapters, pages):
    model = sharpened(load_model(adapters[preset] if with_adapter else preset, backend="hf"))
    reading = ReadingSettings(prompt="ocr", resolution=FAST_RESOLUTION[preset], max_new_tokens=16)
    plain = [model.generate([page], prompt="ocr", resolution=reading.resolution, max_new_tokens=16)[0] for page in pages]
    prepared = [model.prepare(page, reading) for page in pages]
    # two slots for four pages: the third and fourth join while another page is mid-way
    assert ContinuousDecoder(model, reading, slots=2).read(prepared) == plain
    assert ContinuousDecoder(model, reading, slots=8).read(prepared) == plain
    # one slot, page after page, until the write position reaches the end of the cache and rows shift left
    decoder = ContinuousDecoder(model, reading, slots=1)
    many = prepared * 6
    assert decoder.read(many) == plain * 6
    assert decoder.compactions >= 1 and decoder.cache_bytes > 0
    decoder.release()
    assert decoder.cache_bytes == 0 and decoder.read(prepared[:1]) == plain[:1]  # a new cache after the release


@pytest.mark.parametrize("preset", PRESETS)
def test_the_decode_step_is_traced_once_whatever_joins_or_leaves(preset, tiny_presets, pages):
    """On a GPU the step is compiled into CUDA graphs; a graph break or a recompilation at some admission, finish or
    shift would make every such step slow. Traced here without a GPU (the eager backend), in one graph, and never
    again over 48 pages through two slots, rows shifted left on the way, nor after the cache was released."""
    model = load_model(preset, backend="hf")
    model.enable_fast_decode()
    reading = ReadingSettings(prompt="ocr", resolution=FAST_RESOLUTION[preset], max_new_tokens=12)
    # Enough pages for the write position to reach the end of a cache sized for the largest page (Qwen2.5-VL's)
    prepared = [model.prepare(page, reading) for page in pages] * 12
    plain = model.generate(pages, prompt="ocr", resolution=reading.resolution, max_new_tokens=12) * 12
    decoder = ContinuousDecoder(model, reading, slots=2)
    torch._dynamo.reset()  # what other models traced through the same code would count as recompilations
    compiled = torch.compile(model.model.__call__, backend="eager", fullgraph=True, dynamic=False)
    decoder._forward = lambda: compiled
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert decoder.read(prepared) == plain
        decoder.release()  # an idle decoder's new cache later on is no new graph either
        assert decoder.read(prepared[:2]) == plain[:2]
    assert decoder.compactions >= 1


def test_a_larger_page_joining_later_needs_no_new_cache_nor_a_new_trace(tiny_presets, pages):
    """Qwen2.5-VL's prompt grows with the page's size. Were the cache sized for the first page's prompt, a larger one
    would make a bigger cache and a new compiled step (14 s for the 7-B model on an H200, page after page); it is
    sized for the largest page the resolution allows from the start."""
    model = load_model("tiny-qwen2.5-vl", backend="hf")
    model.enable_fast_decode()
    reading = ReadingSettings(prompt="ocr", resolution=FAST_RESOLUTION["tiny-qwen2.5-vl"], max_new_tokens=8)
    small, large = pages[0].resize((56, 56)), pages[1].resize((900, 1200))
    prepared = [model.prepare(small, reading), model.prepare(large, reading)]
    assert len(prepared[1]) - len(prepared[0]) > 2 * 64  # prompts of different padded lengths
    plain = [model.generate([page], prompt="ocr", resolution=reading.resolution, max_new_tokens=8)[0] for page in (small, large)]
    decoder = ContinuousDecoder(model, reading, slots=2)
    torch._dynamo.reset()
    compiled = torch.compile(model.model.__call__, backend="eager", fullgraph=True, dynamic=False)
    decoder._forward = lambda: compiled
    with torch._dynamo.config.patch(error_on_recompile=True):
        finished = decoder.admit(prepared[:1], ["small"]) + decoder.step()
        cache = decoder._cache
        finished += decoder.admit(prepared[1:], ["large"])
        while decoder.active:
            finished += decoder.step()
    assert decoder._cache is cache
    assert dict(finished) == {"small": plain[0], "large": plain[1]}


def test_a_cache_that_cannot_be_allocated_is_refused_with_its_size_and_the_settings_to_lower(tiny_presets, pages):
    model = load_model("tiny-deepseek-ocr-2", backend="hf")
    reading = ReadingSettings(prompt="ocr", resolution=FAST_RESOLUTION["tiny-deepseek-ocr-2"], max_new_tokens=2**36)
    decoder = ContinuousDecoder(model, reading, slots=4)
    with pytest.raises(ModelError, match=r"does not fit: [\d.]+ GiB for 4 pages of \d+ tokens.*serve.max_batch_pages"):
        decoder.admit([model.prepare(pages[0], reading)], ["page"])


def test_pages_join_mid_decode_and_leave_when_they_finish(tiny_presets, pages):
    model = load_model("tiny-deepseek-ocr-2", backend="hf")
    reading = ReadingSettings(prompt="ocr", resolution=FAST_RESOLUTION["tiny-deepseek-ocr-2"], max_new_tokens=6)
    prepared = [model.prepare(page, reading) for page in pages]
    decoder = ContinuousDecoder(model, reading, slots=4)
    assert decoder.admit(prepared[:1], ["first"]) == []
    decoder.step()
    decoder.step()
    assert decoder.admit(prepared[1:2], ["second"]) == [] and decoder.active == 2
    finished = []
    while decoder.active:
        finished += decoder.step()
    assert [tag for tag, _ in finished] == ["first", "second"]  # six tokens each, the first had two steps' start
    with pytest.raises(ValueError, match="5 pages for 4 free slots"):
        decoder.admit(prepared + prepared[:1], list(range(5)))


def test_fast_decoding_off_the_hf_backend_is_refused_with_the_fix(tiny_presets):
    model = dataclasses.replace(load_model("tiny-qwen2.5-vl", backend="hf"), backend="unsloth")
    with pytest.raises(ModelError, match="needs the hf backend.*training.backend: hf"):
        model.enable_fast_decode()
    assert not model.fast_decode
