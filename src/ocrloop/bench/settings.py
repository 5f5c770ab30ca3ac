"""What each benchmark runs, as data: one pydantic model per ``ocrloop bench`` command (its flags are made from
these fields by ``cli_flags.settings_flags``). Defaults are the workloads the published figures used."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ocrloop.config import BUSINESS_TYPES, DOCUMENT_CATEGORIES, LoraTarget, Resolution

Family = Literal["deepseek-ocr", "deepseek-ocr-2", "qwen2.5-vl"]
Category = Literal[DOCUMENT_CATEGORIES]
Business = Literal[BUSINESS_TYPES]
Count = Annotated[int, Field(ge=1, le=10_000_000)]
LearningRate = Annotated[float, Field(gt=0, lt=1)]
ReaderSize = Literal["small", "medium", "tiny"]  # Qwen2.5-VL presets trained from scratch (models.qwen2_5_vl)


class _Bench(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _ArchitectureBench(_Bench):
    """A bench of a published architecture with random weights (or its tiny preset): speed and memory only."""

    family: Family = Field("deepseek-ocr-2", description="Model family.")
    size: Literal["full", "tiny"] = Field("full", description="full (the published architecture) or tiny.")


class BenchTrainSettings(_ArchitectureBench):
    out: Path = Field(description="JSON file to write (logs go beside it).")
    resolution: Resolution = Field("gundam", description="Resolution mode of the pages.")
    batch_size: int = Field(8, ge=1, le=4096, description="Pages per step, the same for every variant.")
    steps: int = Field(12, ge=3, le=100_000, description="Optimizer steps per variant (the first two are warm-up).")
    variants: list[str] = Field(["baseline", "ocrloop"], description="baseline, unsloth, ocrloop, ocrloop-compile, "
                                "ocrloop-cudnn, ocrloop-hf, ocrloop-hf-nockpt, ocrloop-hf-compile; NAME:MODE sets a "
                                "variant's training mode.")
    lora_targets: str = Field("attention,mlp,experts", description="LoRA target groups, the same for every variant.")
    work: Path = Field(Path("/tmp/ocrloop-bench"), description="Scratch folder for the checkpoint, pages and runs.")
    epochs: float | None = Field(None, gt=0, le=1000, description="Run mode: train --pages pages for this many epochs, "
                                                                  "timed end to end.")
    pages: int = Field(48, ge=1, le=100_000, description="Synthetic pages (run mode: exactly this many training pages).")
    mode: Literal["lora16", "qlora4"] = Field("lora16", description="Training mode of every variant.")
    categories: list[Category] = Field(["receipt", "invoice", "tax_form"], description="Document categories of the pages.")
    processes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [1], min_length=1, description="Processes (GPUs) to run each variant on, one run per count, in order; a count "
                                       "may repeat, e.g. 2,1,2,1 (torchrun above one; --batch-size per process).")
    profile_steps: int = Field(0, ge=0, le=1000, description="Profile this many steps from the middle of each run: GPU-busy "
                                                            "share and costliest operations (slows them).")


class BenchOcrSettings(_ArchitectureBench):
    out: Path = Field(description="JSON file to write.")
    resolution: Resolution = Field("base", description="Resolution mode of the pages.")
    batch_sizes: list[int] = Field([1, 8, 32], min_length=1, description="Batch sizes to measure.")
    pages: int = Field(32, ge=1, le=100_000, description="Pages read per batch size above 1.")
    cache: Literal["static", "dynamic", "continuous"] = Field(
        "static", description="KV cache: static (compiled decode), dynamic, or continuous (ocrloop's continuous decoder, "
                              "a slot per page of the batch, read from a copy of the model that never stops early).")
    tokens_per_page: int | None = Field(None, ge=2, le=16_384, description="Make every page generate exactly this many "
                                                                           "tokens (default: as many as its text takes).")
    experts: Literal["default", "grouped_mm", "padded"] = Field(
        "default", description="MoE experts: default (transformers: batched_mm while decoding on a GPU), grouped_mm "
                               "(grouped GEMMs while decoding too; with --cache dynamic) or padded (a step's tokens "
                               "grouped by expert, each expert's weights read once; ocrloop.models.experts).")
    profile_tokens: int = Field(0, ge=0, le=4096, description="Also profile one generation of this many tokens per batch "
                                                             "size (CUDA): GPU-busy share, kernels per token, top ops.")
    work: Path = Field(Path("/tmp/ocrloop-bench"), description="Scratch folder for the checkpoint and pages.")
    processes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [1], min_length=1, description="Process (GPU) counts to compare, one launch each (torchrun above one); every "
                                       "process reads --pages pages per batch size.")


class BenchServeSettings(_ArchitectureBench):
    out: Path = Field(description="JSON file to write (the service's log goes beside it).")
    resolution: Resolution = Field("base", description="Resolution mode the service reads at.")
    tokens_per_page: int = Field(512, ge=2, le=16_384, description="Tokens every page generates (the model's limit).")
    clients: int = Field(64, ge=1, le=4096, description="Concurrent clients, each with one page in flight.")
    requests: int = Field(640, ge=1, le=10_000_000, description="Timed requests after the warm-up.")
    warmup_requests: int = Field(192, ge=0, le=10_000_000, description="Requests answered before timing starts "
                                                                        "(compilation of each batch shape).")
    max_batch_pages: int = Field(64, ge=1, le=1024, description="serve.max_batch_pages of the service.")
    batch_wait_ms: float = Field(50, ge=0, le=60_000, description="serve.batch_wait_ms of the service.")
    fast_decode: bool = Field(True, description="serve.fast_decode of the service.")
    continuous_batching: bool = Field(True, description="serve.continuous_batching of the service (pages join the "
                                                        "running decode; off: whole batches).")
    compare_with: Path | None = Field(None, description="A bench ocr result: the service's rate over the bench's at "
                                                        "--max-batch-pages and at its best batch size.")
    work: Path = Field(Path("/tmp/ocrloop-bench"), description="Scratch folder for the checkpoint, pages and workspace.")


class BenchSoakSettings(_Bench):
    out: Path = Field(description="JSON file to write (a PNG of the server's memory and the server log go beside it).")
    requests: int = Field(5000, ge=1, le=10_000_000, description="Requests to send.")
    connections: int = Field(16, ge=1, le=4096, description="Concurrent connections.")
    engine: Literal["model", "tesseract"] = Field("model", description="What the service reads with.")


class BenchLinesSettings(_Bench):
    out: Path = Field(description="JSON file to write.")
    size: ReaderSize = Field("small", description="Qwen2.5-VL preset: small (17.6 M parameters), medium or tiny.")
    lines: int = Field(20_000, ge=1, le=10_000_000, description="Distinct single-line images (rendered once into --work).")
    batch_size: int = Field(256, ge=1, le=65_536, description="Images per step.")
    steps: int = Field(300, ge=1, le=10_000_000, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate.")
    workers: int = Field(8, ge=0, le=256, description="Data loader processes (training.dataloader_workers).")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit"] = Field(
        "auto", description="training.optimizer; auto: fused AdamW on CUDA.")
    profile_steps: int = Field(0, ge=0, le=1000, description="Steady steps profiled for the GPU-busy share (CUDA; slows "
                                                             "them, so 0 for whole-run figures).")
    compile: bool = Field(False, description="Compile the training step (training.compile): the first steps pay for "
                                             "compiling, the steady ones show what it buys. On an H200: 1.54 times "
                                             "the eager steady speed, after about 210 s of compiling in two pauses "
                                             "(the first step, and one some 50 steps later).")
    work: Path = Field(Path("/tmp/ocrloop-lines"), description="Scratch folder for images, checkpoint and run.")


class BenchLearnSettings(_Bench):
    out: Path = Field(description="JSON file to write (the plot goes beside it as .png).")
    family: Family = Field("qwen2.5-vl", description="Model family.")
    size: Literal["small", "tiny"] = Field("small", description="small (trained from scratch) or tiny (a quick check).")
    train_documents: int = Field(2000, ge=1, le=10_000_000, description="Synthetic training documents (seed 1).")
    heldout_documents: int = Field(64, ge=1, le=100_000, description="Held-out documents (seed 2).")
    categories: list[Category] = Field(["receipt", "invoice"], description="Document categories.")
    steps: int = Field(3000, ge=1, le=10_000_000, description="Optimizer steps.")
    eval_steps: int = Field(500, ge=1, le=10_000_000, description="Read the held-out pages every N steps.")
    batch_size: int = Field(16, ge=1, le=4096, description="Pages per step.")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate.")
    resolution: Resolution = Field("small", description="Resolution mode.")
    scale: float = Field(0.6, gt=0, le=4, description="Page scale of the synthetic documents (1.0: 850x1100 px).")
    workers: int = Field(8, ge=1, le=256, description="Processes rendering the training documents.")
    work: Path = Field(Path("/tmp/ocrloop-learn"), description="Scratch folder for pages, checkpoint and run.")
    add_tesseract: bool = Field(False, description="Only score Tesseract into an existing --out (made where Tesseract "
                                                   "was missing).")


class BenchPretrainSettings(_Bench):
    out: Path = Field(description="JSON file to write (the plot goes beside it as .png).")
    size: ReaderSize = Field("small", description="Qwen2.5-VL preset trained from scratch: small (17.6 M parameters), "
                                                   "medium or tiny.")
    lessons: list[Count] = Field([30_000, 60_000, 12_000, 6_000], min_length=4, max_length=4,
                                 description="Distinct lessons per stage: glyphs, lines, blocks, pages.")
    steps: list[Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        [840, 1400, 300, 600], min_length=4, max_length=4,
        description="Optimizer steps per stage, at most (the glyph stage ends when it reads: --glyphs-read-at). The "
                    "blocks stage alone may have 0: it is skipped, its lessons not rendered, and the pages stage "
                    "starts from the lines reader. Without blocks (run 30) pages read at 30 %, not 3-4 %: the reader "
                    "read a page's top lines and wrote the rest.")
    batch_sizes: list[Count] = Field([256, 256, 128, 64], min_length=4, max_length=4,
                                     description="Lessons per step, per stage.")
    learning_rates: list[LearningRate] = Field([3e-4, 3e-4, 5e-4, 3e-4], min_length=4, max_length=4,
                                        description="Peak learning rate per stage (warm-up, then linear decay). From "
                                                    "random weights, 1e-3 kept the glyph stage on its plateau for 250 "
                                                    "to 1,100 steps; 3e-4 read glyphs at 1 % by step 609. At 1e-3 the "
                                                    "lines stage left its plateau in one run of two.")
    max_new_tokens: list[Count] = Field([12, 40, 160, 320], min_length=4, max_length=4,
                                        description="Longest reading per stage's held-out lessons.")
    heldout: int = Field(64, ge=1, le=100_000, description="Held-out lessons per stage and held-out pages (seeds never "
                                                          "trained on).")
    test_pages: int | None = Field(
        None, ge=1, le=100_000, description="Held-out test pages (clean, seed 7000), read at the end with their blank "
                                            "twins (and by Tesseract). None: --heldout. The first --heldout of them "
                                            "are the pages runs with fewer read, scored apart (first_pages), and the "
                                            "only ones read after the blocks stage. Under --time-budget, their reads "
                                            "need a larger --time-reserve (64 pages read in 4 s on an H200).")
    categories: list[Category] = Field(["receipt", "invoice"], description="Document categories of blocks and pages.")
    resolution: Resolution = Field("base", description="Resolution mode of every stage (base: no page is resized).")
    evals_per_stage: int = Field(2, ge=1, le=1000, description="Held-out reads per stage (the curve's points).")
    glyphs_read_at: float | None = Field(
        0.02, ge=0, le=100, description="The glyph stage ends at its first held-out read (one every tenth of its steps) "
                                        "at or below this CER, and the lines stage gets the steps it left; the end of "
                                        "its plateau moves from run to run. None: every glyph step.")
    scrambled: float = Field(0.0, ge=0, le=1, description="Share of block and page lessons whose words and numbers are "
                                                           "random, layout kept (held-out lessons and pages never are).")
    photos: float = Field(0.0, ge=0, le=1, description="Share of page lessons drawn as phone photos (data synth --style "
                                                        "photo); above 0 (or with --random-layouts or --random-labels), "
                                                        "the reader also reads bench photo-loop's held-out documents (a "
                                                        "layout no lesson uses) at the end, as photos and as clean "
                                                        "pages.")
    templates: list[Annotated[int, Field(ge=0, le=2)]] = Field(
        [0], min_length=1, description="Layouts of the block and page lessons (data synth --templates); bench "
                                       "photo-loop holds layout 2 out.")
    random_layouts: float = Field(0.0, ge=0, le=1, description="Share of block and page lessons whose document keeps "
                                                                "its words but is laid out anew (field order, how "
                                                                "headings, fields and items are written, date format).")
    mixed_names: float = Field(0.0, ge=0, le=1, description="Share of block and page lessons whose seller and items are "
                                                             "named at random from every business's, quantities and "
                                                             "prices kept: the seller no longer predicts the items.")
    random_labels: float = Field(0.0, ge=0, le=1, description="Share of block and page lessons whose field labels and "
                                                               "column names are other words of the documents (names, "
                                                               "items, clauses), values kept: labels must be read. "
                                                               "Held-out layouts use labels no lesson has.")
    line_sizes: list[Annotated[int, Field(ge=8, le=64)]] = Field(
        [13, 36], min_length=2, max_length=2, description="Smallest and largest text height of the line lessons, px "
                                                          "(the test pages' print is 12-18 px high); the validation "
                                                          "lines keep the default. At 12-24 px (run 29) the lines stage "
                                                          "never learned to read (validation lines 87 %, test pages "
                                                          "47 %).")
    workers: int = Field(8, ge=0, le=256, description="Data loader processes (training.dataloader_workers).")
    render_processes: int = Field(8, ge=1, le=256, description="Processes rendering the lessons.")
    time_budget: float | None = Field(
        None, gt=0, le=10**7, description="Seconds the whole bench may take. The last stage's steps are cut to what "
                                          "fits in what is left, less --time-reserve (training.max_train_seconds): a "
                                          "slower machine trains fewer page steps but still saves and reads its reader. "
                                          "None: every step of --steps.")
    time_reserve: float = Field(
        45.0, ge=0, le=10**6, description="Seconds kept back from --time-budget for what the last stage does around its "
                                          "training steps: checking its lessons, the final validation, saving and "
                                          "the held-out reads (17 s on an H200 in run 22).")
    group_by_length: bool = Field(
        False, description="Batch the page lessons of about the same token length together (training.group_by_length): "
                           "26 % faster pages steps on an H200, but the reader learned less from them: run 26 read its "
                           "test pages at 12.1 %, against 4.4 % in run 27 with random batches. The other stages stay "
                           "random (with all four grouped, run 25, the glyph stage never left its plateau).")
    profile_steps: int = Field(
        0, ge=0, le=100, description="Steps from the middle of the last stage to profile (training.profile_steps): the "
                                     "share of their time the GPU was busy, kernels per step and the costliest "
                                     "operations, in that stage's profile. Summarizing them takes seconds of the run.")
    save_model: Path | None = Field(None, description="Also copy the final reader here, weights in bfloat16.")
    work: Path = Field(Path("/tmp/ocrloop-pretrain"), description="Scratch folder for lessons, checkpoint and runs.")
    add_tesseract: bool = Field(False, description="Only score Tesseract into an existing --out (made where Tesseract "
                                                   "was missing).")

    @property
    def reads_unseen_layout(self) -> bool:
        """Whether the reader also reads bench photo-loop's held-out documents, in a layout no lesson uses: with
        photographed lessons, or lessons of other layouts or labels, that is what they are for."""
        return bool(self.photos or self.random_layouts or self.random_labels)

    @model_validator(mode="after")
    def _photo_layouts_unseen(self) -> "BenchPretrainSettings":
        held_out = BenchPhotoLoopSettings.model_fields["heldout_templates"].default
        shared = sorted(set(self.templates) & set(held_out))
        if self.reads_unseen_layout and shared:
            raise ValueError(f"--templates {shared}: --photos, --random-layouts and --random-labels read bench "
                             f"photo-loop's held-out documents, drawn in layouts {held_out} that no lesson may use")
        return self

    @field_validator("steps")
    @classmethod
    def _only_blocks_skipped(cls, steps: list[int]) -> list[int]:
        # Without glyph and line steps the reader never looks at the image (runs 3 and 9b read blind); the pages
        # stage is the reader itself.
        if 0 in (steps[0], steps[1], steps[3]):
            raise ValueError("only the blocks stage (the third) may have 0 steps")
        return steps

    @model_validator(mode="after")
    def _line_sizes_ordered(self) -> "BenchPretrainSettings":
        if self.line_sizes[0] > self.line_sizes[1]:
            raise ValueError(f"--line-sizes {self.line_sizes[0]},{self.line_sizes[1]}: the smallest comes first")
        return self


class BenchPhotoLoopSettings(_Bench):
    out: Path = Field(description="JSON file to write (the plot goes beside it as .png).")
    reader: str | None = Field(None, description="The model to start from: a folder (e.g. bench pretrain --save-model's) "
                                                 "or a preset. Required, except with --add-tesseract.")
    business: Business = Field("ecommerce", description="The one business whose documents are photographed.")
    categories: list[Category] = Field(["receipt", "invoice"], description="Document categories.")
    documents: int = Field(500, ge=1, le=100_000, description="Labelled photographed documents in the workspace.")
    train_templates: list[Annotated[int, Field(ge=0, le=2)]] = Field(
        [0, 1], min_length=1, description="Layouts of the workspace's documents (data synth --templates).")
    heldout_templates: list[Annotated[int, Field(ge=0, le=2)]] = Field(
        [2], min_length=1, description="Layouts of the held-out photos: none of the training ones.")
    heldout: int = Field(64, ge=1, le=100_000, description="Held-out photographed documents (a seed never trained on).")
    scale: float = Field(1.0, gt=0, le=4, description="Page size (1.0: letter pages of 850x1100 px).")
    steps: int = Field(300, ge=1, le=10_000_000, description="Optimizer steps of the loop's training run.")
    batch_size: int = Field(16, ge=1, le=4096, description="Pages per step (no gradient accumulation).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate of the challenger.")
    lora_targets: list[LoraTarget] = Field(
        ["attention", "mlp", "vision"], min_length=1,
        description="Module groups the challenger's LoRA adapts. Photos differ from the reader's clean pages in what "
                    "the page looks like, so the vision tower adapts too (its features are then not cached).")
    evals: int = Field(4, ge=1, le=1000, description="Validation reads during the challenger's training (the "
                                                     "workspace's default, one per epoch, would read every 17 steps "
                                                     "for 270 training photos in steps of 16).")
    render_processes: int = Field(8, ge=1, le=256, description="Processes rendering the workspace's photos (the same "
                                                               "number gives the same photos; the held-out photos are "
                                                               "always rendered by 8, so every run reads the same).")
    workers: int = Field(8, ge=0, le=256, description="Data loader processes of the challenger's training "
                                                      "(training.dataloader_workers): photos are large JPEGs to decode.")
    min_test_pages: int = Field(10, ge=1, le=10**6, description="loop.min_test_pages of the workspace.")
    read_batch_size: int = Field(32, ge=1, le=4096, description="Pages per generation when reading held-out photos.")
    resolution: Resolution | None = Field(None, description="Resolution to train and read at; unset: the reader's own.")
    max_new_tokens: int | None = Field(None, ge=1, le=32_768, description="Longest reading; unset: the reader's own.")
    backend: Literal["auto", "unsloth", "hf"] = Field("auto", description="training.backend of the workspace.")
    work: Path = Field(Path("/tmp/ocrloop-photo-loop"), description="Scratch folder for the workspace and held-out photos.")
    add_tesseract: bool = Field(False, description="Only score Tesseract into an existing --out (made where Tesseract "
                                                   "was missing): the held-out photos are rendered again from its workload.")

    @model_validator(mode="after")
    def _reader_given_and_heldout_layouts_unseen(self) -> "BenchPhotoLoopSettings":
        if self.reader is None and not self.add_tesseract:
            raise ValueError("--reader is required: the model the loop starts from")
        shared = sorted(set(self.train_templates) & set(self.heldout_templates))
        if shared:
            raise ValueError(f"templates {shared} are both trained on and held out; held-out layouts must be unseen")
        return self
