"""The models a running service answers with, swapped when the registry names a new champion.

Each business key maps to a loaded ``OCRAgent``; businesses served by the same model share it. A
watcher thread looks at the registry every ``champion_check_seconds``; when a champion changes it
loads the new model first and only then swaps the mapping, so requests never wait for a load
and pages already queued finish on the model they were accepted with.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from ocrloop.agent import OCRAgent
from ocrloop.config import OcrloopConfig
from ocrloop.errors import OcrloopError
from ocrloop.registry.champions import serving_model
from ocrloop.models import load_model, read_model_card
from ocrloop.models.base import ModelError, OCRModel
from ocrloop.models.loading import attach_adapter
from ocrloop.registry.store import GENERAL, Registry

log = logging.getLogger("ocrloop.serve")
NAMED_KEPT = 2  # model versions asked for by name (challengers) kept loaded beside the champions


class UnknownModelVersion(OcrloopError):
    """A model version asked for by name that the registry does not have."""


class ChampionModels:
    """Loaded champions by business key (``GENERAL`` for requests that name none)."""

    def __init__(self, config: OcrloopConfig, on_swap: Callable[[str, str, str], None] | None = None):
        self.config = config
        self.on_swap = on_swap  # called with (business key, old model, new model)
        self._serving: dict[str, OCRAgent] = {}
        self._named: dict[str, OCRAgent] = {}
        self._lock = threading.Lock()
        self._adapters = 0  # adapters attached to a shared base model so far (each gets a new name)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _resolve(self, key: str):
        with Registry(self.config.registry_location) as registry:
            return serving_model(registry, self.config.base_model, None if key == GENERAL else key)

    def _load(self, name: str, path: str) -> OCRAgent:
        loaded = [*self._serving.values(), *self._named.values()]
        for agent in loaded:
            if agent.model_name == name:
                return agent
        card = (read_model_card(Path(path)) if Path(path).is_dir() else None) or {}
        if card.get("kind") == "adapter":
            # A LoRA adapter of a base model already in memory joins it there instead of loading another copy
            # (plain peft models only: adding adapters to Unsloth's patched ones is untested).
            for agent in loaded:
                bundle = getattr(agent, "bundle", None)
                if (isinstance(bundle, OCRModel) and bundle.adapter and bundle.backend == "hf"
                        and bundle.extras.get("base_model") == card["base_model"]):
                    log.info("loading %s from %s beside %s, on the same base model", name, path, agent.model_name)
                    self._adapters += 1
                    return self._agent(attach_adapter(bundle, Path(path), card, f"adapter_{self._adapters}"), name)
        log.info("loading %s from %s", name, path)
        return self._agent(load_model(path, backend=self.config.training.backend), name)

    def _agent(self, bundle: OCRModel, name: str) -> OCRAgent:
        if self.config.serve.fast_decode:
            try:
                bundle.enable_fast_decode()
            except ModelError as error:  # the service keeps serving, with the dynamic cache
                log.warning("%s reads with the dynamic cache: %s", name, error)
        return OCRAgent(bundle, name, self.config)

    def agent(self, business: str | None) -> OCRAgent:
        """The model serving ``business`` now (loaded on the first request for that business)."""
        key = business or GENERAL
        agent = self._serving.get(key)
        if agent is None:
            with self._lock:
                agent = self._serving.get(key)
                if agent is None:
                    champion = self._resolve(key)
                    agent = self._serving[key] = self._load(champion.name, champion.path)
        return agent

    def named(self, name: str) -> OCRAgent:
        """A registered model version by name (a challenger to compare with the champion); the last
        ``NAMED_KEPT`` asked for stay loaded. ``OcrloopError`` when the registry has no such model."""
        with self._lock:
            agent = self._named.pop(name, None)
            if agent is None:
                with Registry(self.config.registry_location) as registry:
                    row = registry.model(name)
                if row is None:
                    raise UnknownModelVersion(f"no model version named {name!r}; see GET /v1/models")
                agent = self._load(name, row["path"])
            self._named[name] = agent  # most recently used last
            while len(self._named) > NAMED_KEPT:
                self._named.pop(next(iter(self._named)))
        return agent

    def serving(self) -> dict[str, str]:
        """Business key -> name of the model answering it."""
        return {key: agent.model_name for key, agent in sorted(self._serving.items())}

    def check(self) -> None:
        """Swap in any champion promoted since the last check (loaded before it is swapped in)."""
        for key in list(self._serving):
            champion = self._resolve(key)
            current = self._serving[key]
            if champion.name == current.model_name:
                continue
            with self._lock:
                replacement = self._load(champion.name, champion.path)
                self._serving[key] = replacement
            log.info("%s now served by %s (was %s)", key, champion.name, current.model_name)
            if self.on_swap:
                self.on_swap(key, current.model_name, champion.name)

    def start_watching(self, interval_seconds: float) -> None:
        def watch() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.check()
                except Exception as error:  # noqa: BLE001 - keep serving the current champion
                    log.warning("champion check failed, still serving the current models: %s", error)

        self._watcher = threading.Thread(target=watch, name="ocrloop-champions", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher:
            self._watcher.join(timeout=5)
