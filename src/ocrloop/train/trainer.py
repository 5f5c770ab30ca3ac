"""One training step, and the callbacks around the steps. Read this file to know what a step does.

A step (``OCRTrainer.compute_loss``, called by the Hugging Face ``Trainer`` for each micro-batch):

1. The batch holds token ids, labels (-100 on the prompt and image positions) and, per page, either the
   pixels or a ``feature_keys`` entry naming features the vision tower computed once before training. Its pages
   are drawn at random, or, with ``training.group_by_length``, by ``LengthGroupedSampler``.
2. While the model runs, ``cache.serving(keys)`` answers ``get_image_features`` from the cache for those
   pages, so the frozen tower does no work (``models/feature_cache.py``).
3. On the hf backend the output head runs on labelled positions only (``train/loss.py``): the loss is the
   mean cross-entropy of the answer tokens over the whole accumulated batch. Unsloth fuses its own loss.
4. The Trainer does the rest as configured (``FineTuner._training_arguments``): backward, gradient
   accumulation, clipping to ``max_grad_norm``, the AdamW step, the linear schedule, checkpoints. Under a time
   budget (``training.max_train_seconds``) the schedule is ``StepPlan``'s, whose end ``TimeBudget`` may move closer.
5. Under mixed precision, peft's LoRA layers hand their inputs to autocast as they are
   (``OCRTrainer.training_step``), rather than casting them to the adapters' float32 first.

Callbacks: ``TrainingProgress`` (one bar on stderr with the loss, instead of the Trainer's printed dicts),
``StepTimer`` (step and epoch wall time), ``ValidationCER`` (CER on generated text every N steps),
``ParkVisionTower`` (the tower leaves the GPU when every page is cached), ``TimeBudget`` (the steps that fit in
``training.max_train_seconds``). Pass more with
``FineTuner(callbacks=[...])``.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import Trainer, TrainerCallback

from ocrloop import distributed
from ocrloop.models.base import OCRModel
from ocrloop.models.feature_cache import FeatureCache
from ocrloop.models.loading import load_adapter_weights
from ocrloop.train.loss import labelled_token_loss


class OCRTrainer(Trainer):
    """A ``Trainer`` whose step answers image features from the cache and, on the hf backend, computes
    the loss on labelled positions only; it resumes LoRA checkpoints through ``load_adapter_weights``."""

    def __init__(self, *args, bundle: OCRModel, cache: FeatureCache | None = None, step_plan: StepPlan | None = None,
                 train_lengths: list[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.bundle, self.cache, self.step_plan, self.train_lengths = bundle, cache, step_plan, train_lengths
        if bundle.backend == "hf":
            # labelled_token_loss divides by the accumulated batch's token count itself: no second division.
            self.model_accepts_loss_kwargs = True
        # accelerate runs the model's forward under autocast exactly when native_amp is set (bf16 or fp16 on a GPU).
        autocast = bundle.backend == "hf" and self.accelerator.native_amp
        self.lora_layers = lora_layers(bundle.model) if autocast else []  # found once: 2 ms a step at full size

    def training_step(self, model, inputs, num_items_in_batch=None):
        with lora_inputs_left_to_autocast(self.lora_layers):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        keys = inputs.pop("feature_keys", None)
        with self.cache.serving(keys) if self.cache is not None else nullcontext():
            if self.bundle.backend == "hf" and not return_outputs:
                loss = labelled_token_loss(model, inputs, num_items_in_batch)
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    # num_items_in_batch counts every process's tokens and DistributedDataParallel averages the
                    # gradients: scaled back by the process count, as Trainer.compute_loss does, the step is the
                    # one a single process would take on the whole global batch.
                    loss = loss * self.accelerator.num_processes
                return loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        if self.train_lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(self.train_lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    seed=self.args.seed)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.step_plan is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        plan = self.step_plan
        # A lambda, not the bound method: LambdaLR saves the state of callable objects in checkpoints, not of functions.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda step: plan.factor(step))
        return self.lr_scheduler

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        weights = Path(resume_from_checkpoint) / "adapter_model.safetensors"
        if weights.is_file():
            load_adapter_weights(model or self.model, weights, what="the model being trained")
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Training pages in batches of about the same token length, so that a batch pads less: transformers'
    ``get_length_grouped_indices`` (random groups of 50 batches, each sorted by length), then the full batches in
    random order, so that consecutive steps do not run from the longest pages to the shortest; a last, partial batch
    stays last. The order depends on ``seed`` and the epoch alone, so every process draws the same one (accelerate
    then hands each its share of the batches)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        full = len(order) // self.batch_size
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(full)]
        shuffled = [index for b in torch.randperm(full, generator=generator).tolist() for index in batches[b]]
        return iter(shuffled + order[full * self.batch_size:])


def lora_layers(model: torch.nn.Module) -> list[Any]:
    """peft's LoRA layers in ``model`` (none where it has no adapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


