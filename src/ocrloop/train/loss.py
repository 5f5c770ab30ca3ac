"""The training loss, computed only where there is something to predict.

An OCR example is mostly prompt: a letter page at ``gundam`` is 1121 image tokens and a few hundred
answer tokens, and only the answer has labels. The models' own loss runs the output head (vocabulary
x hidden, the largest matrix a token passes through) over every position and upcasts all those
logits to float32 before discarding most of them. ``labelled_token_loss`` gives the head only the
positions whose next token is labelled, in every row of the batch, and returns the same value.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ocrloop.models.base import IGNORE_INDEX


def labelled_token_loss(model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on ``inputs`` (which hold ``labels``), equal to the loss
    the model computes itself: summed over labelled tokens and divided by ``num_items_in_batch`` when
    given (gradient accumulation), else their mean."""
    labels = inputs["labels"]
    # Position p predicts token p + 1: shift the labels left, the last position predicts nothing.
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    predicting = targets != IGNORE_INDEX
    head = getattr(model, "module", model).get_output_embeddings()  # a DistributedDataParallel wrapper holds the model

    def only_predicting_positions(module, args):
        hidden = args[0]
        return (hidden[predicting.to(hidden.device)],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(only_predicting_positions)
    try:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # (labelled tokens, vocabulary)
    finally:
        handle.remove()
    chosen = targets[predicting].to(logits.device)
    loss = F.cross_entropy(logits.float(), chosen, reduction="sum")
    if num_items_in_batch is None:
        return loss / chosen.numel()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
