"""The image-feature cache is exact: same loss, same LoRA gradients, same generated text; it is never
used for other settings or weights, and damaged entries are recomputed, never read as features."""

from __future__ import annotations

import json

import pytest
import torch

from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model
from ocrloop.models.base import collate, to_device
from ocrloop.models.loading import attach_lora, skip_frozen_vision_backward
from ocrloop.models.feature_cache import FeatureCache
from tests.conftest import FAST_RESOLUTION, SMALL_PAGES, run_cli

FAMILIES = ["tiny-deepseek-ocr", "tiny-deepseek-ocr-2", "tiny-qwen2.5-vl"]


def _bundle(preset_path, vision_lora: bool = False):
    bundle = load_model(str(preset_path), backend="hf", mode="lora16", for_training=True)
    groups = ["attention", "vision"] if vision_lora else ["attention"]
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=groups, seed=0, gradient_checkpointing=False)
    skip_frozen_vision_backward(bundle)
    return bundle


def _pages(synthetic_dataset, count=3):
    dataset = Dataset.open(synthetic_dataset, SMALL_PAGES)
    return dataset, list(dataset.iter_images(dataset.examples("train")[:count]))


def _generate_cached(bundle, cache, images, resolution, keys):
    with cache.reading(keys):
        return bundle.generate(images, resolution=resolution, max_new_tokens=12)


def _loss_and_grads(bundle, encoded, cache=None):
    batch = collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer, dtype=bundle.dtype)
    keys = batch.pop("feature_keys", None)
    bundle.model.zero_grad(set_to_none=True)
    if cache is None:
        loss = bundle.model(**to_device(batch, bundle.device)).loss
    else:
        with cache.serving(keys):
            loss = bundle.model(**to_device(batch, bundle.device)).loss
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in bundle.model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def _fill(cache, bundle, pages, resolution):
    pending = []
    for example, image in pages:
        encoded = bundle.encode(image, "markdown", example.text, resolution)
        key = cache.key(example)
        if cache.add(key, encoded):
            pending.append((key, encoded))
    cache.compute(pending)
    return [cache.template(cache.key(example)) for example, _ in pages]


@pytest.mark.parametrize("preset", FAMILIES)
def test_cached_features_give_the_same_loss_gradients_and_text(preset, tiny_presets, synthetic_dataset, tmp_path):
    resolution = FAST_RESOLUTION[preset]
    bundle = _bundle(tiny_presets[preset])
    bundle.model.train()
    _, pages = _pages(synthetic_dataset)
    encoded = [bundle.encode(image, "markdown", example.text, resolution) for example, image in pages]
    loss, grads = _loss_and_grads(bundle, encoded)

    # Two pages per tower pass: 3 pages are computed as a pass of 2 and a pass of 1.
    cache = FeatureCache(bundle, tmp_path / "cache", resolution, device_budget_bytes=2**30, pages_per_forward=2)
    templates = _fill(cache, bundle, pages, resolution)
    assert cache.stats.entries == len(pages) and all("pixel_values_local" not in t.vision and t.vision["pixel_values"].numel() == 1 for t in templates)
    vision_calls = []
    tower = next(m for name, m in bundle.model.named_modules() if name.endswith(("vision_tower", "visual", "sam_model")))
    hook = tower.register_forward_hook(lambda *_: vision_calls.append(1))
    cached_loss, cached_grads = _loss_and_grads(bundle, templates, cache)
    assert vision_calls == [] and cache.stats.hits == len(pages)  # no vision forward, no pixels
    hook.remove()
    assert cached_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == cached_grads.keys() and any("lora_" in name for name in grads)
    for name in grads:
        torch.testing.assert_close(cached_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)

    images = [image for _, image in pages]
    keys = [cache.key(example) for example, _ in pages]
    plain = bundle.generate(images, resolution=resolution, max_new_tokens=12)
    cached = _generate_cached(bundle, cache, images, resolution, keys)
    assert cached == plain and cache.stats.hits == 2 * len(pages)


