"""The output head on labelled positions only gives the model's own loss and the same LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model
from ocrloop.models.base import collate, to_device
from ocrloop.models.loading import attach_lora
from ocrloop.train.loss import labelled_token_loss
from tests.conftest import FAST_RESOLUTION, SMALL_PAGES


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("preset", ["tiny-deepseek-ocr-2", "tiny-qwen2.5-vl"])
def test_labelled_positions_only_give_the_same_loss_and_gradients(preset, tiny_presets, synthetic_dataset):
    bundle = load_model(str(tiny_presets[preset]), backend="hf", mode="lora16", for_training=True)
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=["attention", "mlp"], seed=0, gradient_checkpointing=False)
    bundle.model.train()
    dataset = Dataset.open(synthetic_dataset, SMALL_PAGES)
    # Pages of different lengths, so padding and per-row answer positions differ.
    encoded = [bundle.encode(image, "markdown", example.text, FAST_RESOLUTION[preset])
               for example, image in dataset.iter_images(dataset.examples("train")[:3])]
    assert len({len(e) for e in encoded}) > 1
    batch = to_device(collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer,
                              dtype=bundle.dtype), bundle.device)
    batch.pop("feature_keys", None)
    labelled = int((batch["labels"][:, 1:] != -100).sum())

    bundle.model.zero_grad(set_to_none=True)
    reference = bundle.model(**batch).loss
    reference.backward()
    reference_grads = _grads(bundle.model)

    for num_items in (None, torch.tensor(labelled)):
        bundle.model.zero_grad(set_to_none=True)
        loss = labelled_token_loss(bundle.model, batch, num_items)
        loss.backward()
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
        grads = _grads(bundle.model)
        assert grads.keys() == reference_grads.keys() and any("lora_" in name for name in grads)
        for name in grads:
            torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # Gradient accumulation: summed over this batch's tokens, divided by the whole accumulated count.
    halved = labelled_token_loss(bundle.model, batch, torch.tensor(2 * labelled))
    assert halved.item() == pytest.approx(reference.item() / 2, rel=1e-5)
    # The head saw only the labelled positions.
    seen = []
    hook = bundle.model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    labelled_token_loss(bundle.model, batch)
    hook.remove()
    assert seen == [torch.Size([labelled, seen[0][-1]])]
