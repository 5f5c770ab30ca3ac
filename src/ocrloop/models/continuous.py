"""Continuous batching: pages join a running decode at its next step, and leave it the step they finish.

A ``ContinuousDecoder`` owns a static KV cache of ``slots`` rows. Every decode step writes one column, the same
column for every row (transformers' ``StaticCache`` keeps one write position for the whole batch), so pages that
joined at different times sit in different columns of their rows:

* a page is prefilled alone (or with the other pages joining at that step) through the model's own forward, with
  its image; its keys and values are copied into a free row, ending just before the next column to be written;
* each row has its own positions (its page's token count so far) and its own mask of the columns it may attend
  to (``valid``), so what other pages wrote in other columns of the cache is invisible to it;
* when the write position reaches the end of the cache, every row is shifted left by the columns no page still
  needs (``_compact``).

The text is what plain greedy ``generate`` reads (tested on the tiny presets of every family): the same positions
(``OCRFamily.prefill_positions``: Qwen2.5-VL's 3-D ones too), the same masked attention, the same stop tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch

from ocrloop.models.base import FAST_DECODE_LENGTH_STEP, EncodedExample, ModelError, OCRModel, collate, to_device
from ocrloop.models.reading import ReadingSettings


@dataclass
class _Slot:
    tag: Hashable
    position: int  # the position of the next token: the page's tokens so far (plus its family's offset)
    tokens: list[int] = field(default_factory=list)


class ContinuousDecoder:
    """Greedy decoding of up to ``slots`` pages at once, pages admitted and finished at any step."""

    def __init__(self, bundle: OCRModel, reading: ReadingSettings, slots: int):
        if bundle.backend != "hf":
            raise ModelError(f"continuous decoding needs the hf backend, and this model was loaded with {bundle.backend}")
        self.bundle, self.reading, self.slots = bundle, reading, slots
        self.stop_ids = set(bundle.family.stop_token_ids(bundle.tokenizer))
        # Where the family can tell, the longest prompt a page can have at this reading: the cache's room from the start.
        self._longest_prompt = bundle.family.longest_prompt(bundle, reading.prompt, reading.resolution) or 0
        self._rows: list[_Slot | None] = [None] * slots
        self._cache: Any = None
        self._valid: torch.Tensor | None = None  # [slots, columns]: what each row may attend to
        self._column = 0  # the next column a decode step writes
        self._cache_counter = 0  # where the cache's own write counter stands (kept here: reading it would sync)
        self._step_call = None
        self.compactions = 0  # times the rows were shifted left
        self.generated_tokens = 0  # of the pages finished so far, stop tokens included

    @property
    def active(self) -> int:
        return sum(row is not None for row in self._rows)

    @property
    def tags(self) -> list[Hashable]:
        """The tags of the pages in the cache."""
        return [row.tag for row in self._rows if row is not None]

    @property
    def cache_bytes(self) -> int:
        """Memory the KV cache holds (0 once released)."""
        if self._cache is None:
            return 0
        return sum(t.numel() * t.element_size() for layer in self._cache.layers for t in (layer.keys, layer.values))

    @property
    def free(self) -> int:
        return self.slots - self.active

    @torch.no_grad()
    def admit(self, pages: list[EncodedExample], tags: list[Hashable]) -> list[tuple[Hashable, str]]:
        """Prefill ``pages`` (prepared with this decoder's reading) into free rows; return the pages that finished
        already (their first token was a stop token, or ``max_new_tokens`` is 1)."""
        if len(pages) > self.free:
            raise ValueError(f"{len(pages)} pages for {self.free} free slots")
        bundle = self.bundle
        bundle.model.train(False)
        batch = collate(pages, bundle.tokenizer.pad_token_id, padding_side="left", family=bundle.family,
                        tokenizer=bundle.tokenizer, dtype=bundle.dtype, pad_to_multiple=FAST_DECODE_LENGTH_STEP)
        batch.pop("labels")
        mask = batch["attention_mask"]
        positions, offsets = bundle.family.prefill_positions(bundle, batch)
        batch = to_device(batch, bundle.device)
        prompt_length = mask.shape[1]
        with bundle.active(), bundle.family.bounded_vision_memory(bundle.model):
            output = bundle.model(**batch, position_ids=positions.to(bundle.device), use_cache=True, logits_to_keep=1)
        first = output.logits[:, -1].argmax(-1).tolist()
        self._ensure_cache(prompt_length, output.past_key_values)
        if self._column + self.reading.max_new_tokens > self._valid.shape[1]:
            self._compact()
        self._column = max(self._column, prompt_length)  # rows already decoding never see the skipped columns
        rows = [index for index, row in enumerate(self._rows) if row is None][: len(pages)]
        index = torch.tensor(rows, device=self._valid.device)
        start = self._column - prompt_length
        for layer, (keys, values) in zip(self._cache.layers, _prefill_layers(output.past_key_values)):
            layer.keys[index, :, start:self._column] = keys.to(layer.keys.dtype)
            layer.values[index, :, start:self._column] = values.to(layer.values.dtype)
        self._valid[index] = False
        self._valid[index, start:self._column] = mask.to(self._valid.device, torch.bool)
        finished = []
        for row, tag, token, length, offset in zip(rows, tags, first, mask.sum(-1).tolist(), offsets):
            self._rows[row] = _Slot(tag, position=length + offset, tokens=[token])
            if self._done(self._rows[row]):
                finished.append(self._finish(row))
        return finished

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, str]]:
        """One decode step for every page in the cache; return ``(tag, text)`` of the pages that finished."""
        if not self.active:
            return []
        if self._column >= self._valid.shape[1]:
            self._compact()
        bundle, device = self.bundle, self._valid.device
        pad = bundle.tokenizer.pad_token_id
        tokens = torch.tensor([[row.tokens[-1] if row else pad] for row in self._rows], device=device)
        positions = bundle.family.decode_position_ids(
            torch.tensor([[row.position if row else 0] for row in self._rows], device=device))
        self._valid[:, self._column] = True  # each row sees its own token; idle rows see only theirs
        if self._cache_counter != self._column:  # the cache counts on by itself from one step to the next
            for layer in self._cache.layers:
                layer.cumulative_length.fill_(self._column)
        with bundle.active():
            logits = self._forward()(input_ids=tokens, attention_mask=self._valid, position_ids=positions,
                                     past_key_values=self._cache, use_cache=True, logits_to_keep=1).logits
        self._column += 1
        self._cache_counter = self._column
        chosen = logits[:, -1].argmax(-1).tolist()
        finished = []
        for index, row in enumerate(self._rows):
            if row is None:
                continue
            row.tokens.append(chosen[index])
            row.position += 1
            if self._done(row):
                finished.append(self._finish(index))
        return finished

    def read(self, pages: list[EncodedExample]) -> list[str]:
        """Read ``pages`` through the slots, admitting the next page whenever one finishes; texts in the order of
        ``pages``. (The service, ``ocrloop ocr`` and ``bench ocr`` run their own loops of ``admit`` and ``step``.)"""
        texts: dict[int, str] = {}
        waiting = list(enumerate(pages))
        while waiting or self.active:
            if waiting and self.free:
                joining, waiting = waiting[: self.free], waiting[self.free:]
                texts.update(self.admit([page for _, page in joining], [index for index, _ in joining]))
            texts.update(self.step())
        return [texts[index] for index in range(len(pages))]

    def abandon(self) -> list[Hashable]:
        """Drop every page in the cache and the cache itself (after a step failed); return the pages' tags."""
        tags = self.tags
        self._rows = [None] * self.slots
        self.release()
        return tags

    def release(self) -> None:
        """Give the cache's memory back while no page decodes (the next ``admit`` makes a new one)."""
        if not self.active:
            self._cache, self._valid, self._column, self._step_call = None, None, 0, None

    def _done(self, row: _Slot) -> bool:
        return row.tokens[-1] in self.stop_ids or len(row.tokens) >= self.reading.max_new_tokens

    def _finish(self, index: int) -> tuple[Hashable, str]:
        row, self._rows[index] = self._rows[index], None
        self.generated_tokens += len(row.tokens)
        text = self.bundle.tokenizer.decode(row.tokens, skip_special_tokens=True)
        return row.tag, self.bundle.family.clean_output(text)

    def _ensure_cache(self, prompt_length: int, prefill: Any) -> None:
        """A cache with room for a prompt of ``prompt_length`` and two pages' output: after a shift left, the oldest
        page still decoding started at most a prompt and an output ago, so a new page always fits behind it (and
        every column more is read by every step's attention). Where the family knows the longest prompt a page can
        have at this resolution, room for that from the start: a bigger cache means a new compiled step (14 s for
        Qwen2.5-VL-7B on an H200), and pages of other sizes have other prompt lengths. Otherwise a bigger one,
        keeping what is in it, for a longer prompt."""
        from transformers import StaticCache

        columns = max(prompt_length, self._longest_prompt) + 2 * self.reading.max_new_tokens
        if self._cache is not None and self._valid.shape[1] >= columns:
            return
        layers = _prefill_layers(prefill)
        size = self.slots * columns * sum(k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size()
                                           for k, v in layers)
        cache = StaticCache(config=self.bundle.model.config, max_cache_len=columns)
        try:
            for layer, (keys, values) in zip(cache.layers, layers):
                layer.lazy_initialization(keys[:1].expand(self.slots, -1, -1, -1), values[:1].expand(self.slots, -1, -1, -1))
            valid = torch.zeros(self.slots, columns, dtype=torch.bool, device=self.bundle.device)
        except (torch.OutOfMemoryError, RuntimeError) as error:  # the CPU allocator raises a RuntimeError
            if not isinstance(error, torch.OutOfMemoryError) and "alloc" not in str(error):
                raise
            raise ModelError(f"the KV cache for continuous batching does not fit: {size / 2**30:.1f} GiB for "
                             f"{self.slots} pages of {columns} tokens (a {prompt_length}-token prompt and twice "
                             f"{self.reading.max_new_tokens} new tokens); lower serve.max_batch_pages or "
                             "training.max_new_tokens, or turn serve.continuous_batching off") from None
        if self._cache is not None:
            kept = self._valid.shape[1]
            for new, old in zip(cache.layers, self._cache.layers):
                new.keys[:, :, :kept], new.values[:, :, :kept] = old.keys, old.values
            valid[:, :kept] = self._valid
        self._cache, self._valid, self._step_call, self._cache_counter = cache, valid, None, 0

    def _compact(self) -> None:
        """Shift every row left by the columns no page in the cache still attends to."""
        used = self._valid[[index for index, row in enumerate(self._rows) if row is not None]]
        shift = int(used.any(0).nonzero()[0]) if used.numel() and used.any() else self._column
        if shift == 0:
            raise RuntimeError("the KV cache is full of pages still decoding")
        for layer in self._cache.layers:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, :-shift] = tensor[:, :, shift:].clone()
        self._valid[:, :-shift] = self._valid[:, shift:].clone()
        self._valid[:, -shift:] = False
        self._column -= shift
        self.compactions += 1

    def _forward(self):
        # On a GPU the decode step always has the same shapes: compiled once, replayed as CUDA graphs.
        if self._step_call is None:
            model = self.bundle.model
            compiled = self.bundle.device.type == "cuda" and hasattr(model, "get_compiled_call")
            self._step_call = model.get_compiled_call(None) if compiled else model
        return self._step_call


def _prefill_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]