def test_a_cache_for_other_settings_or_weights_is_never_used(tiny_presets, synthetic_dataset, tmp_path):
    preset = "tiny-deepseek-ocr-2"
    bundle = _bundle(tiny_presets[preset])
    _, pages = _pages(synthetic_dataset, count=2)
    folder = tmp_path / "cache"
    first = FeatureCache(bundle, folder, "small", device_budget_bytes=2**30)
    _fill(first, bundle, pages, "small")
    first.close()
    example, image = pages[0]

    def misses(cache, resolution):
        needs = cache.add(cache.key(example), bundle.encode(image, "markdown", example.text, resolution))
        cache.close()
        return needs

    assert not misses(FeatureCache(bundle, folder, "small", device_budget_bytes=2**30), "small")  # same everything: a hit
    assert misses(FeatureCache(bundle, folder, "base", device_budget_bytes=2**30), "base")  # other resolution mode
    assert misses(FeatureCache(bundle, folder, "small", device_budget_bytes=2**30, page_settings="pdf_dpi=300"), "small")
    bundle.image_processor.image_mean = [0.4, 0.4, 0.4]  # other processor settings
    assert misses(FeatureCache(bundle, folder, "small", device_budget_bytes=2**30), "small")
    fresh = _bundle(tiny_presets[preset])
    with torch.no_grad():  # other vision weights
        next(p for n, p in fresh.model.named_parameters() if "vision_tower" in n).add_(1e-3)
    bundle = fresh
    assert misses(FeatureCache(fresh, folder, "small", device_budget_bytes=2**30), "small")


def test_damaged_or_half_written_entries_are_recomputed_with_a_warning(tiny_presets, synthetic_dataset, tmp_path):
    bundle = _bundle(tiny_presets["tiny-qwen2.5-vl"])
    _, pages = _pages(synthetic_dataset, count=4)
    folder = tmp_path / "cache"
    cache = FeatureCache(bundle, folder, "tiny", device_budget_bytes=0)  # budget 0: everything is read from disk
    _fill(cache, bundle, pages, "tiny")
    keys = [cache.key(example) for example, _ in pages]
    reference = {key: cache._read(key).clone() for key in keys}  # reads are memory-mapped
    cache.close()
    files = [folder / f"{key}.safetensors" for key in keys]
    truncated, flipped, removed = files[0], files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:-40])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    # A run killed mid-write leaves a temp file, never an entry.
    (folder / f".{removed.name}.999.tmp").write_bytes(removed.read_bytes()[:100])
    removed.unlink()

    warnings = []
    again = FeatureCache(bundle, folder, "tiny", device_budget_bytes=0, warn=warnings.append)
    _fill(again, bundle, pages, "tiny")
    assert again.stats.computed == 3 and again.stats.loaded_from_disk == 1 and again.stats.recomputed_corrupt == 2
    assert len(warnings) == 2 and all("recomputing" in w for w in warnings)
    assert any("checksum" in w for w in warnings)
    for key in keys:
        torch.testing.assert_close(again._read(key), reference[key])
    again.close()


def test_training_with_and_without_the_cache_learns_the_same(tiny_presets, dataset_copy, tmp_path):
    common = ["--model", str(tiny_presets["tiny-deepseek-ocr-2"]), "--dataset", str(dataset_copy), "--resolution", "small",
              "--max-steps", "3", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--warmup-steps", "0",
              "--eval-max-pages", "32", "--max-new-tokens", "4", "--no-gradient-checkpointing", "--lora-dropout", "0",
              "--save-steps", "100", "-w", str(tmp_path)]
    cards = {}
    for name, flags in (("cached", []), ("plain", ["--no-feature-cache"])):
        run_cli("train", "--output", str(tmp_path / name), *flags, *common, check=True)
        cards[name] = json.loads((tmp_path / name / "run_card.json").read_text())
    cached, plain = cards["cached"], cards["plain"]
    assert plain["feature_cache"] == {"enabled": False, "reason": "turned off (training.feature_cache = false)"}
    stats = cached["feature_cache"]
    assert stats["enabled"] and stats["computed"] == stats["entries"] > 0 and stats["hits"] >= 6 and stats["bytes_per_page"] > 0
    assert cached["metrics"]["train_loss"] == pytest.approx(plain["metrics"]["train_loss"], rel=1e-4)
    assert cached["metrics"]["final_validation"]["cer"] == pytest.approx(plain["metrics"]["final_validation"]["cer"])

    # `eval` of the trained model reads the validation pages with the run's cached features.
    result = run_cli("eval", "--model", str(tmp_path / "cached"), "--split", "val", "--dataset", str(dataset_copy),
                     "--resolution", "small", "--max-new-tokens", "4", "-w", str(tmp_path), check=True)
    assert "read with image features cached by the training run" in result.stderr  # a note, not a result


