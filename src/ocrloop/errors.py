"""Errors that mean "the user gave us something wrong", as opposed to bugs.

The CLI prints an ``OcrloopError`` as one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class OcrloopError(Exception):
    """A problem the user can fix: bad input, missing file, invalid configuration."""


class ConfigError(OcrloopError):
    """The configuration file or a flag has an invalid value."""


class DatasetError(OcrloopError):
    """The dataset cannot be read or does not pass validation."""


class RegistryError(OcrloopError):
    """The registry database is missing, locked for too long, or inconsistent."""
