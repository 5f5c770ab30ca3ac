"""bench/gpu/*.sh, the device calls the notes plan: every bench command in them parses and validates here, so a
typo costs no device minutes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

import ocrloop.bench.settings as bench_settings
from ocrloop.cli import app
from ocrloop.cli_flags import settings_from_flags
from ocrloop.errors import OcrloopError

SCRIPTS = sorted((Path(__file__).parents[2] / "bench" / "gpu").glob("*.sh"))


def bench_commands(script: str) -> list[list[str]]:
    """The arguments after ``ocrloop bench`` of every command in ``script`` (continued lines joined, up to the first
    redirection; a variable with a default, ``${STEPS:-840,1250,300,900}``, as its default)."""
    joined = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", script.replace("\\\n", " "))
    commands = []
    for line in joined.splitlines():
        found = re.search(r"-m ocrloop bench (.*)", line)
        if found:
            words = shlex.split(found.group(1).replace("$OUT", "/tmp/out"))
            commands.append(words[:next((i for i, w in enumerate(words) if w.startswith((">", "2>"))), len(words))])
    return commands


def validated(arguments: list[str]):
    """The settings ``ocrloop bench ...`` would run with: parsed by the CLI's own click command, validated by the
    bench's settings model; raises what the CLI would report."""
    bench = get_command(app).commands["bench"]
    command = bench.commands[arguments[0]]
    params = command.make_context(arguments[0], arguments[1:]).params
    models = {name.split("__", 1)[0] for name in params if "__" in name}
    assert len(models) == 1, models
    model = getattr(bench_settings, models.pop())
    return settings_from_flags(model, {name: value for name, value in params.items() if "__" in name})


def test_there_are_scripts_and_each_sources_the_setup_first():
    runs = [s for s in SCRIPTS if s.name != "setup.sh"]
    assert runs
    for script in runs:
        first = next(line for line in script.read_text().splitlines() if line and not line.startswith("#"))
        assert first == "source bench/gpu/setup.sh", script.name


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name != "setup.sh"], ids=lambda s: s.name)
def test_every_bench_command_in_the_scripts_parses_and_validates(script):
    commands = bench_commands(script.read_text())
    assert commands, f"{script.name} runs no ocrloop bench command"
    for arguments in commands:
        settings = validated(arguments)
        assert str(settings.out).startswith("/tmp/out/")


def test_a_mistyped_flag_or_an_invalid_value_is_caught():
    good = "python3 -m ocrloop bench pretrain --out \"$OUT/x.json\" --lessons 30000,180000,12000,6000 > log"
    assert validated(bench_commands(good)[0]).lessons == [30_000, 180_000, 12_000, 6_000]
    with pytest.raises(Exception, match="No such option: --lesons"):
        validated(bench_commands(good.replace("--lessons", "--lesons"))[0])
    with pytest.raises(OcrloopError, match="--lessons"):
        validated(bench_commands(good.replace("12000,6000", "12000"))[0])
    with pytest.raises(OcrloopError, match="--templates"):
        validated(bench_commands(good.replace("> log", "--photos 0.3 --templates 2 > log"))[0])