@contextmanager
def lora_inputs_left_to_autocast(layers: list[Any]) -> Iterator[None]:
    """While inside, the LoRA ``layers`` (``lora_layers``) do not cast their input to the adapter's dtype.

    Under autocast that cast (bfloat16 to the adapters' float32) is undone at once by autocast's own cast back to
    bfloat16: two copies forward and two backward in every LoRA layer, and again in the checkpointed recompute, about
    500 of a DeepSeek-OCR-2 step's 5,000 kernel launches, where the step waits on the host. Only valid under autocast
    (outside it, a float32 adapter meets a bfloat16 input); the values are the same as with the casts (the round trip
    is exact)."""
    before = [layer.cast_input_dtype_enabled for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, enabled in zip(layers, before):
            layer.cast_input_dtype_enabled = enabled


class TrainingProgress(TrainerCallback):
    """A progress bar of optimizer steps on stderr, with the last logged loss and learning rate; it replaces the
    Trainer's own bar, which prints every log as a raw dict on stdout."""

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", file=sys.stderr,
                        dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar.total != state.max_steps:  # a time budget moved the end closer
            self.bar.total = state.max_steps
            self.bar.refresh()
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", lr=f"{float(logs.get('learning_rate', 0)):.2e}")

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class StepTimer(TrainerCallback):
    """Time of every optimizer step (so warm-up can be told apart) and of every epoch (data loading
    included: what a whole run is made of). On CUDA, steps are timed by events on the GPU's stream,
    read at epoch ends: waiting for the GPU at every step would keep the CPU from queueing the next."""

    def __init__(self, cuda: bool, step_seconds: list[float], epoch_seconds: list[float]):
        self.cuda, self.step_seconds, self.epoch_seconds = cuda, step_seconds, epoch_seconds
        self.pending: list[tuple[Any, Any]] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _settle(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        self.step_seconds.extend(start.elapsed_time(end) / 1000 if self.cuda else end - start for start, end in self.pending)
        self.pending = []
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self.pending.append((self.step_started, self._mark()))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_started = self._settle()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_seconds.append(self._settle() - self.epoch_started)

    def on_train_end(self, args, state, control, **kwargs):
        self._settle()


class ValidationCER(TrainerCallback):
    """Validation CER on generated text every ``every_steps`` optimizer steps (not only loss), appended to
    ``history`` as ``{"step", "cer", "wer", ...}``; the last step is left to the final validation. With
    ``stop_at``, training ends at the first validation whose CER is at most that, in every process."""

    def __init__(self, validate: Callable[[str], dict | None], every_steps: int, history: list[dict],
                 stop_at: float | None = None):
        self.validate, self.every_steps, self.history, self.stop_at = validate, every_steps, history, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_steps == 0 and state.global_step < state.max_steps:
            metrics = self.validate(f"at step {state.global_step}")
            if metrics:
                self.history.append({"step": state.global_step, **metrics})
            if self.stop_at is not None:
                # Only rank 0 validates: the others must stop at the same step, or they wait in the next all-reduce.
                read = distributed.main_decides(metrics is not None and metrics["cer"] <= self.stop_at)
                control.should_training_stop = control.should_training_stop or bool(read)


@dataclass
class StepPlan:
    """The learning-rate factor of each step: linear warm-up over ``warmup_steps``, then linear decay to zero at
    ``total_steps`` (the Trainer's "linear" schedule). ``end_at`` moves the end closer while training runs: from that
    step on, the factor falls from where it was to zero at the new end, without a jump."""

    total_steps: int
    warmup_steps: int

    def __post_init__(self):
        # The decay runs from (anchor_step, anchor_factor) to zero at total_steps: as planned, from the warm-up's end.
        self.anchor_step, self.anchor_factor = self.warmup_steps, 1.0

    def factor(self, step: int) -> float:
        if step < self.anchor_step:
            return step / max(1, self.warmup_steps)
        return self.anchor_factor * max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.anchor_step))

    def end_at(self, total_steps: int, step: int) -> None:
        """End at ``total_steps`` (not after ``self.total_steps``), decaying from ``step``, the current one."""
        self.anchor_factor, self.anchor_step = self.factor(step), step
        self.total_steps = total_steps


class TimeBudget(TrainerCallback):
    """Ends training within ``seconds`` of its first step: from a twentieth of the planned steps on, the steps are
    timed (the first ones compile and warm up); at a tenth, and every twentieth after, the steps left are cut to what
    fits at the mean speed so far, validation reads included, and ``plan``'s learning rate decays to zero at the new
    end. The end only moves closer. Rank 0 decides and sends its decision to every process, so all stop together."""

    def __init__(self, seconds: float, plan: StepPlan, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.plan, self.clock = seconds, plan, clock
        self.planned_steps = plan.total_steps
        self.every = max(1, plan.total_steps // 20)
        self.cuts: list[dict[str, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()
        self.timed_from: tuple[int, float] | None = None

    def _now(self) -> float:
        if torch.cuda.is_available():  # the steps queued on the GPU count as done only when they are
            torch.cuda.synchronize()
        return self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.every or step >= state.max_steps:
            return
        if self.timed_from is None:
            self.timed_from = (step, self._now())
            return
        end = state.max_steps
        if distributed.is_main_process():
            now = self._now()
            per_step = max((now - self.timed_from[1]) / (step - self.timed_from[0]), 1e-9)
            left = self.seconds - (now - self.started)
            end = min(end, step + max(0, math.floor(left / per_step)))
        end = int(distributed.main_decides(end))
        if end < state.max_steps:
            self.cuts.append({"at_step": step, "end": end})
            self.plan.end_at(end, step)
            state.max_steps = end
            control.should_training_stop = control.should_training_stop or step >= end

    def summary(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "planned_steps": self.planned_steps, "cuts": self.cuts}


class ParkVisionTower(TrainerCallback):
    """When every training page is answered from the cache, the tower leaves the GPU during steps. Parked at
    each step's start (after the Trainer has placed the model, and again after a validation generated text,
    which brings it back); ``offloaded_bytes`` is the most it moved."""

    def __init__(self, cache: FeatureCache | None):
        self.cache = cache
        self.offloaded_bytes = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.cache is not None:
            self.offloaded_bytes = max(self.cache.offload_vision(), self.offloaded_bytes)
