"""The training recipe: one class, read top to bottom.

``FineTuner(config, output_dir).setup()`` opens and checks the dataset, loads the model on the
chosen backend, attaches LoRA and checks every example's length; ``run()`` trains with a
Hugging Face ``Trainer`` whose every argument is spelled out below, evaluates validation CER on
generated text, saves the adapter (and merged weights on request), and writes the run card.
``train()`` wraps it so that every run, failed ones too, lands in the registry.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from tqdm.auto import tqdm
from torch.nn.attention import sdpa_kernel
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback

from ocrloop.atomic import atomic_write_json
from ocrloop.extras import require_tracking
from ocrloop.config import OcrloopConfig
from ocrloop.distributed import barrier, is_main_process, join_process_group, rank, world_size
from ocrloop.data.dataset import Dataset
from ocrloop.data.records import PageExample
from ocrloop.errors import DatasetError, OcrloopError
from ocrloop.evaluate.evaluator import evaluate_model
from ocrloop.models import MODEL_CARD, load_model
from ocrloop.models.base import WITHOUT_CUDNN, EncodedExample, ExampleTooLong, ModelError, OCRModel, collate
from ocrloop.models.reading import ReadingSettings
from ocrloop.models.loading import (
    attach_lora,
    checkpoint_activations,
    save_model,
    skip_frozen_vision_backward,
    trainable_parameters,
    vision_is_frozen,
)
from ocrloop.models.feature_cache import FOLDER as FEATURE_CACHE_FOLDER
from ocrloop.models.feature_cache import FeatureCache, image_feature_owner
from ocrloop.profiling import compiled_since, dynamo_counts, step_profiler
from ocrloop.train.trainer import (OCRTrainer, ParkVisionTower, StepPlan, StepTimer, TimeBudget, TrainingProgress,
                                   ValidationCER)
from ocrloop.registry import Registry

RUN_CARD = "run_card.json"
PREPARE_THREADS = 8  # threads preparing pages before training; beyond this the GPU is the bottleneck
# Pages handed to the feature pass at a time (each pass of the tower takes training.feature_pages_per_forward):
# threads prepare the next chunk while the GPU computes this one.
FEATURE_PASS_CHUNK = 16
SPOT_CHECKED = 8  # pages per split encoded for real when lengths are counted from page sizes


class PageDataset(torch.utils.data.Dataset):
    """Training pages, loaded and encoded on access (images are never all held in memory)."""

    def __init__(self, dataset: Dataset, examples: list[PageExample], bundle: OCRModel, prompt: str, resolution: str,
                 cache: FeatureCache | None = None):
        self.dataset, self.examples, self.bundle, self.cache = dataset, examples, bundle, cache
        self.prompt, self.resolution = prompt, resolution

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        example = self.examples[index]
        cache = self.cache
        if cache is not None:  # features cached: no image to load, no pixels to process
            template = cache.template(cache.key(example))
            if template is not None:
                return template
        return self.bundle.encode(self.dataset.load_image(example), self.prompt, example.text, self.resolution)


class PageCollator:
    """Pads a list of encoded pages into a batch, pixels cast to the model's dtype; starts reading
    cached features kept on disk for the batch (the Trainer collates one batch ahead)."""

    def __init__(self, bundle: OCRModel, cache: FeatureCache | None = None):
        self.bundle, self.cache = bundle, cache

    def __call__(self, examples: list[EncodedExample]) -> dict[str, Any]:
        b = self.bundle
        batch = collate(examples, b.tokenizer.pad_token_id, family=b.family, tokenizer=b.tokenizer, dtype=b.dtype)
        if b.backend == "hf":  # Unsloth runs its own compiled copies of the modules; not checked with these inputs
            b.family.add_training_layout(b, batch)
        if self.cache is not None and "feature_keys" in batch:
            self.cache.prefetch(batch["feature_keys"])
        return batch


@dataclass
class RunResult:
    """What a finished training run produced."""

    output_dir: Path
    run_id: str | None
    model_name: str | None
    card: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "accelerate", "unsloth", "bitsandbytes"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class FineTuner:
    """Fine-tunes ``config.base_model`` on ``config.dataset_dir`` into ``output_dir``."""

    def __init__(self, config: OcrloopConfig, output_dir: Path, *, resume: bool = False, console: Console | None = None,
                 business: str | None = None, validation: tuple[Dataset, list[PageExample]] | None = None,
                 callbacks: list[Any] | None = None, dataset: Dataset | None = None):
        self.config = config
        self.opened_dataset = dataset  # config.dataset_dir already opened (its files inspected) by the caller
        self.training = config.training
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.business = business  # train on this business type's documents only
        self.validation = validation  # validate on these pages of another dataset instead of the val split
        self.extra_callbacks = list(callbacks or [])  # transformers TrainerCallbacks added to ocrloop's own (profilers, loggers)
        self.console = console or Console(stderr=True)
        self.device_is_cuda = torch.cuda.is_available()
        self.history: dict[str, list] = {"validation": [], "train_loss_by_epoch": []}
        # Adapters remember their base; a relative folder must still resolve from elsewhere.
        base = Path(config.base_model).expanduser()
        self.base_model_ref = str(base.resolve()) if base.exists() else config.base_model

    # --- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        require_tracking(self.training.report_to)
        self._check_output_dir()
        self._setup_data()
        self._setup_model()
        if self.device_is_cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        self._check_examples()  # with the feature cache on, this pass also computes every page's features
        self.prepare_seconds = time.perf_counter() - started
        self.prepare_peak_bytes = torch.cuda.max_memory_allocated() if self.device_is_cuda else None

    def _check_output_dir(self) -> None:
        if (self.output_dir / MODEL_CARD).exists() and not self.resume:
            raise OcrloopError(f"{self.output_dir} already holds a trained model; choose another --output")
        if self.resume and not self._last_checkpoint():
            raise OcrloopError(f"{self.output_dir}: no checkpoint to resume from")

    def _setup_data(self) -> None:
        self.dataset = self.opened_dataset or Dataset.open(self.config.dataset_dir, self.config.data)
        errors = self.dataset.errors
        if errors and not self.training.skip_invalid:
            raise DatasetError(
                f"{self.config.dataset_dir}: {len(errors)} validation error(s), first: {errors[0]}; "
                "fix them (`ocrloop data validate`) or pass --skip-invalid"
            )
        if errors:
            self.console.print(f"[yellow]skipping {len(errors)} invalid example(s)[/yellow]")
        self.train_examples = self.dataset.examples("train", business=self.business)
        self.val_dataset, val_examples = self.validation or (self.dataset, self.dataset.examples("val", business=self.business))
        self.val_examples = val_examples[: self.training.eval_max_pages]
        if not self.train_examples:
            where = f" for business {self.business!r}" if self.business else ""
            raise DatasetError(f"{self.config.dataset_dir}: no valid training examples in the train split{where}")
        self.manifest = self.dataset.manifest(business=self.business)

    def _setup_model(self) -> None:
        from transformers import set_seed

        t = self.training
        set_seed(t.seed)  # LoRA weights are initialized from the global generator: same seed, same run
        with self.console.status(f"loading {self.config.base_model}"):
            self.bundle = load_model(self.config.base_model, backend=t.backend, mode=t.mode, for_training=True,
                                     float32_weights=t.float32_weights)
        self.bundle.family.check_resolution(t.resolution)
        self.bundle.reading = ReadingSettings.from_training(t)  # saved with the model: it reads as it was trained
        if t.mode == "full":
            if t.gradient_checkpointing and self.bundle.backend == "hf":
                checkpoint_activations(self.bundle.model)
        else:
            attach_lora(self.bundle, rank=t.lora_rank, alpha=t.lora_alpha, dropout=t.lora_dropout,
                        groups=list(t.lora_targets), seed=t.seed, gradient_checkpointing=t.gradient_checkpointing,
                        grouped_experts=t.grouped_expert_lora)
        if t.gradient_checkpointing:  # no KV cache in training steps: said once here, not warned at every forward
            for config in (self.bundle.model.config, getattr(self.bundle.model.config, "text_config", None)):
                if config is not None and getattr(config, "use_cache", None):
                    config.use_cache = False
        self.vision_without_autograd = t.skip_frozen_vision_backward and skip_frozen_vision_backward(self.bundle)
        self.trainable, self.total_parameters = trainable_parameters(self.bundle.model)
        if self.trainable == 0:
            raise ModelError(f"no trainable parameters for lora_targets={t.lora_targets}")
        self._setup_feature_cache()

    def _setup_feature_cache(self) -> None:
        """Cache image features when nothing changes them between epochs; say in one line why not otherwise."""
        t = self.training
        self.feature_cache: FeatureCache | None = None
        self.feature_cache_off: str | None = None
        self.feature_cache_summary: dict[str, Any] | None = None
        if not t.feature_cache:
            self.feature_cache_off = "turned off (training.feature_cache = false)"
        elif not vision_is_frozen(self.bundle):
            self.feature_cache_off = "off: the vision tower is trained, so its features change every step"
        elif image_feature_owner(self.bundle) is None:
            self.feature_cache_off = f"off: {self.bundle.family.name} computes image features inside its forward"
        if self.feature_cache_off:
            self.console.print(f"image-feature cache {self.feature_cache_off}", markup=False)
            return
        started = time.perf_counter()
        self.feature_cache = FeatureCache(
            self.bundle, self.output_dir / FEATURE_CACHE_FOLDER, t.resolution, device_budget_bytes=t.feature_cache_device_bytes,
            page_settings=f"pdf_dpi={self.config.data.pdf_dpi}", pages_per_forward=t.feature_pages_per_forward,
            warn=lambda message: self.console.print(f"warning: {message}", markup=False))
        self.feature_cache_setup_seconds = time.perf_counter() - started

    def _check_examples(self) -> None:
        """Encode every example once before the first step: too-long or inconsistent examples fail here, named.

        Launched as several processes with the feature cache on, each process encodes and computes only its share
        of the distinct pages (every world_size-th); the token layouts are then exchanged and the features read
        from the shared folder, so every process ends with the same examples, in the same order."""
        self.lengths: list[int] = []
        self.feature_exchange_seconds: float | None = None  # set where processes exchange their shares
        cache = self.feature_cache
        if cache is None and self._check_lengths_from_sizes():
            return
        splits = (("train", self.dataset, self.train_examples), ("val", self.val_dataset, self.val_examples))
        owner: dict[str, int] = {}  # distinct pages in order: a page listed twice (same file twice) is encoded once
        if cache is not None:
            for _, _, examples in splits:
                for example in examples:
                    owner.setdefault(cache.key(example), len(owner) % world_size())
        shared = cache is not None and world_size() > 1
        datasets = list({id(dataset): dataset for _, dataset, _ in splits}.values())
        problems_before = [len(dataset.problems) for dataset in datasets]
        error: str | None = None
        try:
            encoded_pages = self._encode_share(splits, owner)
        except OcrloopError as raised:
            if not shared:
                raise
            error, encoded_pages = str(raised), {}  # said by every process once the shares are exchanged
        if shared:
            new_problems = [p for dataset, before in zip(datasets, problems_before) for p in dataset.problems[before:]]
            encoded_pages = self._exchange_share(encoded_pages, new_problems, error)
        kept: dict[str, list[PageExample]] = {"train": [], "val": []}
        for split, _, examples in splits:
            for example in examples:
                encoded = encoded_pages.get(cache.key(example) if cache is not None else example.example_id)
                if encoded is not None:
                    kept[split].append(example)
                    if split == "train":
                        self.lengths.append(len(encoded))
        skipped = [p for p in self.dataset.warnings if p.message.startswith("skipped")]
        for problem in skipped:
            self.console.print(f"[yellow]{problem}[/yellow]", markup=True, highlight=False)
        self.train_examples, self.val_examples = kept["train"], kept["val"]

    def _encode_share(self, splits, owner: dict[str, int]) -> dict[str, EncodedExample]:
        """Encode and check this process's pages (all of them in one process); with the cache, record each page's
        token layout and compute the features it lacks. Keyed by cache key (or example id without the cache)."""
        t, cache = self.training, self.feature_cache
        image_token_id = self.bundle.tokenizer.convert_tokens_to_ids(self.bundle.family.image_token)
        missing: list[tuple[str, EncodedExample]] = []  # pages whose features are computed in batches
        encoded_pages: dict[str, EncodedExample] = {}

        def encode(example: PageExample, image) -> EncodedExample:
            return self.bundle.encode(image, t.prompt, example.text, t.resolution)

        shares = [(split, dataset, [e for e in examples if cache is None or owner[cache.key(e)] == rank()])
                  for split, dataset, examples in splits]
        # Pages are decoded and preprocessed by threads while the GPU computes the features of the last batch.
        workers = min(PREPARE_THREADS, os.cpu_count() or 1)
        bar = tqdm(total=sum(len(share) for _, _, share in shares), unit="page", file=sys.stderr, dynamic_ncols=True,
                   desc="checking pages" + (" and computing image features" if cache is not None else ""))
        for split, dataset, share in shares:
            for example, encoded in dataset.iter_prepared(share, encode, workers=workers):
                bar.update()
                where = f"{example.source} page {example.page + 1}"
                if len(encoded) > t.max_seq_length:
                    raise self._too_long(where, len(encoded), encoded.image_tokens)
                found = encoded.input_ids.count(image_token_id)
                if found != encoded.image_tokens:
                    raise ModelError(f"{where}: {found} image tokens in the prompt but {encoded.image_tokens} image features")
                if cache is None:
                    encoded_pages[example.example_id] = encoded
                    continue
                key = cache.key(example)
                if key in encoded_pages:
                    continue
                needed = cache.add(key, encoded)
                encoded_pages[key] = cache.templates[key]
                if needed:
                    missing.append((key, encoded))
                if len(missing) >= FEATURE_PASS_CHUNK:
                    cache.compute(missing)
                    missing = []
        bar.close()
        if cache is not None:
            cache.compute(missing)
            cache.flush()
        return encoded_pages

    def _exchange_share(self, encoded_pages: dict[str, EncodedExample], new_problems: list,
                        error: str | None) -> dict[str, EncodedExample]:
        """Every process's token layouts and skipped pages, after all have written their features; one process's
        error stops them all, with its message."""
        import torch.distributed as dist

        cache = self.feature_cache
        started = time.perf_counter()
        join_process_group()
        shares: list[Any] = [None] * world_size()
        dist.all_gather_object(shares, {"pages": encoded_pages, "problems": new_problems, "error": error})
        errors = [share["error"] for share in shares if share["error"]]
        if errors:
            raise ModelError(errors[0])
        everything: dict[str, EncodedExample] = {}
        for index, share in enumerate(shares):
            everything.update(share["pages"])
            if index != rank():
                self.dataset.problems.extend(share["problems"])
        cache.templates.update(everything)
        # The other processes' features: read from the shared folder, now that all are written.
        if not cache.holds(list(everything)):
            raise ModelError(f"{cache.folder}: after the shared feature pass, some pages have no features; "
                             "is the output folder on storage every process can read?")
        # Waiting for the slowest process, exchanging layouts, reading the others' features: what does not shrink.
        self.feature_exchange_seconds = time.perf_counter() - started
        return everything

    def _check_lengths_from_sizes(self) -> bool:
        """The page check without decoding a page, where the family counts image tokens from the page's size (the
        dataset was decoded once when it was opened): every example's length, a too-long one named. The first
        ``SPOT_CHECKED`` pages of each split are also encoded for real and must agree. False where the family
        cannot count (or a page is a PDF's): the caller then encodes every page."""
        t, family, bundle = self.training, self.bundle.family, self.bundle
        lengths: dict[str, list[int]] = {"train": [], "val": []}
        for split, dataset, examples in (("train", self.dataset, self.train_examples), ("val", self.val_dataset, self.val_examples)):
            if any(example.kind != "image" for example in examples):
                return False
            sizes = [dataset.files[example.source].page_sizes[example.page] for example in examples]
            counts = family.encoded_lengths(bundle, sizes, t.prompt, [example.text for example in examples], t.resolution)
            if counts is None:
                return False
            for index, (example, counted) in enumerate(zip(examples, counts)):
                if index < SPOT_CHECKED:
                    encoded = bundle.encode(dataset.load_image(example), t.prompt, example.text, t.resolution)
                    if (len(encoded), encoded.image_tokens) != counted:
                        raise ModelError(f"{example.source}: {family.name} counts {counted} (tokens, image tokens) from the "
                                         f"page size but encodes {(len(encoded), encoded.image_tokens)}")
                if counted[0] > t.max_seq_length:
                    raise self._too_long(f"{example.source} page {example.page + 1}", *counted)
                lengths[split].append(counted[0])
        self.lengths = lengths["train"]
        return True

    def _too_long(self, where: str, tokens: int, image_tokens: int) -> ExampleTooLong:
        return ExampleTooLong(
            f"{where}: {tokens} tokens ({image_tokens} image + {tokens - image_tokens} text) exceed "
            f"max_seq_length={self.training.max_seq_length}; raise training.max_seq_length or use a lower --resolution")

    # --- run -------------------------------------------------------------------------------------

    def _last_checkpoint(self) -> str | None:
        """The newest complete checkpoint. The Trainer writes ``trainer_state.json`` last, so a
        checkpoint without a readable one was cut off by a crash: it is removed, the one before used."""
        folder = self.output_dir / "checkpoints"
        candidates = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1,
                            reverse=True) if folder.is_dir() else []
        for checkpoint in candidates:
            try:
                json.loads((checkpoint / "trainer_state.json").read_text())
                return str(checkpoint)
            except (OSError, ValueError):
                self.console.print(f"removing incomplete checkpoint {checkpoint}", markup=False)
                shutil.rmtree(checkpoint, ignore_errors=True)
        return None

    def _validate(self, label: str) -> dict[str, float] | None:
        if not self.val_examples or not is_main_process():  # one process reads; the others wait at the next step
            return None
        started = time.perf_counter()
        with tqdm(total=len(self.val_examples), unit="page", desc=f"validation {label}", file=sys.stderr, leave=False,
                  dynamic_ncols=True) as bar:
            evaluation = evaluate_model(self.bundle, self.val_dataset, self.val_examples,
                                        ReadingSettings.from_training(self.training), batch_size=self.training.read_batch_size,
                                        cache=self.feature_cache, progress=lambda done: bar.update(done - bar.n))
        metrics = {"cer": evaluation.report.overall.cer, "wer": evaluation.report.overall.wer,
                   "by_category": {k: v.cer for k, v in evaluation.report.by_category.items()},
                   "wer_by_category": {k: v.wer for k, v in evaluation.report.by_category.items()},
                   "seconds": time.perf_counter() - started,
                   # a read far longer than its pages' texts (a page read to the token limit) holds its whole batch
                   "read_characters": sum(len(text) for text in evaluation.predictions),
                   "reference_characters": sum(len(example.text) for example in evaluation.examples)}
        self.console.print(f"validation CER {label}: {metrics['cer']:.2%}  WER {metrics['wer']:.2%}", markup=False)
        return metrics

    def _training_arguments(self) -> TrainingArguments:
        """Every argument of the Hugging Face ``Trainer``, spelled out."""
        t = self.training
        bf16 = self.device_is_cuda and torch.cuda.is_bf16_supported()
        eight_bit_adam = t.optimizer == "adamw_8bit" or (
            t.optimizer == "auto" and self.device_is_cuda and importlib.util.find_spec("bitsandbytes") is not None
        )
        arguments = TrainingArguments(
            output_dir=str(self.output_dir / "checkpoints"),
            num_train_epochs=t.epochs,
            max_steps=t.max_steps or -1,
            per_device_train_batch_size=t.batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_steps,
            max_grad_norm=t.max_grad_norm,
            weight_decay=t.weight_decay,
            lr_scheduler_type="linear",
            optim="adamw_8bit" if eight_bit_adam else t.optimizer if t.optimizer == "adamw_torch_fused" else "adamw_torch",
            bf16=bf16,
            fp16=self.device_is_cuda and not bf16,
            logging_steps=t.logging_steps,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=2,
            report_to=[] if t.report_to == "none" else [t.report_to],
            seed=t.seed,
            remove_unused_columns=False,
            dataloader_num_workers=t.dataloader_workers,
            # Workers live for the whole run and stay a few batches ahead: no process start at each epoch.
            dataloader_persistent_workers=t.dataloader_workers > 0,
            dataloader_prefetch_factor=4 if t.dataloader_workers > 0 else None,
            use_cpu=not self.device_is_cuda,
            disable_tqdm=False,
            # The hf backend compiles through the Trainer (accelerate wraps the model in torch.compile); Unsloth
            # compiles its own modules when its import is told to (``prepare_backend``).
            torch_compile=t.compile and self.bundle.backend == "hf",
            # DDP would broadcast every buffer at each forward: the models' buffers are constants, and those of a
            # vision tower parked on the CPU (``ParkVisionTower``) cannot go through NCCL at all.
            ddp_broadcast_buffers=False,
            # Every trainable weight (LoRA or all of them) takes part in every step. Left unset, the Trainer asks
            # DDP to search each step's autograd graph for unused ones, because a peft model is not a
            # PreTrainedModel: 12 % of a DeepSeek-OCR-2 step on two H200s.
            ddp_find_unused_parameters=False,
        )
        if self.device_is_cuda and world_size() == 1 and arguments.n_gpu > 1:
            # One process on a machine with several GPUs: the Trainer would split each batch over all of them with
            # nn.DataParallel. ocrloop runs one GPU per process (torchrun for several), so this one uses its own.
            arguments._n_gpu = 1
        return arguments

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step: under torchrun every step takes a batch from each process."""
        return self.training.batch_size * self.training.gradient_accumulation_steps * world_size()

    def run(self) -> RunResult:
        """Train (the step is ``train.trainer.OCRTrainer``), validate, save the model and write the run card."""
        t = self.training
        steps_per_epoch = math.ceil(len(self.train_examples) / self.samples_per_step)
        cache = self.feature_cache
        park = ParkVisionTower(cache)
        total_steps = t.max_steps or math.ceil(steps_per_epoch * t.epochs)
        first_profiled = max(3, total_steps // 2)
        profiled = min(t.profile_steps, total_steps - first_profiled)
        profiler = step_profiler(first_profiled, profiled) if profiled > 0 else None
        arguments = self._training_arguments()
        plan = StepPlan(total_steps, arguments.get_warmup_steps(total_steps)) if t.max_train_seconds else None
        budget = TimeBudget(t.max_train_seconds, plan) if plan else None
        trainer = OCRTrainer(
            model=self.bundle.model,
            args=arguments,
            train_dataset=PageDataset(self.dataset, self.train_examples, self.bundle, t.prompt, t.resolution, cache),
            data_collator=PageCollator(self.bundle, cache),
            callbacks=[TrainingProgress(), StepTimer(self.device_is_cuda, self.history.setdefault("step_seconds", []),
                                 self.history.setdefault("epoch_seconds", [])),
                       ValidationCER(self._validate, t.eval_steps or steps_per_epoch, self.history["validation"],
                                     stop_at=t.stop_at_validation_cer),
                       park, *([profiler] if profiler else []), *([budget] if budget else []), *self.extra_callbacks],
            bundle=self.bundle,
            cache=cache,
            step_plan=plan,
            train_lengths=self.lengths if t.group_by_length else None,
        )
        trainer.remove_callback(ProgressCallback)  # TrainingProgress instead: a bar on stderr, no printed dicts
        if self.device_is_cuda:
            torch.cuda.reset_peak_memory_stats()
        dynamo_before = dynamo_counts() if t.compile else None
        started = time.perf_counter()
        with nullcontext() if t.cudnn_attention else sdpa_kernel(WITHOUT_CUDNN):
            train_output = trainer.train(resume_from_checkpoint=self._last_checkpoint() if self.resume else None)
        train_seconds = time.perf_counter() - started
        compiled = compiled_since(dynamo_before) if dynamo_before is not None else None
        self.vision_offloaded_bytes = park.offloaded_bytes

        self.history["train_loss_by_epoch"] = _loss_by_epoch(trainer.state.log_history)
        self.history["loss_by_step"] = [[entry["step"], entry["loss"]] for entry in trainer.state.log_history if "loss" in entry]
        validations = self.history["validation"]
        if validations and validations[-1]["step"] == trainer.state.global_step:  # it ended at a validation: no second read
            final = {key: value for key, value in validations[-1].items() if key != "step"}
        else:
            final = self._validate("final")
            if final:
                validations.append({"step": trainer.state.global_step, **final})
        if cache is not None:
            self.feature_cache_summary = {**cache.summary(), "setup_seconds": self.feature_cache_setup_seconds,
                                          "exchange_seconds": self.feature_exchange_seconds}
            cache.close()
            self.feature_cache = None
        card = self._run_card(train_output, train_seconds, trainer.state.global_step, final)
        card["speed"]["compile"] = compiled  # where the compiled step broke its graph (None: not compiled)
        if profiler is not None:
            card["speed"]["profile"] = profiler.summary()
        card["speed"]["time_budget"] = budget.summary() if budget else None
        if is_main_process():  # the model and its card are written once, by rank 0
            save_model(self.bundle, self.output_dir, base_model=self.base_model_ref, mark_complete=False)
            card["metrics"]["merged_validation"] = self._save_merged(final) if t.merge else None
            atomic_write_json(self.output_dir / RUN_CARD, card)
            save_model(self.bundle, self.output_dir, base_model=self.base_model_ref, card_only=True)
        barrier()  # no process moves on before the model is saved
        return RunResult(self.output_dir, None, None, card)

    def _save_merged(self, adapter_metrics: dict | None) -> dict[str, Any]:
        """Merge LoRA into the base weights, save them, and check the merged model reads as well."""
        merged_dir = self.output_dir / "merged"
        save_model(self.bundle, merged_dir, base_model=self.base_model_ref, merged=True)
        merged = load_model(str(merged_dir), backend="hf")
        original, self.bundle = self.bundle, merged
        try:
            metrics = self._validate("merged") or {}
        finally:
            self.bundle = original
        if adapter_metrics and metrics and abs(metrics["cer"] - adapter_metrics["cer"]) > 0.005:
            raise ModelError(
                f"merged weights read worse than the adapter (CER {metrics['cer']:.2%} vs {adapter_metrics['cer']:.2%}); "
                f"use the adapter in {self.output_dir}"
            )
        return metrics

    def _run_card(self, train_output, train_seconds: float, steps: int, final: dict | None) -> dict:
        samples = train_output.metrics.get("train_samples_per_second")
        samples_per_step = self.samples_per_step
        epochs_done = steps * samples_per_step / max(len(self.train_examples), 1)
        tokens = sum(self.lengths) * epochs_done
        training_peak = torch.cuda.max_memory_allocated() if self.device_is_cuda else None
        prepare_peak = self.prepare_peak_bytes
        peak_allocated = max(training_peak, prepare_peak) if training_peak is not None else None
        peak_reserved = torch.cuda.max_memory_reserved() if self.device_is_cuda else None
        gpu_hours = train_seconds * world_size() / 3600 if self.device_is_cuda else 0.0
        return {
            "base_model": self.config.base_model,
            "family": self.bundle.family.name,
            "backend": self.bundle.backend,
            "config": self.config.model_dump(mode="json"),
            "data": {"manifest_hash": self.manifest.manifest_hash, "train_pages": len(self.train_examples),
                     "val_pages": len(self.val_examples), "mix": self.dataset.mix(self.business).to_json()},
            "parameters": {"trainable": self.trainable, "total": self.total_parameters,
                           "vision_without_autograd": self.vision_without_autograd},
            "feature_cache": self.feature_cache_summary or {"enabled": False, "reason": self.feature_cache_off},
            "metrics": {
                "train_loss": train_output.training_loss,
                "train_loss_by_epoch": self.history["train_loss_by_epoch"],
                "loss_by_step": self.history.get("loss_by_step", []),
                "validation": self.history["validation"],
                "final_validation": final,
                "merged_validation": None,  # filled once the merged weights are saved and read
            },
            "speed": {"steps": steps, "processes": world_size(), "prepare_seconds": getattr(self, "prepare_seconds", None),
                      "epoch_seconds": self.history.get("epoch_seconds", []), "train_seconds": train_seconds, "samples_per_second": samples,
                      "tokens_per_second": tokens / train_seconds if train_seconds else None,
                      **_steady_speed(self.history.get("step_seconds", []), samples_per_step,
                                      sum(self.lengths) / max(len(self.lengths), 1))},
            # Whole run: the page pass (features computed) and training, each also on its own.
            "memory": {"peak_vram_allocated_bytes": peak_allocated, "peak_vram_reserved_bytes": peak_reserved,
                       "peak_vram_prepare_allocated_bytes": prepare_peak, "peak_vram_training_allocated_bytes": training_peak,
                       "vision_offloaded_bytes": self.vision_offloaded_bytes},
            "cost": {"gpu_hours": gpu_hours, "gpu_price_per_hour_usd": self.config.gpu_price_per_hour_usd,
                     "cost_usd": gpu_hours * self.config.gpu_price_per_hour_usd},
            "device": torch.cuda.get_device_name() if self.device_is_cuda else platform.processor() or "cpu",
            "versions": _versions(),
        }

    def cleanup(self) -> None:
        if getattr(self, "feature_cache", None) is not None:
            self.feature_cache.close()
            self.feature_cache = None
        self.bundle = None
        if self.device_is_cuda:
            torch.cuda.empty_cache()


def _steady_speed(step_seconds: list[float], samples_per_step: int, mean_tokens: float) -> dict[str, Any]:
    """Speed after warm-up: the median step once the first two (compilation, autotuning) are past.

    Validation generation runs between steps, not inside them, so it is not counted.
    """
    if not step_seconds:
        return {}
    steady = sorted(step_seconds[2:] if len(step_seconds) > 3 else step_seconds)
    median = steady[len(steady) // 2]
    return {
        "step_seconds": step_seconds,
        "steady_seconds_per_step": median,
        "steady_samples_per_second": samples_per_step / median,
        "steady_tokens_per_second": samples_per_step * mean_tokens / median,
    }


def _loss_by_epoch(log_history: list[dict]) -> list[dict[str, float]]:
    by_epoch: dict[int, list[float]] = {}
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            by_epoch.setdefault(max(0, math.ceil(entry["epoch"]) - 1), []).append(entry["loss"])
    return [{"epoch": epoch + 1, "loss": sum(v) / len(v)} for epoch, v in sorted(by_epoch.items())]


def card_measurements(card: dict[str, Any]) -> dict[str, Any]:
    """The run card's figures that a registry run row keeps (``Registry.finish_run`` keywords)."""
    return {"peak_vram_bytes": card["memory"]["peak_vram_allocated_bytes"], "gpu_hours": card["cost"]["gpu_hours"],
            "cost_usd": card["cost"]["cost_usd"]}


