"""An ocrloop workspace: the plan's folder layout, ``ocrloop.yaml`` and the registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocrloop.atomic import atomic_write_json
from ocrloop.config import CONFIG_FILENAME, SPLITS, OcrloopConfig, load_config, save_config
from ocrloop.data.formats import ANNOTATIONS_JSON, find_annotation_files, read_records
from ocrloop.registry import Registry


@dataclass
class Workspace:
    """A workspace folder and its resolved configuration."""

    root: Path
    config: OcrloopConfig

    @classmethod
    def load(cls, root: str | Path) -> "Workspace":
        """Open the workspace at ``root``; raises ``ConfigError`` if it has no valid ``ocrloop.yaml``."""
        root = Path(root).resolve()
        return cls(root, load_config(root / CONFIG_FILENAME))

    def registry(self) -> Registry:
        return Registry(self.config.registry_location)


def known_businesses(config: OcrloopConfig) -> set[str]:
    """Every business the workspace knows: named in its dataset's annotations, or seen by its registry."""
    from ocrloop.registry.champions import registered_businesses

    with Registry(config.registry_location) as registry:
        known = registered_businesses(registry)
    if config.dataset_dir.is_dir():
        known |= {record.business for record in read_records(config.dataset_dir)[0]}
    return known


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def init_workspace(root: str | Path, config: OcrloopConfig | None = None) -> tuple[Workspace, list[str]]:
    """Create the plan's layout under ``root``; keep whatever already exists. Returns what was created."""
    root = Path(root).resolve()
    created: list[str] = []
    config_path = root / CONFIG_FILENAME
    if config_path.exists():
        resolved = load_config(config_path)
    else:
        root.mkdir(parents=True, exist_ok=True)
        save_config(config or OcrloopConfig(), config_path)
        created.append(CONFIG_FILENAME)
        resolved = load_config(config_path)
    dataset = resolved.dataset_dir
    for split in SPLITS:
        folder = dataset / split
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(_shown(folder, root) + "/")
    if not find_annotation_files(dataset):
        atomic_write_json(dataset / ANNOTATIONS_JSON, [])
        created.append(_shown(dataset / ANNOTATIONS_JSON, root))
    if not resolved.models_dir.exists():
        resolved.models_dir.mkdir(parents=True)
        created.append(_shown(resolved.models_dir, root) + "/")
    if resolved.registry_url:
        Registry(resolved.registry_url).close()  # its tables, if the database has none yet
    elif not resolved.registry_path.exists():
        Registry(resolved.registry_path).close()
        created.append(_shown(resolved.registry_path, root))
    return Workspace(root, resolved), created
