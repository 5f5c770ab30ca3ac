"""LoRA adapters of one base model are served from one copy of it: each reads exactly as if it were loaded alone,
and an adapter no model version uses any more is deleted from the shared model."""

import gc
import shutil
from pathlib import Path

import torch

from ocrloop.config import apply_overrides
from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model, read_model_card
from ocrloop.models.base import collate, to_device
from ocrloop.registry import Registry
from ocrloop.serve.champions import ChampionModels
from ocrloop.workspace import Workspace


def _logits(bundle, image) -> torch.Tensor:
    encoded = [bundle.encode(image, "ocr", None, "tiny")]
    batch = to_device(collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer,
                              dtype=bundle.dtype), bundle.device)
    batch.pop("labels")
    with torch.no_grad(), bundle.active():
        return bundle.model(**batch).logits


def test_adapters_of_one_base_share_it_and_each_reads_as_if_loaded_alone(looped_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(looped_workspace, root)
    config = Workspace.load(root).config
    with Registry(config.registry_location) as registry:
        adapters = [m for m in registry.models()
                    if Path(m["path"]).is_dir() and (read_model_card(Path(m["path"])) or {}).get("kind") == "adapter"]
    assert len(adapters) == 2  # the two loop runs' challengers, both LoRA on the tiny Qwen2.5-VL base
    dataset = Dataset.open(config.dataset_dir, config.data)
    _, page = next(iter(dataset.iter_images(dataset.examples("test")[:1])))

    models = ChampionModels(config)
    first, second = (models.named(m["name"]) for m in adapters)
    assert first.bundle.model is second.bundle.model  # one base model in memory
    assert first.bundle.adapter != second.bundle.adapter

    shared = {}
    for _ in range(2):  # alternating between the adapters switches each time
        for agent in (first, second):
            shared[agent.model_name] = (_logits(agent.bundle, page), agent.read([page], prompt="ocr", resolution="tiny"))
    for agent, row in ((first, adapters[0]), (second, adapters[1])):
        alone = load_model(row["path"], backend="hf")
        logits, texts = shared[agent.model_name]
        torch.testing.assert_close(logits, _logits(alone, page), rtol=1e-5, atol=1e-5)
        assert texts == alone.generate([page], prompt="ocr", resolution="tiny", max_new_tokens=alone.reading.max_new_tokens)
    assert not torch.allclose(shared[first.model_name][0], shared[second.model_name][0])  # two different adapters

    # The second version is no longer asked for: once nothing reads with its adapter, the next read deletes it.
    model, gone = second.bundle.model, second.bundle.adapter
    models._named.pop(second.model_name)
    del second, agent
    gc.collect()
    assert gone in model.peft_config
    first.read([page], prompt="ocr", resolution="tiny")
    assert gone not in model.peft_config and first.bundle.adapter in model.peft_config


def test_the_service_with_fast_decoding_reads_what_it_reads_without(looped_workspace, tmp_path):
    """serve.fast_decode: every model the service loads, shared-base adapters included, reads with a static cache in
    padded shapes, and reads the same text."""
    root = tmp_path / "ws"
    shutil.copytree(looped_workspace, root)
    config = Workspace.load(root).config
    with Registry(config.registry_location) as registry:
        names = [m["name"] for m in registry.models() if Path(m["path"]).is_dir()]
    dataset = Dataset.open(config.dataset_dir, config.data)
    pages = [image for _, image in dataset.iter_images(dataset.examples("test")[:3])]
    plain, fast = ChampionModels(config), ChampionModels(apply_overrides(config, {"serve.fast_decode": True}))
    for name in names:
        agent = fast.named(name)
        assert agent.bundle.fast_decode
        assert agent.read(pages, prompt="ocr", resolution="tiny") == plain.named(name).read(pages, prompt="ocr", resolution="tiny")


def test_two_adapters_of_one_base_decode_side_by_side_each_as_if_alone(looped_workspace, tmp_path):
    """Continuous batching with two model versions that share a base: the batcher steps one decoder, then the
    other, switching the shared model's adapter each step; each version's pages read what that version reads alone."""
    import threading

    from ocrloop.serve.batcher import PageBatcher

    root = tmp_path / "ws"
    shutil.copytree(looped_workspace, root)
    config = apply_overrides(Workspace.load(root).config, {"serve.fast_decode": True, "serve.continuous_batching": True})
    with Registry(config.registry_location) as registry:
        adapters = [m for m in registry.models()
                    if Path(m["path"]).is_dir() and (read_model_card(Path(m["path"])) or {}).get("kind") == "adapter"]
    dataset = Dataset.open(config.dataset_dir, config.data)
    pages = [image for _, image in dataset.iter_images(dataset.examples("test")[:3])]
    models = ChampionModels(config)
    agents = [models.named(m["name"]) for m in adapters]
    assert agents[0].bundle.model is agents[1].bundle.model
    with torch.no_grad():  # a few tiny training steps hardly move greedy text: make the second adapter count
        for name, parameter in agents[1].bundle.model.named_parameters():
            if f"lora_B.{agents[1].bundle.adapter}." in name:
                parameter.mul_(30)
    # what each version reads by plain generation, one page at a time
    expected = {agent.model_name: [agent.bundle.generate([page], prompt="ocr", resolution="tiny",
                                                         max_new_tokens=agent.reading.max_new_tokens)[0] for page in pages]
                for agent in agents}
    batcher = PageBatcher(max_batch_pages=2, max_wait_seconds=0.01)
    futures: dict[str, list] = {agent.model_name: [None] * len(pages) for agent in agents}

    def send(agent, index):
        futures[agent.model_name][index] = batcher.submit(agent, agent.prepare(pages[index], prompt="ocr", resolution="tiny"),
                                                          "ocr", "tiny")

    threads = [threading.Thread(target=send, args=(agent, index)) for agent in agents for index in range(len(pages))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        read = {name: [future.result(timeout=300) for future in sent] for name, sent in futures.items()}
    finally:
        batcher.close()
    assert all(agent.decoder(2, prompt="ocr", resolution="tiny") is not None for agent in agents)
    assert read == expected
    assert read[agents[0].model_name] != read[agents[1].model_name]  # the two versions really read differently
