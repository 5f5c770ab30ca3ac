"""Command-line flags made from the configuration's pydantic fields: one source of truth per setting.

``@config_flags("training", exclude=...)`` adds a ``--flag`` to a typer command for every field of that
section of ``OcrloopConfig``: its help is the field's description, its choices the field's ``Literal``
values (listed in the help, checked by the model), a ``bool`` becomes ``--flag/--no-flag`` and a list of choices a comma-separated value. The command
receives the flags that were given as ``overrides`` (``{"training.epochs": 1.0}``), ready for
``apply_overrides``; flags left out are absent, so the workspace's value stands.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Literal, Optional, Union

import typer
from pydantic import BaseModel

from ocrloop.config import OcrloopConfig

_SEPARATOR = "__"  # between section and field in the generated parameter names: training__epochs


def section_model(section: str) -> type[BaseModel]:
    """The pydantic model of ``section`` ("training", "serve", ...), or ``OcrloopConfig`` itself for ""."""
    return OcrloopConfig.model_fields[section].annotation if section else OcrloopConfig


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _flag_names(field: str, section: str) -> str:
    name = field.replace("_", "-")
    is_bool = _unwrap_optional(section_model(section).model_fields[field].annotation) is bool
    return f"--{name}/--no-{name}" if is_bool else f"--{name}"


def _option(section: str, field: str, decls: tuple[str, ...]) -> tuple[Any, typer.models.OptionInfo]:
    """The Python type and typer option (named ``decls``) of one config field."""
    info = section_model(section).model_fields[field]
    key = f"{section}.{field}" if section else field
    annotation = _unwrap_optional(info.annotation)
    text = f"{info.description} ({key})" if info.description else key
    if annotation is bool:
        return Optional[bool], typer.Option(*decls, help=text, show_default=False)
    if typing.get_origin(annotation) is Literal:
        # Checked by the config model, not by click: a wrong choice is the same one-line error as in ocrloop.yaml.
        return Optional[str], typer.Option(*decls, help=f"{text}: {', '.join(typing.get_args(annotation))}",
                                           show_default=False)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        choices = ", ".join(typing.get_args(item)) if typing.get_origin(item) is Literal else "values"
        return Optional[str], typer.Option(*decls, help=f"{text}; comma-separated {choices}", show_default=False)
    if annotation in (int, float, str):
        return Optional[annotation], typer.Option(*decls, help=text, show_default=False)
    return Optional[str], typer.Option(*decls, help=text, show_default=False)  # paths and the rest: as text


def _value(section: str, field: str, raw: Any) -> Any:
    annotation = _unwrap_optional(section_model(section).model_fields[field].annotation)
    if typing.get_origin(annotation) is list and isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def config_flags(section: str, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
                 names: dict[str, tuple[str, ...]] | None = None) -> Callable[[Callable], Callable]:
    """Give a typer command one flag per field of ``section`` (or just ``only`` those), minus ``exclude``.

    ``names`` gives a field other flag names (``{"base_model": ("--model",)}``). The command must take
    ``overrides: dict``; it receives ``{"section.field": value}`` for each flag given.
    """
    fields = [name for name in section_model(section).model_fields if (only is None or name in only) and name not in exclude]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "overrides"]
        generated = []
        for field in fields:
            decls = (names or {}).get(field) or (_flag_names(field, section),)
            python_type, option = _option(section, field, decls)
            parameter = f"{section}{_SEPARATOR}{field}"
            generated.append(inspect.Parameter(parameter, inspect.Parameter.KEYWORD_ONLY, default=None,
                                               annotation=Annotated[python_type, option]))

        @functools.wraps(command)
        def wrapper(**kwargs):
            overrides = dict(kwargs.pop("overrides", None) or {})
            for field in fields:
                raw = kwargs.pop(f"{section}{_SEPARATOR}{field}", None)
                if raw is not None:
                    overrides[f"{section}.{field}" if section else field] = _value(section, field, raw)
            return command(overrides=overrides, **kwargs)

        # typer calls commands with keywords only, so every parameter can be keyword-only, in any order.
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.__config_flags__ = [*getattr(command, "__config_flags__", []), *((section, f) for f in fields)]
        del wrapper.__wrapped__  # typer must read the generated signature, not the command's own
        return wrapper

    return decorate


def command_config_flags(command: Callable) -> list[str]:
    """The ``section.field`` keys a command has generated flags for (what the flag-per-field test checks)."""
    return [f"{section}.{field}" if section else field for section, field in getattr(command, "__config_flags__", [])]