def test_vision_training_turns_the_cache_off_and_says_why(tiny_presets, dataset_copy, tmp_path):
    result = run_cli("train", "--model", str(tiny_presets["tiny-qwen2.5-vl"]), "--dataset", str(dataset_copy), "--resolution",
                     "tiny", "--max-steps", "1", "--batch-size", "2", "--lora-targets", "attention,vision", "--eval-max-pages", "1",
                     "--max-new-tokens", "2", "--output", str(tmp_path / "out"), "-w", str(tmp_path), check=True)
    assert "image-feature cache off: the vision tower is trained" in result.stdout + result.stderr
    card = json.loads((tmp_path / "out" / "run_card.json").read_text())
    assert card["feature_cache"]["enabled"] is False and not (tmp_path / "out" / "feature_cache").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="parking the tower frees GPU memory: needs a CUDA GPU")
@pytest.mark.parametrize("preset", FAMILIES)
def test_a_parked_vision_tower_trains_the_same_and_comes_back_when_needed(preset, tiny_presets, synthetic_dataset, tmp_path):
    resolution = FAST_RESOLUTION[preset]
    bundle = _bundle(tiny_presets[preset])
    bundle.model.train()
    _, pages = _pages(synthetic_dataset)
    images = [image for _, image in pages]
    cache = FeatureCache(bundle, tmp_path / "cache", resolution, device_budget_bytes=2**30)
    templates = _fill(cache, bundle, pages, resolution)
    keys = [cache.key(example) for example, _ in pages]
    loss, grads = _loss_and_grads(bundle, templates, cache)
    # bf16 kernels differ with batch shapes, so each path is compared with itself before parking.
    cached = _generate_cached(bundle, cache, images, resolution, keys)
    plain = bundle.generate(images, resolution=resolution, max_new_tokens=12)

    tower = next(m for name, m in bundle.model.named_modules() if name.endswith(("vision_tower", "visual", "sam_model")))
    on_cpu = lambda: all(p.device.type == "cpu" for p in tower.parameters())  # noqa: E731
    assert cache.offload_vision() > 0 and on_cpu() and bundle.device.type == "cuda"
    parked_loss, parked_grads = _loss_and_grads(bundle, templates, cache)
    assert on_cpu() and parked_loss == pytest.approx(loss, rel=1e-5)  # a training step needs no tower
    for name in grads:
        torch.testing.assert_close(parked_grads[name], grads[name], rtol=1e-3, atol=1e-6, msg=name)
    assert _generate_cached(bundle, cache, images, resolution, keys) == cached
    assert not on_cpu()  # generation brought it back
    assert cache.offload_vision() > 0
    assert _generate_cached(bundle, cache, images, resolution, None) == plain and not on_cpu()
    cache.close()


def test_a_compiled_forward_served_from_the_cache_is_compiled_once(tiny_presets, synthetic_dataset, tmp_path):
    """training.compile with cached features: the same batch again must not compile again (the cache's hit counter,
    traced, once made every step a new graph until dynamo fell back to eager for the model's forward)."""
    preset = "tiny-deepseek-ocr-2"
    resolution = FAST_RESOLUTION[preset]
    bundle = _bundle(tiny_presets[preset])
    bundle.model.eval()
    _, pages = _pages(synthetic_dataset, count=2)
    cache = FeatureCache(bundle, tmp_path / "cache", resolution, device_budget_bytes=2**30)
    batch = collate(_fill(cache, bundle, pages, resolution), bundle.tokenizer.pad_token_id, family=bundle.family,
                    tokenizer=bundle.tokenizer, dtype=bundle.dtype)
    keys = batch.pop("feature_keys")
    compiled = torch.compile(bundle.model)
    torch._dynamo.reset()
    losses = []

    def forward():
        with cache.serving(keys), torch.no_grad():
            losses.append(compiled(**to_device(batch, bundle.device)).loss.item())

    forward()  # compiles (transformers' shared decorators compile once per function they wrap)
    with torch._dynamo.config.patch(error_on_recompile=True):
        forward()
        forward()
    assert cache.stats.hits == 3 * len(pages)  # still counted, outside the graph
    assert losses[0] == losses[1] == losses[2]
