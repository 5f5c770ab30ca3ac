"""The run registry: datasets, runs, models, evaluations and promotions, in one SQLite file or a shared PostgreSQL database."""

from ocrloop.registry.store import Registry

__all__ = ["Registry"]
