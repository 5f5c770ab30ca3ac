"""Command-line flags made from the configuration's pydantic fields: one source of truth per setting.

``@config_flags("training")`` adds a ``--flag`` to a typer command for every field of that
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
from pydantic import BaseModel, ValidationError

from ocrloop.config import OcrloopConfig
from ocrloop.errors import OcrloopError

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


def _flag_names(model: type[BaseModel], field: str) -> str:
    name = field.replace("_", "-")
    return f"--{name}/--no-{name}" if _unwrap_optional(model.model_fields[field].annotation) is bool else f"--{name}"


def _option(model: type[BaseModel], field: str, key: str, decls: tuple[str, ...]) -> tuple[Any, typer.models.OptionInfo]:
    """The Python type and typer option (named ``decls``) of one field; ``key`` is how its help names it."""
    info = model.model_fields[field]
    annotation = _unwrap_optional(info.annotation)
    text = f"{info.description} ({key})" if info.description and key else info.description or key
    if annotation is bool:
        return Optional[bool], typer.Option(*decls, help=text, show_default=False)
    if typing.get_origin(annotation) is Literal:
        # Checked by the model, not by click: a wrong choice is the same one-line error as in ocrloop.yaml.
        return Optional[str], typer.Option(*decls, help=f"{text} Choices: {', '.join(map(str, typing.get_args(annotation)))}.",
                                           show_default=False)
    if typing.get_origin(annotation) in (list, tuple):
        item = typing.get_args(annotation)[0]
        choices = ", ".join(typing.get_args(item)) if typing.get_origin(item) is Literal else "values"
        return Optional[str], typer.Option(*decls, help=f"{text} Comma-separated {choices}.", show_default=False)
    if annotation in (int, float, str):
        return Optional[annotation], typer.Option(*decls, help=text, show_default=False)
    return Optional[str], typer.Option(*decls, help=text, show_default=False)  # paths and the rest: as text


def _value(model: type[BaseModel], field: str, raw: Any) -> Any:
    annotation = _unwrap_optional(model.model_fields[field].annotation)
    if typing.get_origin(annotation) in (list, tuple) and isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _generated(model: type[BaseModel], prefix: str, fields: list[str], names: dict | None, key: Callable[[str], str],
               show_defaults: bool = False) -> list[inspect.Parameter]:
    parameters = []
    for field in fields:
        decls = (names or {}).get(field) or (_flag_names(model, field),)
        python_type, option = _option(model, field, key(field), decls)
        default = model.model_fields[field].default
        if show_defaults and not model.model_fields[field].is_required() and default is not None:
            option.help = f"{option.help} [default: {','.join(map(str, default)) if isinstance(default, (list, tuple)) else default}]"
        parameters.append(inspect.Parameter(f"{prefix}{_SEPARATOR}{field}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[python_type, option]))
    return parameters


def _rewrapped(command: Callable, generated: list[inspect.Parameter], drop: str, collect: Callable[[dict], dict]) -> Callable:
    """``command`` with ``generated`` parameters in its signature instead of ``drop``; ``collect`` turns the generated
    keyword arguments (popped from the call) into what ``command`` receives as ``drop``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != drop]
    names = {p.name for p in generated}

    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        value = collect(given)
        outer = kwargs.pop(drop, None)  # stacked decorators: the outer one's overrides join this one's
        if isinstance(outer, dict) and isinstance(value, dict):
            value = {**outer, **value}
        return command(**{drop: value, **kwargs})

    # typer calls commands with keywords only, so every parameter can be keyword-only, in any order.
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the generated signature, not the command's own
    return wrapper


def settings_flags(model: type[BaseModel]) -> Callable[[Callable], Callable]:
    """Give a typer command one flag per field of ``model`` (a bench's workload, ...); the command receives
    ``settings``, a validated ``model`` instance. A value out of its field's bounds is one error line."""
    fields = list(model.model_fields)

    def decorate(command: Callable) -> Callable:
        return _rewrapped(command, _generated(model, model.__name__, fields, None, lambda f: "", show_defaults=True),
                          "settings", functools.partial(settings_from_flags, model))

    return decorate


def settings_from_flags(model: type[BaseModel], given: dict[str, Any]) -> BaseModel:
    """The validated ``model`` of the flags ``settings_flags`` generated for it, as click parsed them (named
    ``Model__field``; flags left out are None). A value out of its field's bounds is one error line."""
    values = {name.split(_SEPARATOR, 1)[1]: _value(model, name.split(_SEPARATOR, 1)[1], raw)
              for name, raw in given.items() if raw is not None}
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        # A validator's own message is the whole sentence (pydantic would put "Value error, " before it); a check
        # of several flags names them itself.
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise OcrloopError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}" if first["loc"] else message) from None


def settings_argv(settings: BaseModel) -> list[str]:
    """The flags that ``settings_flags`` turns back into ``settings`` (for re-launching a command as other processes)."""
    argv: list[str] = []
    for field, value in settings:
        if value is None:
            continue
        name = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            argv.append(name if value else name.replace("--", "--no-", 1))
        elif isinstance(value, (list, tuple)):
            argv += [name, ",".join(map(str, value))]
        else:
            argv += [name, str(value)]
    return argv


def config_flags(section: str, *, only: tuple[str, ...] | None = None,
                 names: dict[str, tuple[str, ...]] | None = None) -> Callable[[Callable], Callable]:
    """Give a typer command one flag per field of ``section`` (or just ``only`` those).

    ``names`` gives a field other flag names (``{"base_model": ("--model",)}``). The command must take
    ``overrides: dict``; it receives ``{"section.field": value}`` for each flag given.
    """
    model = section_model(section)
    fields = [name for name in model.model_fields if only is None or name in only]

    def collect(given: dict) -> dict:
        overrides = {}
        for name, raw in given.items():
            field = name.split(_SEPARATOR, 1)[1]
            if raw is not None:
                overrides[f"{section}.{field}" if section else field] = _value(model, field, raw)
        return overrides

    def decorate(command: Callable) -> Callable:
        key = (lambda f: f"{section}.{f}") if section else (lambda f: f)
        wrapper = _rewrapped(command, _generated(model, section, fields, names, key), "overrides", collect)
        wrapper.__config_flags__ = [*getattr(command, "__config_flags__", []), *((section, f) for f in fields)]
        return wrapper

    return decorate


def command_config_flags(command: Callable) -> list[str]:
    """The ``section.field`` keys a command has generated flags for (what the flag-per-field test checks)."""
    return [f"{section}.{field}" if section else field for section, field in getattr(command, "__config_flags__", [])]
