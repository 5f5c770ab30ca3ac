"""Flags come from the configuration's fields: every field of a command's sections has one flag, every such
flag sets one field, and no command writes a configuration flag by hand."""

from __future__ import annotations

import click
import typer
from typer.main import get_command
from typer.testing import CliRunner

from ocrloop.bench.settings import (BenchLearnSettings, BenchLinesSettings, BenchOcrSettings, BenchSoakSettings,
                                    BenchTrainSettings)
from ocrloop.cli import app, evaluate, ocr_command, serve_command, train_command
from ocrloop.cli_flags import command_config_flags, config_flags, section_model
from ocrloop.config import OcrloopConfig, TrainingConfig


def _fields(section: str) -> set[str]:
    return {f"{section}.{name}" for name in section_model(section).model_fields}


def test_train_and_serve_have_a_flag_for_every_field_of_their_sections():
    assert sorted(command_config_flags(train_command)) == sorted(_fields("training") | {"base_model", "dataset_dir"})
    assert sorted(command_config_flags(serve_command)) == sorted(_fields("serve"))
    assert set(command_config_flags(evaluate)) <= _fields("training") | {"dataset_dir"}
    assert set(command_config_flags(ocr_command)) == {"training.prompt", "training.resolution", "training.read_batch_size",
                                                      "training.gpus", "serve.pii_policy", "serve.fast_decode"}


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_flag_sets_one_field_and_no_flag_is_written_by_hand():
    keys = {*_fields("training"), *_fields("serve"), *_fields("loop"), *_fields("data"), *OcrloopConfig.model_fields}
    settings = {model.__name__: model for model in (BenchTrainSettings, BenchOcrSettings, BenchSoakSettings,
                                                    BenchLinesSettings, BenchLearnSettings)}
    for name, command in _commands(get_command(app)):
        options = [p for p in command.params if isinstance(p, click.Option)]
        flags = [flag for option in options for flag in option.opts + option.secondary_opts]
        assert len(flags) == len(set(flags)), (name, flags)
        for option in options:
            if "__" in option.name:  # generated: section__field, or SettingsModel__field
                section, field = option.name.split("__")
                if section in settings:
                    assert field in settings[section].model_fields, (name, option.name)
                else:
                    assert (f"{section}.{field}" if section else field) in keys, (name, option.name)
            else:
                assert not any(f"({key})" in (option.help or "") or (option.help or "") == key for key in keys), \
                    (name, option.name, option.help)
        if name.startswith("bench "):  # a bench's workload is its settings model, every field a flag
            generated = {o.name.split("__")[1] for o in options if "__" in o.name}
            model = next(settings[o.name.split("__")[0]] for o in options if "__" in o.name)
            assert generated == set(model.model_fields), name


def test_flag_values_become_overrides():
    runner_app = typer.Typer()
    seen = {}

    @runner_app.command()
    @config_flags("training", only=("lora_targets", "compile", "epochs", "mode"))
    def command(overrides: dict | None = None) -> None:
        seen.update(overrides)

    result = CliRunner().invoke(runner_app, ["--lora-targets", "attention, mlp", "--no-compile", "--epochs", "2.5",
                                             "--mode", "full"])
    assert result.exit_code == 0, result.output
    assert seen == {"training.lora_targets": ["attention", "mlp"], "training.compile": False, "training.epochs": 2.5,
                    "training.mode": "full"}
    help_text = CliRunner().invoke(runner_app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    assert TrainingConfig.model_fields["epochs"].description in help_text and "lora16, qlora4, lora8, full" in help_text
