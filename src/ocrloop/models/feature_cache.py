"""Image features computed once per page and reused every epoch.

When the vision tower and projector are frozen, a page's projected image features are the same at
every step, so they are computed once, without autograd and eagerly (a few pages per tower pass, the
tower's attention a few views at a time: ``OCRFamily.bounded_vision_memory``), while the examples are checked before training. The model's
``get_image_features`` is then answered from the cache for the pages of each batch
(``FeatureCache.serving``; ``FeatureCache.reading`` when generating text), and the training batch carries a 1-value placeholder instead of pixels,
so neither the vision tower nor the image processor runs again.

A page's key is the hash of its image content and page number, the model family, the resolution
mode, how pages are rasterized (PDF dpi) and the image processor's settings, and a fingerprint of
the vision weights: a cache made for anything else is never used. Features stay on the device up
to a byte budget; every entry is also written to ``<run>/feature_cache/<key>.safetensors``
(atomically, with a checksum), read back memory-mapped beyond the budget, ahead of the step that
needs it, and reused on resume and by ``ocrloop eval`` on the same pages. A file that is truncated
or fails its checksum is recomputed with a warning, never read as features. While training steps
run, the tower itself can be parked on the CPU (``offload_vision``); it comes back whenever
features must be computed or text generated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ocrloop.data.records import PageExample
from ocrloop.models.base import EncodedExample, OCRModel, collate, to_device, wrap_image_features

log = logging.getLogger("ocrloop.train")

FOLDER = "feature_cache"


def image_feature_owner(bundle: OCRModel) -> Any | None:
    """The innermost module whose ``get_image_features`` the model's forward calls, or None."""
    owners = [m for m in bundle.model.modules() if callable(getattr(type(m), "get_image_features", None))]
    return owners[-1] if owners else None


def vision_fingerprint(bundle: OCRModel) -> str:
    """A hash of every vision tower and projector weight (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    markers = bundle.family.vision_parameter_markers
    for name, tensor in sorted(bundle.model.state_dict().items()):
        if any(marker in name for marker in markers) and "lora_" not in name:
            cpu = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(cpu.shape)}:{cpu.dtype}".encode())
            digest.update(cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return digest.hexdigest()


def _checksum(tensor: torch.Tensor) -> str:
    return hashlib.blake2b(tensor.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()


class _Features:
    """The object ``get_image_features`` returns; the models' forward reads only ``pooler_output``."""

    def __init__(self, per_page: list[torch.Tensor]):
        self.pooler_output = per_page


@dataclass
class CacheStats:
    entries: int = 0
    computed: int = 0
    loaded_from_disk: int = 0
    recomputed_corrupt: int = 0
    hits: int = 0
    device_bytes: int = 0
    disk_bytes: int = 0
    compute_seconds: float = 0.0
    bytes_per_page: int = 0
    batch_seconds: list[float] = field(default_factory=list)


