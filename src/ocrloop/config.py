"""The one validated configuration of an ocrloop workspace (``ocrloop.yaml``).

All defaults live here. Every CLI flag maps to a field of these models; a flag overrides
the value read from the YAML file, which overrides the default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ocrloop.atomic import atomic_write_text
from ocrloop.errors import ConfigError

CONFIG_FILENAME = "ocrloop.yaml"

SPLITS = ("train", "val", "test")
DOCUMENT_CATEGORIES = ("receipt", "invoice", "contract", "tax_form")
BUSINESS_TYPES = ("ecommerce", "content", "saas", "legal", "accounting")
# The one vocabulary of reading modes and prompts; models/base.py gives each its size and its text.
Resolution = Literal["tiny", "small", "base", "large", "gundam"]
Prompt = Literal["markdown", "ocr", "free", "figure", "describe", "locate"]
LoraTarget = Literal["attention", "mlp", "experts", "vision"]
PiiPolicy = Literal["allow", "redact", "reject"]


class _Section(BaseModel):
    # A typo in ocrloop.yaml must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """How documents are read."""

    pdf_dpi: int = Field(144, ge=36, le=600, description="Resolution at which PDF pages are rasterized.")
    max_image_pixels: int = Field(
        40_000_000, ge=10_000, le=10**10, description="Images (or rasterized pages) above this many pixels are refused."
    )
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, le=2**40, description="Files larger than this are refused.")
    max_pdf_pages: int = Field(500, ge=1, le=100_000, description="PDFs with more pages are refused.")
    max_aspect_ratio: float = Field(
        100, ge=1, le=200, description="Pages longer than this many times their width (or wider) are refused: vision "
                                       "processors fail on them (Qwen2.5-VL above 200:1)."
    )
    min_page_side: int = Field(8, ge=1, le=1024, description="Pages with a side shorter than this (pixels) are refused.")
    val_fraction: float = Field(0.1, ge=0, le=0.5, description="Share of documents `data add` puts in val when no "
                                                               "--split is given (chosen by content hash).")
    test_fraction: float = Field(0.1, ge=0, le=0.5, description="Share of documents `data add` puts in test when no "
                                                                "--split is given (chosen by content hash).")


class TrainingConfig(_Section):
    """Training defaults: the plan's values."""

    epochs: float = Field(3, gt=0, le=10_000, description="Passes over the training split.")
    max_steps: int | None = Field(None, gt=0, le=10**9, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, le=4096, description="Training examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(2, ge=1, le=4096, description="Forward passes per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate (linear decay after warm-up).")
    warmup_steps: int = Field(10, ge=0, le=10**9, description="Optimizer steps of linear warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradients are clipped to this norm.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    mode: Literal["lora16", "qlora4", "lora8", "full"] = Field("lora16", description="What is trained, at what precision.")
    lora_rank: int = Field(16, ge=1, le=4096, description="LoRA rank r.")
    lora_alpha: int = Field(16, ge=1, le=65536, description="LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[LoraTarget] = Field(
        default_factory=lambda: ["attention"], description="Module groups that get LoRA adapters."
    )
    resolution: Resolution = Field(
        "base", description="Resolution mode pages are trained and read at (a model reads at its own by default).")
    prompt: Prompt = Field(
        "markdown", description="Prompt template pages are trained and read with (a model reads with its own by default).")
    save_steps: int = Field(50, ge=1, le=10**9, description="Write a resumable checkpoint every N optimizer steps.")
    logging_steps: int = Field(10, ge=1, le=10**9, description="Log the loss every N optimizer steps.")
    eval_steps: int | None = Field(None, ge=1, le=10**9, description="Validation CER every N steps (None: once per epoch).")
    stop_at_validation_cer: float | None = Field(
        None, ge=0, le=100, description="End training at the first validation (every eval_steps) whose CER is at most "
                                        "this, e.g. 0.02 (None: train every step).")
    group_by_length: bool = Field(
        False, description="Batch training pages of about the same token length together, in random groups of 50 "
                           "batches, the batches in random order: a batch pads less where pages differ in size (in "
                           "bench pretrain's page lessons, 42 % of a random batch of 64 was padding, 14 % sorted). "
                           "Batches of one kind of page can teach less per step: a reader trained from scratch on "
                           "grouped pages read its test pages three times worse (bench pretrain, run 26).")
    max_train_seconds: float | None = Field(
        None, gt=0, le=10**8, description="Wall-clock seconds the training steps may take, the validation reads between "
                                          "them included. Once a tenth of the steps have run, and every twentieth after, "
                                          "the steps left are cut to what fits at the speed so far, and the learning "
                                          "rate decays to zero at that new end (None: every planned step).")
    max_seq_length: int = Field(8192, ge=64, le=2**20, description="Longest example (image + prompt + answer tokens) allowed.")
    seed: int = Field(3407, ge=0, le=2**32 - 1, description="Seed of weights, data order and dropout.")
    backend: Literal["auto", "unsloth", "hf"] = Field("auto", description="auto: Unsloth on CUDA when installed, else hf.")
    gpus: int = Field(1, ge=1, le=1024, description="Processes to start through torchrun, one per GPU (train, loop run, "
                                                    "ocr); on a machine without CUDA, CPU processes.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    compile: bool = Field(
        False, description="Compile the training step: Unsloth's backend compiles its own modules (Unsloth's own "
                           "default), the hf backend runs the model through torch.compile (the Trainer's "
                           "torch_compile). Off: on an H100 Unsloth's cost 52 s in the first step of a machine's first "
                           "run (16 s once compiled before) and saved about 0.06 s a step, so only runs of more than "
                           "about 900 (270) steps earn it back (docs/performance-notes.md)."
    )
    cudnn_attention: bool = Field(
        False, description="Let PyTorch choose cuDNN's attention kernel. Off: flash or memory-efficient attention instead; "
                           "on an H100 cuDNN spent about 3 ms of CPU per attention call planning (more than its kernel "
                           "took) and seconds for each new sequence length (docs/performance-notes.md). Reads with a "
                           "dynamic cache never use it, whatever this says: every decoded token is a new length."
    )
    skip_frozen_vision_backward: bool = Field(
        True, description="Compute image features without autograd when no vision parameter is trained."
    )
    grouped_expert_lora: bool = Field(
        True, description="LoRA on fused MoE experts (lora_targets 'experts', hf backend) added beside the experts' "
                          "grouped GEMMs: the same values and the same saved adapter as peft's, without a copy of every "
                          "expert's weights a forward, and torch.compile traces it whole. Off: peft's parametrized "
                          "weights (models/expert_lora.py)."
    )
    dataloader_workers: int = Field(
        0, ge=0, le=256, description="Processes loading and preprocessing pages while the GPU trains (0: in the training process)."
    )
    profile_steps: int = Field(
        0, ge=0, le=1000, description="Steps from the middle of the run to profile: the share of their time the GPU was "
                                      "busy, kernels per step and the costliest operations go into the run card "
                                      "(speed.profile). The profiler slows those steps."
    )
    feature_cache: bool = Field(
        True, description="Compute each page's image features once and reuse them every epoch (when the vision tower is frozen)."
    )
    feature_pages_per_forward: int = Field(
        2, ge=1, le=1024, description="Pages per vision-tower pass when caching features. DeepSeek-OCR-2 at gundam on an H100 "
                             "(tower activations): 1 page 0.9 GiB and 0.10 s a page, 2 pages 1.0 GiB and 0.085 s, 4 pages "
                             "1.3 GiB and 0.07 s."
    )
    feature_cache_device_bytes: int = Field(
        4 * 2**30, ge=0, le=2**50, description="Cached features kept on the GPU; the rest are read from disk ahead of each step."
    )
    float32_weights: bool = Field(
        False, description="Keep the trained weights in float32 on the GPU (bf16 only inside the step). For full "
                           "fine-tuning from scratch: bf16 weights round small updates away.")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit"] = Field(
        "auto", description="auto: 8-bit AdamW on CUDA when bitsandbytes is installed, else AdamW. adamw_torch_fused: one "
                            "kernel for all parameters (CUDA), for full fine-tuning of small models."
    )
    merge: bool = Field(False, description="Also save LoRA merged into the base weights (re-evaluated after merging).")
    report_to: Literal["none", "tensorboard", "mlflow", "wandb"] = Field("none", description="Where training logs also go.")
    eval_max_pages: int = Field(32, ge=1, le=10**6, description="Validation pages read to compute CER during training.")
    max_new_tokens: int = Field(1024, ge=1, le=131_072, description="Generation limit per page when reading.")
    read_batch_size: int = Field(8, ge=1, le=4096, description="Pages per generation batch when reading (validation "
                                                               "during training, eval, the loop's test reads, "
                                                               "batch ocr).")
    skip_invalid: bool = Field(False, description="Train on the valid examples of a dataset that fails validation.")


class LoopConfig(_Section):
    """When the repeatable loop retrains, and when a challenger is promoted."""

    new_documents_threshold: int = Field(50, ge=1, le=10**9, description="Retrain when this many new documents arrived.")
    max_validation_cer: float | None = Field(None, gt=0, le=1, description="Retrain when the champion's validation CER exceeds this.")
    retrain_on_new_category: bool = Field(True, description="Retrain when a document category appears for the first time.")
    schedule: Literal["none", "monthly", "weekly"] = Field("monthly", description="Retrain at least this often.")
    drift_tolerance: float = Field(0.02, ge=0, le=1, description="Retrain when the champion's validation CER is this much worse than at promotion.")
    check_drift: bool = Field(True, description="Re-read the validation split with the champion to detect drift.")
    train_from: Literal["base", "champion"] = Field("base", description="Start each challenger from the base model or the champion.")
    promotion_margin: float = Field(0.0, ge=0, le=1, description="A challenger must beat the champion's test CER by at least this.")
    min_test_pages: int = Field(10, ge=1, le=10**6, description="The loop decides nothing on a test split with fewer "
                                                                 "pages: a champion/challenger verdict on a handful of "
                                                                 "pages is noise.")
    category_regression_tolerance: float = Field(0.01, ge=0, le=1, description="No category may get worse by more than this.")


class ServeConfig(_Section):
    """The OCR service (``ocrloop serve``) and what every OCR answer passes through."""

    host: str = Field("127.0.0.1", description="Address the service listens on.")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port (printed at start).")
    pii_policy: PiiPolicy = Field(
        "redact", description="What happens to OCR text with PII: kept, replaced by [KIND] placeholders, or refused."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, le=2**34, description="Larger uploads are answered 413.")
    max_pages: int = Field(20, ge=1, le=10_000, description="Documents with more pages are answered 413.")
    max_image_pixels: int = Field(25_000_000, ge=10_000, le=10**10, description="Pages with more pixels are answered 413.")
    max_concurrent_requests: int = Field(16, ge=1, le=100_000, description="Requests beyond this are answered 429.")
    max_batch_pages: int = Field(8, ge=1, le=1024, description="Pages of concurrent requests read in one GPU batch.")
    batch_wait_ms: float = Field(10, ge=0, le=60_000, description="How long the first page of a batch waits for others.")
    fast_decode: bool = Field(
        False, description="Decode with a static KV cache (CUDA graphs on a GPU), batches padded to a power of two "
                           "pages, prompts to multiples of 64 tokens, MoE experts read once a step (hf backend; the "
                           "first batch of each shape compiles).")
    continuous_batching: bool = Field(
        True, description="With fast_decode, a page joins the running decode at its next step and leaves it when it "
                          "finishes, instead of waiting for a whole batch (also ocrloop ocr --fast-decode).")
    champion_check_seconds: float = Field(2.0, gt=0, le=86_400, description="How often a promotion is looked for; the new champion is loaded, then swapped in.")


class OcrloopConfig(_Section):
    """Everything ocrloop needs to know about a workspace."""

    dataset_dir: Path = Field(Path("data/ocr_documents"), description="The dataset folder (annotations and split folders).")
    registry_path: Path = Field(Path("ocrloop.db"), description="The SQLite registry of runs, models and champions.")
    registry_url: str | None = Field(
        None, pattern=r"^postgres(ql)?://", max_length=2000,
        description="A PostgreSQL registry that several machines share (postgresql://user@host/db); used instead of "
                    "registry_path when set.")
    models_dir: Path = Field(Path("models"), description="Where the loop writes trained models.")
    base_model: str = Field(
        "deepseek-community/DeepSeek-OCR-2", min_length=1,
        description="Model to fine-tune: a local folder, a hub id, or a tiny preset (tiny-deepseek-ocr-2, tiny-qwen2.5-vl).",
    )
    gpu_price_per_hour_usd: float = Field(2.0, ge=0, le=10_000, description="Used to report the cost of each run.")
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _paths_are_distinct(self) -> "OcrloopConfig":
        if self.dataset_dir == self.models_dir:
            raise ValueError("dataset_dir and models_dir must be different folders")
        return self

    @property
    def registry_location(self) -> str | Path:
        """Where the registry is: ``registry_url`` when set, else the SQLite file ``registry_path``."""
        return self.registry_url or self.registry_path

    def resolve(self, root: Path) -> "OcrloopConfig":
        """Return a copy whose relative paths are anchored at ``root`` (the workspace)."""
        anchored = {
            name: (value if value.is_absolute() else (root / value))
            for name, value in (
                ("dataset_dir", self.dataset_dir),
                ("registry_path", self.registry_path),
                ("models_dir", self.models_dir),
            )
        }
        return self.model_copy(update=anchored)


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line naming the first offending field, e.g. ``ocrloop.yaml: training.epochs: ...``."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {location}: {first['msg']}{suffix}"


def config_from_dict(values: dict[str, Any], source: str = "configuration") -> OcrloopConfig:
    """Validate a plain dict into an ``OcrloopConfig``; raise ``ConfigError`` with one line."""
    try:
        return OcrloopConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _read_yaml(config_path: Path) -> Any:
    try:
        return yaml.load(config_path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError as error:
        raise ConfigError(f"{config_path}: not valid UTF-8 at byte {error.start}") from None
    except RecursionError:
        raise ConfigError(f"{config_path}: nested too deeply to be a configuration") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{config_path}:{where}: malformed YAML: {problem}") from None


def _config_path(path: str | Path) -> Path:
    config_path = Path(path)
    if config_path.is_dir() and config_path.name != CONFIG_FILENAME:
        config_path = config_path / CONFIG_FILENAME
    if config_path.exists() and not config_path.is_file():
        raise ConfigError(f"{config_path}: is not a file (a folder?); move it away and run `ocrloop init`")
    return config_path


def config_file(workspace: str | Path) -> Path | None:
    """The workspace's ``ocrloop.yaml``, None if it has none; ``ConfigError`` if that name is not a file."""
    path = _config_path(Path(workspace) / CONFIG_FILENAME)
    return path if path.is_file() else None


def load_config(path: str | Path) -> OcrloopConfig:
    """Read and validate ``ocrloop.yaml`` (or the one in folder ``path``); relative paths are resolved against its folder."""
    config_path = _config_path(path)
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: no such configuration file (run `ocrloop init` first)")
    raw = _read_yaml(config_path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping of settings, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(config_path)).resolve(config_path.parent.resolve())


def apply_overrides(config: OcrloopConfig, overrides: dict[str, Any]) -> OcrloopConfig:
    """Return ``config`` with dotted-key overrides (``{"training.epochs": 1}``) validated and applied.

    ``None`` values are ignored, so unset CLI flags keep the file's value.
    """
    merged = config.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(_unknown_setting(dotted))
        node[leaf] = value
    return config_from_dict(merged, source="command-line flags")


def set_config_value(path: str | Path, dotted: str, raw_value: str) -> OcrloopConfig:
    """Set one setting in ``ocrloop.yaml`` (``training.max_steps`` = ``"30"``), validated, written atomically.

    The value is read as YAML (``30`` is a number, ``[attention, mlp]`` a list, ``null`` unsets).
    Other settings, and relative paths, are written back as they were.
    """
    config_path = _config_path(path)
    load_config(config_path)  # the file must be valid before it is changed
    raw = _read_yaml(config_path) or {}
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        raise ConfigError(f"{dotted}: cannot read {raw_value!r} as a value") from None
    defaults = OcrloopConfig().model_dump(mode="json")
    node, known = raw, defaults
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(known, dict) or part not in known or not isinstance(known[part], dict):
            raise ConfigError(_unknown_setting(dotted))
        node, known = node.setdefault(part, {}), known[part]
    if leaf not in known:
        raise ConfigError(_unknown_setting(dotted))
    if isinstance(known[leaf], list) and isinstance(value, str):  # `attention,mlp`, as the flag takes it
        value = [part.strip() for part in value.split(",") if part.strip()]
    node[leaf] = value
    config = config_from_dict(raw, source=config_path.name)
    atomic_write_text(config_path, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return config


def setting_names() -> list[str]:
    """Every dotted setting name (``training.epochs``, ``base_model``, ...)."""
    names = []
    for name, field in OcrloopConfig.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        names += [f"{name}.{leaf}" for leaf in section.model_fields] if section else [name]
    return names


def _unknown_setting(dotted: str) -> str:
    names = setting_names()
    close = difflib.get_close_matches(dotted, names, n=1, cutoff=0.6) or \
        [n for n in names if n.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1]][:1]
    return f"unknown setting {dotted!r}" + (f"; did you mean {close[0]!r}?" if close else "; see `ocrloop config show`")


def dump_config(config: OcrloopConfig) -> str:
    """The YAML text of ``config`` (paths as strings), suitable for ``ocrloop.yaml`` and run cards."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(config: OcrloopConfig, path: str | Path) -> Path:
    """Write ``config`` atomically as YAML."""
    return atomic_write_text(path, dump_config(config))
