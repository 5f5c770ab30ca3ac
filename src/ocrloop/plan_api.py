"""The plan's Python API, for code written against its sketch: thin wrappers over ocrloop.

``DeepSeekOCRFineTuner`` trains through ``ocrloop.train.finetune``, ``OCRFineTuneLoop`` runs
``ocrloop.loop.recipe.FineTuneLoop`` and ``OCRAgent`` is ``ocrloop.agent.OCRAgent``. Names and
defaults follow the plan; what it left implicit (where the registry lives, which backend) comes
from the workspace's ``ocrloop.yaml``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ocrloop.agent import OCRAgent
from ocrloop.config import CONFIG_FILENAME, OcrloopConfig, apply_overrides, load_config
from ocrloop.data.dataset import Dataset
from ocrloop.errors import DatasetError
from ocrloop.loop.recipe import FineTuneLoop, LoopResult
from ocrloop.registry import Registry
from ocrloop.train.finetune import train
from ocrloop.workspace import Workspace

__all__ = ["DeepSeekOCRFineTuner", "OCRFineTuneLoop", "OCRAgent"]


class DeepSeekOCRFineTuner:
    """Fine-tune an OCR model (the plan's ``DeepSeekOCRFineTuner``)."""

    def __init__(self, model_name: str = "unsloth/DeepSeek-OCR", max_seq_length: int = 8192, load_in_4bit: bool = True,
                 *, workspace: str | Path = "."):
        workspace = Path(workspace)
        base = load_config(workspace) if (workspace / CONFIG_FILENAME).is_file() else OcrloopConfig().resolve(workspace.resolve())
        self.config = apply_overrides(base, {"base_model": model_name, "training.max_seq_length": max_seq_length,
                                             "training.mode": "qlora4" if load_in_4bit else "lora16"})

    def prepare_dataset(self, image_dir: str | Path, annotation_file: str | Path | None = None) -> Dataset:
        """Open and validate the dataset at ``image_dir``; its annotation file must live there."""
        root = Path(image_dir)
        if annotation_file is not None and Path(annotation_file).resolve().parent != root.resolve():
            raise DatasetError(f"{annotation_file}: the annotation file must be in the dataset folder {root}")
        dataset = Dataset.open(root, self.config.data)
        if dataset.errors:
            raise DatasetError(f"{root}: {len(dataset.errors)} validation error(s), first: {dataset.errors[0]}")
        return dataset

    def train(self, dataset: Dataset, output_dir: str = "models/deepseek-ocr-finetuned", num_train_epochs: float = 3,
              batch_size: int = 8, learning_rate: float = 2e-4, **training: object) -> str:
        """Train on ``dataset``; save the model in ``output_dir``; return ``output_dir``. Extra keywords are
        ``training`` fields of ``ocrloop.yaml`` (e.g. ``max_steps=20``)."""
        overrides = {"dataset_dir": dataset.root, "training.epochs": num_train_epochs, "training.batch_size": batch_size,
                     "training.learning_rate": learning_rate, **{f"training.{k}": v for k, v in training.items()}}
        config = apply_overrides(self.config, overrides)
        with Registry(config.registry_location) as registry:
            train(config, Path(output_dir), registry=registry)
        return output_dir


class OCRFineTuneLoop:
    """The plan's repeatable loop over a workspace (its ``base_dir`` is the dataset folder)."""

    def __init__(self, base_dir: str | Path | None = None, *, workspace: str | Path = "."):
        self.workspace = Workspace.load(workspace)
        if base_dir is not None:
            self.workspace.config = apply_overrides(self.workspace.config, {"dataset_dir": Path(base_dir).resolve()})
        self.base_dir = self.workspace.config.dataset_dir

    def analyze_document_mix(self) -> dict[str, int]:
        """Documents per category, over all splits."""
        counts = Counter(record.category for record in Dataset.open(self.base_dir, self.workspace.config.data).records)
        return dict(sorted(counts.items()))

    def should_retrain(self, threshold: int | None = None) -> bool:
        """Whether any trigger fires now (``threshold`` overrides ``loop.new_documents_threshold``)."""
        return bool(self._loop(threshold=threshold, dry_run=True).run().triggers)

    def train_new_version(self) -> LoopResult:
        """Train and judge a challenger now, whatever the triggers say."""
        return self._loop(force=True).run()

    def run(self) -> LoopResult:
        """One loop pass: retrain only if a trigger fires; promote only a winner."""
        return self._loop().run()

    def _loop(self, threshold: int | None = None, **options: bool) -> FineTuneLoop:
        workspace = self.workspace
        if threshold is not None:
            workspace = Workspace(workspace.root, apply_overrides(workspace.config, {"loop.new_documents_threshold": threshold}))
        return FineTuneLoop(workspace, **options)