class FeatureCache:
    """Per-page image features of one model at one resolution mode, on the device and on disk."""

    def __init__(self, bundle: OCRModel, folder: Path, resolution: str, *, device_budget_bytes: int,
                 page_settings: str = "", warn: Callable[[str], None] | None = None, pages_per_forward: int = 1):
        self.bundle, self.folder, self.resolution = bundle, Path(folder), resolution
        # Few pages per tower pass: its activations grow with them, even with the family's attention bounded
        # (DeepSeek-OCR-2 on an H100: 8 gundam pages 2.5 GiB, 13.5 GiB unbounded; training.feature_pages_per_forward).
        self.pages_per_forward = pages_per_forward
        self.device_budget_bytes = device_budget_bytes
        self.warn = warn or log.warning
        self.owner = image_feature_owner(bundle)
        if self.owner is None:
            raise ValueError(f"{bundle.family.name} computes image features inside its forward")
        settings = bundle.image_processor.to_json_string() if hasattr(bundle.image_processor, "to_json_string") else repr(bundle.image_processor)
        self.fingerprint = hashlib.blake2b(
            f"{bundle.family.name}|{resolution}|{page_settings}|{settings}|{vision_fingerprint(bundle)}".encode(), digest_size=16
        ).hexdigest()
        self.templates: dict[str, EncodedExample] = {}
        self.stats = CacheStats()
        self._on_device: dict[str, torch.Tensor] = {}
        self._on_disk: set[str] = set()
        self._prefetched: dict[str, Future] = {}
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ocrloop-features")
        # Entries are checksummed and written by another thread while the GPU computes the next batch.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ocrloop-feature-writer")
        self._pending_writes: dict[str, Future] = {}
        self._offloaded: list[torch.nn.Module] = []  # vision modules parked on the CPU (offload_vision)
        self._active: list[str] | None = None
        def answer_from_cache(compute):
            self._compute = compute  # the tower's own (or the no-autograd wrapper): for pages not cached

            def answer(*args, **kwargs):  # a plain function: deep copies of the model (merging) stay copyable
                return self._answer(*args, **kwargs)

            # Kept out of torch.compile's graphs: traced, the hit counter became a guard, so a compiled forward
            # was compiled again at every step until dynamo gave up and ran the rest of the model eagerly.
            return torch.compiler.disable(answer)

        self._restore_image_features = wrap_image_features(self.owner, answer_from_cache)
        self._closed = False
        self.folder.mkdir(parents=True, exist_ok=True)

    # --- keys and lookups -------------------------------------------------------------------------

    def key(self, example: PageExample) -> str:
        return hashlib.blake2b(f"{example.example_id}|{self.fingerprint}".encode(), digest_size=20).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def holds(self, keys: list[str]) -> bool:
        """Whether every key has features; entries on disk not seen yet (a saved run's) are read and checked."""
        return all(self._present(key) for key in keys)

    def _present(self, key: str) -> bool:
        """Whether ``key`` has features, reading (and checking) its file if it was not seen yet."""
        if key in self._on_device or key in self._on_disk:
            return True
        features = self._read(key)
        if features is None:
            return False
        self.stats.loaded_from_disk += 1
        self._keep(key, features)
        return True

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def reading(self, keys: list[str] | None) -> Iterator[None]:
        """For generating text: the whole model on its device (``generate`` places its tensors by the first
        parameter's device), and the features of ``keys`` from the cache."""
        self.restore_vision()
        with self.serving(keys):
            yield

    @contextmanager
    def serving(self, keys: list[str] | None) -> Iterator[None]:
        """While inside, ``get_image_features`` answers with the cached features of ``keys`` (in order);
        if any key is missing, the vision tower computes them all as usual."""
        self._active = keys if keys and self.holds(keys) else None
        try:
            yield
        finally:
            self._active = None

    def _answer(self, *args, **kwargs):
        keys = self._active
        if keys is None:
            self.restore_vision()
            return self._compute(*args, **kwargs)
        self.stats.hits += len(keys)
        device = self.bundle.device
        return _Features([self._on_device[k] if k in self._on_device else self._from_disk(k).to(device, non_blocking=True)
                          for k in keys])

    # --- disk -------------------------------------------------------------------------------------

    def _read(self, key: str) -> torch.Tensor | None:
        """The entry's features, or None if the file is missing, truncated or fails its checksum."""
        pending = self._pending_writes.pop(key, None)
        if pending is not None:
            pending.result()
        path = self._path(key)
        try:
            with safe_open(str(path), framework="pt") as handle:
                expected = (handle.metadata() or {}).get("checksum")
                features = handle.get_tensor("features")
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
            self._corrupt(path, f"unreadable ({str(error).splitlines()[0][:80]})")
            return None
        if expected != _checksum(features):
            self._corrupt(path, "checksum mismatch")
            return None
        return features

    def _corrupt(self, path: Path, why: str) -> None:
        if not path.exists():
            return
        message = f"feature cache entry {path.name} is {why}: recomputing it"
        self.warn(message)
        self.stats.recomputed_corrupt += 1
        path.unlink(missing_ok=True)

    def _write(self, key: str, cpu: torch.Tensor) -> None:
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": cpu}, str(temporary), metadata={"checksum": _checksum(cpu)})
        os.replace(temporary, path)  # a run killed mid-write leaves no entry, only a temp file
        self.stats.disk_bytes += path.stat().st_size

    def prefetch(self, keys: list[str]) -> None:
        """Start reading the disk-only entries of an upcoming batch."""
        for key in keys:
            if key not in self._on_device and key not in self._prefetched:
                self._prefetched[key] = self._reader.submit(self._read_pinned, key)

    def _read_pinned(self, key: str) -> torch.Tensor:
        features = self._read(key)
        if features is None:
            raise RuntimeError(f"feature cache entry {key} vanished or was damaged during training; rerun to recompute it")
        return features.pin_memory() if torch.cuda.is_available() else features

    def _from_disk(self, key: str) -> torch.Tensor:
        future = self._prefetched.pop(key, None) or self._reader.submit(self._read_pinned, key)
        return future.result()

    # --- filling ----------------------------------------------------------------------------------

    def _keep(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        self.stats.bytes_per_page = self.stats.bytes_per_page or size
        if self.stats.device_bytes + size <= self.device_budget_bytes:
            # A copy, not a view: a memory-mapped read must not tie the entry to its file.
            self._on_device[key] = features.to(self.bundle.device, copy=True)
            self.stats.device_bytes += size
        self._on_disk.add(key)
        self.stats.entries += 1

    def add(self, key: str, encoded: EncodedExample) -> bool:
        """Record ``encoded``'s token layout for ``key``; True if its features must still be computed."""
        self.templates[key] = replace(encoded, vision=_without_pixels(encoded.vision, self.bundle.family.pixel_keys),
                                      feature_key=key)
        return not self._present(key)

    @torch.no_grad()
    def compute(self, pending: list[tuple[str, EncodedExample]]) -> None:
        """Compute the features of ``pending`` pages, ``pages_per_forward`` at a time; keep and persist them."""
        if not pending:
            return
        started = time.perf_counter()
        b = self.bundle
        # The model's current mode (the frozen towers have no dropout, so these are the features a
        # training step would compute), run eagerly: compiling the tower (Unsloth compiles every
        # decoder block) costs tens of seconds and never pays back on one pass over the pages.
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if b.device.type == "cuda" and b.dtype == torch.bfloat16 \
            else torch.autocast("cpu", enabled=False)
        self.restore_vision()
        with autocast, torch.compiler.set_stance("force_eager"), b.family.bounded_vision_memory(b.model):
            for start in range(0, len(pending), self.pages_per_forward):
                chunk = pending[start:start + self.pages_per_forward]
                # Pixels go to the device as they are; joining and casting them there is much faster than on the CPU.
                examples = [replace(e, vision=to_device(e.vision, b.device)) for _, e in chunk]
                batch = to_device(collate(examples, b.tokenizer.pad_token_id, family=b.family, tokenizer=b.tokenizer,
                                          dtype=b.dtype), b.device)
                inputs = {k: batch[k] for k in b.family.feature_input_keys if k in batch}
                per_page = self._compute(**inputs, return_dict=True).pooler_output
                for (key, _), features in zip(chunk, per_page):
                    features = features.detach()
                    self._pending_writes[key] = self._writer.submit(self._write, key, features.to("cpu").contiguous())
                    self._keep(key, features)
        self.stats.computed += len(pending)
        if b.device.type == "cuda":
            torch.cuda.synchronize()
        self.stats.compute_seconds += time.perf_counter() - started
        self.stats.batch_seconds.append(round(time.perf_counter() - started, 4))

    def offload_vision(self) -> int:
        """Park the vision tower and projector on the CPU while training steps are answered from the cache;
        returns the bytes of device memory freed (0 when already parked, off CUDA, for quantized towers or
        for an unknown layout). They move back by themselves when features must be computed again, and
        ``restore_vision`` brings them back for generation."""
        if self.bundle.device.type != "cuda" or self._offloaded:
            return 0
        children = dict(self.owner.named_children())
        if "language_model" not in children:
            return 0
        modules = [m for name, m in children.items() if name != "language_model"]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        if any(not t.is_floating_point() for t in tensors):  # 4/8-bit weights do not survive a round trip
            return 0
        for module in modules:
            module.to("cpu")
        self._offloaded = modules
        torch.cuda.empty_cache()
        return sum(t.numel() * t.element_size() for t in tensors)

    def restore_vision(self) -> None:
        """Bring a parked vision tower back to the device (generation needs the whole model there)."""
        for module in self._offloaded:
            module.to(self.bundle.device)
        self._offloaded = []

    def flush(self) -> None:
        """Wait until every computed entry is on disk; a failed write raises here."""
        pending, self._pending_writes = self._pending_writes, {}
        for future in pending.values():
            future.result()

    def template(self, key: str) -> EncodedExample | None:
        return self.templates.get(key)

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"enabled": True, "entries": s.entries, "computed": s.computed, "loaded_from_disk": s.loaded_from_disk,
                "recomputed_corrupt": s.recomputed_corrupt, "hits": s.hits, "bytes_per_page": s.bytes_per_page,
                "device_bytes": s.device_bytes, "disk_bytes": s.disk_bytes, "on_device": len(self._on_device),
                "compute_seconds": s.compute_seconds, "compute_batch_seconds": s.batch_seconds, "folder": str(self.folder)}

    def close(self) -> None:
        """Finish writing, bring the vision tower back, give ``get_image_features`` back and free the device copies."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self.restore_vision()
        self._writer.shutdown(wait=True)
        self._restore_image_features()
        self._on_device.clear()
        self._reader.shutdown(wait=True)


def _without_pixels(vision: dict[str, torch.Tensor], pixel_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    # The forward only checks that pixels are present; one value per page stands in for them.
    kept = {k: v for k, v in vision.items() if k not in pixel_keys}
    kept["pixel_values"] = torch.zeros(1, 1)
    return kept


def open_saved_cache(bundle: OCRModel, model_dir: Path, resolution: str, *, pdf_dpi: int,
                     device_budget_bytes: int = 2 * 2**30) -> FeatureCache | None:
    """The feature cache a training run left in ``model_dir`` (for reading its pages again), if any; close it
    (or use it as a context) when done. Keys carry the vision weights' fingerprint, so a cache made by other
    weights or settings simply misses."""
    folder = Path(model_dir) / FOLDER
    if not folder.is_dir() or image_feature_owner(bundle) is None:
        return None
    return FeatureCache(bundle, folder, resolution, device_budget_bytes=device_budget_bytes, page_settings=f"pdf_dpi={pdf_dpi}")