def failure_message(error: BaseException) -> str:
    """How a failed run's error is recorded in the registry."""
    return "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"


def train(config: OcrloopConfig, output_dir: Path, *, resume: bool = False, registry: Registry | None = None,
          console: Console | None = None, business: str | None = None, callbacks: list | None = None) -> RunResult:
    """Run the recipe and record it in ``registry``: ``running`` first, then ``succeeded`` or ``failed``.

    ``callbacks`` are more ``transformers.TrainerCallback``s for the run (a profiler, a logger)."""
    recorded = {"output_dir": str(Path(output_dir)), **config.model_dump(mode="json")}
    if not is_main_process():  # launched as several processes: rank 0 alone keeps the registry
        registry = None
    run_id = registry.start_run("train", recorded, business=business) if registry else None
    started = time.perf_counter()
    fine_tuner = FineTuner(config, output_dir, resume=resume, console=console, business=business, callbacks=callbacks)
    try:
        fine_tuner.setup()
        result = fine_tuner.run()
    except BaseException as error:
        if registry:
            registry.finish_run(run_id, "failed", wall_seconds=time.perf_counter() - started, error=failure_message(error))
        raise
    finally:
        fine_tuner.cleanup()
    card = result.card
    if registry:
        dataset_id = registry.record_dataset(card["data"]["manifest_hash"], str(config.dataset_dir), card["data"]["mix"],
                                             fine_tuner.manifest.to_json())
        final = card["metrics"]["final_validation"] or {}
        speed = card["speed"]
        registry.finish_run(
            run_id, "succeeded", wall_seconds=time.perf_counter() - started, **card_measurements(card),
            metrics={"val_cer": final.get("cer"), "val_wer": final.get("wer"), "train_loss": card["metrics"]["train_loss"],
                     "samples_per_second": speed.get("steady_samples_per_second") or speed["samples_per_second"],
                     "tokens_per_second": speed.get("steady_tokens_per_second") or speed["tokens_per_second"],
                     "peak_vram_reserved_bytes": card["memory"]["peak_vram_reserved_bytes"], "dataset_id": dataset_id,
                     # Curves for the report: loss at every logged step, validation CER at every validation.
                     "loss_by_step": card["metrics"]["loss_by_step"],
                     "validation_cer_by_step": [[v["step"], v["cer"]] for v in card["metrics"]["validation"]]},
        )
        name = output_dir.name if registry.model(output_dir.name) is None else f"{output_dir.name}-{run_id}"
        registry.add_model(name, str(output_dir.resolve()), card["family"], config.base_model, run_id=run_id, business=business)
        result.run_id, result.model_name = run_id, name
    return result
