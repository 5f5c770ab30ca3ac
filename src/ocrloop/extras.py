"""The optional extras of ``pyproject.toml`` and the one-line error when a setting needs one that is missing."""

from __future__ import annotations

import importlib.util

from ocrloop.errors import OcrloopError

GPU_EXTRA = ("unsloth", "unsloth-zoo", "trl", "bitsandbytes")  # pyproject.toml's [gpu] extra
TRACKING_EXTRA = ("tensorboard", "mlflow-skinny", "wandb")  # pyproject.toml's [tracking] extra
TRACKING_MODULES = {"tensorboard": "tensorboard", "mlflow-skinny": "mlflow", "wandb": "wandb", "mlflow": "mlflow"}


def require_tracking(report_to: str) -> None:
    """One error line when ``training.report_to`` names a logger that is not installed."""
    if report_to != "none" and importlib.util.find_spec(TRACKING_MODULES[report_to]) is None:
        raise OcrloopError(f"training.report_to = {report_to} needs the {report_to} package: "
                           "pip install 'ocrloop[tracking]', or set training.report_to none")
